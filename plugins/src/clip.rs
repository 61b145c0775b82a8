//! Clipping (scale) strategies for quantizers with a clip scalar s: how s is fitted to the
//! weights, and when. A level set is given in clip units (ŵ = level · s).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// How the clip scalar is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClipMethod {
    /// MSE-optimal clip by OCTAV's Newton fixed point (Sakr et al. 2022).
    #[default]
    Octav,
    /// s = mean|w| / q.
    Prop,
    /// s = max|w|.
    Absmax,
    /// s = the p-th percentile of |w|.
    Percentile,
    /// Grid search of s over max|w|·k/100 minimising the weight MSE.
    MseGrid,
    /// s is a learnable parameter with the LSQ gradient.
    Learned,
}

/// Names and one-line definitions of the clipping strategies, for listings.
pub const CLIP_METHODS: [(&str, &str); 6] = [
    (
        "octav",
        "s <- sum_{|w|>s}|w| / (kappa #{|w|<=s} + #{|w|>s}), `iterations` steps, kappa from the level set",
    ),
    ("prop", "s = mean|w| / q"),
    ("absmax", "s = max|w|"),
    ("percentile", "s = p-th percentile of |w|"),
    ("mse-grid", "s = argmin over max|w| k/100 of sum (w - q_s(w))^2"),
    ("learned", "s is a parameter with the LSQ gradient"),
];

/// When a fitted clip is refreshed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClipEvery {
    /// Before every training step.
    Step,
    /// At the end of every epoch (the reference's choice).
    #[default]
    Epoch,
}

/// A quantizer's clip settings (`clip:` in its parameters).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClipConfig {
    /// Fitting method.
    pub method: ClipMethod,
    /// When the fit is refreshed.
    pub every: ClipEvery,
    /// Stop refreshing after this epoch (counted from 0); `null`: never freeze.
    pub freeze_after: Option<usize>,
    /// Clip before the first fit; `null` fits it on the first forward pass. The reference
    /// starts from 1.0 and refits at each epoch end.
    pub init: Option<f32>,
    /// OCTAV iterations.
    pub iterations: usize,
    /// `prop`'s divisor q.
    pub q: f32,
    /// `percentile`'s p, in percent.
    pub p: f32,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            method: ClipMethod::Octav,
            every: ClipEvery::Epoch,
            freeze_after: None,
            init: Some(1.0),
            iterations: 10,
            q: 0.25,
            p: 99.9,
        }
    }
}

impl ClipConfig {
    /// Range checks, as `clip.<key>: problem`.
    pub fn validate(&self) -> Result<(), String> {
        if self.init.is_some_and(|s| !(s > 0.0 && s.is_finite())) {
            return Err(format!("clip.init: must be > 0, got {:?}", self.init));
        }
        if !(self.q > 0.0) {
            return Err(format!("clip.q: must be > 0, got {}", self.q));
        }
        if !(self.p > 0.0 && self.p <= 100.0) {
            return Err(format!("clip.p: must lie in (0, 100], got {}", self.p));
        }
        if self.iterations == 0 {
            return Err("clip.iterations: must be at least 1".into());
        }
        Ok(())
    }
}

/// Quantization-noise factor κ of a level set (in clip units): the noise of a uniform grid with
/// as many cells as there are levels, κ = Δ²/12 with Δ = 2/(n−1) for an odd, zero-centred set
/// and Δ = 2/n for an even one. This gives 4^−B/3 for a B-bit grid, 1/12 for ternary and
/// 1/48 for pentary, derived from the levels rather than from a bits label.
pub fn kappa(levels: &[f32]) -> f32 {
    let n = levels.len().max(2) as f32;
    let step = if levels.len() % 2 == 1 { 2.0 / (n - 1.0) } else { 2.0 / n };
    step * step / 12.0
}

/// OCTAV: `iterations` Newton steps of s ← Σ_{|w|>s}|w| / (κ·#{|w|≤s} + #{|w|>s}) from `s0`.
pub fn octav(w: &[f32], kappa: f32, s0: f32, iterations: usize) -> f32 {
    let mut s = s0;
    for _ in 0..iterations {
        let (mut above_sum, mut above, mut below) = (0.0f64, 0usize, 0usize);
        for v in w {
            let a = v.abs();
            if a > s {
                above_sum += a as f64;
                above += 1;
            } else {
                below += 1;
            }
        }
        let denominator = kappa as f64 * below as f64 + above as f64;
        s = if denominator > 0.0 { (above_sum / denominator) as f32 } else { s };
    }
    s.max(MIN_CLIP)
}

/// The p-th percentile (0–100] of |w|.
pub fn percentile(w: &[f32], p: f32) -> f32 {
    let mut a: Vec<f32> = w.iter().map(|v| v.abs()).collect();
    if a.is_empty() {
        return MIN_CLIP;
    }
    let k = (((p / 100.0) * a.len() as f32).ceil() as usize).clamp(1, a.len()) - 1;
    let (_, v, _) = a.select_nth_unstable_by(k, f32::total_cmp);
    v.max(MIN_CLIP)
}

/// Σ (w − s·level(w/s))² for the projection `level`.
fn quantization_mse(w: &[f32], s: f32, level: &dyn Fn(f32) -> f32) -> f64 {
    w.iter().map(|&v| (v - s * level(v / s)) as f64).map(|e| e * e).sum()
}

