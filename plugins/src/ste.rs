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

use serde::{Deserialize, Serialize};

/// Straight-through gradient variants: the factor by which ∂L/∂ŵ is multiplied to give ∂L/∂w,
/// as a function of x = w/s (s the quantizer's clip or scale). Shared by every quantizer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ste {
    /// 1 everywhere (BinaryConnect's straight-through estimator).
    #[default]
    Identity,
    /// 1 where |x| ≤ 1, else 0 (hard-tanh STE).
    Clipped,
    /// 2 − 2|x| on |x| ≤ 1, else 0 (Bi-Real Net's ApproxSign).
    ApproxSign,
    /// Derivative of SwishSign with slope β (BNN+): β(2 − βx·tanh(βx/2)) / (1 + cosh(βx)).
    SwishSign,
    /// 1 inside the clip range, 1/|x| outside (magnitude-aware: s/|w|).
    MagnitudeAware,
}

/// Names and one-line definitions of the STE variants, for listings.
pub const STE_VARIANTS: [(&str, &str); 5] = [
    ("identity", "1 everywhere"),
    ("clipped", "1 where |w/s| <= 1, else 0"),
    ("approx-sign", "2 - 2|x| on |x| <= 1, else 0 (Bi-Real Net)"),
    ("swish-sign", "d/dx SwishSign_beta(x), parameter ste_beta (BNN+)"),
    ("magnitude-aware", "1 inside the clip range, s/|w| outside"),
];

impl Ste {
    /// Gradient factor at x = w/s; `beta` is SwishSign's slope.
    #[inline]
    pub fn factor(self, x: f32, beta: f32) -> f32 {
        match self {
            Ste::Identity => 1.0,
            Ste::Clipped => f32::from(x.abs() <= 1.0),
            Ste::ApproxSign => (2.0 - 2.0 * x.abs()).max(0.0),
            Ste::SwishSign => {
                let bx = beta * x;
                beta * (2.0 - bx * (bx / 2.0).tanh()) / (1.0 + bx.cosh())
            }
            Ste::MagnitudeAware => {
                if x.abs() <= 1.0 {
                    1.0
                } else {
                    1.0 / x.abs()
                }
            }
        }
    }

    /// `grad_w[i] = grad[i] · factor(w[i]/s)` with s the scale of weight i: `scales` holds one
    /// scale for the tensor or one per row of `cols` weights.
    pub fn apply(self, beta: f32, w: &[f32], grad: &[f32], grad_w: &mut [f32], scales: &[f32], cols: usize) {
        if self == Ste::Identity {
            grad_w.copy_from_slice(grad);
            return;
        }
        let per_row = scales.len() > 1;
        for i in 0..w.len() {
            let s = if per_row { scales[i / cols.max(1)] } else { scales[0] };
            grad_w[i] = grad[i] * self.factor(w[i] / s, beta);
        }
    }
}

/// Default SwishSign slope.
pub fn default_beta() -> f32 {
    5.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_at_known_points() {
        assert_eq!(Ste::Identity.factor(3.0, 5.0), 1.0);
        assert_eq!(Ste::Clipped.factor(0.9, 5.0), 1.0);
        assert_eq!(Ste::Clipped.factor(1.1, 5.0), 0.0);
        assert_eq!(Ste::ApproxSign.factor(0.25, 5.0), 1.5);
        assert_eq!(Ste::ApproxSign.factor(-1.5, 5.0), 0.0);
        assert_eq!(Ste::MagnitudeAware.factor(4.0, 5.0), 0.25);
        // SwishSign'(0) = 2β/2 = β
        assert!((Ste::SwishSign.factor(0.0, 5.0) - 5.0).abs() < 1e-6);
    }

    #[test]
    fn swish_sign_factor_is_the_derivative_of_swish_sign() {
        let sign = |x: f32, b: f32| {
            let s = 1.0 / (1.0 + (-b * x).exp());
            2.0 * s * (1.0 + b * x * (1.0 - s)) - 1.0
        };
        for x in [-0.7f32, -0.2, 0.1, 0.4, 1.3] {
            let fd = (sign(x + 1e-3, 3.0) - sign(x - 1e-3, 3.0)) / 2e-3;
            assert!((fd - Ste::SwishSign.factor(x, 3.0)).abs() < 1e-2, "{x}: {fd}");
        }
    }
}
