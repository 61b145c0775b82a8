//! `ternary`: absmean ternary weights (BitNet b1.58, Ma et al. 2024).
//!
//! q(w) = u·γ with γ = mean|W| (per tensor or per row, floored at 1e-5) and
//! u = clamp(round(w/γ), −1, 1) ∈ {−1, 0, 1}. ∂q/∂w = 1 (identity straight-through estimator).
//! 1.6 bits per weight (five trits per byte).
//!
//! `learn_scale: true` keeps the codes u but replaces the magnitude γ by a learnable scale s per
//! output channel, initialised to the channel's absmean on the first call: q = u·s,
//! ∂L/∂s_r = Σ_j ∂L/∂q_rj · u_rj (exact, since u does not depend on s).

use qatlab_core::{QuantCtx, Quantized, Quantizer, Result, Shape};
use serde::{Deserialize, Serialize};

use super::Granularity;
use crate::ste::{abs_mean, round_even, Ste};

/// One-line definition for listings.
pub const SUMMARY: &str = "absmean ternary, u = clamp(round(w/mean|w|), -1, 1) (1.6 bits)";

/// Parameters of `ternary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Scale per tensor (the reference) or per output channel.
    pub granularity: Granularity,
    /// Learn a per-channel output scale instead of using the absmean γ as magnitude.
    pub learn_scale: bool,
    /// Straight-through variant (x = w/γ).
    pub ste: Ste,
    /// SwishSign slope.
    pub ste_beta: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            granularity: Granularity::Tensor,
            learn_scale: false,
            ste: Ste::Identity,
            ste_beta: crate::ste::default_beta(),
        }
    }
}

/// The ternary level set u.
pub const LEVELS: [f32; 3] = [-1.0, 0.0, 1.0];

/// Factory for the registry.
pub fn build(config: Config) -> Result<Box<dyn Quantizer>, String> {
    Ok(Box::new(Ternary { config, scales: Vec::new() }))
}

/// Absmean ternary quantizer.
pub struct Ternary {
    config: Config,
    /// Learned per-channel scales (empty unless `learn_scale`).
    scales: Vec<f32>,
}

/// Ternary level of `w` given 1/γ (the reference multiplies by the reciprocal): u ∈ {−1, 0, 1}.
#[inline]
pub fn ternary_level(w: f32, inv_gamma: f32) -> f32 {
    round_even(w * inv_gamma).clamp(-1.0, 1.0)
}

impl Quantizer for Ternary {
    fn quantize(&mut self, w: &[f32], shape: Shape, _: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        out.levels.clear();
        out.levels.extend_from_slice(&LEVELS);
        let granularity =
            if self.config.learn_scale { Granularity::Channel } else { self.config.granularity };
        let groups = granularity.groups(shape.rows, shape.cols);
        if self.config.learn_scale && self.scales.len() != groups.len() {
            self.scales = groups.iter().map(|g| abs_mean(&w[g.clone()])).collect();
        }
        out.scales.clear();
        for (g, range) in groups.into_iter().enumerate() {
            let gamma = abs_mean(&w[range.clone()]);
            let inv_gamma = 1.0 / gamma;
            let magnitude = if self.config.learn_scale { self.scales[g] } else { gamma };
            let (codes, values) = (&mut out.codes[range.clone()], &mut out.values[range.clone()]);
            for ((&w, code), value) in w[range].iter().zip(codes).zip(values) {
                let u = ternary_level(w, inv_gamma);
                *code = (u + 1.0) as u8;
                *value = u * magnitude;
            }
            out.scales.push(magnitude);
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
        grad_values: &[f32],
        grad_w: &mut [f32],
        grad_params: &mut [f32],
    ) {
        // the STE's x is w/γ; with a learned magnitude γ is no longer in `q`, so recompute it
        let granularity =
            if self.config.learn_scale { Granularity::Channel } else { self.config.granularity };
        let gammas: Vec<f32> =
            granularity.groups(shape.rows, shape.cols).into_iter().map(|g| abs_mean(&w[g])).collect();
        self.config.ste.apply(self.config.ste_beta, w, grad_values, grad_w, &gammas, shape.cols);
        if self.config.learn_scale {
            for (r, gs) in grad_params.iter_mut().enumerate().take(shape.rows) {
                let row = r * shape.cols..(r + 1) * shape.cols;
                *gs += row.map(|i| grad_values[i] * LEVELS[q.codes[i] as usize]).sum::<f32>();
            }
        }
    }

    fn params(&self) -> &[f32] {
        &self.scales
    }

    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.scales
    }

    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        self.scales = state.to_vec();
        Ok(())
    }

    /// With a learned scale, ŵ = u·s_r is linear in s for fixed codes: exact.
    fn surrogate(&self, _: &[f32], shape: Shape, frozen: &Quantized, out: &mut [f32]) -> Result<()> {
        for (i, o) in out.iter_mut().enumerate() {
            *o = LEVELS[frozen.codes[i] as usize] * self.scales[i / shape.cols];
        }
        Ok(())
    }
}
