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
    Ok(())
}
