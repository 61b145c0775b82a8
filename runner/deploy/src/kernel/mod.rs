//! Integer matrix–vector kernels over packed unsigned codes.
//!
//! A layer with a uniform level grid has integer levels `a + d·code` (ternary: `code − 1`;
//! 2bitsym ×4: `2·code − 3`), so `Σ level·x = d·Σ code·x + a·Σ x`. The kernels compute the
//! code sum `Σ code·x` with codes on the unsigned side of the int8 dot-product instructions
//! (AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddubsw`) and the int8 activations on the signed side;
//! [`IntLinear`] adds the affine part. One scale per row is applied after the integer sum, by
//! the caller.
//!
//! Layout ([`CodeMatrix`]): each row is padded to whole 64-byte blocks; byte `j` of a block holds
//! the codes of columns `j + 64·k` (k = 0 .. 8/bits) of the block at bits `bits·k`, so one shift
//! and one mask turn a block into 64 consecutive codes that line up with 64 consecutive
//! activations. Padding codes are zero and padded activations are zero.

#![allow(unsafe_code)]

mod avx2;
mod avx512;
mod scalar;

use rayon::prelude::*;

/// Bytes per block of the kernel layout (one AVX-512 register).
pub const BLOCK_BYTES: usize = 64;

/// An instruction-set path; [`Path::best`] picks the fastest one this CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Portable Rust over the packed layout.
    Scalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-512 BW + VNNI `vpdpbusd`.
    Avx512Vnni,
}

impl Path {
    /// The fastest path available on this CPU.
    pub fn best() -> Self {
        Self::available().into_iter().last().unwrap_or(Path::Scalar)
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Self> {
        let mut paths = vec![Path::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                paths.push(Path::Avx2);
            }
            if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni") {
                paths.push(Path::Avx512Vnni);
            }
        }
        paths
    }

    /// Lower-case name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// Unsigned `bits`-bit codes (2, 4 or 8) of a `rows × cols` matrix in the kernel layout.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeMatrix {
    rows: usize,
    cols: usize,
    bits: u32,
    data: Vec<u8>,
}

impl CodeMatrix {
    /// Lay out row-major `codes` (each below 2^bits).
    ///
    /// # Panics
    /// If `bits` is not 2, 4 or 8 or `codes` is not `rows × cols` long (a caller's bug).
    pub fn from_codes(codes: &[u8], rows: usize, cols: usize, bits: u32) -> Self {
        assert!(matches!(bits, 2 | 4 | 8), "kernel codes are 2, 4 or 8 bits, not {bits}");
        assert_eq!(codes.len(), rows * cols, "codes of a {rows}×{cols} matrix");
        let per_block = block_cols(bits);
        let blocks = cols.div_ceil(per_block);
        let mut data = vec![0u8; rows * blocks * BLOCK_BYTES];
        for (r, row) in codes.chunks_exact(cols.max(1)).enumerate().take(rows) {
            for (c, &code) in row.iter().enumerate() {
                let (block, within) = (c / per_block, c % per_block);
                let (lane, field) = (within % BLOCK_BYTES, within / BLOCK_BYTES);
                data[(r * blocks + block) * BLOCK_BYTES + lane] |= code << (bits as usize * field);
            }
        }
        Self { rows, cols, bits, data }
    }

    /// Output channels.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per row (before padding).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bits per code.
    pub fn bits(&self) -> u32 {
        self.bits
    }

    /// Row length in the layout: the activation stride the kernels expect.
    pub fn padded_cols(&self) -> usize {
        self.cols.div_ceil(block_cols(self.bits)) * block_cols(self.bits)
    }

    /// Bytes of packed codes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    fn row_bytes(&self) -> usize {
        self.padded_cols() / block_cols(self.bits) * BLOCK_BYTES
    }

    /// `out[r·n + i] = Σ_c code[r][c] · x[i·padded_cols + c]` for `n` activation rows, on `path`,
    /// with the rows split over the current rayon pool when `parallel`.
    ///
    /// # Panics
    /// If the buffers are too short, or `path` is not available on this CPU.
    pub fn code_dots(&self, x: &[i8], n: usize, out: &mut [i32], path: Path, parallel: bool) {
        let stride = self.padded_cols();
        assert!(x.len() >= n * stride && out.len() >= n * self.rows, "buffer sizes");
        assert!(Path::available().contains(&path), "{path:?} is not available on this CPU");
        let rows_per_task =
            if parallel { self.rows.div_ceil(rayon::current_num_threads() * 4).max(1) } else { self.rows };
        let row_bytes = self.row_bytes();
        let run = |(chunk, out): (usize, &mut [i32])| {
            let first = chunk * rows_per_task;
            let rows = out.len() / n.max(1);
            let data = &self.data[first * row_bytes..(first + rows) * row_bytes];
            match path {
                Path::Scalar => scalar::code_dots(data, self.bits, row_bytes, x, stride, n, out),
                // SAFETY: `available()` confirmed the CPU features above.
                Path::Avx2 => unsafe { avx2::code_dots(data, self.bits, row_bytes, x, stride, n, out) },
                // SAFETY: as above.
                Path::Avx512Vnni => unsafe {
                    avx512::code_dots(data, self.bits, row_bytes, x, stride, n, out)
                },
            }
        };
        let out = &mut out[..n * self.rows];
        if n == 0 || self.rows == 0 {
            return;
        }
        if parallel && rayon::current_num_threads() > 1 {
            out.par_chunks_mut(rows_per_task * n).enumerate().for_each(run);
        } else {
            run((0, out));
        }
    }
}