/// Grid search of s over max|w|·k/100, k = 1..=100, minimising the weight MSE.
pub fn mse_grid(w: &[f32], level: &dyn Fn(f32) -> f32) -> f32 {
    let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(MIN_CLIP);
    (1..=100)
        .map(|k| max * k as f32 / 100.0)
        .map(|s| (quantization_mse(w, s, level), s))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(max, |(_, s)| s)
}

/// Smallest clip value any strategy returns.
pub const MIN_CLIP: f32 = 1e-8;

/// A clip scalar per group (tensor or row) and the rule that refreshes it.
#[derive(Clone, Debug)]
pub struct Clip {
    /// Settings.
    pub config: ClipConfig,
    /// Current clip per group; empty until the first forward pass.
    pub scales: Vec<f32>,
    /// Initialise each group's clip to this factor × mean|w| (LSQ's rule), ahead of `init`.
    pub init_from_mean_abs: Option<f32>,
}

impl Clip {
    /// Clip state for `config`, not yet fitted.
    pub fn new(config: ClipConfig) -> Self {
        Self { config, scales: Vec::new(), init_from_mean_abs: None }
    }

    /// True when s is a learnable parameter.
    pub fn learned(&self) -> bool {
        self.config.method == ClipMethod::Learned
    }

    fn frozen(&self, epoch: usize) -> bool {
        self.config.freeze_after.is_some_and(|n| epoch > n)
    }

    /// One group's fit from its weights and current clip.
    fn fit(&self, w: &[f32], current: Option<f32>, kappa: f32, level: &dyn Fn(f32) -> f32) -> f32 {
        let c = &self.config;
        let mean_abs = crate::ste::abs_mean(w);
        match c.method {
            ClipMethod::Octav | ClipMethod::Learned => {
                octav(w, kappa, current.unwrap_or(0.25 * mean_abs), c.iterations)
            }
            ClipMethod::Prop => (mean_abs / c.q).max(MIN_CLIP),
            ClipMethod::Absmax => w.iter().fold(MIN_CLIP, |m, v| m.max(v.abs())),
            ClipMethod::Percentile => percentile(w, c.p),
            ClipMethod::MseGrid => mse_grid(w, level),
        }
    }

    /// The scales for a forward pass: initialised on first use (from `init`, else fitted), and
    /// refitted before each training step when `every: step` and not frozen.
    pub fn forward(
        &mut self,
        w: &[f32],
        groups: &[Range<usize>],
        kappa: f32,
        level: &dyn Fn(f32) -> f32,
        training: bool,
        epoch: usize,
    ) -> &[f32] {
        if self.scales.len() != groups.len() {
            self.scales = groups
                .iter()
                .map(|g| match (self.init_from_mean_abs, self.config.init) {
                    (Some(f), _) => (f * crate::ste::abs_mean(&w[g.clone()])).max(MIN_CLIP),
                    (None, Some(s)) => s,
                    (None, None) => self.fit(&w[g.clone()], None, kappa, level),
                })
                .collect();
        }
        let refit =
            training && self.config.every == ClipEvery::Step && !self.learned() && !self.frozen(epoch);
        if refit {
            self.refit(w, groups, kappa, level);
        }
        for s in &mut self.scales {
            *s = s.max(MIN_CLIP); // a learned clip stays positive
        }
        &self.scales
    }

    /// End-of-epoch refit (when `every: epoch` and not frozen).
    pub fn end_epoch(
        &mut self,
        w: &[f32],
        groups: &[Range<usize>],
        kappa: f32,
        level: &dyn Fn(f32) -> f32,
        epoch: usize,
    ) {
        if self.config.every == ClipEvery::Epoch
            && !self.learned()
            && !self.frozen(epoch)
            && !self.scales.is_empty()
        {
            self.refit(w, groups, kappa, level);
        }
    }

    fn refit(&mut self, w: &[f32], groups: &[Range<usize>], kappa: f32, level: &dyn Fn(f32) -> f32) {
        for (g, range) in groups.iter().enumerate() {
            let current = Some(self.scales[g]);
            self.scales[g] = self.fit(&w[range.clone()], current, kappa, level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kappa_of_known_level_sets() {
        assert!((kappa(&[-1.0, 1.0]) - 1.0 / 12.0).abs() < 1e-9, "binary: 4^-1/3");
        assert!((kappa(&[-1.0, 0.0, 1.0]) - 1.0 / 12.0).abs() < 1e-9, "ternary");
        assert!((kappa(&[-1.0, -0.5, 0.0, 0.5, 1.0]) - 1.0 / 48.0).abs() < 1e-9, "pentary");
        let eight: Vec<f32> = (-128..128).map(|k| k as f32 / 128.0).collect();
        assert!((kappa(&eight) - 4f32.powi(-8) / 3.0).abs() < 1e-12, "8-bit");
    }

    #[test]
    fn percentile_of_a_ramp() {
        let w: Vec<f32> = (1..=100).map(|v| -(v as f32)).collect();
        assert_eq!(percentile(&w, 90.0), 90.0);
        assert_eq!(percentile(&w, 100.0), 100.0);
    }
}
