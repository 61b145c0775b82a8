//! Two quantizers whose hardness changes over training.
//!
//! `soft` (soft-to-hard): the staircase of an absmean grid as a sum of sigmoids,
//! q(w) = γ·(l_0 + Σ_k (l_(k+1) − l_k)·σ((w/γ − m_k)/T)) with m_k the midpoints between levels,
//! whose temperature T falls from `t_start` to `t_end` following a schedule plugin over
//! `anneal_epochs` (T = t_end + (t_start − t_end)·schedule). As T → 0 it becomes hard
//! rounding; evaluation and export always round hard. ∂q/∂w is the soft function's own
//! derivative, Σ_k Δ_k·σ′(·)/T (γ held constant), so no straight-through estimate is needed.
//!
//! `ternary-ramp` (stochastic quantization, Dong et al. 2017): in training only a share r of
//! the output channels is quantized (absmean ternary), the others stay float; channels are
//! drawn without replacement with probability proportional to 1/(relative quantization error),
//! from (seed, layer, step). r follows `ratios` stage by stage, `epochs_per_stage` epochs each,
//! and is 1 from the last stage on and at evaluation. ∂q/∂w = 1.

use qatlab_core::config::PluginSpec;
use qatlab_core::{Progress, QuantCtx, Quantized, Quantizer, Result, Schedule, Shape};
use serde::{Deserialize, Serialize};

use super::grid::uniform;
use super::ternary::{ternary_level, LEVELS};
use crate::ste::abs_mean;

/// One-line definition of `soft`.
pub const SOFT_SUMMARY: &str =
    "soft-to-hard: sum of sigmoids over an absmean grid, temperature annealed to hard rounding";

/// Parameters of `soft`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftConfig {
    /// Level count: 3 (ternary) or 2^bits for a symmetric grid (`bits` 2 to 4).
    pub bits: Option<u32>,
    /// Temperature at the start (in units of γ).
    pub t_start: f32,
    /// Temperature at the end of the annealing.
    pub t_end: f32,
    /// Epochs over which the temperature falls.
    pub anneal_epochs: usize,
    /// The shape of the fall: a schedule plugin going from 1 to 0 (built-in schedules).
    pub schedule: PluginSpec,
}

impl Default for SoftConfig {
    fn default() -> Self {
        Self {
            bits: None,
            t_start: 0.3,
            t_end: 0.01,
            anneal_epochs: 30,
            schedule: PluginSpec::named("cosine"),
        }
    }
}

/// Build `soft`.
pub fn build_soft(config: SoftConfig) -> std::result::Result<Box<dyn Quantizer>, String> {
    if !(config.t_start >= config.t_end && config.t_end > 0.0) {
        return Err(format!("need t_start >= t_end > 0, got {} and {}", config.t_start, config.t_end));
    }
    if config.anneal_epochs == 0 {
        return Err("anneal_epochs: must be at least 1".into());
    }
    let levels: Vec<f32> = match config.bits {
        None => LEVELS.to_vec(),
        Some(bits @ 2..=4) => {
            let m = 1i32 << (bits - 1);
            (-m..m).map(|k| (k as f32 + 0.5) / m as f32).collect()
        }
        Some(other) => return Err(format!("bits: 2 to 4 (or leave it out for ternary), got {other}")),
    };
    let registry = crate::builtin_registry();
    let schedule = registry
        .schedules
        .build(&config.schedule.name, &config.schedule.params)
        .map_err(|e| format!("schedule: {e}"))?;
    let temperature = config.t_start;
    Ok(Box::new(Soft { config, levels, schedule, temperature }))
}

/// The soft-to-hard quantizer.
pub struct Soft {
    config: SoftConfig,
    levels: Vec<f32>,
    schedule: Box<dyn Schedule>,
    /// Temperature of the last training call.
    temperature: f32,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Soft {
    fn temperature_at(&self, epoch: usize) -> f32 {
        let epochs = self.config.anneal_epochs;
        let p = Progress { epoch: epoch.min(epochs), step: 0, epochs, steps: 1 };
        let fall = if epoch >= epochs { 0.0 } else { self.schedule.value(p).clamp(0.0, 1.0) as f32 };
        self.config.t_end + (self.config.t_start - self.config.t_end) * fall
    }

    /// Hard code of x = w/γ: the nearest level.
    fn code(&self, x: f32) -> usize {
        let above = self.levels.windows(2).filter(|pair| x > 0.5 * (pair[0] + pair[1])).count();
        above.min(self.levels.len() - 1)
    }
}

impl Quantizer for Soft {
    fn quantize(&mut self, w: &[f32], shape: Shape, ctx: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        out.levels.clone_from(&self.levels);
        let gamma = abs_mean(w);
        out.scales = vec![gamma];
        if ctx.training {
            self.temperature = self.temperature_at(ctx.epoch);
        }
        let t = self.temperature;
        for ((&w, code), value) in w.iter().zip(out.codes.iter_mut()).zip(out.values.iter_mut()) {
            let x = w / gamma;
            let c = self.code(x);
            *code = c as u8;
            *value = if ctx.training {
                let steps =
                    self.levels.windows(2).map(|p| (p[1] - p[0]) * sigmoid((x - 0.5 * (p[0] + p[1])) / t));
                gamma * (self.levels[0] + steps.sum::<f32>())
            } else {
                gamma * self.levels[c]
            };
        }
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        if self.levels.len() == 3 {
            1.6
        } else {
            (self.levels.len() as f64).log2()
        }
    }