/// Columns per 64-byte block.
pub fn block_cols(bits: u32) -> usize {
    BLOCK_BYTES * 8 / bits as usize
}

/// A layer whose integer levels are `offset + step·code`: the kernel's code sums plus the affine
/// correction.
#[derive(Clone, Debug, PartialEq)]
pub struct IntLinear {
    /// The codes.
    pub codes: CodeMatrix,
    /// Integer level of code 0.
    pub offset: i32,
    /// Integer distance between neighbouring levels.
    pub step: i32,
}

impl IntLinear {
    /// `out[r·n + i] = Σ_c level[r][c] · x[i][c]` (int32, exact).
    pub fn forward(&self, x: &[i8], n: usize, out: &mut [i32], path: Path, parallel: bool) {
        self.codes.code_dots(x, n, out, path, parallel);
        let stride = self.codes.padded_cols();
        let sums: Vec<i32> =
            (0..n).map(|i| x[i * stride..(i + 1) * stride].iter().map(|&v| v as i32).sum()).collect();
        for row in out[..n * self.codes.rows].chunks_exact_mut(n) {
            for (o, s) in row.iter_mut().zip(&sums) {
                *o = self.step * *o + self.offset * s;
            }
        }
    }
}

/// The reference every path must match: `out[r·n + i] = Σ_c levels[r·cols + c] · x[i·cols + c]`,
/// straight from row-major integer levels (no packing).
pub fn reference_dots(levels: &[i32], rows: usize, cols: usize, x: &[i8], n: usize) -> Vec<i32> {
    let mut out = vec![0i32; rows * n];
    for r in 0..rows {
        for i in 0..n {
            out[r * n + i] = (0..cols).map(|c| levels[r * cols + c] * x[i * cols + c] as i32).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Activations of `n` rows of `cols` padded to `stride` with zeros.
    fn padded(x: &[i8], n: usize, cols: usize, stride: usize) -> Vec<i8> {
        let mut out = vec![0i8; n * stride];
        for i in 0..n {
            out[i * stride..i * stride + cols].copy_from_slice(&x[i * cols..(i + 1) * cols]);
        }
        out
    }

    #[test]
    fn the_layout_puts_column_j_plus_64k_in_byte_j() {
        let codes: Vec<u8> = (0..256).map(|c| (c / 64) as u8).collect();
        let m = CodeMatrix::from_codes(&codes, 1, 256, 2);
        assert_eq!(m.bytes(), 64);
        assert!(m.data.iter().all(|&b| b == 0b11_10_01_00), "fields k = 0..3 hold columns j + 64k");
        assert_eq!(CodeMatrix::from_codes(&[1; 65], 1, 65, 4).padded_cols(), 128);
    }

    #[test]
    fn ternary_levels_give_known_dots() {
        // levels −1, 0, 1 as codes 0, 1, 2 (offset −1, step 1)
        let layer =
            IntLinear { codes: CodeMatrix::from_codes(&[0, 1, 2, 2, 2, 0], 2, 3, 2), offset: -1, step: 1 };
        let stride = layer.codes.padded_cols();
        let x = padded(&[10, 20, 30], 1, 3, stride);
        for path in Path::available() {
            let mut out = vec![0; 2];
            layer.forward(&x, 1, &mut out, path, false);
            assert_eq!(out, vec![-10 + 30, 10 + 20 - 30], "{path:?}");
        }
    }

    fn case() -> impl Strategy<Value = (u32, usize, usize, usize, Vec<u8>, Vec<i8>)> {
        (prop_oneof![Just(2u32), Just(4), Just(8)], 1usize..20, 1usize..700, 1usize..10).prop_flat_map(
            |(bits, rows, cols, n)| {
                let codes = proptest::collection::vec(0u8..=((1u16 << bits) - 1) as u8, rows * cols);
                let x = proptest::collection::vec(any::<i8>(), n * cols);
                (Just(bits), Just(rows), Just(cols), Just(n), codes, x)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn every_path_matches_the_reference((bits, rows, cols, n, codes, x) in case()) {
            let m = CodeMatrix::from_codes(&codes, rows, cols, bits);
            let levels: Vec<i32> = codes.iter().map(|&c| c as i32).collect();
            let expected = reference_dots(&levels, rows, cols, &x, n);
            let xp = padded(&x, n, cols, m.padded_cols());
            for path in Path::available() {
                for parallel in [false, true] {
                    let mut out = vec![0; rows * n];
                    m.code_dots(&xp, n, &mut out, path, parallel);
                    prop_assert_eq!(&out, &expected, "{:?} parallel {}", path, parallel);
                }
            }
        }
    }
}
