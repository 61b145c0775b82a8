//! The step loop of a language model: `train.steps` optimizer steps on random training windows
//! drawn from (seed, step), an evaluation on fixed validation windows every `eval.every` steps,
//! and a checkpoint after each. Every evaluation interval counts as an epoch for the settings
//! keyed by epochs, and its metrics are an epoch's: `test_loss` / `test_acc` are the validation
//! loss (nats per token) and next-token accuracy, `samples_per_s` is tokens per second.

use std::time::Instant;

use qatlab_core::config::RunConfig;
use qatlab_core::Registry;

use super::checkpoint::Checkpoint;
use super::epochs::Finished;
use super::metrics::{layer_stats, EpochMetrics, Observer};
use crate::data::text::Text;
use crate::data::RunData;
use crate::error::{Error, Result};

/// Evaluation batches when `eval.batches` is not set (nanoGPT's 20).
pub const DEFAULT_EVAL_BATCHES: usize = 20;

/// Train the language model `config` describes on `data`'s text.
pub fn train_steps(
    config: &RunConfig,
    registry: &Registry,
    data: &RunData,
    observer: &mut dyn Observer,
    resume: Option<&Checkpoint>,
) -> Result<Finished> {
    let text =
        data.text.as_ref().ok_or_else(|| Error::Config("train.steps: the dataset is not text".into()))?;
    let context = config.model.transformer.as_ref().map(|t| t.context).ok_or_else(|| {
        Error::Config("train.steps: only a language model (model.kind: transformer) trains by steps".into())
    })?;
    let (every, steps) = config.steps_per_eval().unwrap_or((1, 0));
    let intervals = steps.div_ceil(every);
    let (batch, accumulate, seed) =
        (config.train.batch_size, config.train.grad_accumulation.max(1), config.train.seed);
    let eval = eval_batches(text, config.eval.batches.unwrap_or(DEFAULT_EVAL_BATCHES), batch, context)?;
    let (mut trainer, mut history) = super::epochs::start(config, registry, data, observer, resume)?;
    for interval in history.len()..intervals {
        trainer.use_quantizers_of_epoch(registry, interval)?;
        let float_phase = interval < config.train.float_epochs();
        trainer.net.layers_mut().for_each(|l| l.float_phase = float_phase);
        let last = ((interval + 1) * every).min(steps);
        let (mut loss_sum, mut correct, mut batches, mut tokens) = (0.0f64, 0usize, 0usize, 0usize);
        let started = Instant::now();
        let mut lr = 0.0;
        while (trainer.steps_taken() as usize) < last {
            if observer.interrupted() {
                return Err(Error::Interrupted);
            }
            let step = trainer.steps_taken() as usize;
            lr = trainer.lr_at_step(steps);
            // with accumulation, batch k of the step draws from (seed, step·accumulate + k)
            for k in 0..accumulate {
                let w = text.train_windows(seed, step * accumulate + k, batch, context)?;
                let (loss, c) = trainer.train_batch(&w.x, &w.targets, None, lr as f32, interval)?;
                (loss_sum, correct, batches, tokens) =
                    (loss_sum + loss as f64, correct + c, batches + 1, tokens + w.targets.len());
            }
            observer.on_step(interval, last.min(step + 1) - interval * every, last - interval * every);
        }
        let tokens_per_s = tokens as f64 / started.elapsed().as_secs_f64();
        if !float_phase {
            trainer.end_epoch(interval)?;
        }
        let (val_loss, val_acc) = trainer.evaluate_windows(&eval, context)?;
        let metrics = EpochMetrics {
            epoch: interval + 1,
            train_loss: loss_sum / batches.max(1) as f64,
            train_acc: correct as f64 / tokens.max(1) as f64,
            test_loss: val_loss,
            test_acc: val_acc,
            val_loss: None,
            val_acc: None,
            lr,
            positive_fraction: 0.0,
            samples_per_s: tokens_per_s,
            layers: trainer.net.layers().map(layer_stats).collect(),
        };
        observer.on_epoch(&metrics);
        history.push(metrics);
        observer.on_checkpoint(&trainer.checkpoint(&history))?;
    }
    let total_bits = trainer.net.total_weight_bits();
    Ok(Finished { epochs: history, total_bits, post_quantized: Vec::new(), trainer, swa_test_acc: None })
}

/// The evaluation windows: `count` batches of `batch` validation windows.
fn eval_batches(text: &Text, count: usize, batch: usize, context: usize) -> Result<Vec<(Vec<f32>, Vec<u8>)>> {
    (0..count).map(|i| text.eval_windows(i, batch, context).map(|w| (w.x, w.targets))).collect()
}
