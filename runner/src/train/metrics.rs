//! What a run reports: per-epoch metrics, per-layer level statistics, and the observer that
//! receives them while a run trains.

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use crate::error::Result;
use crate::nn::model::Layer;

/// Statistics of one layer's quantized weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    /// Parameter path prefix (`fc1`).
    pub name: String,
    /// Mean of the layer's scales (clip value / γ).
    pub scale: f32,
    /// Share of weights on the zero level (0 when the level set has no zero).
    pub sparsity: f32,
    /// Entropy of the level histogram in bits.
    pub entropy: f32,
    /// Output channels the quantizer has pruned.
    pub pruned: usize,
}

/// What one epoch measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch (running, as the batches went).
    pub train_acc: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Test accuracy on the whole test set.
    pub test_acc: f64,
    /// Mean loss on the held-out validation images (`data.validation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    /// Accuracy on the held-out validation images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    /// Learning rate used in this epoch.
    pub lr: f64,
    /// Share of positive hidden activations on the test set.
    pub positive_fraction: f64,
    /// Training samples per second in this epoch (training only, not evaluation).
    pub samples_per_s: f64,
    /// Per-layer quantization statistics.
    pub layers: Vec<LayerStats>,
}

/// Receives progress while a run trains.
pub trait Observer {
    /// After each optimizer step: samples done in this epoch and the epoch's size.
    fn on_step(&mut self, _epoch: usize, _done: usize, _total: usize) {}
    /// After each epoch's evaluation.
    fn on_epoch(&mut self, _metrics: &EpochMetrics) {}
    /// After each epoch, the state to resume from. An error stops the run.
    fn on_checkpoint(&mut self, _checkpoint: &Checkpoint) -> Result<()> {
        Ok(())
    }
    /// Polled between steps; true stops the run with [`Error::Interrupted`].
    fn interrupted(&self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Level statistics of a layer's last quantization.
pub fn layer_stats(layer: &Layer) -> LayerStats {
    let q = &layer.quantized;
    let scale = q.scales.iter().sum::<f32>() / q.scales.len().max(1) as f32;
    let pruned = layer.quantizer.pruned_channels(layer.shape);
    if q.levels.is_empty() || q.codes.is_empty() {
        return LayerStats { name: layer.name.clone(), scale, sparsity: 0.0, entropy: 32.0, pruned };
    }
    let mut histogram = vec![0usize; q.levels.len()];
    q.codes.iter().for_each(|&c| histogram[c as usize] += 1);
    let n = q.codes.len() as f32;
    let zero = q.levels.iter().position(|&l| l == 0.0).map_or(0, |z| histogram[z]);
    let entropy =
        histogram.iter().filter(|&&h| h > 0).map(|&h| -(h as f32 / n) * (h as f32 / n).log2()).sum();
    LayerStats { name: layer.name.clone(), scale, sparsity: zero as f32 / n, entropy, pruned }
}
