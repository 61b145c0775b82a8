//! One query's attention over one head of the key/value cache: scores against every cached key,
//! softmax, and the softmax-weighted sum of the cached values.
//!
//! Generating a token reads each head's cache once, so this is a stream from memory like the
//! products (a tenth of a large model's bytes per token at half its context) with little
//! arithmetic per byte. The AVX-512 path scores eight positions at once (eight independent
//! multiply–add chains, where one eight-lane sum per position waited on its own additions),
//! keeps the weighted sum of up to 128 values in registers across all positions (where an
//! update per position went through memory), converts f16 values as it loads them (no
//! conversion pass), and prefetches the stream ahead. The portable path computes the same sums
//! in another order: the two agree to rounding, not bit for bit.

#![allow(unsafe_code)]

use crate::act::dot;
use crate::kernel::Path;
use crate::kv::Rows;
use crate::math::softmax_row;

/// `out = Σₚ softmax(scale · q·kₚ)ₚ · vₚ` over the positions of `keys` and `values` (each
/// `positions × q.len()`).
pub(crate) fn head(q: &[f32], keys: Rows, values: Rows, scale: f32, out: &mut [f32], path: Path) {
    let d = q.len();
    assert!(
        d > 0 && out.len() == d && keys.len() == values.len() && keys.len().is_multiple_of(d),
        "head shapes"
    );
    let mut scores = vec![0.0f32; keys.len() / d];
    #[cfg(target_arch = "x86_64")]
    if path == Path::Avx512Vnni && d.is_multiple_of(16) {
        // SAFETY: the AVX-512 VNNI path is offered only on CPUs with AVX-512 F (`Path::available`);
        // the shapes were checked above.
        unsafe { avx512::head(q, keys, values, scale, &mut scores, out) };
        return;
    }
    let _ = path;
    portable(q, keys, values, scale, &mut scores, out);
}

