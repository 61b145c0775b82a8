//! Text from a trained language model: extend a prompt token by token with the shared sampler
//! ([`qatlab_deploy::sample`]), the evaluation weights (the EMA when kept) and, past the
//! context, nanoGPT's rule: crop to the last `context` tokens and recompute.

use qatlab_deploy::sample::Sampler;

use super::Trainer;
use crate::data::text::Text;
use crate::error::{Error, Result};
use crate::nn::engine::Pass;

/// What `qat sample` and a finished run's `sample.txt` use unless told otherwise.
pub const DEFAULT_TOKENS: usize = 500;
/// Default temperature.
pub const DEFAULT_TEMPERATURE: f32 = 0.8;
/// Default top-k.
pub const DEFAULT_TOP_K: usize = 40;
/// Default seed.
pub const DEFAULT_SEED: u64 = 1;
/// Default prompt (nanoGPT's `sample.py` starts from a newline).
pub const DEFAULT_PROMPT: &str = "\n";

impl Trainer {
    /// `prompt` followed by `tokens` sampled tokens, as text.
    pub fn sample(
        &mut self,
        text: &Text,
        prompt: &str,
        tokens: usize,
        sampler: &mut Sampler,
    ) -> Result<String> {
        let ids = text.encode(prompt)?;
        Ok(text.decode(&self.sample_ids(ids, tokens, sampler)?))
    }

    /// Token ids `prompt` followed by `tokens` sampled ones.
    pub fn sample_ids(&mut self, prompt: Vec<u8>, tokens: usize, sampler: &mut Sampler) -> Result<Vec<u8>> {
        let context = self.config.model.transformer.as_ref().map(|t| t.context).ok_or_else(|| {
            Error::Config("sampling needs a language model (model.kind: transformer)".into())
        })?;
        let mut ids = prompt;
        if ids.is_empty() {
            return Err(Error::Config("the prompt is empty; give at least one character".into()));
        }
        let vocab = self.task.classes;
        self.with_evaluation_weights(|t| {
            for _ in 0..tokens {
                let window: Vec<f32> =
                    ids[ids.len().saturating_sub(context)..].iter().map(|&t| t as f32).collect();
                let (logits, _) = t.engine.logits(&t.net, &window, 1, Pass::Eval);
                ids.push(sampler.pick(&logits[logits.len() - vocab..]) as u8);
            }
        })?;
        Ok(ids)
    }

    /// The next-token logits after `ids` (cropped to the context), with the evaluation weights.
    pub fn next_logits(&mut self, ids: &[u8]) -> Result<Vec<f32>> {
        let context = self.config.model.transformer.as_ref().map_or(ids.len(), |t| t.context);
        let vocab = self.task.classes;
        let window: Vec<f32> = ids[ids.len().saturating_sub(context)..].iter().map(|&t| t as f32).collect();
        self.with_evaluation_weights(|t| {
            let (logits, _) = t.engine.logits(&t.net, &window, 1, Pass::Eval);
            logits[logits.len() - vocab..].to_vec()
        })
    }
}
