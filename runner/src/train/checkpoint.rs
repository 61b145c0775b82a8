//! Resumable state: what a checkpoint holds (every tensor by path, plus a few scalars), taking
//! one, restoring one, storing it as safetensors, and restoring a finished run from its
//! directory. Checkpoints written before tensors were stored by path (`checkpoint.json`) still
//! load: [`super::legacy`] maps their per-layer lists onto paths.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use qatlab_core::{config::RunConfig, Registry};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use super::metrics::EpochMetrics;
use super::optim::AdamState;
use super::recipe::{swap_params, Averages};
use super::Trainer;
use crate::data::Task;
use crate::error::{Error, Result};
use crate::nn::params::ParamKind;

/// File name of a run's checkpoint inside its directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The safetensors metadata key under which a checkpoint's scalars are stored (as JSON).
const METADATA_KEY: &str = "qatlab.checkpoint";

/// Path prefixes of the tensors that are not the network's own: optimizer moments and averages.
const OPTIMIZER_M: &str = "optimizer.m.";
const OPTIMIZER_V: &str = "optimizer.v.";
const EMA: &str = "ema.";
const SWA: &str = "swa.";

/// One stored tensor: its shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions (`[rows, cols]` for weights, `[len]` otherwise).
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

impl Tensor {
    /// A one-dimensional tensor.
    pub fn vector(values: Vec<f32>) -> Self {
        Self { shape: vec![values.len()], values }
    }
}

/// The scalars of a checkpoint: what is not a tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointScalars {
    /// Completed epochs.
    pub epochs_done: usize,
    /// Optimizer steps taken.
    pub step: u64,
    /// Metrics of the completed epochs.
    pub history: Vec<EpochMetrics>,
    /// Optimizer steps each parameter has taken (Adam's t), by path.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// Epochs in the stochastic weight average.
    pub swa_count: u64,
}

