//! Resumable state: what a checkpoint holds, taking one, restoring one, and restoring a finished
//! run from its directory.

use qatlab_core::{config::RunConfig, Registry};
use serde::{Deserialize, Serialize};

use super::metrics::EpochMetrics;
use super::optim::AdamState;
use super::recipe::{swap_weights, Averages};
use super::Trainer;
use crate::error::{Error, Result};

/// File name of a run's checkpoint inside its directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// One layer's resumable state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerCheckpoint {
    /// Latent weights.
    pub weight: Vec<f32>,
    /// Quantizer state (`Quantizer::state`).
    pub quantizer: Vec<f32>,
    /// Adam moments of the weights.
    pub adam_weight: AdamState,
    /// Adam moments of the quantizer parameters.
    pub adam_params: AdamState,
    /// Learned residual scale (empty without one).
    #[serde(default)]
    pub residual: Vec<f32>,
    /// Its Adam moments.
    #[serde(default)]
    pub adam_residual: AdamState,
    /// Learned layer-norm gain and bias (empty without them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub norm_affine: Vec<f32>,
    /// Their Adam moments.
    #[serde(default, skip_serializing_if = "AdamState::is_empty")]
    pub adam_norm_affine: AdamState,
    /// Batch-norm running mean and variance of the layer's input.
    pub norm_mean: Vec<f32>,
    /// See `norm_mean`.
    pub norm_var: Vec<f32>,
}

/// Everything needed to continue a run after `epochs_done` epochs and end with exactly the
/// metrics of an uninterrupted run. (Data order, augmentation and stochastic quantizers draw
/// from (seed, epoch, step, index) alone, so no RNG state needs saving.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub step: u64,
    /// Per-layer state.
    pub layers: Vec<LayerCheckpoint>,
    /// Metrics of the completed epochs.
    pub history: Vec<EpochMetrics>,
    /// EMA and SWA weights, when the recipe keeps them.
    #[serde(default, skip_serializing_if = "Averages::is_empty")]
    pub averages: Averages,
}

/// A run restored from its directory, weights quantized for evaluation.
pub struct FinishedRun {
    /// The run's resolved configuration (`config.yaml`).
    pub config: RunConfig,
    /// The network and optimizer state of its last checkpoint.
    pub trainer: Trainer,
    /// Epochs the checkpoint holds.
    pub epochs_done: usize,
}

/// Restore the run in `dir` from its `config.yaml` and checkpoint, with the weights quantized as
/// the evaluation pass quantizes them.
pub fn load_finished(dir: &std::path::Path, registry: &Registry) -> Result<FinishedRun> {
    let bad = |what: String| Error::Config(format!("{}: {what}", dir.display()));
    let text = std::fs::read_to_string(dir.join("config.yaml"))
        .map_err(|e| bad(format!("no config.yaml ({e}); is this a run directory, and has it run?")))?;
    let config: RunConfig = serde_yaml::from_str(&text).map_err(|e| bad(format!("config.yaml: {e}")))?;
    let bytes = std::fs::read(dir.join(CHECKPOINT_FILE))
        .map_err(|e| bad(format!("no checkpoint ({e}); train the run first")))?;
    let checkpoint: Checkpoint =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("checkpoint: {e}")))?;
    let features = config.data.image_size * config.data.image_size;
    let mut trainer = Trainer::new(&config, registry, features)?;
    trainer.restore(&checkpoint, registry)?;
    // A finished run is what its evaluation measured: with an EMA, the averaged weights.
    let mut ema = std::mem::take(&mut trainer.averages.ema);
    swap_weights(&mut ema, &mut trainer.net.layers);
    trainer.net.quantize_all(false, checkpoint.step, config.train.epochs, config.train.seed)?;
    Ok(FinishedRun { config, trainer, epochs_done: checkpoint.epochs_done })
}

impl Trainer {
    /// The resumable state after `history.len()` epochs.
    pub fn checkpoint(&self, history: &[EpochMetrics]) -> Checkpoint {
        let layers = self
            .net
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| LayerCheckpoint {
                weight: l.weight.clone(),
                quantizer: l.quantizer.state(),
                adam_weight: self.weight_state[i].clone(),
                adam_params: self.param_state[i].clone(),
                residual: l.residual_scale.clone(),
                adam_residual: self.residual_state[i].clone(),
                norm_affine: l.norm_affine.clone(),
                adam_norm_affine: self.affine_state[i].clone(),
                norm_mean: self.net.norm_stats[i].mean.clone(),
                norm_var: self.net.norm_stats[i].var.clone(),
            })
            .collect();
        Checkpoint {
            epochs_done: history.len(),
            step: self.step,
            layers,
            history: history.to_vec(),
            averages: self.averages.clone(),
        }
    }

    /// Continue from `checkpoint` (the quantizers are those of its last epoch).
    pub fn restore(&mut self, checkpoint: &Checkpoint, registry: &Registry) -> Result<()> {
        self.use_quantizers_of_epoch(registry, checkpoint.epochs_done.saturating_sub(1))?;
        if checkpoint.layers.len() != self.net.layers.len() {
            return Err(Error::Config(format!(
                "checkpoint has {} layers, the config {}; delete the run directory or use --force",
                checkpoint.layers.len(),
                self.net.layers.len()
            )));
        }
        for (i, (layer, saved)) in self.net.layers.iter_mut().zip(&checkpoint.layers).enumerate() {
            if saved.weight.len() != layer.weight.len() {
                return Err(Error::Config(format!(
                    "checkpoint: {} has another shape; use --force",
                    layer.name
                )));
            }
            layer.weight.clone_from(&saved.weight);
            layer
                .quantizer
                .load_state(&saved.quantizer)
                .map_err(|e| Error::Plugin(format!("{}: {e}", layer.name)))?;
            self.weight_state[i] = saved.adam_weight.clone();
            self.param_state[i] = saved.adam_params.clone();
            layer.residual_scale.clone_from(&saved.residual);
            self.residual_state[i] = saved.adam_residual.clone();
            if !saved.norm_affine.is_empty() {
                layer.norm_affine.clone_from(&saved.norm_affine);
                self.affine_state[i] = saved.adam_norm_affine.clone();
            }
            self.net.norm_stats[i].mean.clone_from(&saved.norm_mean);
            self.net.norm_stats[i].var.clone_from(&saved.norm_var);
        }
        self.step = checkpoint.step;
        self.averages = checkpoint.averages.clone();
        Ok(())
    }
}
