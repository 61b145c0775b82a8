//! `lsq`: Learned Step size Quantization (Esser et al. 2020) on the signed k-bit grid.
//! With step Δ per output channel and Qn = 2^(k−1), Qp = 2^(k−1) − 1:
//! ŵ = clamp(round(w/Δ), −Qn, Qp)·Δ; ∂ŵ/∂w per the STE variant (default clipped: 1 inside the
//! range); ∂ŵ/∂Δ = round(w/Δ) − w/Δ inside, −Qn or Qp outside, scaled by g = 1/√(N·Qp);
//! Δ is initialised to 2·mean|w|/√Qp and kept positive. Internally the clip s = Qn·Δ.

use serde::{Deserialize, Serialize};

use super::grid::{GridKind, GridParams, GridQuantizer, WithGrid};
use super::int::{check_bits, IntGrid};
use super::Granularity;
use crate::clip::{ClipConfig, ClipMethod};
use crate::ste::Ste;

/// One-line definition for listings.
pub const SUMMARY: &str = "learned step size per channel, grad scale 1/sqrt(N Qp), init 2 mean|w|/sqrt(Qp)";

/// Parameters of `lsq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bits per weight, 2 to 8.
    pub bits: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self { bits: 4 }
    }
}

impl GridKind for Config {
    fn grid_defaults() -> GridParams {
        let clip = ClipConfig { method: ClipMethod::Learned, init: None, ..ClipConfig::default() };
        GridParams { granularity: Granularity::Channel, clip, ste: Ste::Clipped, ..GridParams::default() }
    }
}

/// Factory for the registry.
pub fn build(c: WithGrid<Config>) -> Result<Box<dyn qatlab_core::Quantizer>, String> {
    check_bits(c.own.bits)?;
    if c.grid.clip.method != ClipMethod::Learned {
        return Err("clip.method: lsq learns its step; use `int` for a fitted clip".into());
    }
    let qn = (1u32 << (c.own.bits - 1)) as f32;
    let qp = qn - 1.0;
    let quantizer = GridQuantizer::new(IntGrid::new(c.own.bits, false), c.settings(false, true)?)
        .init_from_mean_abs(qn * 2.0 / qp.sqrt());
    Ok(Box::new(quantizer))
}
