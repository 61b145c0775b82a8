//! The machinery shared by every quantizer with a clip scalar: a [`Codebook`] (level set in clip
//! units and the projection onto it), a [`Clip`] per tensor or row, the straight-through variant,
//! and, when the clip is learned, its LSQ gradient. Each such quantizer is a codebook plus
//! defaults; this file is where their forward value and surrogate gradient sit side by side.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Result, Shape};

use super::Granularity;
use crate::clip::{kappa, Clip, ClipConfig};
use crate::ste::Ste;

/// A level set in clip units (ŵ = level · s) and the rule mapping x = w/s to a level.
pub trait Codebook: Send {
    /// The levels, ascending.
    fn levels(&self) -> &[f32];
    /// Index of the level for x = w/s.
    fn code(&self, x: f32) -> usize;
    /// Storage bits per weight.
    fn bits(&self) -> f64;
    /// Training-time code from a uniform sample `u` ∈ [0, 1) (stochastic rounding); default
    /// deterministic.
    fn code_stochastic(&self, x: f32, _u: f32) -> usize {
        self.code(x)
    }
    /// Whether `code_stochastic` is used in training.
    fn stochastic(&self) -> bool {
        false
    }
}

/// Settings of a grid quantizer common to all codebooks.
#[derive(Clone, Debug)]
pub struct GridSettings {
    /// Scale per tensor or per output row.
    pub granularity: Granularity,
    /// Clip strategy.
    pub clip: ClipConfig,
    /// Straight-through variant for the latent weights.
    pub ste: Ste,
    /// SwishSign slope.
    pub ste_beta: f32,
    /// Subtract the group mean before projecting (balanced binary).
    pub centered: bool,
    /// Gradient scale of a learned clip (LSQ: 1/√(N·Qp)); `None` uses 1.
    pub lsq_grad_scale: bool,
}

/// A quantizer made of a codebook and a clip.
pub struct GridQuantizer<C: Codebook> {
    codebook: C,
    settings: GridSettings,
    clip: Clip,
    /// Per-element coordinate x = (w − centre)/s of the last forward pass.
    x: Vec<f32>,
}

impl<C: Codebook> GridQuantizer<C> {
    /// A quantizer over `codebook` with `settings`.
    pub fn new(codebook: C, settings: GridSettings) -> Self {
        let clip = Clip::new(settings.clip.clone());
        Self { codebook, settings, clip, x: Vec::new() }
    }

    /// Initialise each clip to `factor` × mean|w| of its group (LSQ's rule).
    pub fn init_from_mean_abs(mut self, factor: f32) -> Self {
        self.clip.init_from_mean_abs = Some(factor);
        self
    }

    fn groups(&self, shape: Shape) -> Vec<std::ops::Range<usize>> {
        self.settings.granularity.groups(shape.rows, shape.cols)
    }

    fn level_of(&self) -> impl Fn(f32) -> f32 + '_ {
        move |x| self.codebook.levels()[self.codebook.code(x)]
    }

    fn inside(&self, x: f32) -> bool {
        let l = self.codebook.levels();
        x >= l[0] && x <= l[l.len() - 1]
    }
}

/// Uniform number in [0, 1) from (seed, step, index): counter-based, so a stochastic quantizer
/// is reproducible without carrying RNG state.
pub fn uniform(seed: u64, step: u64, index: usize) -> f32 {
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (index as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

impl<C: Codebook> Quantizer for GridQuantizer<C> {
    fn quantize(&mut self, w: &[f32], shape: Shape, ctx: QuantCtx, out: &mut Quantized) -> Result<()> {
        out.prepare(shape, true);
        let groups = self.groups(shape);
        let k = kappa(self.codebook.levels());
        let level = |x: f32| self.codebook.levels()[self.codebook.code(x)];
        let scales = self.clip.forward(w, &groups, k, &level, ctx.training, ctx.epoch).to_vec();
        out.levels.clear();
        out.levels.extend_from_slice(self.codebook.levels());
        out.scales = scales.clone();
        self.x.resize(w.len(), 0.0);
        let stochastic = ctx.training && self.codebook.stochastic();
        for (range, &s) in groups.into_iter().zip(&scales) {
            let centre = if self.settings.centered {
                w[range.clone()].iter().sum::<f32>() / range.len().max(1) as f32
            } else {
                0.0
            };
            for i in range {
                let x = (w[i] - centre) / s;
                let code = if stochastic {
                    self.codebook.code_stochastic(x, uniform(ctx.seed, ctx.step, i))
                } else {
                    self.codebook.code(x)
                };
                self.x[i] = x;
                out.codes[i] = code as u8;
                out.values[i] = self.codebook.levels()[code] * s;
            }
        }
        Ok(())
    }

    fn bits_per_weight(&self) -> f64 {
        self.codebook.bits()
    }

    fn backward(
        &self,
        w: &[f32],
        shape: Shape,
        q: &Quantized,
        grad: &[f32],
        grad_w: &mut [f32],
        grad_params: &mut [f32],
    ) {
        self.settings.ste.apply(self.settings.ste_beta, w, grad, grad_w, &q.scales, shape.cols);
        if self.clip.learned() {
            let g = self.param_grad_scale(shape);
            for (gi, range) in self.groups(shape).into_iter().enumerate() {
                let sum: f32 = range
                    .map(|i| {
                        let x = self.x[i];
                        let inside = if self.inside(x) { x } else { 0.0 };
                        grad[i] * (q.levels[q.codes[i] as usize] - inside)
                    })
                    .sum();
                grad_params[gi] += g * sum;
            }
        }
    }

    fn params(&self) -> &[f32] {
        if self.clip.learned() {
            &self.clip.scales
        } else {
            &[]
        }
    }

    fn params_mut(&mut self) -> &mut [f32] {
        if self.clip.learned() {
            &mut self.clip.scales
        } else {
            &mut []
        }
    }

    fn state(&self) -> Vec<f32> {
        self.clip.scales.clone()
    }

    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        self.clip.scales = state.to_vec();
        Ok(())
    }

    fn end_epoch(&mut self, w: &[f32], shape: Shape, epoch: usize) -> Result<()> {
        let groups = self.groups(shape);
        let k = kappa(self.codebook.levels());
        let mut clip = std::mem::replace(&mut self.clip, Clip::new(ClipConfig::default()));
        clip.end_epoch(w, &groups, k, &self.level_of(), epoch);
        self.clip = clip;
        Ok(())
    }

    /// ŵ = s·(x + (level − x)) with the residual (level − x) frozen inside the clip range, and
    /// ŵ = s·level outside: the function whose derivative in s is LSQ's gradient.
    fn surrogate(&self, _w: &[f32], shape: Shape, frozen: &Quantized, out: &mut [f32]) -> Result<()> {
        for (gi, range) in self.groups(shape).into_iter().enumerate() {
            let s = self.clip.scales[gi];
            let s0 = frozen.scales[gi];
            for i in range {
                let x0 = self.x[i];
                let level = frozen.levels[frozen.codes[i] as usize];
                // inside: (w − centre) + s·(level − x0), where w − centre = x0·s0
                out[i] = if self.inside(x0) { x0 * s0 + s * (level - x0) } else { s * level };
            }
        }
        Ok(())
    }

    fn param_grad_scale(&self, shape: Shape) -> f32 {
        if !self.settings.lsq_grad_scale {
            return 1.0;
        }
        let n = match self.settings.granularity {
            Granularity::Tensor => shape.len(),
            Granularity::Channel => shape.cols,
        };
        let levels = self.codebook.levels();
        let step = levels[1] - levels[0];
        let qp = (levels[levels.len() - 1] / step).max(1.0);
        1.0 / (n as f32 * qp).sqrt()
    }
}

/// The parameters every grid quantizer shares, parsed from the same mapping as its own.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GridParams {
    /// Scale per tensor or per output channel.
    pub granularity: Granularity,
    /// Clip strategy; keys given here override the quantizer's defaults one by one.
    pub clip: ClipConfig,
    /// Straight-through variant.
    pub ste: Ste,
    /// SwishSign slope (used by `ste: swish-sign`).
    pub ste_beta: f32,
}

