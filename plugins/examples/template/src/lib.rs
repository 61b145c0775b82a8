//! The smallest qatlab plugin: one quantizer. Copy this crate, rename it, edit `quantize`.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Registry, Result, Shape};
use serde::{Deserialize, Serialize};

/// The quantizer's parameters (YAML keys); unknown keys are rejected.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Magnitude of the two levels, as a fraction of mean|w|.
    pub gain: f32,
}

impl Default for Config {
    fn default() -> Self {
        Self { gain: 1.0 }
    }
}

/// ŵ = ±gain·mean|w|: binary weights with an absmean scale. The straight-through gradient is
/// the trait's default (identity).
pub struct MySign {
    config: Config,
}

impl Quantizer for MySign {
    fn quantize(&mut self, w: &[f32], shape: Shape, _ctx: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        let mean_abs = w.iter().map(|v| v.abs()).sum::<f32>() / w.len().max(1) as f32;
        let scale = self.config.gain * mean_abs.max(1e-8);
        out.levels = vec![-1.0, 1.0];
        out.scales = vec![scale];
        for (i, &v) in w.iter().enumerate() {
            let code = usize::from(v >= 0.0);
            out.codes[i] = code as u8;
            out.values[i] = out.levels[code] * scale;
        }
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        1.0
    }
}

/// Register this library's strategies (called once when `qat` loads the library).
pub fn register(registry: &mut Registry) -> Result<()> {
    registry.quantizers.register(
        "my-sign",
        "±gain·mean|w|",
        "qatlab-plugin-template",
        |config: Config| {
            if config.gain <= 0.0 {
                return Err(format!("gain: must be > 0, got {}", config.gain));
            }
            Ok(Box::new(MySign { config }) as Box<dyn Quantizer>)
        },
    )?;
    Ok(())
}

qatlab_core::export_plugin!(register);
