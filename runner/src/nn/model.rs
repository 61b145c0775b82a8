//! The network's host-side state: latent weights, quantizers and their outputs, gradients.
//! Plain `Vec<f32>`s, so checkpoints, export and analysis never touch the training backend.

use qatlab_core::{config::Norm, Activation, QuantCtx, Quantized, Quantizer, Registry, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::Task;
use crate::error::{Error, Result};

/// One fully connected layer without bias: `rows` outputs × `cols` inputs.
pub struct Layer {
    /// Parameter path prefix, `fc1`, `fc2`, ...
    pub name: String,
    /// Bits of this layer's per-sample absmax input quantization (None: off).
    pub activation_bits: Option<u32>,
    /// Weight shape.
    pub shape: Shape,
    /// Latent full-precision weights, row-major (rows = output channels).
    pub weight: Vec<f32>,
    /// The layer's weight quantizer.
    pub quantizer: Box<dyn Quantizer>,
    /// Output of the last quantizer forward pass.
    pub quantized: Quantized,
    /// ∂L/∂ŵ from the last backward pass (on the fake-quantized weights).
    pub grad_values: Vec<f32>,
    /// ∂L/∂w on the latent weights, after the quantizer's straight-through backward.
    pub grad_weight: Vec<f32>,
    /// ∂L/∂θ for the quantizer's learnable parameters.
    pub grad_params: Vec<f32>,
    /// True while quantization is delayed (float weights).
    pub float_phase: bool,
    /// The learned scale a of a residual variant that has one (empty otherwise).
    pub residual_scale: Vec<f32>,
    /// ∂L/∂a from the last backward pass.
    pub grad_residual: Vec<f32>,
    /// The geometry of a convolution (None for a fully connected layer).
    pub conv: Option<ConvGeom>,
    /// Learned layer-norm gain then bias of this layer's input, `2 × cols` (empty without
    /// `model.norm_affine`).
    pub norm_affine: Vec<f32>,
    /// ∂L/∂(gain, bias) from the last backward pass.
    pub grad_norm_affine: Vec<f32>,
    /// An output bias added after the matmul (empty: none). Only post-training bias
    /// correction sets one; training never does.
    pub bias: Vec<f32>,
}

/// Where a 3×3 convolution layer sits: its input map, channels and pooling. Its weights are
/// `channels × (9·in_channels)` (full) or `channels × 9` (depthwise), tap-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input height and width.
    pub side: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub channels: usize,
    /// One filter per channel.
    pub depthwise: bool,
    /// 2×2 max-pool after the activation.
    pub pool: bool,
}

impl Layer {
    /// Whether this layer (index `i` of `count`) gets the network's skip connection: hidden
    /// layers whose input and output widths match.
    pub fn has_residual(&self, i: usize, count: usize) -> bool {
        self.conv.is_none() && i + 1 != count && self.shape.rows == self.shape.cols
    }

    /// Refresh `quantized` from the latent weights.
    pub fn quantize(&mut self, ctx: QuantCtx) -> Result<()> {
        self.quantizer
            .quantize(&self.weight, self.shape, ctx, &mut self.quantized)
            .map_err(|e| Error::Plugin(format!("{}: {e}", self.name)))
    }

    /// Use the latent weights as they are (delayed quantization's float phase).
    pub fn pass_through(&mut self) {
        let q = &mut self.quantized;
        q.values.clone_from(&self.weight);
        q.codes.clear();
        q.levels.clear();
        q.scales = vec![1.0];
    }

    /// Map `grad_values` through the quantizer's backward into `grad_weight` and `grad_params`
    /// (the identity when the last forward pass was a float pass-through).
    pub fn backward_quantizer(&mut self) {
        self.grad_weight.resize(self.weight.len(), 0.0);
        self.grad_params.clear();
        self.grad_params.resize(self.quantizer.params().len(), 0.0);
        if self.float_phase {
            self.grad_weight.copy_from_slice(&self.grad_values);
            return;
        }
        self.quantizer.backward(
            &self.weight,
            self.shape,
            &self.quantized,
            &self.grad_values,
            &mut self.grad_weight,
            &mut self.grad_params,
        );
    }
}

