//! Example qatlab plugin, built as a dynamic library: a power-of-two weight quantizer and the
//! swish activation. Everything here is safe Rust against `qatlab-core`'s traits; the one macro
//! line at the bottom exports it.

use qatlab_core::{Activation, QuantCtx, Quantized, Quantizer, Registry, Result, Shape};
use serde::{Deserialize, Serialize};

/// Parameters of `pow2`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pow2Config {
    /// Bits per weight: 2^(bits−1) − 1 magnitudes 2^0 … 2^−(m−1) per sign, plus zero.
    pub bits: u32,
}

impl Default for Pow2Config {
    fn default() -> Self {
        Self { bits: 3 }
    }
}

/// Power-of-two quantizer: ŵ = s·nearest({0, ±2^−k : k < m}, w/s), s = max|w| per tensor;
/// identity straight-through gradient (the trait's default `backward`).
pub struct Pow2 {
    levels: Vec<f32>,
    bits: u32,
}

impl Pow2 {
    fn new(config: Pow2Config) -> std::result::Result<Self, String> {
        if !(2..=6).contains(&config.bits) {
            return Err(format!("bits: must be between 2 and 6, got {}", config.bits));
        }
        let m = (1i32 << (config.bits - 1)) - 1;
        let mut levels: Vec<f32> = (0..m).map(|k| (-(k as f32)).exp2()).flat_map(|v| [v, -v]).collect();
        levels.push(0.0);
        levels.sort_by(f32::total_cmp);
        Ok(Self { levels, bits: config.bits })
    }

    fn nearest(&self, x: f32) -> usize {
        let i = self.levels.partition_point(|&l| l < x);
        match i {
            0 => 0,
            n if n == self.levels.len() => n - 1,
            n if x - self.levels[n - 1] <= self.levels[n] - x => n - 1,
            n => n,
        }
    }
}

impl Quantizer for Pow2 {
    fn quantize(&mut self, w: &[f32], shape: Shape, _: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        let s = w.iter().fold(1e-8f32, |m, v| m.max(v.abs()));
        out.levels.clone_from(&self.levels);
        out.scales = vec![s];
        for (i, &v) in w.iter().enumerate() {
            let code = self.nearest(v / s);
            out.codes[i] = code as u8;
            out.values[i] = self.levels[code] * s;
        }
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        self.bits as f64
    }
}

/// `swish` takes no parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// swish(x) = x·σ(x); swish′(x) = σ(x) + x·σ(x)·(1 − σ(x)).
pub struct Swish;

impl Activation for Swish {
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]) {
        for ((x, y), dy) in x.iter().zip(y).zip(dy) {
            let s = 1.0 / (1.0 + (-x).exp());
            *y = x * s;
            *dy = s + x * s * (1.0 - s);
        }
    }
}

/// Registers this library's strategies; called once when the library is loaded.
pub fn register(registry: &mut Registry) -> Result<()> {
    let source = "qatlab-plugin-pow2";
    registry.quantizers.register("pow2", "s·{0, ±2^-k}, s = max|w|", source, |c: Pow2Config| {
        Ok(Box::new(Pow2::new(c)?) as Box<dyn Quantizer>)
    })?;
    registry.activations.register("swish", "x·sigmoid(x)", source, |_: NoParams| {
        Ok(Box::new(Swish) as Box<dyn Activation>)
    })?;
    Ok(())
}

qatlab_core::export_plugin!(register);
