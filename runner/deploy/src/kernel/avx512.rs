//! AVX-512 BW + VNNI: one `vpdpbusd` per 64 codes and activation row; up to eight activation
//! rows share each decoded block (small-batch GEMM).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{block_cols, BLOCK_BYTES};

/// See [`super::CodeMatrix::code_dots`].
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VNNI; `x` must hold `n` rows of `stride` and `data`
/// `out.len() / n` rows of `row_bytes`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn code_dots(
    data: &[u8],
    bits: u32,
    row_bytes: usize,
    x: &[i8],
    stride: usize,
    n: usize,
    out: &mut [i32],
) {
    let mut first = 0;
    while first < n {
        let group = (n - first).min(8);
        let xs = &x[first * stride..];
        match group {
            1 => rows::<1>(data, bits, row_bytes, xs, stride, n, first, out),
            2 => rows::<2>(data, bits, row_bytes, xs, stride, n, first, out),
            3 => rows::<3>(data, bits, row_bytes, xs, stride, n, first, out),
            4 => rows::<4>(data, bits, row_bytes, xs, stride, n, first, out),
            5 => rows::<5>(data, bits, row_bytes, xs, stride, n, first, out),
            6 => rows::<6>(data, bits, row_bytes, xs, stride, n, first, out),
            7 => rows::<7>(data, bits, row_bytes, xs, stride, n, first, out),
            _ => rows::<8>(data, bits, row_bytes, xs, stride, n, first, out),
        }
        first += group;
    }
}

/// Code sums of every row against activation rows `first .. first + N`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows<const N: usize>(
    data: &[u8],
    bits: u32,
    row_bytes: usize,
    x: &[i8],
    stride: usize,
    n: usize,
    first: usize,
    out: &mut [i32],
) {
    let fields = 8 / bits as usize;
    let mask = _mm512_set1_epi8(((1u16 << bits) - 1) as i8);
    let shift = _mm_cvtsi32_si128(bits as i32);
    let per_block = block_cols(bits);
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        let mut acc = [_mm512_setzero_si512(); N];
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            let mut packed = _mm512_loadu_si512(block.as_ptr() as *const _);
            let base = b * per_block;
            for k in 0..fields {
                let codes = _mm512_and_si512(packed, mask);
                packed = _mm512_srl_epi16(packed, shift);
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv =
                        _mm512_loadu_si512(x.as_ptr().add(i * stride + base + k * BLOCK_BYTES) as *const _);
                    *a = _mm512_dpbusd_epi32(*a, codes, xv);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            out[r * n + first + i] = _mm512_reduce_add_epi32(*a);
        }
    }
}

/// Never called: `Path::available` offers this path on x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn code_dots(_: &[u8], _: u32, _: usize, _: &[i8], _: usize, _: usize, _: &mut [i32]) {
    unreachable!("AVX-512 on a non-x86 CPU")
}
