//! Shared rounding helpers used by several quantizers.

/// Round half to even, as PyTorch's `round` does, so ties match the reference implementation.
///
/// Adding and subtracting 1.5·2²³ rounds with the FPU's default round-to-nearest-even mode;
/// it is exact for |x| < 2²² and, unlike `f32::round_ties_even`, never becomes a libm call
/// on a baseline x86-64 target (where it cost a tenth of a training step).
#[inline]
pub fn round_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

/// Mean of |w| over `w`, floored at `1e-5` (the reference's clamp) so a zero tensor stays finite.
pub fn abs_mean(w: &[f32]) -> f32 {
    if w.is_empty() {
        return 1e-5;
    }
    // Eight f32 partial sums: vectorises, and keeps the rounding error of 10⁵ terms small.
    let mut lanes = [0.0f32; 8];
    let chunks = w.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v.abs()).sum();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v.abs();
        }
    }
    ((lanes.iter().sum::<f32>() + tail) / w.len() as f32).max(1e-5)
}
