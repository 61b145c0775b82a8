//! Evaluation on the test set with the evaluation quantization (the EMA weights when the recipe
//! keeps them).

use super::recipe::swap_params;
use super::{Trainer, EVAL_BATCH};
use crate::data::Samples;
use crate::error::Result;
use crate::nn::engine::Pass;
use crate::nn::loss::cross_entropy_sum;

impl Trainer {
    /// Test loss, accuracy and positive-activation share with the evaluation quantization.
    pub fn evaluate(&mut self, test: &Samples) -> Result<(f64, f64, f64)> {
        let (mut loss, mut correct, mut positive, mut seen) = (0.0, 0, 0, 0);
        let classes = self.task.classes;
        self.for_each_test_batch(test, |logits, labels, (pos, count)| {
            let (l, c) = cross_entropy_sum(logits, labels, classes);
            loss += l;
            correct += c;
            positive += pos;
            seen += count;
        })?;
        let n = test.len().max(1) as f64;
        Ok((loss / n, correct as f64 / n, positive as f64 / seen.max(1) as f64))
    }

    /// Logits of every test sample (`n × classes`) with the evaluation quantization.
    pub fn test_logits(&mut self, test: &Samples) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(test.len() * self.task.classes);
        self.for_each_test_batch(test, |logits, _, _| out.extend_from_slice(logits))?;
        Ok(out)
    }

    /// Run `f` on the evaluation weights: the EMA when the recipe keeps one, quantized for
    /// evaluation; the training weights are put back after.
    pub(super) fn with_evaluation_weights<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> Result<R> {
        swap_params(&mut self.averages.ema, &mut self.net);
        let result = self.net.quantize_all(false, self.step, 0, self.config.train.seed).map(|_| f(self));
        swap_params(&mut self.averages.ema, &mut self.net);
        result
    }

    /// Visit each test batch's logits, labels and (positive activations, activations) with the
    /// evaluation weights.
    fn for_each_test_batch(
        &mut self,
        test: &Samples,
        mut visit: impl FnMut(&[f32], &[u8], (u64, u64)),
    ) -> Result<()> {
        self.with_evaluation_weights(|t| {
            let f = test.features;
            for start in (0..test.len()).step_by(EVAL_BATCH) {
                let end = (start + EVAL_BATCH).min(test.len());
                let (logits, positive) =
                    t.engine.logits(&t.net, &test.x[start * f..end * f], end - start, Pass::Eval);
                visit(&logits, &test.labels[start..end], positive);
            }
        })
    }

    /// Mean loss per target and share of correctly predicted targets over batches of windows of
    /// `context` tokens, each token's successor its target (a language model's evaluation), with
    /// the evaluation weights.
    pub fn evaluate_windows(
        &mut self,
        batches: &[(Vec<f32>, Vec<u8>)],
        context: usize,
    ) -> Result<(f64, f64)> {
        self.with_evaluation_weights(|t| {
            let (mut loss, mut correct, mut targets) = (0.0, 0, 0);
            for (x, labels) in batches {
                let (logits, _) = t.engine.logits(&t.net, x, x.len() / context.max(1), Pass::Eval);
                let (l, c) = cross_entropy_sum(&logits, labels, t.task.classes);
                (loss, correct, targets) = (loss + l, correct + c, targets + labels.len());
            }
            (loss / targets.max(1) as f64, correct as f64 / targets.max(1) as f64)
        })
    }
}
