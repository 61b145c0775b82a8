//! Built-in schedules. Each is a pure function of [`Progress`]; used as a learning-rate
//! multiplier they are stepped per epoch, as the reference recipe does.

use qatlab_core::{Catalog, Progress, Result, Schedule};
use serde::{Deserialize, Serialize};

use crate::BUILT_IN;

/// Parameters of `constant`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConstantConfig {
    /// The value.
    pub value: f64,
}

impl Default for ConstantConfig {
    fn default() -> Self {
        Self { value: 1.0 }
    }
}

struct Constant(f64);

impl Schedule for Constant {
    fn value(&self, _: Progress) -> f64 {
        self.0
    }
}

/// Parameters of `cosine`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CosineConfig {
    /// Value at epoch 0.
    pub from: f64,
    /// Value the curve reaches at the end of training (PyTorch's `eta_min` as a multiplier).
    pub to: f64,
}

impl Default for CosineConfig {
    fn default() -> Self {
        Self { from: 1.0, to: 0.0 }
    }
}

/// Cosine annealing per epoch: to + (from − to)·(1 + cos(π·epoch/epochs))/2
/// (PyTorch's `CosineAnnealingLR` with `T_max = epochs`, stepped once per epoch).
pub fn cosine(from: f64, to: f64, epoch: usize, epochs: usize) -> f64 {
    let t = epoch as f64 / epochs.max(1) as f64;
    to + (from - to) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
}

struct Cosine(CosineConfig);

impl Schedule for Cosine {
    fn value(&self, p: Progress) -> f64 {
        cosine(self.0.from, self.0.to, p.epoch, p.epochs)
    }
}

/// Register every built-in schedule.
pub fn register(catalog: &mut Catalog<dyn Schedule>) -> Result<()> {
    catalog.register("constant", "a fixed value", BUILT_IN, |c: ConstantConfig| {
        Ok(Box::new(Constant(c.value)))
    })?;
    catalog.register(
        "cosine",
        "to + (from - to)(1 + cos(pi epoch/epochs))/2, per epoch",
        BUILT_IN,
        |c: CosineConfig| Ok(Box::new(Cosine(c))),
    )?;
    register_more(catalog)
}

/// Parameters of `step`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepConfig {
    /// Epochs between decays.
    pub size: usize,
    /// Factor per decay.
    pub gamma: f64,
}

impl Default for StepConfig {
    fn default() -> Self {
        Self { size: 10, gamma: 0.1 }
    }
}

/// Parameters of `two-step`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwoStepConfig {
    /// Epoch from which the value is halved (the BitNet recipe halves at mid-training).
    pub at: usize,
}

impl Default for TwoStepConfig {
    fn default() -> Self {
        Self { at: 15 }
    }
}

/// Parameters of the `two-stage` schedule (BitNet b1.58's learning rate).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwoStageConfig {
    /// Epochs (steps, with `train.steps`) of linear warm-up.
    pub warmup: usize,
    /// Where the second stage starts, as a fraction of training.
    pub split: f64,
    /// The multiplier of the second stage (BitNet 700M: 1e-3 / 1.5e-3).
    pub second: f64,
    /// The value the linear decay reaches at the end (before `second`).
    pub to: f64,
}

impl Default for TwoStageConfig {
    fn default() -> Self {
        Self { warmup: 0, split: 0.5, second: 2.0 / 3.0, to: 0.0 }
    }
}

/// The `two-stage` value at `epoch` of `epochs`: (e+1)/(warmup+1) during warm-up, then a linear
/// decay from 1 to `to`, multiplied by `second` from `split · epochs` on.
pub fn two_stage(c: &TwoStageConfig, epoch: usize, epochs: usize) -> f64 {
    if epoch < c.warmup {
        return (epoch + 1) as f64 / (c.warmup + 1) as f64;
    }
    let t = (epoch - c.warmup) as f64 / epochs.saturating_sub(c.warmup).max(1) as f64;
    let decayed = 1.0 - (1.0 - c.to) * t.min(1.0);
    let stage = if epoch as f64 >= c.split * epochs as f64 { c.second } else { 1.0 };
    decayed * stage
}

