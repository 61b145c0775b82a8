//! Test fixture for the plugin boundary: `panic-after` passes weights through (float) until
//! training step `step`, then panics, so the tests can check that the panic is caught at the
//! boundary, fails that run only, and lets the sweep finish.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Registry, Result, Shape};
use serde::{Deserialize, Serialize};

/// Parameters of `panic-after`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The training step at which to panic.
    pub step: u64,
}

/// Float pass-through that panics at a given training step.
pub struct PanicAfter {
    config: Config,
}

impl Quantizer for PanicAfter {
    fn quantize(&mut self, w: &[f32], shape: Shape, ctx: QuantCtx, out: &mut Quantized) -> Result<()> {
        if ctx.training && ctx.step >= self.config.step {
            panic!("panic-after: deliberate failure at step {}", ctx.step);
        }
        out.prepare(shape, false);
        out.values.copy_from_slice(w);
        out.scales = vec![1.0];
        out.levels.clear();
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        32.0
    }
}

/// Register the fixture.
pub fn register(registry: &mut Registry) -> Result<()> {
    registry.quantizers.register(
        "panic-after",
        "float, panics at training step `step`",
        "qatlab-plugin-faulty",
        |config: Config| Ok(Box::new(PanicAfter { config }) as Box<dyn Quantizer>),
    )?;
    Ok(())
}

qatlab_core::export_plugin!(register);
