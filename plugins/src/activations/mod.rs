//! Built-in activations. Each is a pair of free functions (f, f′) and a registration; the
//! engine applies them elementwise and uses f′ for the backward pass.

use qatlab_core::{Activation, Catalog, Result};
use serde::{Deserialize, Serialize};

use crate::BUILT_IN;

/// An activation from two elementwise functions.
pub struct Elementwise<F, D> {
    f: F,
    df: D,
    relu: bool,
}

impl<F: Fn(f32) -> f32 + Send + Sync, D: Fn(f32) -> f32 + Send + Sync> Activation for Elementwise<F, D> {
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]) {
        for ((x, y), dy) in x.iter().zip(y).zip(dy) {
            *y = (self.f)(*x);
            *dy = (self.df)(*x);
        }
    }

    fn is_relu(&self) -> bool {
        self.relu
    }
}

/// An activation from one function giving (f, f′) together, for those whose two share their
/// expensive part.
pub struct Fused<G> {
    g: G,
}

impl<G: Fn(f32) -> (f32, f32) + Send + Sync> Activation for Fused<G> {
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]) {
        for ((x, y), dy) in x.iter().zip(y).zip(dy) {
            (*y, *dy) = (self.g)(*x);
        }
    }
}

fn boxed<F, D>(f: F, df: D) -> std::result::Result<Box<dyn Activation>, String>
where
    F: Fn(f32) -> f32 + Send + Sync + 'static,
    D: Fn(f32) -> f32 + Send + Sync + 'static,
{
    Ok(Box::new(Elementwise { f, df, relu: false }))
}

/// Activations without parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

/// Parameters of `leaky-relu`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Slope {
    /// Slope for x < 0.
    pub slope: f32,
}

impl Default for Slope {
    fn default() -> Self {
        Self { slope: 0.01 }
    }
}

/// Parameters of the shifted family.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shift {
    /// Shift k.
    pub k: f32,
    /// Divisor d.
    pub d: f32,
}

impl Default for Shift {
    fn default() -> Self {
        Self { k: 3.0, d: 6.0 }
    }
}

/// Parameters of `relu-shift`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Offset {
    /// Shift k.
    pub k: f32,
}

impl Default for Offset {
    fn default() -> Self {
        Self { k: 2.0 }
    }
}

/// Parameters of `relu-topq`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopQ {
    /// Threshold as a share of the sample's maximum.
    pub fraction: f32,
    /// Output gain.
    pub gain: f32,
}

impl Default for TopQ {
    fn default() -> Self {
        Self { fraction: 0.5, gain: 2.0 }
    }
}

/// `relu-topq`: gain·relu(x − fraction·max over the sample), the reference notebook's
/// top-activation variant. The sample maximum is held constant in the derivative, so
/// f′ = gain·[x > fraction·max] (exact for every element but the maximum itself).
pub struct ReluTopQ(TopQ);

impl Activation for ReluTopQ {
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]) {
        let threshold = self.0.fraction * x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        for ((y, dy), &x) in y.iter_mut().zip(dy.iter_mut()).zip(x) {
            *y = self.0.gain * (x - threshold).max(0.0);
            *dy = self.0.gain * step(x - threshold);
        }
    }

    fn apply_rows(&self, x: &[f32], features: usize, y: &mut [f32], dy: &mut [f32]) {
        for ((x, y), dy) in x.chunks(features).zip(y.chunks_mut(features)).zip(dy.chunks_mut(features)) {
            self.apply(x, y, dy);
        }
    }

    fn is_row_wise(&self) -> bool {
        true
    }
}

pub use qatlab_deploy::math::{erf, gelu_with_slope, relu2, sigmoid, silu};

/// Standard normal CDF Φ.
pub fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// Standard normal density φ.
pub fn normal_pdf(x: f32) -> f32 {
    (-0.5 * x * x).exp() / (2.0 * std::f32::consts::PI).sqrt()
}

fn step(x: f32) -> f32 {
    f32::from(x > 0.0)
}

/// Register every built-in activation.
pub fn register(catalog: &mut Catalog<dyn Activation>) -> Result<()> {
    catalog.register("relu", "max(x, 0)", BUILT_IN, |_: NoParams| {
        Ok(Box::new(Elementwise { f: |x: f32| x.max(0.0), df: step, relu: true }) as Box<dyn Activation>)
    })?;
    catalog.register("leaky-relu", "x for x > 0, slope·x otherwise", BUILT_IN, |p: Slope| {
        let s = p.slope;
        boxed(move |x| if x > 0.0 { x } else { s * x }, move |x| if x > 0.0 { 1.0 } else { s })
    })?;
    catalog.register("gelu", "x·Phi(x) (exact, erf-based)", BUILT_IN, |_: NoParams| {
        Ok(Box::new(Fused { g: gelu_with_slope }) as Box<dyn Activation>)
    })?;
    catalog.register("hardswish", "x·relu6(x + 3)/6", BUILT_IN, |_: NoParams| {
        boxed(
            |x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            |x| {
                if x <= -3.0 {
                    0.0
                } else if x >= 3.0 {
                    1.0
                } else {
                    (2.0 * x + 3.0) / 6.0
                }
            },
        )
    })?;
    catalog.register("relu2", "x·relu(x)", BUILT_IN, |_: NoParams| boxed(relu2, |x| 2.0 * x.max(0.0)))?;
    catalog.register("x-relu", "x·relu(x + k)/d", BUILT_IN, |p: Shift| {
        check_divisor(p.d)?;
        let (k, d) = (p.k, p.d);
        boxed(move |x| x * (x + k).max(0.0) / d, move |x| ((x + k).max(0.0) + x * step(x + k)) / d)
    })?;
    catalog.register("x-relu6", "x·relu6(x + k)/d", BUILT_IN, |p: Shift| {
        check_divisor(p.d)?;
        let (k, d) = (p.k, p.d);
        let inside = move |x: f32| f32::from(x + k > 0.0 && x + k < 6.0);
        boxed(
            move |x| x * (x + k).clamp(0.0, 6.0) / d,
            move |x| ((x + k).clamp(0.0, 6.0) + x * inside(x)) / d,
        )
    })?;
    catalog.register("relu-shift", "relu(x + k) - k", BUILT_IN, |p: Offset| {
        let k = p.k;
        boxed(move |x| (x + k).max(0.0) - k, move |x| step(x + k))
    })?;
    catalog.register("relu-topq", "gain·relu(x - fraction·max over the sample)", BUILT_IN, |p: TopQ| {
        if !(p.gain > 0.0) || !p.fraction.is_finite() {
            return Err(format!("gain must be > 0 and fraction finite, got {} and {}", p.gain, p.fraction));
        }
        Ok(Box::new(ReluTopQ(p)) as Box<dyn Activation>)
    })?;
    catalog.register("silu", "x·sigmoid(x) (swish)", BUILT_IN, |_: NoParams| {
        boxed(silu, |x| sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x))))
    })?;
    Ok(())
}

fn check_divisor(d: f32) -> std::result::Result<(), String> {
    if d == 0.0 || !d.is_finite() {
        return Err(format!("d: must be a non-zero number, got {d}"));
    }
    Ok(())
}
