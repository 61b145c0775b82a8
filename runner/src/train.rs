//! One training run: the epoch loop around the engine, the optimizer and the per-epoch metrics.
//! Knows nothing of files or terminals; it reports through an [`Observer`].

use std::time::Instant;

use qatlab_core::{config::RunConfig, Progress, Registry, Schedule};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{RunData, Samples};
use crate::engine::{Engine, Pass};
use crate::error::{Error, Result};
use crate::loss::{cross_entropy_smoothed, cross_entropy_sum};
use crate::model::{Layer, Network};
use crate::optim::{AdamConfig, AdamState};
use crate::recipe::{mix_batch, swap_weights, Accumulator, Averages, Mixed};

/// Number of classes of the supported datasets.
pub const CLASSES: usize = 10;
/// Test-set evaluation batch size (any size gives the same numbers).
const EVAL_BATCH: usize = 1000;
/// Training images whose mean layer inputs calibrate bias correction.
pub const CALIBRATION_SAMPLES: usize = 4096;

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

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// A run in progress: network, optimizer state and the run's randomness.
pub struct Trainer {
    /// The network being trained.
    pub net: Network,
    engine: Engine,
    schedule: Box<dyn Schedule>,
    adam: AdamConfig,
    base_lr: f64,
    weight_state: Vec<AdamState>,
    param_state: Vec<AdamState>,
    residual_state: Vec<AdamState>,
    affine_state: Vec<AdamState>,
    config: RunConfig,
    step: u64,
    teacher: Option<Teacher>,
    averages: Averages,
    accumulator: Accumulator,
    /// The quantizer each layer was built from (changes with `train.quantizer_schedule`).
    layer_specs: Vec<qatlab_core::config::PluginSpec>,
}

/// A finished run used as a distillation teacher, with its loss.
struct Teacher {
    net: Network,
    engine: Engine,
    loss: Box<dyn qatlab_core::Distiller>,
    /// Width of the teacher's last hidden layer (its penultimate features).
    feature_width: usize,
}

impl Teacher {
    /// Load the teacher named in `config` (its resolved config and last checkpoint).
    fn load(spec: &qatlab_core::config::DistillConfig, registry: &Registry, features: usize) -> Result<Self> {
        let dir = std::path::Path::new(spec.teacher_dir());
        let bad = |what: String| Error::Config(format!("train.distill.teacher: {}: {what}", dir.display()));
        let run = load_finished(dir, registry).map_err(|e| bad(e.to_string()))?;
        let size = run.config.data.image_size;
        if size * size != features {
            return Err(bad(format!("it takes {size}² inputs, this run {features}")));
        }
        let loss =
            registry.distillers.build(&spec.loss.name, &spec.loss.params).map_err(|e| bad(e.to_string()))?;
        let feature_width = run.config.model.hidden.last().copied().unwrap_or(0);
        Ok(Self { net: run.trainer.net, engine: Engine::new(), loss, feature_width })
    }
}