/// What happens between layers: normalisation, activation and skip connections.
pub struct Stage {
    /// Input normalisation of every layer.
    pub norm: Norm,
    /// Skip connections of the square hidden layers.
    pub residual: qatlab_core::config::Residual,
    /// Activation after every hidden layer.
    pub activation: Box<dyn Activation>,
}

/// Running per-feature statistics of a batch-normalised layer input.
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats {
    /// Running mean per feature (starts at 0).
    pub mean: Vec<f32>,
    /// Running unbiased variance per feature (starts at 1).
    pub var: Vec<f32>,
}

impl RunningStats {
    /// Fresh statistics for `features` inputs.
    pub fn new(features: usize) -> Self {
        Self { mean: vec![0.0; features], var: vec![1.0; features] }
    }

    /// Blend in one batch's statistics with PyTorch's momentum.
    pub fn update(&mut self, batch: &BatchStats) {
        let m = BATCH_NORM_MOMENTUM;
        let unbiased = batch.count as f32 / (batch.count.max(2) - 1) as f32;
        for i in 0..self.mean.len() {
            self.mean[i] = (1.0 - m) * self.mean[i] + m * batch.mean[i];
            self.var[i] = (1.0 - m) * self.var[i] + m * batch.var[i] * unbiased;
        }
    }
}

/// Per-feature mean and biased variance of one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStats {
    /// Mean per feature.
    pub mean: Vec<f32>,
    /// Biased variance per feature.
    pub var: Vec<f32>,
    /// Samples in the batch.
    pub count: usize,
}

impl BatchStats {
    /// Statistics of the rows of `x` (row-major `count × features`).
    pub fn of(x: &[f32], features: usize) -> Self {
        let count = x.len() / features;
        let mut mean = vec![0.0f32; features];
        let mut var = vec![0.0f32; features];
        for row in x.chunks_exact(features) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= count.max(1) as f32);
        for row in x.chunks_exact(features) {
            var.iter_mut().zip(row).zip(&mean).for_each(|((s, v), m)| *s += (v - m) * (v - m));
        }
        var.iter_mut().for_each(|s| *s /= count.max(1) as f32);
        Self { mean, var, count }
    }

    /// Normalise the rows of `x` in place with `mean` and `var`.
    pub fn normalise(x: &mut [f32], mean: &[f32], var: &[f32]) {
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + BATCH_NORM_EPS).sqrt()).collect();
        for row in x.chunks_exact_mut(mean.len()) {
            for ((v, m), i) in row.iter_mut().zip(mean).zip(&inv) {
                *v = (*v - m) * i;
            }
        }
    }
}

/// Momentum of batch-norm running statistics (PyTorch's default).
pub const BATCH_NORM_MOMENTUM: f32 = 0.1;
/// ε of batch norm (PyTorch's default).
pub const BATCH_NORM_EPS: f32 = 1e-5;

/// The fully connected network.
pub struct Network {
    /// Layers from input to logits.
    pub layers: Vec<Layer>,
    /// Shared between-layer behaviour.
    pub stage: Stage,
    /// Running statistics of each layer's input (used by batch norm only).
    pub norm_stats: Vec<RunningStats>,
}

