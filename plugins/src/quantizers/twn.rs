//! `ternary-twn`: Ternary Weight Networks (Li et al. 2016). Δ = α·mean|W| (per tensor or
//! channel), u = sign(w)·1{|w| > Δ}, scale = mean of |w| over the kept weights, ŵ = u·scale.
//! ∂ŵ/∂w per the STE variant (x = w/scale). 1.6 bits.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Result, Shape};
use serde::{Deserialize, Serialize};

use super::Granularity;
use crate::ste::Ste;

/// One-line definition for listings.
pub const SUMMARY: &str = "TWN: delta = alpha mean|W|, u = sign(w) 1{|w| > delta}, scale = mean|w| over kept";

/// Parameters of `ternary-twn`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Threshold factor α (0.7 is TWN's approximation of the optimum for Gaussian weights).
    pub alpha: f32,
    /// Threshold and scale per tensor or per channel.
    pub granularity: Granularity,
    /// Straight-through variant.
    pub ste: Ste,
    /// SwishSign slope.
    pub ste_beta: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            alpha: 0.7,
            granularity: Granularity::Tensor,
            ste: Ste::Identity,
            ste_beta: crate::ste::default_beta(),
        }
    }
}

/// Factory for the registry.
pub fn build(config: Config) -> Result<Box<dyn Quantizer>, String> {
    if !(config.alpha >= 0.0 && config.alpha.is_finite()) {
        return Err(format!("alpha: must be >= 0, got {}", config.alpha));
    }
    Ok(Box::new(Twn { config }))
}

/// TWN quantizer.
pub struct Twn {
    config: Config,
}

/// TWN's threshold and scale of one group: (Δ, mean of |w| over |w| > Δ).
pub fn twn_threshold(w: &[f32], alpha: f32) -> (f32, f32) {
    let delta = alpha * crate::ste::abs_mean(w);
    let (sum, count) =
        w.iter().filter(|v| v.abs() > delta).fold((0.0f64, 0usize), |(s, c), v| (s + v.abs() as f64, c + 1));
    let scale = if count > 0 { (sum / count as f64) as f32 } else { delta.max(1e-5) };
    (delta, scale)
}

const LEVELS: [f32; 3] = [-1.0, 0.0, 1.0];

impl Quantizer for Twn {
    fn quantize(&mut self, w: &[f32], shape: Shape, _: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        out.levels = LEVELS.to_vec();
        out.scales.clear();
        for range in self.config.granularity.groups(shape.rows, shape.cols) {
            let (delta, scale) = twn_threshold(&w[range.clone()], self.config.alpha);
            for i in range {
                let code = if w[i] > delta {
                    2
                } else if w[i] < -delta {
                    0
                } else {
                    1
                };
                out.codes[i] = code as u8;
                out.values[i] = LEVELS[code] * scale;
            }
            out.scales.push(scale);
        }
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        1.6
    }

    fn backward(
        &self,
        w: &[f32],
        shape: Shape,
        q: &Quantized,
        grad: &[f32],
        grad_w: &mut [f32],
        _: &mut [f32],
    ) {
        self.config.ste.apply(self.config.ste_beta, w, grad, grad_w, &q.scales, shape.cols);
    }
}
