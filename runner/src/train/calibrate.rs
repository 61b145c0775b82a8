//! Post-training calibration and evaluation: post-quantization by another quantizer, bias
//! correction, batch-norm re-estimation, and the SWA evaluation that needs it.

use qatlab_core::Registry;

use super::recipe::swap_params;
use super::{Trainer, CALIBRATION_SAMPLES, EVAL_BATCH};
use crate::data::Samples;
use crate::error::{Error, Result};

impl Trainer {
    /// Test accuracy of the stochastic weight average (batch-norm statistics re-estimated on
    /// `train` first when the model uses batch norm); the trained weights are put back after.
    pub fn evaluate_swa(&mut self, train: &Samples, test: &Samples) -> Result<Option<f64>> {
        if self.averages.swa.is_empty() {
            return Ok(None);
        }
        let saved_stats = self.net.running_stats_copy();
        let saved_ema = std::mem::take(&mut self.averages.ema);
        swap_params(&mut self.averages.swa, &mut self.net);
        let result = self.reestimate_batch_norm(train).and_then(|_| self.evaluate(test));
        swap_params(&mut self.averages.swa, &mut self.net);
        self.averages.ema = saved_ema;
        self.net.set_running_stats(saved_stats);
        Ok(Some(result?.1))
    }

    /// Override the post-training evaluation options (calibration) of this run.
    pub fn set_eval_options(&mut self, eval: &qatlab_core::config::EvalConfig) {
        self.config.eval = eval.clone();
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
        for layer in self.net.layers_mut() {
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
        let saved_stats = self.net.running_stats_copy();
        let mut result = Ok(());
        if self.config.eval.bias_correction {
            result = self.correct_biases(train);
        }
        if self.config.eval.recalibrate_batch_norm {
            result = result.and_then(|_| self.reestimate_batch_norm(train));
        }
        let result = result.and_then(|_| self.evaluate(test));
        self.net.set_running_stats(saved_stats);
        self.net.layers_mut().for_each(|l| l.bias.clear());
        for (layer, q) in self.net.layers_mut().zip(saved) {
            layer.quantizer = q;
        }
        Ok(result?.1)
    }

    /// Empirical bias correction: give every fully connected layer the output bias
    /// (W − Ŵ)·E[x], with E[x] its mean input in the float network over the first
    /// [`CALIBRATION_SAMPLES`] of `train` and Ŵ its current quantizer's weights.
    pub fn correct_biases(&mut self, train: &Samples) -> Result<()> {
        let seed = self.config.train.seed;
        let phases: Vec<bool> = self.net.layers().map(|l| l.float_phase).collect();
        self.net.layers_mut().for_each(|l| l.float_phase = true);
        self.net.quantize_all(false, self.step, 0, seed)?;
        let n = train.len().min(CALIBRATION_SAMPLES);
        let f = train.features;
        let mut sums: Vec<(String, Vec<f32>)> = Vec::new();
        for start in (0..n).step_by(EVAL_BATCH) {
            let count = EVAL_BATCH.min(n - start);
            let means =
                self.engine.mean_layer_inputs(&self.net, &train.x[start * f..(start + count) * f], count);
            if sums.is_empty() {
                sums = means.iter().map(|(l, m)| (l.clone(), vec![0.0; m.len()])).collect();
            }
            for ((_, sum), (_, mean)) in sums.iter_mut().zip(&means) {
                sum.iter_mut().zip(mean).for_each(|(s, m)| *s += m * count as f32 / n as f32);
            }
        }
        self.net.layers_mut().zip(phases).for_each(|(l, phase)| l.float_phase = phase);
        self.net.quantize_all(false, self.step, 0, seed)?;
        for (name, mean) in sums {
            let Some(layer) = self.net.layers_mut().find(|l| l.name == name) else { continue };
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
        if self.net.running_stats().is_empty() {
            return Ok(());
        }
        self.net.quantize_all(false, self.step, 0, self.config.train.seed)?;
        let (f, batch) = (train.features, self.config.train.batch_size.max(2));
        let mut sums: Vec<crate::nn::model::RunningStats> = self
            .net
            .running_stats()
            .iter()
            .map(|(_, s)| crate::nn::model::RunningStats::new(s.mean.len()))
            .collect();
        sums.iter_mut().for_each(|s| s.var.iter_mut().for_each(|v| *v = 0.0));
        let mut batches = 0usize;
        for start in (0..train.len()).step_by(batch) {
            let n = batch.min(train.len() - start);
            if n < 2 {
                continue;
            }
            let stats =
                self.engine.batch_statistics(&self.net, &train.x[start * f..(start + n) * f], n, self.step);
            for (sum, b) in sums.iter_mut().zip(&stats) {
                let unbiased = n as f32 / (n - 1) as f32;
                sum.mean.iter_mut().zip(&b.mean).for_each(|(s, m)| *s += m);
                sum.var.iter_mut().zip(&b.var).for_each(|(s, v)| *s += v * unbiased);
            }
            batches += 1;
        }
        for ((_, running), sum) in self.net.running_stats_mut().into_iter().zip(sums) {
            running.mean = sum.mean.iter().map(|s| s / batches.max(1) as f32).collect();
            running.var = sum.var.iter().map(|s| s / batches.max(1) as f32).collect();
        }
        Ok(())
    }
}