/// Parameters of `warmup-cosine`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarmupConfig {
    /// Epochs of linear warm-up from 1/(warmup+1).
    pub warmup: usize,
    /// Value the cosine reaches at the end.
    pub to: f64,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        Self { warmup: 2, to: 0.0 }
    }
}

/// Parameters of `cosine-restarts`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartsConfig {
    /// Length of the first cycle in epochs.
    pub t0: usize,
    /// Growth factor of each next cycle.
    pub t_mult: usize,
    /// Value at the end of each cycle.
    pub to: f64,
}

impl Default for RestartsConfig {
    fn default() -> Self {
        Self { t0: 10, t_mult: 1, to: 0.0 }
    }
}

/// Parameters of `cyclic`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CyclicConfig {
    /// Epochs per cycle.
    pub period: usize,
    /// Lowest value (at the end of each cycle).
    pub low: f64,
}

impl Default for CyclicConfig {
    fn default() -> Self {
        Self { period: 5, low: 0.1 }
    }
}

/// Position in the current warm-restart cycle: (epoch within the cycle, cycle length).
pub fn restart_position(epoch: usize, t0: usize, t_mult: usize) -> (usize, usize) {
    let (mut start, mut length) = (0, t0.max(1));
    while epoch >= start + length {
        start += length;
        length *= t_mult.max(1);
    }
    (epoch - start, length)
}

struct Curve<F>(F);

impl<F: Fn(Progress) -> f64 + Send + Sync> Schedule for Curve<F> {
    fn value(&self, p: Progress) -> f64 {
        (self.0)(p)
    }
}

fn curve(
    f: impl Fn(Progress) -> f64 + Send + Sync + 'static,
) -> std::result::Result<Box<dyn Schedule>, String> {
    Ok(Box::new(Curve(f)))
}

/// Register the step-wise and cyclic schedules.
pub fn register_more(catalog: &mut Catalog<dyn Schedule>) -> Result<()> {
    catalog.register("step", "gamma^floor(epoch/size)", BUILT_IN, |c: StepConfig| {
        if c.size == 0 {
            return Err("size: must be at least 1".into());
        }
        curve(move |p| c.gamma.powi((p.epoch / c.size) as i32))
    })?;
    catalog.register("two-step", "1 before epoch `at`, 0.5 from it", BUILT_IN, |c: TwoStepConfig| {
        curve(move |p| if p.epoch < c.at { 1.0 } else { 0.5 })
    })?;
    catalog.register(
        "two-stage",
        "BitNet b1.58's: warm-up, then linear decay to `to`, times `second` from `split` of training on",
        BUILT_IN,
        |c: TwoStageConfig| {
            if !(0.0..=1.0).contains(&c.split) {
                return Err(format!("split: a fraction of training in [0, 1], got {}", c.split));
            }
            curve(move |p| two_stage(&c, p.epoch, p.epochs))
        },
    )?;
    catalog.register(
        "warmup-cosine",
        "linear warm-up for `warmup` epochs, then cosine to `to`",
        BUILT_IN,
        |c: WarmupConfig| {
            curve(move |p| {
                if p.epoch < c.warmup {
                    (p.epoch + 1) as f64 / (c.warmup + 1) as f64
                } else {
                    cosine(1.0, c.to, p.epoch - c.warmup, p.epochs.saturating_sub(c.warmup))
                }
            })
        },
    )?;
    catalog.register(
        "cosine-restarts",
        "cosine to `to` over cycles of t0, t0·t_mult, ... epochs (SGDR)",
        BUILT_IN,
        |c: RestartsConfig| {
            if c.t0 == 0 {
                return Err("t0: must be at least 1".into());
            }
            curve(move |p| {
                let (at, length) = restart_position(p.epoch, c.t0, c.t_mult);
                cosine(1.0, c.to, at, length)
            })
        },
    )?;
    catalog.register(
        "cyclic",
        "linear from 1 down to `low` within each `period` epochs (for SWA)",
        BUILT_IN,
        |c: CyclicConfig| {
            if c.period == 0 {
                return Err("period: must be at least 1".into());
            }
            curve(move |p| {
                let at = (p.epoch % c.period) as f64 / (c.period.max(2) - 1) as f64;
                1.0 - (1.0 - c.low) * at
            })
        },
    )?;
    Ok(())
}
