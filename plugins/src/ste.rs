//! Shared rounding helpers used by several quantizers.

/// Round half to even, as PyTorch's `round` does, so ties match the reference implementation.
#[inline]
pub fn round_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Mean of |w| over `w`, floored at `1e-5` (the reference's clamp) so a zero tensor stays finite.
pub fn abs_mean(w: &[f32]) -> f32 {
    if w.is_empty() {
        return 1e-5;
    }
    let sum: f64 = w.iter().map(|v| v.abs() as f64).sum();
    ((sum / w.len() as f64) as f32).max(1e-5)
}
