//! The epoch loop of one training run: data order, batches, evaluation, checkpoints.
//! Knows nothing of files or terminals; it reports through an [`Observer`].

use std::time::Instant;

use qatlab_core::{config::RunConfig, Registry};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::Checkpoint;
use super::metrics::{layer_stats, EpochMetrics, Observer};
use super::recipe::mix_batch;
use super::Trainer;
use crate::data::RunData;
use crate::error::{Error, Result};

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
    if config.train.steps.is_some() {
        return super::steps::train_steps(config, registry, data, observer, resume);
    }
    let (mut trainer, mut history) = start(config, registry, data, observer, resume)?;
    let (epochs, batch) = (config.train.epochs, config.train.batch_size);
    let mut x = Vec::new();
    let mut labels = Vec::new();
    for epoch in history.len()..epochs {
        if stops_early(config, &history) {
            break;
        }
        trainer.use_quantizers_of_epoch(registry, epoch)?;
        let float_phase = epoch < config.train.float_epochs();
        trainer.net.layers_mut().for_each(|l| l.float_phase = float_phase);
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
        let (val_loss, val_acc) = match &data.validation {
            Some(v) => trainer.evaluate(v).map(|(loss, acc, _)| (Some(loss), Some(acc)))?,
            None => (None, None),
        };
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / batches.max(1) as f64,
            train_acc: correct as f64 / samples.len().max(1) as f64,
            test_loss,
            test_acc,
            val_loss,
            val_acc,
            lr,
            positive_fraction,
            samples_per_s,
            layers: trainer.net.layers().map(layer_stats).collect(),
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

/// The trainer of `config` with its teacher, restored from `resume` when given, and the epochs
/// already done (replayed to `observer`): how both the epoch and the step loop begin.
pub(super) fn start(
    config: &RunConfig,
    registry: &Registry,
    data: &RunData,
    observer: &mut dyn Observer,
    resume: Option<&Checkpoint>,
) -> Result<(Trainer, Vec<EpochMetrics>)> {
    let mut trainer = Trainer::new(config, registry, data.task)?;
    trainer.attach_teacher(registry)?;
    let mut history = Vec::new();
    if let Some(checkpoint) = resume {
        trainer.restore(checkpoint, registry)?;
        history = checkpoint.history().to_vec();
        history.iter().for_each(|m| observer.on_epoch(m));
    }
    Ok((trainer, history))
}

/// Seed salt of batch mixing, so it draws independently of augmentation.
const MIX_SALT: u64 = 0x6d69_7875_7000;

/// Whether early stopping ends training after the epochs in `history`.
fn stops_early(config: &RunConfig, history: &[EpochMetrics]) -> bool {
    let Some(stopping) = &config.train.early_stopping else { return false };
    // on the validation images when there are some: the test set is only reported
    let metrics: Vec<(f64, f64)> = history
        .iter()
        .map(|m| (m.val_acc.unwrap_or(m.test_acc), m.val_loss.unwrap_or(m.test_loss)))
        .collect();
    stopping.should_stop(&metrics)
}
