//! `ternary-ttq`: Trained Ternary Quantization (Zhu et al. 2017). Per layer, learned positive
//! and negative scales Wp, Wn > 0 and a threshold Δ = t·max|w|:
//! ŵ = Wp if w > Δ, −Wn if w < −Δ, else 0.
//! ∂L/∂Wp = Σ_{w>Δ} ∂L/∂ŵ, ∂L/∂Wn = −Σ_{w<−Δ} ∂L/∂ŵ; latent gradient scaled as in the paper:
//! Wp·g above Δ, g inside, Wn·g below −Δ. Wp and Wn start at the mean |w| of their side.
//! Reported as levels [−Wn/Wp, 0, 1] with scale Wp. 1.6 bits.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Result, Shape};
use serde::{Deserialize, Serialize};

/// One-line definition for listings.
pub const SUMMARY: &str = "TTQ: learned Wp, Wn per layer, threshold t max|w|";

/// Parameters of `ternary-ttq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Threshold factor t (Δ = t·max|w|).
    pub threshold: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self { threshold: 0.05 }
    }
}

/// Factory for the registry.
pub fn build(config: Config) -> Result<Box<dyn Quantizer>, String> {
    if !(0.0..1.0).contains(&config.threshold) {
        return Err(format!("threshold: must lie in [0, 1), got {}", config.threshold));
    }
    Ok(Box::new(Ttq { config, scales: Vec::new() }))
}

/// TTQ quantizer; `scales` = [Wp, Wn].
pub struct Ttq {
    config: Config,
    scales: Vec<f32>,
}

fn threshold(w: &[f32], t: f32) -> f32 {
    t * w.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

fn code(w: f32, delta: f32) -> u8 {
    if w > delta {
        2
    } else if w < -delta {
        0
    } else {
        1
    }
}

impl Ttq {
    fn fill(&self, codes: &[u8], out_values: &mut [f32], levels: &mut Vec<f32>, scales: &mut Vec<f32>) {
        let (wp, wn) = (self.scales[0].max(1e-8), self.scales[1].max(1e-8));
        *levels = vec![-wn / wp, 0.0, 1.0];
        *scales = vec![wp];
        for (v, &c) in out_values.iter_mut().zip(codes) {
            *v = levels[c as usize] * wp;
        }
    }
}

impl Quantizer for Ttq {
    fn quantize(&mut self, w: &[f32], shape: Shape, _: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        let delta = threshold(w, self.config.threshold);
        for (c, &v) in out.codes.iter_mut().zip(w) {
            *c = code(v, delta);
        }
        if self.scales.len() != 2 {
            let side_mean = |code: u8| {
                let (s, n) = w
                    .iter()
                    .zip(&out.codes)
                    .filter(|(_, &c)| c == code)
                    .fold((0.0f64, 0), |(s, n), (v, _)| (s + v.abs() as f64, n + 1));
                if n > 0 {
                    (s / n as f64) as f32
                } else {
                    delta.max(1e-5)
                }
            };
            self.scales = vec![side_mean(2), side_mean(0)];
        }
        for s in &mut self.scales {
            *s = s.max(1e-8);
        }
        let Quantized { codes, values, levels, scales } = out;
        self.fill(codes, values, levels, scales);
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        1.6
    }

    fn backward(
        &self,
        _: &[f32],
        _: Shape,
        q: &Quantized,
        grad: &[f32],
        grad_w: &mut [f32],
        grad_params: &mut [f32],
    ) {
        let (wp, wn) = (self.scales[0], self.scales[1]);
        for i in 0..grad.len() {
            match q.codes[i] {
                2 => {
                    grad_params[0] += grad[i];
                    grad_w[i] = wp * grad[i];
                }
                0 => {
                    grad_params[1] -= grad[i];
                    grad_w[i] = wn * grad[i];
                }
                _ => grad_w[i] = grad[i],
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

    /// ŵ is linear in (Wp, Wn) for fixed codes: exact.
    fn surrogate(&self, _: &[f32], _: Shape, frozen: &Quantized, out: &mut [f32]) -> Result<()> {
        for (o, &c) in out.iter_mut().zip(&frozen.codes) {
            *o = match c {
                2 => self.scales[0],
                0 => -self.scales[1],
                _ => 0.0,
            };
        }
        Ok(())
    }
}
