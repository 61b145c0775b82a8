//! `pentary`: five levels {−2, −1, 0, 1, 2}·s/2 with s per output channel, calibrated by the
//! clip strategy or learned (`clip: {method: learned}`, LSQ gradient).
//! u = clamp(round(2w/s), −2, 2), ŵ = u·s/2. 7/3 bits per weight (three weights per 7 bits).

use serde::{Deserialize, Serialize};

use super::grid::{Codebook, GridKind, GridParams, GridQuantizer, WithGrid};
use super::Granularity;
use crate::ste::round_even;

/// One-line definition for listings.
pub const SUMMARY: &str = "{-2,-1,0,1,2}·s/2, s per channel, calibrated or learned (7/3 bits)";

/// `pentary` has only the shared parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl GridKind for Config {
    fn grid_defaults() -> GridParams {
        GridParams { granularity: Granularity::Channel, ..GridParams::default() }
    }
}

/// The pentary level set in clip units.
pub struct Pentary;

const LEVELS: [f32; 5] = [-1.0, -0.5, 0.0, 0.5, 1.0];

impl Codebook for Pentary {
    fn levels(&self) -> &[f32] {
        &LEVELS
    }
    fn code(&self, x: f32) -> usize {
        (round_even(2.0 * x).clamp(-2.0, 2.0) + 2.0) as usize
    }
    fn bits(&self) -> f64 {
        7.0 / 3.0
    }
}

/// Factory for the registry.
pub fn build(c: WithGrid<Config>) -> Result<Box<dyn qatlab_core::Quantizer>, String> {
    Ok(Box::new(GridQuantizer::new(Pentary, c.settings(false, false)?)))
}
