//! AVX2: each 64-byte block as two 32-byte halves; `vpmaddubsw` multiplies codes (unsigned) by
//! activations (signed) into 16-bit pairs and `vpmaddwd` widens them to int32. 8-bit codes are
//! split into nibbles first so that a pair of products cannot saturate 16 bits.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::{block_cols, prefetch_ahead, BLOCK_BYTES};

/// See [`super::CodeMatrix::code_dots`]. A row's short last block of `tail` bytes is read in
/// 32-byte halves with `vpmaskmovd` (its length is a multiple of 8 bytes).
///
/// # Safety
/// The CPU must support AVX2; `x` must hold `n` rows of `stride` and `data` `out.len() / n`
/// rows of `row_bytes`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn code_dots(
    data: &[u8],
    bits: u32,
    (row_bytes, tail): (usize, usize),
    x: &[i8],
    stride: usize,
    n: usize,
    out: &mut [i32],
) {
    let fields = 8 / bits as usize;
    let per_block = block_cols(bits);
    let ones = _mm256_set1_epi16(1);
    let (field_mask, nibble) = (((1u16 << bits) - 1) as i8, _mm256_set1_epi8(0x0F));
    let mask = _mm256_set1_epi8(field_mask);
    let shift = _mm_cvtsi32_si128(bits as i32);
    let dot = |codes: __m256i, xv: __m256i| -> __m256i {
        if bits == 8 {
            let low = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_and_si256(codes, nibble), xv), ones);
            let high_codes = _mm256_and_si256(_mm256_srli_epi16(codes, 4), nibble);
            let high = _mm256_madd_epi16(_mm256_maddubs_epi16(high_codes, xv), ones);
            _mm256_add_epi32(low, _mm256_slli_epi32(high, 4))
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xv), ones)
        }
    };
    let full = (row_bytes - tail) / BLOCK_BYTES;
    // the dwords of each half of the short block that hold codes
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let half_masks = [0, 1].map(|h| {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(tail.saturating_sub(32 * h).min(32) as i32 / 4), lanes)
    });
    for (r, row) in data.chunks_exact(row_bytes).enumerate() {
        for i in 0..n {
            let xi = x.as_ptr().add(i * stride);
            let mut acc = _mm256_setzero_si256();
            for (b, block) in row[..full * BLOCK_BYTES].chunks_exact(BLOCK_BYTES).enumerate() {
                prefetch_ahead(block.as_ptr());
                let base = b * per_block;
                for half in 0..2 {
                    let mut packed = _mm256_loadu_si256(block.as_ptr().add(32 * half) as *const _);
                    for k in 0..fields {
                        let codes = _mm256_and_si256(packed, mask);
                        packed = _mm256_srl_epi16(packed, shift);
                        let xv = _mm256_loadu_si256(xi.add(base + k * BLOCK_BYTES + 32 * half) as *const _);
                        acc = _mm256_add_epi32(acc, dot(codes, xv));
                    }
                }
            }
            if tail > 0 {
                let (block, base) = (row.as_ptr().add(full * BLOCK_BYTES), full * per_block);
                for (half, &m) in half_masks.iter().enumerate().take(tail.div_ceil(32)) {
                    let mut packed = _mm256_maskload_epi32(block.add(32 * half) as *const i32, m);
                    for k in 0..fields {
                        let codes = _mm256_and_si256(packed, mask);
                        packed = _mm256_srl_epi16(packed, shift);
                        let xv = _mm256_maskload_epi32(xi.add(base + k * tail + 32 * half) as *const i32, m);
                        acc = _mm256_add_epi32(acc, dot(codes, xv));
                    }
                }
            }
            out[r * n + i] = horizontal_sum(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_sum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Never called: `Path::available` offers this path on x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn code_dots(_: &[u8], _: u32, _: (usize, usize), _: &[i8], _: usize, _: usize, _: &mut [i32]) {
    unreachable!("AVX2 on a non-x86 CPU")
}
