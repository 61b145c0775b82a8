//! Dense math for ops that compute on host values (see [`super::op`]): a strided matrix product
//! (matrixmultiply's kernels, without dfdx's tape, its zero-filled gradient buffers and the
//! transposed copies its layout needs), and the causal row softmax of attention.
//!
//! Why strides: a transposed operand is the same slice read with its strides swapped
//! ([`View::t`]), so `x·Ŵᵀ`, `Gᵀ·x` and one head's columns of a `q|k|v` buffer are all read in
//! place.
#![allow(unsafe_code)] // calls into sgemm, after checking every index it will touch

/// A read-only matrix view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// A `rows × cols` row-major matrix whose rows start `ld` values apart.
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Self { data, rows, cols, rs: ld, cs: 1 }
    }

    /// A dense `rows × cols` row-major matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols)
    }

    /// The transpose, reading the same values.
    pub fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs, ..self }
    }

    /// Whether every element lies inside the slice.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `c = a·b`, or `c += a·b` when `accumulate`; `c` is `a.rows × b.cols` with rows `ldc` apart.
/// Single-threaded: a run uses one thread and parallel runs use the cores.
///
/// # Panics
/// When the shapes do not chain or a view reaches past its slice (a bug in the caller).
pub fn matmul(a: View, b: View, c: &mut [f32], ldc: usize, accumulate: bool) {
    let (m, n) = (a.rows, b.cols);
    check(a, b);
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n && (m - 1) * ldc + n <= c.len(), "matmul: the output does not hold {m}×{n}");
    // SAFETY: `check` and the assertion above bound every index sgemm touches (see `sgemm`);
    // `c` is a unique borrow, so it aliases neither operand.
    unsafe { sgemm(a, b, c.as_mut_ptr(), ldc, accumulate) }
}

/// `a·b` as a new dense row-major matrix.
pub fn product(a: View, b: View) -> Vec<f32> {
    check(a, b);
    let len = a.rows * b.cols;
    let mut c = Vec::with_capacity(len);
    if len > 0 {
        // SAFETY: sgemm writes all `len` values of the new buffer's capacity (beta 0: it reads
        // none, so none needs initialising first), after which they are initialised.
        unsafe {
            sgemm(a, b, c.as_mut_ptr(), b.cols, false);
            c.set_len(len);
        }
    }
    c
}

/// Shapes chain and both views lie inside their slices.
fn check(a: View, b: View) {
    assert_eq!(a.cols, b.rows, "matmul: {}×{} by {}×{}", a.rows, a.cols, b.rows, b.cols);
    assert!(a.in_bounds() && b.in_bounds(), "matmul: an operand view reaches past its values");
}

/// # Safety
/// `a` and `b` lie in their slices ([`check`]) and `c` is valid for writes at `i·ldc + j` for
/// every `i < a.rows`, `j < b.cols`, aliasing neither; when `accumulate`, those values are
/// initialised (they are read).
unsafe fn sgemm(a: View, b: View, c: *mut f32, ldc: usize, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let beta = if accumulate { 1.0 } else { 0.0 };
    // sgemm with k = 0 scales c by beta, which with beta 0 writes zeros without reading
    matrixmultiply::sgemm(
        m,
        k,
        n,
        1.0,
        a.data.as_ptr(),
        a.rs as isize,
        a.cs as isize,
        b.data.as_ptr(),
        b.rs as isize,
        b.cs as isize,
        beta,
        c,
        ldc as isize,
        1,
    )
}

/// Softmax of each row of the `tokens × tokens` scores `s` in place over its first `i + 1`
/// entries (row `i` attends to positions 0..=i), leaving zeros above the diagonal: adding −∞
/// there and taking the softmax gives exactly that.
pub fn causal_softmax(s: &mut [f32], tokens: usize) {
    for (i, row) in s.chunks_exact_mut(tokens).enumerate() {
        let (seen, future) = row.split_at_mut(i + 1);
        qatlab_deploy::math::softmax_row(seen);
        future.fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        (0..m * n).map(|ij| (0..k).map(|p| a[ij / n * k + p] * b[p * n + ij % n]).sum()).collect()
    }

    #[test]
    fn products_of_transposed_and_strided_views_match_the_definition() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut c = vec![0.0; m * n];
        matmul(View::dense(&a, m, k), View::dense(&b, k, n), &mut c, n, false);
        c.iter().zip(&want).for_each(|(c, w)| assert!((c - w).abs() < 1e-5, "{c} vs {w}"));
        // aᵀ stored as k × m, read transposed; accumulate onto the first result
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        matmul(View::dense(&at, k, m).t(), View::dense(&b, k, n), &mut c, n, true);
        c.iter().zip(&want).for_each(|(c, w)| assert!((c - 2.0 * w).abs() < 1e-5));
        // columns 2..2+k of a wider buffer, into columns 1..1+n of a wider output
        let wide: Vec<f32> = (0..m * (k + 4))
            .map(|i| {
                if (2..2 + k).contains(&(i % (k + 4))) {
                    a[i / (k + 4) * k + i % (k + 4) - 2]
                } else {
                    f32::NAN
                }
            })
            .collect();
        let mut out = vec![-1.0; m * (n + 2)];
        matmul(View::new(&wide[2..], m, k, k + 4), View::dense(&b, k, n), &mut out[1..], n + 2, false);
        for i in 0..m {
            assert_eq!(out[i * (n + 2)], -1.0, "untouched");
            for j in 0..n {
                assert!((out[i * (n + 2) + 1 + j] - want[i * n + j]).abs() < 1e-5);
            }
        }
    }

    #[test]
    #[should_panic(expected = "reaches past")]
    fn a_view_past_its_slice_is_refused() {
        let a = [1.0; 5];
        matmul(View::dense(&a, 2, 3), View::dense(&a, 3, 1), &mut [0.0; 2], 1, false);
    }

    #[test]
    fn causal_softmax_is_a_distribution_over_the_past() {
        let mut s = vec![1.0, 9.0, 9.0, 0.0, 2f32.ln(), 9.0, 0.0, 0.0, 0.0];
        causal_softmax(&mut s, 3);
        let third = 1.0 / 3.0;
        let want = [1.0, 0.0, 0.0, third, 2.0 * third, 0.0, third, third, third];
        s.iter().zip(want).for_each(|(s, w)| assert!((s - w).abs() < 1e-6, "{s} vs {w}"));
    }
}