/// Everything needed to continue a run after `epochs_done` epochs and end with exactly the
/// metrics of an uninterrupted run. (Data order, augmentation and stochastic quantizers draw
/// from (seed, epoch, step, index) alone, so no RNG state needs saving.)
///
/// Tensor paths: the parameters (`fc1.weight`, `fc2.residual.scale`, `fc1.norm.gain`, …), each
/// layer's quantizer state (`fc1.quantizer.state`) and batch-norm statistics
/// (`fc1.norm.running_mean`, `fc1.norm.running_var`), the optimizer moments
/// (`optimizer.m.<path>`, `optimizer.v.<path>`) and the averages (`ema.<path>`, `swa.<path>`).
/// Empty buffers are not stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The scalars.
    pub scalars: CheckpointScalars,
    /// Every tensor, by path.
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Completed epochs.
    pub fn epochs_done(&self) -> usize {
        self.scalars.epochs_done
    }

    /// Metrics of the completed epochs.
    pub fn history(&self) -> &[EpochMetrics] {
        &self.scalars.history
    }

    /// The latent weights of every layer (`<layer>.weight`), by path.
    pub fn layer_weights(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.tensors
            .iter()
            .filter(|(path, _)| {
                path.ends_with(".weight")
                    && ![OPTIMIZER_M, OPTIMIZER_V, EMA, SWA].iter().any(|p| path.starts_with(p))
            })
            .map(|(path, t)| (path.as_str(), t.values.as_slice()))
    }

    /// The checkpoint as a safetensors file (little-endian f32 tensors; the scalars as JSON in
    /// the header's metadata), so one atomic write stores all of it.
    pub fn to_bytes(&self) -> Vec<u8> {
        let bytes: Vec<(&String, &Tensor, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(path, t)| (path, t, t.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
            .collect();
        let views = bytes.iter().map(|(path, t, data)| {
            let view = TensorView::new(Dtype::F32, t.shape.clone(), data).expect("shape matches values");
            (path.as_str(), view)
        });
        let scalars = serde_json::to_string(&self.scalars).expect("scalars always serialise");
        let metadata = HashMap::from([(METADATA_KEY.to_string(), scalars)]);
        safetensors::serialize(views, Some(metadata)).expect("finite shapes serialise")
    }

    /// Read what [`Checkpoint::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let scalars = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| format!("no `{METADATA_KEY}` metadata: not a qatlab checkpoint"))?;
        let scalars: CheckpointScalars = serde_json::from_str(scalars).map_err(|e| e.to_string())?;
        let mut tensors = BTreeMap::new();
        for (path, view) in file.iter() {
            if view.dtype() != Dtype::F32 {
                return Err(format!("{path}: {:?} tensor, checkpoints hold F32", view.dtype()));
            }
            let values =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            tensors.insert(path.to_string(), Tensor { shape: view.shape().to_vec(), values });
        }
        Ok(Self { scalars, tensors })
    }

    /// Read the checkpoint of the run directory `dir` whose resolved config is `config`: the
    /// safetensors file, or else a `checkpoint.json` of an earlier qatlab. `None` when there is
    /// none; an error when one is there but unreadable.
    pub fn read(dir: &Path, config: &RunConfig) -> std::result::Result<Option<Self>, String> {
        let path = dir.join(CHECKPOINT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                return Self::from_bytes(&bytes).map(Some).map_err(|e| format!("{}: {e}", path.display()))
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{}: {e}", path.display()))
            }
            Err(_) => {}
        }
        super::legacy::read(dir, config)
    }

    /// Whether `dir` holds a checkpoint (of either format).
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(CHECKPOINT_FILE).is_file() || dir.join(super::legacy::LEGACY_CHECKPOINT_FILE).is_file()
    }

    /// Remove the checkpoint files of `dir` (for `--force`).
    pub fn remove_from(dir: &Path) {
        let _ = std::fs::remove_file(dir.join(CHECKPOINT_FILE));
        let _ = std::fs::remove_file(dir.join(super::legacy::LEGACY_CHECKPOINT_FILE));
    }
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
pub fn load_finished(dir: &Path, registry: &Registry) -> Result<FinishedRun> {
    let bad = |what: String| Error::Config(format!("{}: {what}", dir.display()));
    let text = std::fs::read_to_string(dir.join("config.yaml"))
        .map_err(|e| bad(format!("no config.yaml ({e}); is this a run directory, and has it run?")))?;
    let config: RunConfig = serde_yaml::from_str(&text).map_err(|e| bad(format!("config.yaml: {e}")))?;
    let checkpoint = Checkpoint::read(dir, &config)
        .map_err(|e| bad(format!("checkpoint: {e}")))?
        .ok_or_else(|| bad("no checkpoint; train the run first".into()))?;
    let mut trainer = Trainer::new(&config, registry, Task::of(&config.data))?;
    trainer.restore(&checkpoint, registry)?;
    // A finished run is what its evaluation measured: with an EMA, the averaged weights.
    let mut ema = std::mem::take(&mut trainer.averages.ema);
    swap_params(&mut ema, &mut trainer.net);
    trainer.net.quantize_all(false, checkpoint.scalars.step, config.train.epochs, config.train.seed)?;
    Ok(FinishedRun { config, trainer, epochs_done: checkpoint.epochs_done() })
}

impl Trainer {
    /// The resumable state after `history.len()` epochs.
    pub fn checkpoint(&self, history: &[EpochMetrics]) -> Checkpoint {
        let mut tensors = BTreeMap::new();
        let mut put = |path: String, shape: Vec<usize>, values: Vec<f32>| {
            if !values.is_empty() {
                tensors.insert(path, Tensor { shape, values });
            }
        };
        let params = self.net.params();
        let shape_of: BTreeMap<&str, &Vec<usize>> =
            params.iter().map(|p| (p.path.as_str(), &p.shape)).collect();
        let shape = |path: &str, len: usize| shape_of.get(path).map_or(vec![len], |s| s.to_vec());
        for p in &params {
            // a quantizer's parameters are part of its state, stored below
            if p.kind != ParamKind::QuantizerParam {
                put(p.path.clone(), p.shape.clone(), p.values.to_vec());
            }
        }
        for layer in self.net.layers() {
            let state = layer.quantizer.state();
            put(format!("{}.quantizer.state", layer.name), vec![state.len()], state);
        }
        for (name, stats) in self.net.running_stats() {
            put(format!("{name}.running_mean"), vec![stats.mean.len()], stats.mean.clone());
            put(format!("{name}.running_var"), vec![stats.var.len()], stats.var.clone());
        }
        let mut optimizer_steps = BTreeMap::new();
        for (path, moments) in &self.moments {
            put(format!("{OPTIMIZER_M}{path}"), shape(path, moments.m.len()), moments.m.clone());
            put(format!("{OPTIMIZER_V}{path}"), shape(path, moments.v.len()), moments.v.clone());
            optimizer_steps.insert(path.clone(), moments.t);
        }
        for (prefix, averages) in [(EMA, &self.averages.ema), (SWA, &self.averages.swa)] {
            for (path, values) in averages {
                put(format!("{prefix}{path}"), shape(path, values.len()), values.clone());
            }
        }
        Checkpoint {
            scalars: CheckpointScalars {
                epochs_done: history.len(),
                step: self.step,
                history: history.to_vec(),
                optimizer_steps,
                swa_count: self.averages.swa_count,
            },
            tensors,
        }
    }

