//! `none`: no quantization; ŵ = w, gradient identity, 32 bits per weight.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Result, Shape};
use serde::{Deserialize, Serialize};

/// One-line definition for listings.
pub const SUMMARY: &str = "float weights, ŵ = w (32 bits)";

/// `none` takes no parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The float pass-through.
pub struct Float;

/// Factory for the registry.
pub fn build(_: Config) -> Result<Box<dyn Quantizer>, String> {
    Ok(Box::new(Float))
}

impl Quantizer for Float {
    fn quantize(&mut self, w: &[f32], shape: Shape, _: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, false);
        out.values.copy_from_slice(w);
        out.scales.clear();
        out.scales.push(1.0);
        out.levels.clear();
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        32.0
    }
}
