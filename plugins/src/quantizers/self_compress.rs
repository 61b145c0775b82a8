//! `self-compress`: Self-Compressing Neural Networks (Cséfalvay & Imber 2023). Per output
//! channel a learnable bit depth b ≥ 0 and exponent e:
//! ŵ = 2^e·round(clamp(w·2^−e, −2^(B−1), 2^(B−1) − 1)) with B = round(b) (capped at 8); a
//! channel with B = 0 is pruned (all zero).
//! Gradients (rounding passed straight through, bounds differentiated at the real b):
//! ∂ŵ/∂w = 1 inside the bounds, 0 outside; ∂ŵ/∂e = ln2·(ŵ − w) inside, ln2·ŵ outside;
//! ∂ŵ/∂b = ±ln2·2^e·2^(b−1) on the clipped weights. The size term γ·mean_c(b_c) (average bits
//! per weight of the layer) is added to the loss. Bits per weight = mean_c B_c.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Result, Shape};
use serde::{Deserialize, Serialize};

use crate::ste::round_even;

/// One-line definition for listings.
pub const SUMMARY: &str =
    "learnable bit depth b and exponent e per channel, size penalty gamma·mean(b); b = 0 prunes";

/// Parameters of `self-compress`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Initial bit depth of every channel.
    pub init_bits: f32,
    /// Weight γ of the size term in the loss.
    pub gamma: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self { init_bits: 4.0, gamma: 0.01 }
    }
}

/// Largest bit depth (codes are bytes).
pub const MAX_BITS: f32 = 8.0;

/// Factory for the registry.
pub fn build(config: Config) -> Result<Box<dyn Quantizer>, String> {
    if !(0.0..=MAX_BITS).contains(&config.init_bits) {
        return Err(format!("init_bits: must lie in [0, 8], got {}", config.init_bits));
    }
    if !(config.gamma >= 0.0) {
        return Err(format!("gamma: must be >= 0, got {}", config.gamma));
    }
    Ok(Box::new(SelfCompress { config, params: Vec::new(), last_bits: Vec::new() }))
}

/// Self-compressing quantizer; `params` = [b_0..b_r, e_0..e_r].
pub struct SelfCompress {
    config: Config,
    params: Vec<f32>,
    /// Bit depths of the last forward pass (the surrogate's frozen point).
    last_bits: Vec<f32>,
}

/// Integer clamp bounds (−2^(B−1), 2^(B−1) − 1) for B = round(b); B = 0 gives (−½, −½), so
/// every weight rounds to zero: the channel is pruned.
fn bounds(b: f32) -> (f32, f32) {
    let half = (round_even(b.clamp(0.0, MAX_BITS)) - 1.0).exp2();
    (-half, half - 1.0)
}

fn is_pruned(b: f32) -> bool {
    round_even(b.clamp(0.0, MAX_BITS)) == 0.0
}

impl SelfCompress {
    fn split(&self, rows: usize) -> (&[f32], &[f32]) {
        self.params.split_at(rows)
    }
}

impl Quantizer for SelfCompress {
    fn quantize(&mut self, w: &[f32], shape: Shape, _: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        if self.params.len() != 2 * shape.rows {
            let b = self.config.init_bits;
            let top = ((b - 1.0).exp2() - 1.0).max(1.0);
            let exps = w
                .chunks(shape.cols)
                .map(|row| (row.iter().fold(1e-8f32, |m, v| m.max(v.abs())) / top).log2());
            self.params = std::iter::repeat_n(b, shape.rows).chain(exps).collect();
        }
        for b in &mut self.params[..shape.rows] {
            *b = b.clamp(0.0, MAX_BITS);
        }
        let (bits, exps) = self.split(shape.rows);
        // the level set is the integer grid of the widest channel, so codes fit the declared bits
        let widest = bits.iter().map(|&b| round_even(b.clamp(0.0, MAX_BITS))).fold(0.0f32, f32::max);
        let half = if widest == 0.0 { 0 } else { 1i32 << (widest as i32 - 1) };
        out.levels = if half == 0 { vec![0.0] } else { (-half..half).map(|k| k as f32).collect() };
        out.scales = exps.iter().map(|e| e.exp2()).collect();
        for r in 0..shape.rows {
            let (lo, hi) = bounds(bits[r]);
            let scale = out.scales[r];
            for i in r * shape.cols..(r + 1) * shape.cols {
                let u = round_even((w[i] / scale).clamp(lo, hi)) + 0.0; // + 0.0 turns −0 into 0
                out.codes[i] = (u + half as f32) as u8;
                out.values[i] = u * scale;
            }
        }
        self.last_bits = bits.to_vec();
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        let rows = self.params.len() / 2;
        if rows == 0 {
            return self.config.init_bits as f64;
        }
        self.params[..rows].iter().map(|&b| round_even(b.clamp(0.0, MAX_BITS)) as f64).sum::<f64>()
            / rows as f64
    }