impl Network {
    /// Build the network `inputs → [convolutions →] hidden... → classes` with PyTorch's default
    /// `nn.Linear`/`nn.Conv2d` initialisation (U(−1/√fan_in, 1/√fan_in)), seeded.
    pub fn new(registry: &Registry, config: &qatlab_core::config::RunConfig, task: &Task) -> Result<Self> {
        let act = &config.model.activation;
        let activation = registry
            .activations
            .build(&act.name, &act.params)
            .map_err(|e| Error::Config(format!("model.activation: {e}")))?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.train.seed ^ 0x1417_7e11);
        let (side, inputs, classes) = (task.side, task.features(), task.classes);
        let mut geometry: Vec<(Shape, Option<ConvGeom>)> = Vec::new();
        let (mut channels, mut map) = (task.channels, side);
        for c in &config.model.conv {
            let taps = if c.depthwise { 9 } else { 9 * channels };
            let geom = ConvGeom {
                side: map,
                in_channels: channels,
                channels: c.channels,
                depthwise: c.depthwise,
                pool: c.pool,
            };
            geometry.push((Shape::new(c.channels, taps), Some(geom)));
            channels = c.channels;
            map /= if c.pool { 2 } else { 1 };
        }
        let mut widths = vec![if config.model.conv.is_empty() { inputs } else { map * map * channels }];
        widths.extend(&config.model.hidden);
        widths.push(classes);
        geometry.extend(widths.windows(2).map(|pair| (Shape::new(pair[1], pair[0]), None)));
        let mut layers = Vec::new();
        let count = geometry.len();
        let names = config.model.layer_names();
        for (i, (&(shape, conv), name)) in geometry.iter().zip(names).enumerate() {
            let bound = 1.0 / (shape.cols as f32).sqrt();
            let weight = (0..shape.len()).map(|_| rng.gen_range(-bound..bound)).collect();
            let (spec, activation_bits) = config.model.layer(i, count, &config.quantizer);
            let quantizer = registry
                .quantizers
                .build(&spec.name, &spec.params)
                .map_err(|e| Error::Config(format!("quantizer of {name}: {e}")))?;
            layers.push(Layer {
                name,
                activation_bits,
                shape,
                weight,
                quantizer,
                quantized: Quantized::default(),
                grad_values: vec![0.0; shape.len()],
                grad_weight: vec![0.0; shape.len()],
                grad_params: Vec::new(),
                float_phase: false,
                residual_scale: Vec::new(),
                grad_residual: Vec::new(),
                conv,
                norm_affine: if config.model.norm_affine && conv.is_none() {
                    [vec![1.0; shape.cols], vec![0.0; shape.cols]].concat()
                } else {
                    Vec::new()
                },
                grad_norm_affine: Vec::new(),
                bias: Vec::new(),
            });
        }
        let stage = Stage { norm: config.model.norm, residual: config.model.residual, activation };
        let residual = config.model.residual;
        let last = layers.len() - 1;
        for (i, layer) in layers.iter_mut().enumerate() {
            if residual.learned_scale() && i != last && layer.shape.rows == layer.shape.cols {
                layer.residual_scale = vec![1.0];
            }
        }
        let norm_stats = layers.iter().map(|l| RunningStats::new(l.shape.cols)).collect();
        Ok(Self { layers, stage, norm_stats })
    }

    /// Σ weights × bits per weight over all layers.
    pub fn total_weight_bits(&self) -> f64 {
        self.layers.iter().map(|l| l.shape.len() as f64 * l.quantizer.bits_per_weight()).sum()
    }

    /// Number of convolution layers (they come first).
    pub fn conv_count(&self) -> usize {
        self.layers.iter().take_while(|l| l.conv.is_some()).count()
    }

    /// Number of weights.
    pub fn weight_count(&self) -> usize {
        self.layers.iter().map(|l| l.shape.len()).sum()
    }

    /// Quantize every layer's weights for a forward pass.
    pub fn quantize_all(&mut self, training: bool, step: u64, epoch: usize, seed: u64) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            if layer.float_phase {
                layer.pass_through();
                continue;
            }
            let ctx = QuantCtx { training, step, epoch, seed: seed.wrapping_add(i as u64) };
            layer.quantize(ctx)?;
        }
        Ok(())
    }
}

pub use qatlab_deploy::act::{abs_max, quantize_activations, rms_norm_rows, RMS_EPS};

/// Layer normalisation of each row without affine: (x − mean) / sqrt(var + ε).
pub fn layer_norm_rows(x: &mut [f32], features: usize) {
    for row in x.chunks_exact_mut(features) {
        let mean = row.iter().sum::<f32>() / features as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / features as f32;
        let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
        row.iter_mut().for_each(|v| *v = (*v - mean) * inv);
    }
}

/// ε of the layer norm (PyTorch's default).
pub const LAYER_NORM_EPS: f32 = 1e-5;