    fn backward(
        &self,
        w: &[f32],
        _: Shape,
        q: &Quantized,
        grad_values: &[f32],
        grad_w: &mut [f32],
        _: &mut [f32],
    ) {
        let (gamma, t) = (q.scales[0], self.temperature);
        for ((&w, &g), out) in w.iter().zip(grad_values).zip(grad_w.iter_mut()) {
            let x = w / gamma;
            let slope: f32 = self
                .levels
                .windows(2)
                .map(|p| {
                    let s = sigmoid((x - 0.5 * (p[0] + p[1])) / t);
                    (p[1] - p[0]) * s * (1.0 - s) / t
                })
                .sum();
            *out = g * slope;
        }
    }
}

/// One-line definition of `ternary-ramp`.
pub const RAMP_SUMMARY: &str =
    "stochastic quantization: a rising share of channels (drawn by 1/error) is ternary, the rest float";

/// Parameters of `ternary-ramp`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RampConfig {
    /// Share of channels quantized in each stage (the paper's 50 %, 75 %, 87.5 %, 100 %).
    pub ratios: Vec<f32>,
    /// Epochs per stage.
    pub epochs_per_stage: usize,
}

impl Default for RampConfig {
    fn default() -> Self {
        Self { ratios: vec![0.5, 0.75, 0.875, 1.0], epochs_per_stage: 5 }
    }
}

/// Build `ternary-ramp`.
pub fn build_ramp(config: RampConfig) -> std::result::Result<Box<dyn Quantizer>, String> {
    if config.ratios.is_empty() || !config.ratios.iter().all(|r| *r > 0.0 && *r <= 1.0) {
        return Err(format!("ratios: shares in (0, 1], got {:?}", config.ratios));
    }
    if config.epochs_per_stage == 0 {
        return Err("epochs_per_stage: must be at least 1".into());
    }
    Ok(Box::new(Ramp { config }))
}

/// The stochastic-quantization ramp.
pub struct Ramp {
    config: RampConfig,
}

impl Ramp {
    /// Share of channels quantized in `epoch` (1 after the last stage).
    pub fn ratio(&self, epoch: usize) -> f32 {
        let stage = epoch / self.config.epochs_per_stage;
        self.config.ratios.get(stage).copied().unwrap_or(1.0)
    }
}

impl Quantizer for Ramp {
    fn quantize(&mut self, w: &[f32], shape: Shape, ctx: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        out.levels = LEVELS.to_vec();
        let gamma = abs_mean(w);
        out.scales = vec![gamma];
        let inv = 1.0 / gamma;
        for ((&w, code), value) in w.iter().zip(out.codes.iter_mut()).zip(out.values.iter_mut()) {
            let u = ternary_level(w, inv);
            *code = (u + 1.0) as u8;
            *value = u * gamma;
        }
        let ratio = if ctx.training { self.ratio(ctx.epoch) } else { 1.0 };
        let keep_float = shape.rows - ((ratio * shape.rows as f32).round() as usize).min(shape.rows);
        if keep_float == 0 {
            return Ok(());
        }
        // Relative error per channel; channels with small error are likelier to be quantized.
        let mut weight_of_row: Vec<f64> = (0..shape.rows)
            .map(|r| {
                let range = r * shape.cols..(r + 1) * shape.cols;
                let err: f32 =
                    w[range.clone()].iter().zip(&out.values[range.clone()]).map(|(a, b)| (a - b).abs()).sum();
                let norm: f32 = w[range].iter().map(|v| v.abs()).sum();
                1.0 / (err / norm.max(1e-12)).max(1e-6) as f64
            })
            .collect();
        let quantized = shape.rows - keep_float;
        let mut chosen = vec![false; shape.rows];
        for draw in 0..quantized {
            let total: f64 = weight_of_row.iter().sum();
            let mut pick = uniform(ctx.seed ^ 0x7261_6d70, ctx.step, draw) as f64 * total;
            let r = weight_of_row.iter().position(|&p| {
                pick -= p;
                pick <= 0.0
            });
            let r = r.unwrap_or_else(|| weight_of_row.iter().rposition(|&p| p > 0.0).unwrap_or(0));
            chosen[r] = true;
            weight_of_row[r] = 0.0;
        }
        for (r, _) in chosen.iter().enumerate().filter(|(_, c)| !**c) {
            let range = r * shape.cols..(r + 1) * shape.cols;
            out.values[range.clone()].copy_from_slice(&w[range]);
        }
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        1.6
    }
}
