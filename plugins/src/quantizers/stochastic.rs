//! `ternary-stochastic`: unbiased stochastic ternary rounding. With w̄ = clamp(w/s, −1, 1):
//! in training u = sign(w̄) with probability |w̄|, else 0, so E[u·s] = w̄·s; the draw depends only
//! on (run seed, layer, step, index). At evaluation u = clamp(round(w/s), −1, 1), deterministic.
//! s defaults to mean|w| per tensor, refreshed every step. 1.6 bits.

use serde::{Deserialize, Serialize};

use super::grid::{Codebook, GridKind, GridParams, GridQuantizer, WithGrid};
use crate::clip::{ClipConfig, ClipEvery, ClipMethod};
use crate::ste::round_even;

/// One-line definition for listings.
pub const SUMMARY: &str =
    "stochastic ternary: P(u = sign w) = |clamp(w/s)|, unbiased; deterministic at eval (1.6 bits)";

/// `ternary-stochastic` has only the shared parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl GridKind for Config {
    fn grid_defaults() -> GridParams {
        let clip = ClipConfig {
            method: ClipMethod::Prop,
            q: 1.0,
            every: ClipEvery::Step,
            init: None,
            ..ClipConfig::default()
        };
        GridParams { clip, ..GridParams::default() }
    }
}

/// Ternary levels with stochastic rounding.
pub struct StochasticTernary;

const LEVELS: [f32; 3] = [-1.0, 0.0, 1.0];

impl Codebook for StochasticTernary {
    fn levels(&self) -> &[f32] {
        &LEVELS
    }
    fn code(&self, x: f32) -> usize {
        (round_even(x).clamp(-1.0, 1.0) + 1.0) as usize
    }
    fn code_stochastic(&self, x: f32, u: f32) -> usize {
        let clipped = x.clamp(-1.0, 1.0);
        if u < clipped.abs() {
            if clipped > 0.0 {
                2
            } else {
                0
            }
        } else {
            1
        }
    }
    fn stochastic(&self) -> bool {
        true
    }
    fn bits(&self) -> f64 {
        1.6
    }
}

/// Factory for the registry.
pub fn build(c: WithGrid<Config>) -> Result<Box<dyn qatlab_core::Quantizer>, String> {
    Ok(Box::new(GridQuantizer::new(StochasticTernary, c.settings(false, false)?)))
}
