//! The network: a graph of ops ([`Network`]), the quantized weight tensors some of them own
//! ([`Layer`]), and batch-norm statistics. Plain `Vec<f32>`s, so checkpoints, export and analysis
//! never touch the training backend.

use qatlab_core::{QuantCtx, Quantized, Quantizer, Registry, Shape};

use crate::data::Task;
use crate::error::{Error, Result};
use crate::nn::op::Op;

/// A quantized weight tensor (of a linear or convolution op) with its quantizer: `rows`
/// outputs × `cols` inputs.
pub struct Layer {
    /// The owning op's path, `fc1`, `conv2`, ...
    pub name: String,
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
    /// An output bias added after the matmul (empty: none). Only post-training bias
    /// correction sets one; training never does.
    pub bias: Vec<f32>,
}

impl Layer {
    /// A layer of `shape` with latent weights `weight` and its quantizer.
    pub fn new(name: String, shape: Shape, weight: Vec<f32>, quantizer: Box<dyn Quantizer>) -> Self {
        Self {
            name,
            shape,
            weight,
            quantizer,
            quantized: Quantized::default(),
            grad_values: vec![0.0; shape.len()],
            grad_weight: vec![0.0; shape.len()],
            grad_params: Vec::new(),
            float_phase: false,
            bias: Vec::new(),
        }
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

/// One node of a model graph: an op, its path, and the nodes it reads.
pub struct Node {
    /// The node's path, the prefix of its parameters' paths (`fc1`, `fc2.norm`).
    pub name: String,
    /// The nodes it reads, by index ([`INPUT_NODE`] is the network input).
    pub inputs: Vec<usize>,
    /// What it computes.
    pub op: Box<dyn Op>,
}

/// The index by which a node reads the network input.
pub const INPUT_NODE: usize = usize::MAX;

/// A model: a graph of ops in evaluation order, built by a preset ([`super::presets`]).
pub struct Network {
    /// The nodes; each reads only earlier ones.
    pub nodes: Vec<Node>,
    /// The node whose output are the logits.
    pub output: usize,
    /// The node whose output are the penultimate features distillers compare (None: none).
    pub features: Option<usize>,
    /// Whether every op computes on host values with its own backward pass (see
    /// [`super::op`]); false runs the ops after the first linear one on dfdx's tape.
    pub host: bool,
}

impl Network {
    /// Build the network `config.model` describes for `task`, seeded.
    pub fn new(registry: &Registry, config: &qatlab_core::config::RunConfig, task: &Task) -> Result<Self> {
        super::presets::build(registry, config, task)
    }

    /// The quantized weight layers in graph order.
    pub fn layers(&self) -> impl Iterator<Item = &Layer> + '_ {
        self.nodes.iter().filter_map(|n| n.op.layer())
    }

    /// The same, mutable.
    pub fn layers_mut(&mut self) -> impl Iterator<Item = &mut Layer> + '_ {
        self.nodes.iter_mut().filter_map(|n| n.op.layer_mut())
    }

    /// Number of quantized weight layers.
    pub fn layer_count(&self) -> usize {
        self.layers().count()
    }

    /// The batch norms' running statistics in graph order.
    pub fn running_stats(&self) -> Vec<(&str, &RunningStats)> {
        self.nodes.iter().filter_map(|n| Some((n.name.as_str(), n.op.running_stats()?))).collect()
    }

    /// The same, mutable.
    pub fn running_stats_mut(&mut self) -> Vec<(&str, &mut RunningStats)> {
        self.nodes.iter_mut().filter_map(|n| Some((n.name.as_str(), n.op.running_stats_mut()?))).collect()
    }

    /// A copy of the batch norms' running statistics, for [`Network::set_running_stats`].
    pub fn running_stats_copy(&self) -> Vec<RunningStats> {
        self.running_stats().into_iter().map(|(_, s)| s.clone()).collect()
    }

    /// Put back statistics from [`Network::running_stats_copy`] (or new ones, in that order).
    pub fn set_running_stats(&mut self, stats: Vec<RunningStats>) {
        for ((_, running), s) in self.running_stats_mut().into_iter().zip(stats) {
            *running = s;
        }
    }

    /// Σ weights × bits per weight over all layers, plus 32 bits for every value of a weight
    /// tensor that no quantizer holds (a transformer's learned positions).
    pub fn total_weight_bits(&self) -> f64 {
        let quantized: f64 =
            self.layers().map(|l| l.shape.len() as f64 * l.quantizer.bits_per_weight()).sum();
        let float: usize = self
            .nodes
            .iter()
            .filter(|n| n.op.layer().is_none())
            .flat_map(|n| n.op.params())
            .filter(|p| p.kind == super::params::ParamKind::Weight)
            .map(|p| p.values.len())
            .sum();
        quantized + 32.0 * float as f64
    }

    /// Number of weights.
    pub fn weight_count(&self) -> usize {
        self.layers().map(|l| l.shape.len()).sum()
    }

    /// Quantize every layer's weights for a forward pass.
    pub fn quantize_all(&mut self, training: bool, step: u64, epoch: usize, seed: u64) -> Result<()> {
        for (i, layer) in self.layers_mut().enumerate() {
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

pub use qatlab_deploy::act::{
    abs_max, layer_norm_row, quantize_activations, quantize_activations_in_place, rms_norm_row,
    rms_norm_rows, Sums, LAYER_NORM_EPS, RMS_EPS,
};

/// Layer normalisation of each row without affine: (x − mean) / sqrt(var + ε).
pub fn layer_norm_rows(x: &mut [f32], features: usize) {
    x.chunks_exact_mut(features).for_each(|row| {
        layer_norm_row(row, Sums::InOrder);
    });
}