impl Default for GridParams {
    fn default() -> Self {
        Self {
            granularity: Granularity::Tensor,
            clip: ClipConfig::default(),
            ste: Ste::Identity,
            ste_beta: crate::ste::default_beta(),
        }
    }
}

const GRID_KEYS: [&str; 4] = ["granularity", "clip", "ste", "ste_beta"];

/// A grid quantizer's own parameters (`C`) plus the shared [`GridParams`].
pub trait GridKind: serde::de::DeserializeOwned + serde::Serialize + Default {
    /// This quantizer's defaults for the shared parameters.
    fn grid_defaults() -> GridParams {
        GridParams::default()
    }
}

/// Parameters of a grid quantizer: the shared part and its own.
#[derive(Clone, Debug)]
pub struct WithGrid<C> {
    /// Shared parameters.
    pub grid: GridParams,
    /// The quantizer's own parameters.
    pub own: C,
}

impl<C: GridKind> Default for WithGrid<C> {
    fn default() -> Self {
        Self { grid: C::grid_defaults(), own: C::default() }
    }
}

impl<C: GridKind> WithGrid<C> {
    /// Settings for [`GridQuantizer::new`], after range checks.
    pub fn settings(
        &self,
        centered: bool,
        lsq_grad_scale: bool,
    ) -> std::result::Result<GridSettings, String> {
        self.grid.clip.validate()?;
        Ok(GridSettings {
            granularity: self.grid.granularity,
            clip: self.grid.clip.clone(),
            ste: self.grid.ste,
            ste_beta: self.grid.ste_beta,
            centered,
            lsq_grad_scale,
        })
    }
}

impl<C: GridKind> serde::Serialize for WithGrid<C> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut map = match serde_yaml::to_value(&self.own).map_err(S::Error::custom)? {
            serde_yaml::Value::Mapping(m) => m,
            _ => serde_yaml::Mapping::new(),
        };
        if let serde_yaml::Value::Mapping(grid) =
            serde_yaml::to_value(&self.grid).map_err(S::Error::custom)?
        {
            map.extend(grid);
        }
        map.serialize(s)
    }
}

impl<'de, C: GridKind> serde::Deserialize<'de> for WithGrid<C> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        use serde_yaml::Value;
        let mut own = serde_yaml::Mapping::deserialize(d)?;
        let mut grid = match serde_yaml::to_value(C::grid_defaults()).map_err(D::Error::custom)? {
            Value::Mapping(m) => m,
            _ => serde_yaml::Mapping::new(),
        };
        for key in GRID_KEYS {
            let Some(value) = own.remove(key) else { continue };
            match (grid.get_mut(key), value) {
                (Some(Value::Mapping(default)), Value::Mapping(given)) => default.extend(given),
                (_, value) => {
                    grid.insert(key.into(), value);
                }
            }
        }
        let grid: GridParams = serde_yaml::from_value(Value::Mapping(grid)).map_err(D::Error::custom)?;
        let own: C = serde_yaml::from_value(Value::Mapping(own))
            .map_err(|e| D::Error::custom(format!("{e} (shared keys: {})", GRID_KEYS.join(", "))))?;
        Ok(Self { grid, own })
    }
}
