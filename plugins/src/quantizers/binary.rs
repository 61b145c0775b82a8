//! `binary`: one bit per weight, ŵ = ±s.
//!
//! `balanced: true` (the reference's Binary): u = sign(w − mean(w)) over the scale group;
//! `balanced: false` (BinarySym): u = sign(w). s from the clip strategy (the reference: OCTAV
//! with κ = 1/12, warm-started from 1.0), or `clip: {method: prop, q: 1}` for s = mean|w|.
//! ∂ŵ/∂w per the STE variant. 1 bit.

use serde::{Deserialize, Serialize};

use super::grid::{Codebook, GridKind, GridQuantizer, WithGrid};

/// One-line definition for listings.
pub const SUMMARY: &str = "sign(w - mean w)·s (balanced) or sign(w)·s, 1 bit";

/// Parameters of `binary`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Subtract the mean before taking the sign.
    pub balanced: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { balanced: true }
    }
}

impl GridKind for Config {}

/// {−1, +1}: x ≥ 0 maps to +1 (torch's sign(0) = 0 would leave a third level).
pub struct Sign;

const LEVELS: [f32; 2] = [-1.0, 1.0];

impl Codebook for Sign {
    fn levels(&self) -> &[f32] {
        &LEVELS
    }
    fn code(&self, x: f32) -> usize {
        usize::from(x >= 0.0)
    }
    fn bits(&self) -> f64 {
        1.0
    }
}

/// Factory for the registry.
pub fn build(c: WithGrid<Config>) -> Result<Box<dyn qatlab_core::Quantizer>, String> {
    Ok(Box::new(GridQuantizer::new(Sign, c.settings(c.own.balanced, false)?)))
}
