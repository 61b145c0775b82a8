//! AVX-512 BW + VNNI: one `vpdpbusd` per 64 codes and activation row; up to eight activation
//! rows share each decoded block (small-batch GEMM).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{block_cols, prefetch_ahead, BLOCK_BYTES};

/// Runs `$call` for the activation rows `$first .. $first + G` in groups of up to eight, with
/// the group size as the constant `G` (the kernels' accumulator arrays are sized by it).
/// Constants are items, which macro hygiene leaves visible to `$call`.
macro_rules! in_row_groups {
    ($n:expr, |$first:ident| $call:expr) => {{
        let mut $first = 0;
        while $first < $n {
            let size = ($n - $first).min(8);
            match size {
                1 => {
                    const G: usize = 1;
                    $call
                }
                2 => {
                    const G: usize = 2;
                    $call
                }
                3 => {
                    const G: usize = 3;
                    $call
                }
                4 => {
                    const G: usize = 4;
                    $call
                }
                5 => {
                    const G: usize = 5;
                    $call
                }
                6 => {
                    const G: usize = 6;
                    $call
                }
                7 => {
                    const G: usize = 7;
                    $call
                }
                _ => {
                    const G: usize = 8;
                    $call
                }
            }
            $first += size;
        }
    }};
}

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
    shape: (usize, usize),
    x: &[i8],
    stride: usize,
    n: usize,
    out: &mut [i32],
) {
    in_row_groups!(n, |first| {
        let xs = &x[first * stride..];
        match bits {
            2 => rows::<2, G>(data, shape, xs, stride, n, first, out),
            4 => rows::<4, G>(data, shape, xs, stride, n, first, out),
            _ => rows::<8, G>(data, shape, xs, stride, n, first, out),
        }
    });
}