impl Teacher {
    /// Check that a feature distiller compares features of one width.
    fn matching_features(self, student: &RunConfig) -> Result<Self> {
        let width = student.model.hidden.last().copied().unwrap_or(0);
        if self.loss.uses_features() && (width == 0 || width != self.feature_width) {
            return Err(Error::Config(format!(
                "train.distill: this loss compares penultimate features, so the teacher's last hidden width \
                 ({}) must equal the student's ({width}); use `kd`, or a teacher of that width",
                self.feature_width
            )));
        }
        Ok(self)
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
pub fn load_finished(dir: &std::path::Path, registry: &Registry) -> Result<FinishedRun> {
    let bad = |what: String| Error::Config(format!("{}: {what}", dir.display()));
    let text = std::fs::read_to_string(dir.join("config.yaml"))
        .map_err(|e| bad(format!("no config.yaml ({e}); is this a run directory, and has it run?")))?;
    let config: RunConfig = serde_yaml::from_str(&text).map_err(|e| bad(format!("config.yaml: {e}")))?;
    let bytes = std::fs::read(dir.join(crate::outputs::CHECKPOINT))
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
    /// Build the network and optimizer for `config`.
    pub fn new(config: &RunConfig, registry: &Registry, features: usize) -> Result<Self> {
        let net = Network::new(registry, config, features, CLASSES)?;
        let spec = &config.train.schedule;
        let schedule = registry
            .schedules
            .build(&spec.name, &spec.params)
            .map_err(|e| Error::Config(format!("train.schedule: {e}")))?;
        let o = &config.train.optimizer;
        let layers = net.layers.len();
        Ok(Self {
            net,
            engine: Engine::new(),
            schedule,
            adam: AdamConfig {
                kind: o.name,
                momentum: o.momentum.unwrap_or(0.9) as f32,
                nesterov: o.nesterov,
                betas: [o.betas[0] as f32, o.betas[1] as f32],
                eps: o.eps as f32,
                weight_decay: o.weight_decay as f32,
            },
            base_lr: o.lr,
            weight_state: vec![AdamState::default(); layers],
            param_state: vec![AdamState::default(); layers],
            residual_state: vec![AdamState::default(); layers],
            affine_state: vec![AdamState::default(); layers],
            config: config.clone(),
            step: 0,
            teacher: None,
            averages: Averages::default(),
            accumulator: Accumulator::default(),
            layer_specs: (0..layers).map(|i| config.model.layer(i, layers, &config.quantizer).0).collect(),
        })
    }

    /// Load the distillation teacher the config names (training only: restoring a finished
    /// run for evaluation or export does not need it).
    pub fn attach_teacher(&mut self, registry: &Registry, features: usize) -> Result<()> {
        if let Some(spec) = &self.config.train.distill {
            self.teacher = Some(Teacher::load(spec, registry, features)?.matching_features(&self.config)?);
        }
        Ok(())
    }

    /// Learning rate of `epoch`.
    pub fn lr(&self, epoch: usize, steps: usize) -> f64 {
        let epochs = self.config.train.epochs;
        let p = Progress { epoch, step: self.step as usize, epochs, steps };
        self.base_lr * self.schedule.value(p)
    }

    /// Forward and backward pass on a batch (mixed with partners when `mixed`), then an
    /// optimizer step, or only the gradient sum while accumulating; returns (loss, correct).
    pub fn train_batch(
        &mut self,
        x: &[f32],
        labels: &[u8],
        mixed: Option<&Mixed>,
        lr: f32,
        epoch: usize,
    ) -> Result<(f32, usize)> {
        let seed = self.config.train.seed;
        self.net.quantize_all(true, self.step, epoch, seed)?;
        let mut correct = 0;
        let smoothing = self.config.train.label_smoothing as f32;
        let batch = labels.len();
        let teacher = self.teacher.as_ref().map(|t| {
            let features =
                if t.loss.uses_features() { t.engine.features(&t.net, x, batch) } else { Vec::new() };
            (t.engine.logits(&t.net, x, batch, Pass::Eval).0, features, &t.loss)
        });
        let loss_of = |logits: &[f32], labels: &[u8], grad: &mut [f32]| match &teacher {
            Some((teacher_logits, _, distiller)) => {
                distiller.loss(logits, teacher_logits, labels, CLASSES, grad)
            }
            None => cross_entropy_smoothed(logits, labels, CLASSES, smoothing, grad).0,
        };
        let with_features = teacher.as_ref().is_some_and(|t| !t.1.is_empty());
        let mut loss_grad = |logits: &[f32],
                             features: &[f32],
                             grad: &mut [f32],
                             grad_features: &mut [f32]| {
            correct = cross_entropy_sum(logits, labels, CLASSES).1;
            let feature_term = match &teacher {
                Some((_, teacher_features, distiller)) if with_features => {
                    distiller.feature_loss(features, teacher_features, features.len() / batch, grad_features)
                }
                _ => 0.0,
            };
            let Some(m) = mixed else { return loss_of(logits, labels, grad) + feature_term };
            let mut partner_grad = vec![0.0; grad.len()];
            let own = loss_of(logits, labels, grad);
            let partner = loss_of(logits, &m.partner_labels, &mut partner_grad);
            grad.iter_mut().zip(&partner_grad).for_each(|(g, p)| *g = m.lambda * *g + (1.0 - m.lambda) * p);
            m.lambda * own + (1.0 - m.lambda) * partner + feature_term
        };
        let mut loss =
            self.engine.backward_with_features(&mut self.net, x, batch, with_features, &mut loss_grad);
        for layer in &mut self.net.layers {
            layer.backward_quantizer();
            loss += layer.quantizer.regularizer(layer.shape, &mut layer.grad_params);
        }
        if !loss.is_finite() {
            return Err(Error::Diverged(format!("loss is {loss} at step {}", self.step)));
        }
        let accumulate = self.config.train.grad_accumulation;
        if accumulate > 1 {
            self.accumulator.add(&self.net.layers);
            if self.accumulator.pending() < accumulate {
                return Ok((loss, correct));
            }
            self.accumulator.take_mean_into(&mut self.net.layers);
        }
        self.optimizer_step(lr);
        Ok((loss, correct))
    }

    /// Take the optimizer step for gradients still being accumulated (at the end of an epoch).
    pub fn flush_accumulated(&mut self, lr: f32) {
        if self.accumulator.pending() > 0 {
            self.accumulator.take_mean_into(&mut self.net.layers);
            self.optimizer_step(lr);
        }
    }

    /// Clip, update every parameter buffer from the layers' gradients, update the EMA.
    fn optimizer_step(&mut self, lr: f32) {
        if let Some(max_norm) = self.config.train.grad_clip {
            clip_global_norm(&mut self.net, max_norm as f32);
        }
        for (i, layer) in self.net.layers.iter_mut().enumerate() {
            self.weight_state[i].step(&self.adam, lr, &mut layer.weight, &layer.grad_weight, true);
            if !layer.grad_params.is_empty() {
                let grads = std::mem::take(&mut layer.grad_params);
                self.param_state[i].step(&self.adam, lr, layer.quantizer.params_mut(), &grads, false);
                layer.grad_params = grads;
            }
            if !layer.residual_scale.is_empty() {
                self.residual_state[i].step(
                    &self.adam,
                    lr,
                    &mut layer.residual_scale,
                    &layer.grad_residual,
                    false,
                );
            }
        }
        for (i, layer) in self.net.layers.iter_mut().enumerate() {
            if !layer.norm_affine.is_empty() {
                self.affine_state[i].step(
                    &self.adam,
                    lr,
                    &mut layer.norm_affine,
                    &layer.grad_norm_affine,
                    false,
                );
            }
        }
        if let Some(decay) = self.config.train.ema {
            self.averages.update_ema(decay as f32, &self.net.layers);
        }
        self.step += 1;
    }

    /// Fold this epoch's final weights into the stochastic weight average.
    pub fn add_to_swa(&mut self) {
        self.averages.add_to_swa(&self.net.layers);
    }

    /// Test accuracy of the stochastic weight average (batch-norm statistics re-estimated on
    /// `train` first when the model uses batch norm); the trained weights are put back after.
    pub fn evaluate_swa(&mut self, train: &Samples, test: &Samples) -> Result<Option<f64>> {
        if self.averages.swa.is_empty() {
            return Ok(None);
        }
        let saved_stats = self.net.norm_stats.clone();
        let saved_ema = std::mem::take(&mut self.averages.ema);
        swap_weights(&mut self.averages.swa, &mut self.net.layers);
        let result = self.reestimate_batch_norm(train).and_then(|_| self.evaluate(test));
        swap_weights(&mut self.averages.swa, &mut self.net.layers);
        self.averages.ema = saved_ema;
        self.net.norm_stats = saved_stats;
        Ok(Some(result?.1))
    }

    /// Override the post-training evaluation options (calibration) of this run.
    pub fn set_eval_options(&mut self, eval: &qatlab_core::config::EvalConfig) {
        self.config.eval = eval.clone();
    }

    /// Empirical bias correction: give every fully connected layer the output bias
    /// (W − Ŵ)·E[x], with E[x] its mean input in the float network over the first
    /// [`CALIBRATION_SAMPLES`] of `train` and Ŵ its current quantizer's weights.
    pub fn correct_biases(&mut self, train: &Samples) -> Result<()> {
        let seed = self.config.train.seed;
        let phases: Vec<bool> = self.net.layers.iter().map(|l| l.float_phase).collect();
        self.net.layers.iter_mut().for_each(|l| l.float_phase = true);
        self.net.quantize_all(false, self.step, 0, seed)?;
        let n = train.len().min(CALIBRATION_SAMPLES);
        let f = train.features;
        let mut sums: Vec<(usize, Vec<f32>)> = Vec::new();
        for start in (0..n).step_by(EVAL_BATCH) {
            let count = EVAL_BATCH.min(n - start);
            let means =
                self.engine.mean_layer_inputs(&self.net, &train.x[start * f..(start + count) * f], count);
            if sums.is_empty() {
                sums = means.iter().map(|(l, m)| (*l, vec![0.0; m.len()])).collect();
            }
            for ((_, sum), (_, mean)) in sums.iter_mut().zip(&means) {
                sum.iter_mut().zip(mean).for_each(|(s, m)| *s += m * count as f32 / n as f32);
            }
        }
        self.net.layers.iter_mut().zip(phases).for_each(|(l, phase)| l.float_phase = phase);
        self.net.quantize_all(false, self.step, 0, seed)?;
        for (l, mean) in sums {
            let layer = &mut self.net.layers[l];
            let cols = layer.shape.cols;
            layer.bias = (0..layer.shape.rows)
                .map(|r| {
                    let (w, q) = (
                        &layer.weight[r * cols..(r + 1) * cols],
                        &layer.quantized.values[r * cols..(r + 1) * cols],
                    );
                    w.iter().zip(q).zip(&mean).map(|((w, q), m)| (w - q) * m).sum()
                })
                .collect();
        }
        Ok(())
    }

    /// Replace the batch-norm running statistics by their average over the batches of `train`
    /// with the current (evaluation-quantized) weights. Nothing to do without batch norm.
    pub fn reestimate_batch_norm(&mut self, train: &Samples) -> Result<()> {
        if self.net.stage.norm != qatlab_core::config::Norm::Batch {
            return Ok(());
        }
        self.net.quantize_all(false, self.step, 0, self.config.train.seed)?;
        let (f, batch) = (train.features, self.config.train.batch_size.max(2));
        let mut sums: Vec<crate::model::RunningStats> =
            self.net.norm_stats.iter().map(|s| crate::model::RunningStats::new(s.mean.len())).collect();
        sums.iter_mut().for_each(|s| s.var.iter_mut().for_each(|v| *v = 0.0));
        let mut batches = 0usize;
        for start in (0..train.len()).step_by(batch) {
            let n = batch.min(train.len() - start);
            if n < 2 {
                continue;
            }
            let stats = self.engine.batch_statistics(&self.net, &train.x[start * f..(start + n) * f], n);
            for (sum, b) in sums.iter_mut().zip(&stats) {
                let unbiased = n as f32 / (n - 1) as f32;
                sum.mean.iter_mut().zip(&b.mean).for_each(|(s, m)| *s += m);
                sum.var.iter_mut().zip(&b.var).for_each(|(s, v)| *s += v * unbiased);
            }
            batches += 1;
        }
        for (running, sum) in self.net.norm_stats.iter_mut().zip(sums) {
            running.mean = sum.mean.iter().map(|s| s / batches.max(1) as f32).collect();
            running.var = sum.var.iter().map(|s| s / batches.max(1) as f32).collect();
        }
        Ok(())
    }

    /// Test loss, accuracy and positive-activation share with the evaluation quantization.
    pub fn evaluate(&mut self, test: &Samples) -> Result<(f64, f64, f64)> {
        let (mut loss, mut correct, mut positive, mut seen) = (0.0, 0, 0, 0);
        self.for_each_test_batch(test, |logits, labels, (pos, count)| {
            let (l, c) = cross_entropy_sum(logits, labels, CLASSES);
            loss += l;
            correct += c;
            positive += pos;
            seen += count;
        })?;
        let n = test.len().max(1) as f64;
        Ok((loss / n, correct as f64 / n, positive as f64 / seen.max(1) as f64))
    }

    /// Logits of every test sample (`n × CLASSES`) with the evaluation quantization.
    pub fn test_logits(&mut self, test: &Samples) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(test.len() * CLASSES);
        self.for_each_test_batch(test, |logits, _, _| out.extend_from_slice(logits))?;
        Ok(out)
    }

    /// Quantize for evaluation, then visit each test batch's logits, labels and
    /// (positive activations, activations).
    /// With an EMA, the averaged weights are evaluated.
    fn for_each_test_batch(
        &mut self,
        test: &Samples,
        visit: impl FnMut(&[f32], &[u8], (u64, u64)),
    ) -> Result<()> {
        swap_weights(&mut self.averages.ema, &mut self.net.layers);
        let result = self.visit_test_batches(test, visit);
        swap_weights(&mut self.averages.ema, &mut self.net.layers);
        result
    }

    fn visit_test_batches(
        &mut self,
        test: &Samples,
        mut visit: impl FnMut(&[f32], &[u8], (u64, u64)),
    ) -> Result<()> {
        self.net.quantize_all(false, self.step, 0, self.config.train.seed)?;
        let f = test.features;
        for start in (0..test.len()).step_by(EVAL_BATCH) {
            let end = (start + EVAL_BATCH).min(test.len());
            let (logits, positive) =
                self.engine.logits(&self.net, &test.x[start * f..end * f], end - start, Pass::Eval);
            visit(&logits, &test.labels[start..end], positive);
        }
        Ok(())
    }

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

    /// Give every layer the quantizer `train.quantizer_schedule` assigns to `epoch`; a layer
    /// whose quantizer changes starts with a fresh quantizer and fresh optimizer state for its
    /// parameters.
    pub fn use_quantizers_of_epoch(&mut self, registry: &Registry, epoch: usize) -> Result<()> {
        let count = self.net.layers.len();
        for (i, layer) in self.net.layers.iter_mut().enumerate() {
            let (spec, _) = self.config.model.layer(i, count, self.config.quantizer_at(epoch));
            if spec == self.layer_specs[i] {
                continue;
            }
            layer.quantizer = registry
                .quantizers
                .build(&spec.name, &spec.params)
                .map_err(|e| Error::Config(format!("quantizer of {} at epoch {epoch}: {e}", layer.name)))?;
            layer.quantized = Default::default();
            self.param_state[i] = AdamState::default();
            self.layer_specs[i] = spec;
        }
        Ok(())
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

    /// Test accuracy with every layer's weights quantized by `spec` instead of the training
    /// quantizer (post-training quantization); the training quantizers are put back after.
    pub fn evaluate_quantized_by(
        &mut self,
        registry: &Registry,
        spec: &qatlab_core::config::PluginSpec,
        train: &Samples,
        test: &Samples,
    ) -> Result<f64> {
        let mut saved = Vec::new();
        for layer in &mut self.net.layers {
            let mut q = registry
                .quantizers
                .build(&spec.name, &spec.params)
                .map_err(|e| Error::Config(format!("eval.post_quantize: {e}")))?;
            // one calibration pass: quantize once, then let a fitted clip refit to these weights
            let ctx = qatlab_core::QuantCtx::default();
            q.quantize(&layer.weight, layer.shape, ctx, &mut layer.quantized)
                .map_err(|e| Error::Plugin(e.to_string()))?;
            q.end_epoch(&layer.weight, layer.shape, 0).map_err(|e| Error::Plugin(e.to_string()))?;
            saved.push(std::mem::replace(&mut layer.quantizer, q));
            layer.float_phase = false;
        }
        let saved_stats = self.net.norm_stats.clone();
        let mut result = Ok(());
        if self.config.eval.bias_correction {
            result = self.correct_biases(train);
        }
        if self.config.eval.recalibrate_batch_norm {
            result = result.and_then(|_| self.reestimate_batch_norm(train));
        }
        let result = result.and_then(|_| self.evaluate(test));
        self.net.norm_stats = saved_stats;
        self.net.layers.iter_mut().for_each(|l| l.bias.clear());
        for (layer, q) in self.net.layers.iter_mut().zip(saved) {
            layer.quantizer = q;
        }
        Ok(result?.1)
    }

    /// Let each quantizer refit its state at the end of `epoch`.
    pub fn end_epoch(&mut self, epoch: usize) -> Result<()> {
        for layer in &mut self.net.layers {
            layer
                .quantizer
                .end_epoch(&layer.weight, layer.shape, epoch)
                .map_err(|e| Error::Plugin(format!("{}: {e}", layer.name)))?;
        }
        Ok(())
    }
}

/// Scale every gradient (latent weights, quantizer and residual parameters) so that their joint
/// L2 norm is at most `max_norm` (PyTorch's `clip_grad_norm_`); returns the norm before.
pub fn clip_global_norm(net: &mut Network, max_norm: f32) -> f32 {
    let squares: f64 = net
        .layers
        .iter()
        .flat_map(|l| {
            l.grad_weight.iter().chain(&l.grad_params).chain(&l.grad_residual).chain(&l.grad_norm_affine)
        })
        .map(|g| (*g as f64) * (*g as f64))
        .sum();
    let norm = squares.sqrt() as f32;
    if norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for l in &mut net.layers {
            l.grad_weight
                .iter_mut()
                .chain(l.grad_params.iter_mut())
                .chain(l.grad_residual.iter_mut())
                .chain(l.grad_norm_affine.iter_mut())
                .for_each(|g| *g *= factor);
        }
    }
    norm
}

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

/// The order of the training samples in `epoch`.
pub fn epoch_order(len: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(crate::data::augment::stream_seed(seed, epoch, usize::MAX));
    order.shuffle(&mut rng);
    order
}

/// The result of a finished run.
pub struct Finished {
    /// One entry per epoch.
    pub epochs: Vec<EpochMetrics>,
    /// Σ weights × bits per weight.
    pub total_bits: f64,
    /// Test accuracy after post-training quantization, per quantizer label.
    pub post_quantized: Vec<(String, f64)>,
    /// The trained network.
    pub trainer: Trainer,
    /// Test accuracy of the stochastic weight average, when the recipe keeps one.
    pub swa_test_acc: Option<f64>,
}

/// Train `config` on `data` from scratch, reporting to `observer`.
pub fn train(
    config: &RunConfig,
    registry: &Registry,
    data: &RunData,
    observer: &mut dyn Observer,
    resume: Option<&Checkpoint>,
) -> Result<Finished> {
    let mut trainer = Trainer::new(config, registry, data.train.features)?;
    trainer.attach_teacher(registry, data.train.features)?;
    let (epochs, batch) = (config.train.epochs, config.train.batch_size);
    let mut history = Vec::new();
    if let Some(checkpoint) = resume {
        trainer.restore(checkpoint, registry)?;
        history.clone_from(&checkpoint.history);
        for m in &history {
            observer.on_epoch(m);
        }
    }
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for epoch in history.len()..epochs {
        if stops_early(config, &history) {
            break;
        }
        trainer.use_quantizers_of_epoch(registry, epoch)?;
        let float_phase = epoch < config.train.float_epochs();
        trainer.net.layers.iter_mut().for_each(|l| l.float_phase = float_phase);
        let samples = data.epoch_train(config.train.seed, epoch);
        let f = samples.features;
        let order = epoch_order(samples.len(), config.train.seed, epoch);
        let steps = epochs * samples.len().div_ceil(batch);
        let lr = trainer.lr(epoch, steps);
        let (mut loss_sum, mut correct, mut batches) = (0.0f64, 0usize, 0usize);
        let started = Instant::now();
        for (b, chunk) in order.chunks(batch).enumerate() {
            x.clear();
            labels.clear();
            for &i in chunk {
                x.extend_from_slice(&samples.x[i * f..(i + 1) * f]);
                labels.push(samples.labels[i]);
            }
            if observer.interrupted() {
                return Err(Error::Interrupted);
            }
            let mixed = config.train.mix.as_ref().and_then(|mix| {
                let seed = crate::data::augment::stream_seed(config.train.seed ^ MIX_SALT, epoch, b);
                mix_batch(&mut x, &labels, config.data.image_size, mix, seed)
            });
            let (loss, c) = trainer.train_batch(&x, &labels, mixed.as_ref(), lr as f32, epoch)?;
            loss_sum += loss as f64;
            correct += c;
            batches += 1;
            observer.on_step(epoch, ((b + 1) * batch).min(samples.len()), samples.len());
        }
        trainer.flush_accumulated(lr as f32);
        let samples_per_s = samples.len() as f64 / started.elapsed().as_secs_f64();
        if !float_phase {
            trainer.end_epoch(epoch)?;
        }
        if config.train.swa.as_ref().is_some_and(|swa| epoch >= swa.start_epoch) {
            trainer.add_to_swa();
        }
        let (test_loss, test_acc, positive_fraction) = trainer.evaluate(&data.test)?;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / batches.max(1) as f64,
            train_acc: correct as f64 / samples.len().max(1) as f64,
            test_loss,
            test_acc,
            lr,
            positive_fraction,
            samples_per_s,
            layers: trainer.net.layers.iter().map(layer_stats).collect(),
        };
        observer.on_epoch(&metrics);
        history.push(metrics);
        observer.on_checkpoint(&trainer.checkpoint(&history))?;
    }
    let total_bits = trainer.net.total_weight_bits();
    let mut post_quantized = Vec::new();
    for spec in &config.eval.post_quantize {
        post_quantized.push((
            qatlab_core::config::spec_label(spec),
            trainer.evaluate_quantized_by(registry, spec, &data.train, &data.test)?,
        ));
    }
    let swa_test_acc = trainer.evaluate_swa(&data.train, &data.test)?;
    Ok(Finished { epochs: history, total_bits, post_quantized, trainer, swa_test_acc })
}

/// Seed salt of batch mixing, so it draws independently of augmentation.
const MIX_SALT: u64 = 0x6d69_7875_7000;

/// Whether early stopping ends training after the epochs in `history`.
fn stops_early(config: &RunConfig, history: &[EpochMetrics]) -> bool {
    let Some(stopping) = &config.train.early_stopping else { return false };
    let metrics: Vec<(f64, f64)> = history.iter().map(|m| (m.test_acc, m.test_loss)).collect();
    stopping.should_stop(&metrics)
}