    fn backward(
        &self,
        w: &[f32],
        shape: Shape,
        q: &Quantized,
        grad: &[f32],
        grad_w: &mut [f32],
        grad_params: &mut [f32],
    ) {
        let (bits, _) = self.split(shape.rows);
        let ln2 = std::f32::consts::LN_2;
        for r in 0..shape.rows {
            let (lo, hi) = bounds(bits[r]);
            let scale = q.scales[r];
            let bound_slope = ln2 * scale * (bits[r] - 1.0).exp2();
            for i in r * shape.cols..(r + 1) * shape.cols {
                let x = w[i] / scale;
                let inside = x >= lo && x <= hi;
                grad_w[i] = if inside { grad[i] } else { 0.0 };
                let d_exp = if inside { q.values[i] - w[i] } else { q.values[i] };
                grad_params[shape.rows + r] += grad[i] * ln2 * d_exp;
                if x > hi {
                    grad_params[r] += grad[i] * bound_slope;
                } else if x < lo {
                    grad_params[r] -= grad[i] * bound_slope;
                }
            }
        }
    }

    fn params(&self) -> &[f32] {
        &self.params
    }

    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }

    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        self.params = state.to_vec();
        Ok(())
    }

    fn regularizer(&self, shape: Shape, grad_params: &mut [f32]) -> f32 {
        let rows = shape.rows;
        let (bits, _) = self.split(rows);
        for (g, &b) in grad_params[..rows].iter_mut().zip(bits) {
            if b > 0.0 {
                *g += self.config.gamma / rows as f32;
            }
        }
        self.config.gamma * bits.iter().map(|b| b.max(0.0)).sum::<f32>() / rows as f32
    }

    fn pruned_channels(&self, shape: Shape) -> usize {
        self.split(shape.rows).0.iter().filter(|&&b| is_pruned(b)).count()
    }

    /// Rounding residuals frozen at the last forward pass (b₀, e₀): inside the bounds
    /// ŵ = w + 2^e·(u₀ − x₀); clipped, ŵ = 2^e·(bound(b) + u₀ − bound(b₀)) with the bound
    /// 2^(b−1) − 1 (above) or −2^(b−1) (below) taken at the real b.
    fn surrogate(&self, w: &[f32], shape: Shape, frozen: &Quantized, out: &mut [f32]) -> Result<()> {
        let (bits, exps) = self.split(shape.rows);
        for r in 0..shape.rows {
            let (scale, s0) = (exps[r].exp2(), frozen.scales[r]);
            let (b, b0) = (bits[r], self.last_bits[r]);
            let (lo0, hi0) = bounds(b0);
            let (half, half0) = ((b - 1.0).exp2(), (b0 - 1.0).exp2());
            for i in r * shape.cols..(r + 1) * shape.cols {
                let x0 = w[i] / s0;
                let u0 = frozen.levels[frozen.codes[i] as usize];
                out[i] = if x0 > hi0 {
                    scale * (half - half0 + u0)
                } else if x0 < lo0 {
                    scale * (-half + half0 + u0)
                } else {
                    w[i] + scale * (u0 - x0)
                };
            }
        }
        Ok(())
    }
}