/// The same on any CPU: f16 rows converted a position at a time, sums in [`dot`]'s lanes.
fn portable(q: &[f32], keys: Rows, values: Rows, scale: f32, scores: &mut [f32], out: &mut [f32]) {
    let d = q.len();
    let mut buffer = vec![0.0f32; d];
    for (p, s) in scores.iter_mut().enumerate() {
        *s = dot(q, keys.position(p, &mut buffer)) * scale;
    }
    softmax_row(scores);
    out.fill(0.0);
    for (p, &w) in scores.iter().enumerate() {
        out.iter_mut().zip(values.position(p, &mut buffer)).for_each(|(o, v)| *o += w * v);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::kv::Rows;
    use crate::math::softmax_row;

    /// Bytes ahead of each load that the next lines are prefetched into L1.
    const AHEAD: usize = 2048;

    /// See [`super::head`].
    ///
    /// # Safety
    /// The CPU must have AVX-512 F; `q.len()` must be a positive multiple of 16, `keys` and
    /// `values` `scores.len() × q.len()` values, `out` `q.len()`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn head(
        q: &[f32],
        keys: Rows,
        values: Rows,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        match keys {
            Rows::F32(k) => scores_of::<false>(q, k.as_ptr().cast(), scale, scores),
            Rows::F16(k) => scores_of::<true>(q, k.as_ptr().cast(), scale, scores),
        }
        softmax_row(scores);
        match values {
            Rows::F32(v) => weighted_sum::<false>(scores, v.as_ptr().cast(), out),
            Rows::F16(v) => weighted_sum::<true>(scores, v.as_ptr().cast(), out),
        }
    }

    /// Sixteen values from element `index` of `base` as f32 (`HALF`: stored as f16).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load16<const HALF: bool>(base: *const u8, index: usize) -> __m512 {
        if HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(base.add(2 * index).cast()))
        } else {
            _mm512_loadu_ps(base.add(4 * index).cast())
        }
    }

    /// Prefetch into L1 the line [`AHEAD`] bytes past element `index` of `base`.
    #[inline(always)]
    fn prefetch<const HALF: bool>(base: *const u8, index: usize) {
        let at = base.wrapping_add(if HALF { 2 } else { 4 } * index + AHEAD);
        // SAFETY: a prefetch never faults, whatever the address; SSE is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(at.cast()) };
    }

    /// `scores[p] = scale · q·kₚ`, eight positions at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_of<const HALF: bool>(q: &[f32], keys: *const u8, scale: f32, scores: &mut [f32]) {
        const GROUP: usize = 8;
        let d = q.len();
        let groups = scores.len() / GROUP;
        for g in 0..groups {
            let mut acc = [_mm512_setzero_ps(); GROUP];
            for c in (0..d).step_by(16) {
                let qv = _mm512_loadu_ps(q.as_ptr().add(c));
                for (j, a) in acc.iter_mut().enumerate() {
                    let at = (g * GROUP + j) * d + c;
                    prefetch::<HALF>(keys, at);
                    *a = _mm512_fmadd_ps(load16::<HALF>(keys, at), qv, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                scores[g * GROUP + j] = _mm512_reduce_add_ps(*a) * scale;
            }
        }
        for p in groups * GROUP..scores.len() {
            let mut acc = _mm512_setzero_ps();
            for c in (0..d).step_by(16) {
                acc =
                    _mm512_fmadd_ps(load16::<HALF>(keys, p * d + c), _mm512_loadu_ps(q.as_ptr().add(c)), acc);
            }
            scores[p] = _mm512_reduce_add_ps(acc) * scale;
        }
    }

    /// `out = Σₚ weights[p] · vₚ`, in blocks of up to 128 values held in registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn weighted_sum<const HALF: bool>(weights: &[f32], values: *const u8, out: &mut [f32]) {
        let d = out.len();
        let mut start = 0;
        while start < d {
            let block = (d - start).min(128);
            match block / 16 {
                8 => block_sum::<HALF, 8>(weights, values, d, start, out),
                7 => block_sum::<HALF, 7>(weights, values, d, start, out),
                6 => block_sum::<HALF, 6>(weights, values, d, start, out),
                5 => block_sum::<HALF, 5>(weights, values, d, start, out),
                4 => block_sum::<HALF, 4>(weights, values, d, start, out),
                3 => block_sum::<HALF, 3>(weights, values, d, start, out),
                2 => block_sum::<HALF, 2>(weights, values, d, start, out),
                _ => block_sum::<HALF, 1>(weights, values, d, start, out),
            }
            start += block;
        }
    }

    /// `out[start .. start + 16·R]` of [`weighted_sum`].
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block_sum<const HALF: bool, const R: usize>(
        weights: &[f32],
        values: *const u8,
        d: usize,
        start: usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        for (p, &w) in weights.iter().enumerate() {
            let wv = _mm512_set1_ps(w);
            for (r, a) in acc.iter_mut().enumerate() {
                let at = p * d + start + 16 * r;
                prefetch::<HALF>(values, at);
                *a = _mm512_fmadd_ps(wv, load16::<HALF>(values, at), *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(out.as_mut_ptr().add(start + 16 * r), *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// The definition in f64.
    fn reference(q: &[f32], keys: &[f32], values: &[f32], scale: f32) -> Vec<f64> {
        let d = q.len();
        let scores: Vec<f64> = keys
            .chunks_exact(d)
            .map(|k| k.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        (0..d)
            .map(|i| weights.iter().enumerate().map(|(p, w)| w / total * values[p * d + i] as f64).sum())
            .collect()
    }

    #[test]
    fn every_path_and_precision_gives_the_definition() {
        let mut state = 7u64;
        let mut value = || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
        };
        // head widths on and off the 16-value blocks, one register block and more; position
        // counts below, at and past the eight scored at once
        for d in [8, 16, 24, 48, 128, 144, 256] {
            for positions in [1, 7, 8, 9, 23, 40] {
                let q: Vec<f32> = (0..d).map(|_| value()).collect();
                let keys: Vec<f32> = (0..positions * d).map(|_| value()).collect();
                let values: Vec<f32> = (0..positions * d).map(|_| value()).collect();
                let scale = 1.0 / (d as f32).sqrt();
                let exact = reference(&q, &keys, &values, scale);
                let (keys16, values16) = (
                    keys.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
                    values.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
                );
                let rounded = reference(
                    &q,
                    &keys16.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                    &values16.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
                    scale,
                );
                for path in Path::available() {
                    for (k, v, want) in [
                        (Rows::F32(&keys), Rows::F32(&values), &exact),
                        (Rows::F16(&keys16), Rows::F16(&values16), &rounded),
                    ] {
                        let mut out = vec![f32::NAN; d];
                        head(&q, k, v, scale, &mut out, path);
                        for (i, (got, want)) in out.iter().zip(want.iter()).enumerate() {
                            assert!(
                                (*got as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                                "{path:?} d {d} positions {positions} value {i}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
