//! The trainer: a network with its optimizer state, and one training step (forward, loss,
//! backward, quantizer backward) on a batch.

use std::collections::BTreeMap;

use qatlab_core::{config::RunConfig, Progress, Registry, Schedule};

use super::optim::{AdamConfig, AdamState};
use super::recipe::{Accumulator, Averages, Mixed};
use super::teacher::Teacher;
use crate::data::Task;
use crate::error::{Error, Result};
use crate::nn::engine::{Engine, Pass};
use crate::nn::loss::{cross_entropy_smoothed, cross_entropy_sum};
use crate::nn::model::Network;

/// A run in progress: network, optimizer state and the run's randomness.
pub struct Trainer {
    /// The network being trained.
    pub net: Network,
    pub(super) engine: Engine,
    pub(super) schedule: Box<dyn Schedule>,
    /// The multiplier of the weight decay over training (`train.weight_decay_schedule`).
    pub(super) weight_decay_schedule: Option<Box<dyn Schedule>>,
    pub(super) adam: AdamConfig,
    pub(super) base_lr: f64,
    /// Optimizer state of every parameter, by path.
    pub(super) moments: BTreeMap<String, AdamState>,
    pub(super) config: RunConfig,
    /// What the dataset asks of the network (input shape, classes).
    pub(super) task: Task,
    pub(super) step: u64,
    pub(super) teacher: Option<Teacher>,
    pub(super) averages: Averages,
    pub(super) accumulator: Accumulator,
    /// The quantizer each layer was built from (changes with `train.quantizer_schedule`).
    pub(super) layer_specs: Vec<qatlab_core::config::PluginSpec>,
}

impl Trainer {
    /// Build the network and optimizer for `config`.
    pub fn new(config: &RunConfig, registry: &Registry, task: Task) -> Result<Self> {
        let net = Network::new(registry, config, &task)?;
        let spec = &config.train.schedule;
        let schedule = registry
            .schedules
            .build(&spec.name, &spec.params)
            .map_err(|e| Error::Config(format!("train.schedule: {e}")))?;
        let weight_decay_schedule = match &config.train.weight_decay_schedule {
            Some(spec) => Some(
                registry
                    .schedules
                    .build(&spec.name, &spec.params)
                    .map_err(|e| Error::Config(format!("train.weight_decay_schedule: {e}")))?,
            ),
            None => None,
        };
        let o = &config.train.optimizer;
        let layers = net.layer_count();
        Ok(Self {
            net,
            weight_decay_schedule,
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
            moments: BTreeMap::new(),
            config: config.clone(),
            task,
            step: 0,
            teacher: None,
            averages: Averages::default(),
            accumulator: Accumulator::default(),
            layer_specs: (0..layers).map(|i| config.model.layer(i, layers, &config.quantizer).0).collect(),
        })
    }

    /// What the dataset asks of the network.
    pub fn task(&self) -> Task {
        self.task
    }

    /// The quantizer layer `i` is built from now: the one `train.quantizer_schedule` gave it
    /// for the last epoch trained or restored, which export and analysis must name.
    pub fn quantizer_spec(&self, i: usize) -> &qatlab_core::config::PluginSpec {
        &self.layer_specs[i]
    }

    /// Load the distillation teacher the config names (training only: restoring a finished
    /// run for evaluation or export does not need it).
    pub fn attach_teacher(&mut self, registry: &Registry) -> Result<()> {
        if let Some(spec) = &self.config.train.distill {
            self.teacher = Some(Teacher::load(spec, registry, self.task)?.matching_features(&self.config)?);
        }
        Ok(())
    }

    /// Learning rate of `epoch` (and the weight decay of it, when scheduled).
    pub fn lr(&mut self, epoch: usize, steps: usize) -> f64 {
        let epochs = self.config.train.epochs;
        self.at(Progress { epoch, step: self.step as usize, epochs, steps })
    }

    /// Learning rate of the next optimizer step of a run of `steps` steps (and its weight decay,
    /// when scheduled): the schedules see each step as an epoch of `steps`, so epoch-keyed
    /// schedules (`warmup-cosine {warmup: 100}`) count steps.
    pub fn lr_at_step(&mut self, steps: usize) -> f64 {
        let step = self.step as usize;
        self.at(Progress { epoch: step, step, epochs: steps, steps })
    }