/// Code sums of every row against activation rows `first .. first + N`. `vpdpbusd` has a
/// latency of several cycles, so with few activation rows each row gets `CHAINS` independent
/// accumulators (one per field) to keep the unit busy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows<const BITS: u32, const N: usize>(
    data: &[u8],
    (row_bytes, tail): (usize, usize),
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
    let full = (row_bytes - tail) / BLOCK_BYTES;
    let tail_mask: __mmask64 = (1u64 << tail) - 1;
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        let mut acc = [[_mm512_setzero_si512(); 4]; N];
        // Whole blocks, then the short one through masked loads (zeros past its bytes). The two
        // loops repeat one body: with the width and the plain loads constant, the whole-block
        // loop keeps its accumulators in registers (one loop over both ran 8 activation rows of
        // trits 45 % slower).
        for (b, block) in row[..full * BLOCK_BYTES].chunks_exact(BLOCK_BYTES).enumerate() {
            prefetch_ahead(block.as_ptr());
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
        if tail > 0 {
            let packed =
                _mm512_maskz_loadu_epi8(tail_mask, row.as_ptr().add(full * BLOCK_BYTES) as *const i8);
            let base = full * per_block;
            for k in 0..fields {
                let shifted = if k == 0 { packed } else { shift_right::<BITS>(packed, k) };
                let codes = _mm512_and_si512(shifted, mask);
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_maskz_loadu_epi8(tail_mask, x.as_ptr().add(i * stride + base + k * tail));
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

/// Trit sums over the base-3 layout ([`super::Layout::Trits`]), up to eight activation rows
/// sharing each decoded block.
///
/// Decoding is table lookups, not arithmetic: the layout puts the first two trits in the byte's
/// top six bits and the last three in what is left after subtracting their offset, so each trit
/// is one 64-entry `vpermb` lookup (one cycle; the 128-entry `vpermt2b` takes two here). Eight
/// µops decode 320 weights, where decoding with compares and adds took 30.
///
/// # Safety
/// As [`code_dots`], and the CPU must support AVX-512 VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
pub unsafe fn trit_dots(
    data: &[u8],
    shape: (usize, usize),
    x: &[i8],
    stride: usize,
    n: usize,
    out: &mut [i32],
) {
    in_row_groups!(n, |first| trit_rows::<G>(data, shape, &x[first * stride..], stride, n, first, out));
}

/// Trit sums of every row against activation rows `first .. first + N`; as in [`rows`], few
/// activation rows get an accumulator per trit to hide the dot product's latency.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi,avx512vnni")]
unsafe fn trit_rows<const N: usize>(
    data: &[u8],
    (row_bytes, tail): (usize, usize),
    x: &[i8],
    stride: usize,
    n: usize,
    first: usize,
    out: &mut [i32],
) {
    let chains = if N <= 3 { 5 } else { 2 };
    let table = |t: &[u8; 64]| _mm512_loadu_si512(t.as_ptr() as *const _);
    let tables = &super::TRIT_TABLES;
    let offset = table(&tables.offset);
    let trit_tables = tables.trits.map(|t| table(&t));
    let per_block = super::Layout::Trits.block_cols();
    let full = (row_bytes - tail) / BLOCK_BYTES;
    let tail_mask: __mmask64 = (1u64 << tail) - 1;
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        let mut acc = [[_mm512_setzero_si512(); 5]; N];
        // Whole blocks, then the short one through masked loads (a zero byte decodes to five
        // zero trits); two loops with one body, as in `rows`.
        for (b, block) in row[..full * BLOCK_BYTES].chunks_exact(BLOCK_BYTES).enumerate() {
            prefetch_ahead(block.as_ptr());
            let bytes = _mm512_loadu_si512(block.as_ptr() as *const _);
            // `vpermb` reads the low six bits of each index byte: the bits the 16-bit shift
            // brings in from the neighbouring byte are ignored.
            let top = _mm512_srli_epi16::<2>(bytes);
            let rest = _mm512_sub_epi8(bytes, _mm512_permutexvar_epi8(top, offset));
            for (k, t) in trit_tables.iter().enumerate() {
                let trits = _mm512_permutexvar_epi8(if k < 2 { top } else { rest }, *t);
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_si512(
                        x.as_ptr().add(i * stride + b * per_block + k * BLOCK_BYTES) as *const _
                    );
                    a[k % chains] = _mm512_dpbusd_epi32(a[k % chains], trits, xv);
                }
            }
        }
        if tail > 0 {
            let bytes = _mm512_maskz_loadu_epi8(tail_mask, row.as_ptr().add(full * BLOCK_BYTES) as *const i8);
            let top = _mm512_srli_epi16::<2>(bytes);
            let rest = _mm512_sub_epi8(bytes, _mm512_permutexvar_epi8(top, offset));
            for (k, t) in trit_tables.iter().enumerate() {
                let trits = _mm512_permutexvar_epi8(if k < 2 { top } else { rest }, *t);
                for (i, a) in acc.iter_mut().enumerate() {
                    let at = x.as_ptr().add(i * stride + full * per_block + k * tail);
                    a[k % chains] =
                        _mm512_dpbusd_epi32(a[k % chains], trits, _mm512_maskz_loadu_epi8(tail_mask, at));
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            let sum = a[1..chains].iter().fold(a[0], |s, v| _mm512_add_epi32(s, *v));
            out[r * n + first + i] = _mm512_reduce_add_epi32(sum);
        }
    }
}

/// Never called: `Path::available` offers this path on x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn trit_dots(_: &[u8], _: (usize, usize), _: &[i8], _: usize, _: usize, _: &mut [i32]) {
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
pub unsafe fn code_dots(_: &[u8], _: u32, _: (usize, usize), _: &[i8], _: usize, _: usize, _: &mut [i32]) {
    unreachable!("AVX-512 on a non-x86 CPU")
}

/// Wrapping sum of `streams` (equal-length parts, each a multiple of 16 words) with 64-byte
/// loads, four accumulators per stream and the kernels' software prefetch when `prefetch`: the
/// bandwidth probe's way of reading as the kernels do (wide loads, many lines in flight).
///
/// # Safety
/// The CPU must have AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn stream_sum(streams: &[&[u64]], prefetch: bool) -> u64 {
    let mut acc = [_mm512_setzero_si512(); 4];
    let len = streams.first().map_or(0, |s| s.len());
    for b in (0..len).step_by(16) {
        for (k, part) in streams.iter().enumerate() {
            let p = part[b..b + 16].as_ptr();
            if prefetch {
                // both lines, as the kernels prefetch every 64-byte block they read
                prefetch_ahead(p as *const u8);
                prefetch_ahead(p.wrapping_add(8) as *const u8);
            }
            // SAFETY: p .. p + 16 words lies inside `part` (len is a multiple of 16); unaligned
            // loads accept any address.
            let (lo, hi) =
                unsafe { (_mm512_loadu_si512(p as *const _), _mm512_loadu_si512(p.add(8) as *const _)) };
            let a = &mut acc[(2 * k) % 4];
            *a = _mm512_add_epi64(*a, lo);
            let a = &mut acc[(2 * k + 1) % 4];
            *a = _mm512_add_epi64(*a, hi);
        }
    }
    let total = _mm512_add_epi64(_mm512_add_epi64(acc[0], acc[1]), _mm512_add_epi64(acc[2], acc[3]));
    _mm512_reduce_add_epi64(total) as u64
}