    /// Continue from `checkpoint` (the quantizers are those of its last epoch).
    pub fn restore(&mut self, checkpoint: &Checkpoint, registry: &Registry) -> Result<()> {
        self.use_quantizers_of_epoch(registry, checkpoint.epochs_done().saturating_sub(1))?;
        let stale = |what: String| {
            Error::Config(format!("checkpoint: {what}; delete the run directory or use --force"))
        };
        let tensors = &checkpoint.tensors;
        // every `*.weight` parameter (layers, and tables such as learned positions)
        let saved_weights = checkpoint.layer_weights().count();
        let weights = self.net.params().iter().filter(|p| p.path.ends_with(".weight")).count();
        if saved_weights != weights {
            return Err(stale(format!("it has {saved_weights} weight tensors, the config {weights}")));
        }
        let values = |path: &str| tensors.get(path).map_or(&[][..], |t| t.values.as_slice());
        for p in self.net.params_mut() {
            if p.kind == ParamKind::QuantizerParam {
                continue;
            }
            let saved = values(&p.path);
            if saved.len() != p.values.len() {
                return Err(stale(format!(
                    "{} holds {} values, the config {}",
                    p.path,
                    saved.len(),
                    p.values.len()
                )));
            }
            p.values.copy_from_slice(saved);
        }
        for layer in self.net.layers_mut() {
            layer
                .quantizer
                .load_state(values(&format!("{}.quantizer.state", layer.name)))
                .map_err(|e| Error::Plugin(format!("{}: {e}", layer.name)))?;
        }
        for (name, stats) in self.net.running_stats_mut() {
            for (part, buffer) in [("running_mean", &mut stats.mean), ("running_var", &mut stats.var)] {
                let saved = values(&format!("{name}.{part}"));
                if saved.len() != buffer.len() {
                    return Err(stale(format!("{name}.{part} has another shape")));
                }
                buffer.copy_from_slice(saved);
            }
        }
        // Optimizer state must fit its parameter: a moment the optimizer silently re-initialised
        // would make the resumed run differ from an uninterrupted one.
        let lengths: BTreeMap<String, usize> =
            self.net.params().into_iter().map(|p| (p.path, p.values.len())).collect();
        let mut moments = BTreeMap::new();
        for (path, &t) in &checkpoint.scalars.optimizer_steps {
            let m = values(&format!("{OPTIMIZER_M}{path}")).to_vec();
            let v = values(&format!("{OPTIMIZER_V}{path}")).to_vec();
            let len = lengths.get(path).copied().ok_or_else(|| {
                stale(format!("optimizer state for {path}, which the config has no parameter for"))
            })?;
            if m.len() != len || !(v.is_empty() || v.len() == len) {
                return Err(stale(format!("the optimizer moments of {path} do not fit its {len} values")));
            }
            moments.insert(path.clone(), AdamState { m, v, t });
        }
        self.moments = moments;
        // Averages are swapped into the parameters for evaluation: each must fit one.
        let averages = |prefix: &str| -> Result<BTreeMap<String, Vec<f32>>> {
            let mut out = BTreeMap::new();
            for (path, t) in tensors {
                let Some(param) = path.strip_prefix(prefix) else { continue };
                if lengths.get(param) != Some(&t.values.len()) {
                    return Err(stale(format!("{path} does not fit a parameter of the config")));
                }
                out.insert(param.to_string(), t.values.clone());
            }
            Ok(out)
        };
        self.averages =
            Averages { ema: averages(EMA)?, swa: averages(SWA)?, swa_count: checkpoint.scalars.swa_count };
        self.step = checkpoint.scalars.step;
        Ok(())
    }
}
