//! `fp130`: sign × power of two (the reference's FP1.3.0: 1 sign bit, 3 exponent bits).
//! e = clamp(floor(log2(128·|w|/s)), 0, 7), ŵ = sign(w)·2^e·s/128, so |ŵ| ∈ {s/128, …, s} and
//! there is no zero. 16 levels, 4 bits.

use serde::{Deserialize, Serialize};

use super::grid::{Codebook, GridKind, GridQuantizer, WithGrid};

/// One-line definition for listings.
pub const SUMMARY: &str = "sign(w)·2^e·s/128, e = clamp(floor(log2(128|w|/s)), 0, 7) (4 bits)";

/// `fp130` has only the shared parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl GridKind for Config {}

/// The 16 FP1.3.0 levels in clip units, ascending.
pub struct Fp130 {
    levels: [f32; 16],
}

impl Default for Fp130 {
    fn default() -> Self {
        let mut levels = [0.0; 16];
        for e in 0..8 {
            let magnitude = (1u32 << e) as f32 / 128.0;
            levels[7 - e] = -magnitude;
            levels[8 + e] = magnitude;
        }
        Self { levels }
    }
}

impl Codebook for Fp130 {
    fn levels(&self) -> &[f32] {
        &self.levels
    }
    fn code(&self, x: f32) -> usize {
        let e = (128.0 * x.abs()).log2().floor().clamp(0.0, 7.0) as usize;
        if x < 0.0 {
            7 - e
        } else {
            8 + e
        }
    }
    fn bits(&self) -> f64 {
        4.0
    }
}

/// Factory for the registry.
pub fn build(c: WithGrid<Config>) -> Result<Box<dyn qatlab_core::Quantizer>, String> {
    Ok(Box::new(GridQuantizer::new(Fp130::default(), c.settings(false, false)?)))
}