    /// Set the scheduled weight decay for `p` and return the learning rate there.
    fn at(&mut self, p: Progress) -> f64 {
        if let Some(schedule) = &self.weight_decay_schedule {
            self.adam.weight_decay = (self.config.train.optimizer.weight_decay * schedule.value(p)) as f32;
        }
        self.base_lr * self.schedule.value(p)
    }

    /// Optimizer steps taken.
    pub fn steps_taken(&self) -> u64 {
        self.step
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
        // samples in the batch: one label each, or a language model's window of `context`
        let batch = match &self.config.model.transformer {
            Some(t) => x.len() / t.context,
            None => labels.len(),
        };
        let classes = self.task.classes;
        let teacher = self.teacher.as_ref().map(|t| {
            let features =
                if t.loss.uses_features() { t.engine.features(&t.net, x, batch) } else { Vec::new() };
            (t.engine.logits(&t.net, x, batch, Pass::Eval).0, features, &t.loss)
        });
        let loss_of = |logits: &[f32], labels: &[u8], grad: &mut [f32]| match &teacher {
            Some((teacher_logits, _, distiller)) => {
                distiller.loss(logits, teacher_logits, labels, classes, grad)
            }
            None => cross_entropy_smoothed(logits, labels, classes, smoothing, grad).0,
        };
        let with_features = teacher.as_ref().is_some_and(|t| !t.1.is_empty());
        let mut loss_grad = |logits: &[f32],
                             features: &[f32],
                             grad: &mut [f32],
                             grad_features: &mut [f32]| {
            correct = cross_entropy_sum(logits, labels, classes).1;
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
        let mut loss = self.engine.backward_with_features(
            &mut self.net,
            x,
            batch,
            self.step,
            with_features,
            &mut loss_grad,
        );
        for layer in self.net.layers_mut() {
            layer.backward_quantizer();
            loss += layer.quantizer.regularizer(layer.shape, &mut layer.grad_params);
        }
        if !loss.is_finite() {
            return Err(Error::Diverged(format!("loss is {loss} at step {}", self.step)));
        }
        let accumulate = self.config.train.grad_accumulation;
        if accumulate > 1 {
            self.accumulator.add(&mut self.net);
            if self.accumulator.pending() < accumulate {
                return Ok((loss, correct));
            }
            self.accumulator.take_mean_into(&mut self.net);
        }
        self.optimizer_step(lr);
        Ok((loss, correct))
    }

    /// Give every layer the quantizer `train.quantizer_schedule` assigns to `epoch`; a layer
    /// whose quantizer changes starts with a fresh quantizer and fresh optimizer state for its
    /// parameters.
    pub fn use_quantizers_of_epoch(&mut self, registry: &Registry, epoch: usize) -> Result<()> {
        let count = self.net.layer_count();
        for (i, layer) in self.net.layers_mut().enumerate() {
            let (spec, _) = self.config.model.layer(i, count, self.config.quantizer_at(epoch));
            if spec == self.layer_specs[i] {
                continue;
            }
            layer.quantizer = registry
                .quantizers
                .build(&spec.name, &spec.params)
                .map_err(|e| Error::Config(format!("quantizer of {} at epoch {epoch}: {e}", layer.name)))?;
            layer.quantized = Default::default();
            self.moments.remove(&format!("{}.quantizer.params", layer.name));
            self.layer_specs[i] = spec;
        }
        Ok(())
    }

    /// Let each quantizer refit its state at the end of `epoch`.
    pub fn end_epoch(&mut self, epoch: usize) -> Result<()> {
        for layer in self.net.layers_mut() {
            layer
                .quantizer
                .end_epoch(&layer.weight, layer.shape, epoch)
                .map_err(|e| Error::Plugin(format!("{}: {e}", layer.name)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_weight_decay_follows_its_schedule() {
        let config: RunConfig = serde_yaml::from_str(
            "name: wd\nmodel: {hidden: [4]}\ntrain: {epochs: 4, optimizer: {name: adamw, weight_decay: 0.1}, \
             weight_decay_schedule: {name: step, size: 2, gamma: 0}}",
        )
        .unwrap();
        let task = Task { channels: 1, side: 2, classes: 3 };
        let mut trainer = Trainer::new(&config, &qatlab_plugins::builtin_registry(), task).unwrap();
        trainer.lr(1, 8);
        assert!((trainer.adam.weight_decay - 0.1).abs() < 1e-7, "first stage: decayed");
        trainer.lr(2, 8);
        assert_eq!(trainer.adam.weight_decay, 0.0, "second stage: no decay");
    }
}
