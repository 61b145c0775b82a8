//! `int`: k-bit uniform weights on a clip s (the reference's 2bitsym, 4bitsym, 5bitsym, 8bit).
//!
//! With m = 2^(k−1) and x = w/s:
//! - `symmetric: true` (zero-free half-step grid): u = clamp(round(m·x − ½), −m, m−1) + ½,
//!   ŵ = u·s/m, e.g. 2 bits: {±0.5, ±1.5}·s/2;
//! - `symmetric: false` (grid with zero): u = clamp(round(m·x), −m, m−1), ŵ = u·s/m.
//!
//! ∂ŵ/∂w per the STE variant; a learned clip gets the LSQ gradient (see `grid.rs`). k bits.

use serde::{Deserialize, Serialize};

use super::grid::{Codebook, GridKind, GridQuantizer, WithGrid};
use crate::ste::round_even;

/// One-line definition for listings.
pub const SUMMARY: &str =
    "k-bit uniform on clip s: symmetric half-step grid (2bitsym, 4bitsym) or with zero (8bit)";

/// Parameters of `int`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Bits per weight, 2 to 8.
    pub bits: u32,
    /// Zero-free half-step grid (true) or the grid with zero (false).
    pub symmetric: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { bits: 4, symmetric: true }
    }
}

impl GridKind for Config {}

/// The k-bit grid in clip units.
pub struct IntGrid {
    half: f32,
    symmetric: bool,
    levels: Vec<f32>,
    bits: u32,
}

impl IntGrid {
    /// The grid for `bits` and `symmetric`.
    pub fn new(bits: u32, symmetric: bool) -> Self {
        let m = 1i32 << (bits - 1);
        let offset = if symmetric { 0.5 } else { 0.0 };
        let levels = (-m..m).map(|k| (k as f32 + offset) / m as f32).collect();
        Self { half: m as f32, symmetric, levels, bits }
    }
}

impl Codebook for IntGrid {
    fn levels(&self) -> &[f32] {
        &self.levels
    }

    fn code(&self, x: f32) -> usize {
        let m = self.half;
        let k = if self.symmetric { round_even(m * x - 0.5) } else { round_even(m * x) };
        (k.clamp(-m, m - 1.0) + m) as usize
    }

    fn bits(&self) -> f64 {
        self.bits as f64
    }
}

/// Check the bit width.
pub fn check_bits(bits: u32) -> Result<(), String> {
    if (2..=8).contains(&bits) {
        Ok(())
    } else {
        Err(format!("bits: must be between 2 and 8, got {bits}"))
    }
}

/// Factory for the registry.
pub fn build(c: WithGrid<Config>) -> Result<Box<dyn qatlab_core::Quantizer>, String> {
    check_bits(c.own.bits)?;
    Ok(Box::new(GridQuantizer::new(IntGrid::new(c.own.bits, c.own.symmetric), c.settings(false, false)?)))
}
