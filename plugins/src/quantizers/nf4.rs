//! `nf4`: the 16 NormalFloat levels of QLoRA (Dettmers et al. 2023): quantiles of N(0, 1) with
//! an exact zero, normalised to [−1, 1]; ŵ = s·nearest level of w/s, s = absmax per channel by
//! default (QLoRA's blockwise absmax, one block per row). 4 bits.

use serde::{Deserialize, Serialize};

use super::grid::{Codebook, GridKind, GridParams, GridQuantizer, WithGrid};
use super::Granularity;
use crate::clip::{ClipConfig, ClipEvery, ClipMethod};

/// One-line definition for listings.
pub const SUMMARY: &str =
    "16 NormalFloat levels (QLoRA quantiles of N(0,1) with exact zero), nearest level of w/s";

/// `nf4` has only the shared parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl GridKind for Config {
    fn grid_defaults() -> GridParams {
        let clip = ClipConfig {
            method: ClipMethod::Absmax,
            every: ClipEvery::Step,
            init: None,
            ..ClipConfig::default()
        };
        GridParams { granularity: Granularity::Channel, clip, ..GridParams::default() }
    }
}

#[allow(clippy::excessive_precision)] // Acklam's published coefficients, kept as printed
/// Inverse of the standard normal CDF (Acklam's rational approximation, relative error
/// below 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// The NF4 levels: 8 positive quantiles at linspace(δ, ½, 9)[..8], 7 negative ones at
/// linspace(δ, ½, 8)[..7], and 0, with δ = ½(32/32 − 1/32 + 30/30 − 1/30)... = 0.9677083,
/// divided by the largest magnitude.
pub fn nf4_levels() -> [f32; 16] {
    let offset = 0.5 * ((1.0 - 1.0 / (2.0 * 15.0)) + (1.0 - 1.0 / (2.0 * 16.0)));
    let linspace = |n: usize| (0..n).map(move |i| offset + (0.5 - offset) * i as f64 / (n - 1) as f64);
    let mut v: Vec<f64> = linspace(9).take(8).map(normal_quantile).collect();
    v.extend(linspace(8).take(7).map(|p| -normal_quantile(p)));
    v.push(0.0);
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    v.sort_by(f64::total_cmp);
    let mut out = [0.0f32; 16];
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x / max) as f32;
    }
    out
}

/// Nearest level of a sorted level set (ties to the lower level).
pub fn nearest(levels: &[f32], x: f32) -> usize {
    let i = levels.partition_point(|&l| l < x);
    if i == 0 {
        0
    } else if i == levels.len() {
        levels.len() - 1
    } else if x - levels[i - 1] <= levels[i] - x {
        i - 1
    } else {
        i
    }
}

/// The NF4 codebook.
pub struct Nf4 {
    levels: [f32; 16],
}

impl Codebook for Nf4 {
    fn levels(&self) -> &[f32] {
        &self.levels
    }
    fn code(&self, x: f32) -> usize {
        nearest(&self.levels, x)
    }
    fn bits(&self) -> f64 {
        4.0
    }
}

/// Factory for the registry.
pub fn build(c: WithGrid<Config>) -> Result<Box<dyn qatlab_core::Quantizer>, String> {
    Ok(Box::new(GridQuantizer::new(Nf4 { levels: nf4_levels() }, c.settings(false, false)?)))
}
