//! AVX-512 BW + VNNI: one `vpdpbusd` per 64 codes and activation row; up to eight activation
//! rows share each decoded block (small-batch GEMM).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{block_cols, BLOCK_BYTES};

/// How far ahead of the block being decoded to prefetch (measured with `qat bench kernels`).
pub(super) const PREFETCH_BYTES: usize = 2048;

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
    macro_rules! group {
        ($bits:literal, $group:expr, $first:expr) => {{
            let xs = &x[$first * stride..];
            match $group {
                1 => rows::<$bits, 1>(data, row_bytes, xs, stride, n, $first, out),
                2 => rows::<$bits, 2>(data, row_bytes, xs, stride, n, $first, out),
                3 => rows::<$bits, 3>(data, row_bytes, xs, stride, n, $first, out),
                4 => rows::<$bits, 4>(data, row_bytes, xs, stride, n, $first, out),
                5 => rows::<$bits, 5>(data, row_bytes, xs, stride, n, $first, out),
                6 => rows::<$bits, 6>(data, row_bytes, xs, stride, n, $first, out),
                7 => rows::<$bits, 7>(data, row_bytes, xs, stride, n, $first, out),
                _ => rows::<$bits, 8>(data, row_bytes, xs, stride, n, $first, out),
            }
        }};
    }
    let mut first = 0;
    while first < n {
        let group = (n - first).min(8);
        match bits {
            2 => group!(2, group, first),
            4 => group!(4, group, first),
            _ => group!(8, group, first),
        }
        first += group;
    }
}

/// Code sums of every row against activation rows `first .. first + N`. `vpdpbusd` has a
/// latency of several cycles, so with few activation rows each row gets `CHAINS` independent
/// accumulators (one per field) to keep the unit busy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows<const BITS: u32, const N: usize>(
    data: &[u8],
    row_bytes: usize,
    x: &[i8],
    stride: usize,
    n: usize,
    first: usize,
    out: &mut [i32],
) {
    let fields = 8 / BITS as usize;
    let chains = if N >= 4 { 1 } else { fields };
    let mask = _mm512_set1_epi8(((1u16 << BITS) - 1) as i8);
    let per_block = block_cols(BITS);
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        let mut acc = [[_mm512_setzero_si512(); 4]; N];
        for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            // Streaming from DRAM, the hardware prefetcher alone leaves half the bandwidth unused.
            _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
            let packed = _mm512_loadu_si512(block.as_ptr() as *const _);
            let base = b * per_block;
            for k in 0..fields {
                let shifted = if k == 0 { packed } else { shift_right::<BITS>(packed, k) };
                let codes = _mm512_and_si512(shifted, mask);
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv =
                        _mm512_loadu_si512(x.as_ptr().add(i * stride + base + k * BLOCK_BYTES) as *const _);
                    a[k % chains] = _mm512_dpbusd_epi32(a[k % chains], codes, xv);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let sum = a[1..chains].iter().fold(a[0], |s, v| _mm512_add_epi32(s, *v));
            out[r * n + first + i] = _mm512_reduce_add_epi32(sum);
        }
    }
}

/// Trit sums over the base-3 layout ([`super::Layout::Trits`]), one activation row at a time.
/// Per field: trit = [m ≥ 86] + [m ≥ 171] (that is (3m) >> 8) from two unsigned byte compares,
/// then m ← 3m mod 256 with two byte adds.
///
/// # Safety
/// As [`code_dots`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn trit_dots(data: &[u8], row_bytes: usize, x: &[i8], stride: usize, n: usize, out: &mut [i32]) {
    let (one, two) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2));
    let (third, two_thirds) = (_mm512_set1_epi8(86), _mm512_set1_epi8(171u8 as i8));
    let per_block = super::Layout::Trits.block_cols();
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        for i in 0..n {
            let xi = x.as_ptr().add(i * stride);
            let mut acc = [_mm512_setzero_si512(); 5];
            for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(PREFETCH_BYTES) as *const i8);
                let mut m = _mm512_loadu_si512(block.as_ptr() as *const _);
                for (k, a) in acc.iter_mut().enumerate() {
                    let low = _mm512_maskz_mov_epi8(_mm512_cmpge_epu8_mask(m, third), one);
                    let trit = _mm512_mask_mov_epi8(low, _mm512_cmpge_epu8_mask(m, two_thirds), two);
                    let xv = _mm512_loadu_si512(xi.add(b * per_block + k * BLOCK_BYTES) as *const _);
                    *a = _mm512_dpbusd_epi32(*a, trit, xv);
                    m = _mm512_add_epi8(m, _mm512_add_epi8(m, m));
                }
            }
            let sum = acc[1..].iter().fold(acc[0], |s, v| _mm512_add_epi32(s, *v));
            out[r * n + i] = _mm512_reduce_add_epi32(sum);
        }
    }
}

/// Never called: `Path::available` offers this path on x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn trit_dots(_: &[u8], _: usize, _: &[i8], _: usize, _: usize, _: &mut [i32]) {
    unreachable!("AVX-512 on a non-x86 CPU")
}

/// The 16-bit lanes of `v` shifted right by `BITS·k` (k < 8/BITS).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn shift_right<const BITS: u32>(v: __m512i, k: usize) -> __m512i {
    _mm512_srl_epi16(v, _mm_cvtsi32_si128((BITS as usize * k) as i32))
}

/// Never called: `Path::available` offers this path on x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn code_dots(_: &[u8], _: u32, _: usize, _: &[i8], _: usize, _: usize, _: &mut [i32]) {
    unreachable!("AVX-512 on a non-x86 CPU")
}
