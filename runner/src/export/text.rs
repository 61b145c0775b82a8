//! Language-model files at work: `qat infer` scores the header's evaluation windows on the
//! runtime (and, with `--compare`, with the training engine on the same windows), and
//! `qat generate` streams text from a prompt with the shared sampler.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use qatlab_core::config::{DataConfig, Dataset, Tokenizer};
use qatlab_core::Registry;
use qatlab_deploy::decoder::Decoder;
use qatlab_deploy::format::{ModelFile, TextSpec, TokenizerKind};
use qatlab_deploy::sample::Sampler;

use crate::data::text::{Text, EVAL_SEED};
use crate::data::{self};
use crate::error::{Error, Result};
use crate::nn::loss::cross_entropy_sum;
use crate::train::load_finished;

/// A language model's text side, or an error saying the file holds an image classifier.
pub fn text_of(model: &ModelFile) -> Result<&TextSpec> {
    model.header.text.as_ref().ok_or_else(|| {
        Error::Config(format!("{}: an image classifier, not a language model", model.header.name))
    })
}

/// The text the model was evaluated on: Tiny Shakespeare from the datasets folder, or for
/// `dataset: text` the file given with `--data`, checked against the header's SHA-256.
pub fn evaluation_text(spec: &TextSpec, data_file: Option<&Path>) -> Result<Text> {
    let e = &spec.evaluation;
    let text = match e.dataset.as_str() {
        "tinyshakespeare" => {
            Text::load(Dataset::Tinyshakespeare, &data::find_dir(Dataset::Tinyshakespeare)?)?
        }
        "text" => {
            let file = data_file.ok_or_else(|| {
                Error::Config(
                    "the model was evaluated on a text file of its own (dataset: text); give it with --data FILE"
                        .into(),
                )
            })?;
            let config = DataConfig {
                dataset: Dataset::Text,
                path: Some(file.display().to_string()),
                tokenizer: Some(match spec.tokenizer {
                    TokenizerKind::Char => Tokenizer::Char,
                    TokenizerKind::Byte => Tokenizer::Byte,
                }),
                val_fraction: Some(e.val_fraction),
                ..DataConfig::default()
            };
            Text::from_file(&config)?
        }
        other => {
            return Err(Error::Config(format!("the model was evaluated on `{other}`, which qat cannot load")))
        }
    };
    if text.sha256 != e.sha256 {
        return Err(Error::Data(format!(
            "the text's SHA-256 is {}, but the model was evaluated on {}: give the same file",
            text.sha256, e.sha256
        )));
    }
    if e.seed != EVAL_SEED {
        return Err(Error::Config(format!(
            "the evaluation windows were drawn from seed {:#x}; this qat draws them from {EVAL_SEED:#x}",
            e.seed
        )));
    }
    Ok(text)
}

/// The header's evaluation windows: `batches` batches of `batch` windows of `context` tokens
/// (inputs as token ids, and the targets).
pub fn evaluation_windows(spec: &TextSpec, text: &Text) -> Result<Vec<(Vec<f32>, Vec<u8>)>> {
    let e = &spec.evaluation;
    (0..e.batches).map(|i| text.eval_windows(i, e.batch, spec.context).map(|w| (w.x, w.targets))).collect()
}

/// What the runtime scored.
pub struct TextScore {
    /// Mean loss per target token, nats.
    pub loss: f64,
    /// Share of targets that were the most likely token.
    pub accuracy: f64,
    /// Targets scored.
    pub tokens: usize,
    /// Wall time.
    pub seconds: f64,
}

/// Score `windows` on `decoder`, `per_call` windows per forward pass.
pub fn score(decoder: &Decoder, windows: &[(Vec<f32>, Vec<u8>)], per_call: usize) -> Result<TextScore> {
    let context = decoder.text().context;
    let start = Instant::now();
    let (mut loss, mut correct, mut tokens) = (0.0, 0, 0);
    for (x, targets) in windows {
        let ids: Vec<u8> = x.iter().map(|&t| t as u8).collect();
        for (ids, targets) in
            ids.chunks(per_call.max(1) * context).zip(targets.chunks(per_call.max(1) * context))
        {
            let logits =
                decoder.window_logits(ids, ids.len() / context).map_err(|e| Error::Config(e.to_string()))?;
            let (l, c) = cross_entropy_sum(&logits, targets, decoder.vocab());
            (loss, correct, tokens) = (loss + l, correct + c, tokens + targets.len());
        }
    }
    Ok(TextScore {
        loss: loss / tokens.max(1) as f64,
        accuracy: correct as f64 / tokens.max(1) as f64,
        tokens,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The training engine's loss and accuracy on the same windows (the run's evaluation weights).
pub fn training_score(
    run: &Path,
    registry: &Registry,
    windows: &[(Vec<f32>, Vec<u8>)],
) -> Result<(f64, f64)> {
    let mut run = load_finished(run, registry)?;
    let context = run.config.model.transformer.as_ref().map(|t| t.context).ok_or_else(|| {
        Error::Config("--compare: the run is not a language model (model.kind: transformer)".into())
    })?;
    run.trainer.evaluate_windows(windows, context)
}

/// Token ids of `prompt`, cropped to the last `context` tokens with a notice on stderr when longer.
pub fn prompt_ids(spec: &TextSpec, prompt: &str) -> Result<Vec<u8>> {
    let ids = spec.encode(prompt).map_err(|e| Error::Config(format!("--prompt: {e}")))?;
    if ids.is_empty() {
        return Err(Error::Config("--prompt: empty; give at least one character".into()));
    }
    if ids.len() > spec.context {
        eprintln!(
            "note: the prompt has {} tokens; the model sees the last {} (its context)",
            ids.len(),
            spec.context
        );
    }
    Ok(ids)
}

/// Write `prompt` and then each of `count` generated tokens to `out` as it is drawn (bytes
/// of the byte tokenizer are held back until they complete a character).
pub fn generate(
    decoder: &Decoder,
    prompt: &[u8],
    count: usize,
    sampler: &mut Sampler,
    out: &mut impl Write,
) -> Result<Vec<u8>> {
    let spec = decoder.text();
    let io = |e: std::io::Error| Error::Config(format!("writing the text: {e}"));
    write!(out, "{}", spec.decode(prompt)).map_err(io)?;
    let mut pending: Vec<u8> = Vec::new();
    let mut failed = None;
    let ids = decoder
        .generate(prompt, count, sampler, |token| {
            pending.push(token);
            let text = match spec.tokenizer {
                TokenizerKind::Char => Some(spec.decode(&pending)),
                TokenizerKind::Byte => match std::str::from_utf8(&pending) {
                    Ok(s) => Some(s.to_string()),
                    Err(e) if e.error_len().is_none() && pending.len() < 4 => None,
                    Err(_) => Some(String::from_utf8_lossy(&pending).into_owned()),
                },
            };
            if let Some(text) = text {
                pending.clear();
                if let Err(e) = write!(out, "{text}").and_then(|_| out.flush()) {
                    failed.get_or_insert(e);
                }
            }
        })
        .map_err(|e| Error::Config(e.to_string()))?;
    if let Some(e) = failed {
        return Err(io(e));
    }
    write!(out, "{}", String::from_utf8_lossy(&pending)).map_err(io)?;
    Ok(ids)
}

/// Where the runtime's text and the training engine's (`qat sample`) part: the token index
/// after the prompt, each side's pick, and both engines' logits for those two tokens there.
pub struct Parting {
    /// Generated tokens before the first difference.
    pub index: usize,
    /// The runtime's and the training engine's pick.
    pub picks: (u8, u8),
    /// The runtime's logits of (its pick, the training pick).
    pub runtime: (f32, f32),
    /// The training engine's logits of (the runtime pick, its pick).
    pub training: (f32, f32),
}

/// Generate `count` tokens after `prompt` with the training engine of `run` and the same
/// sampler settings, and compare with the runtime's `generated` ids (prompt included): None
/// when they agree token for token.
pub fn parting_from_sample(
    decoder: &Decoder,
    run: &Path,
    registry: &Registry,
    generated: &[u8],
    prompt_len: usize,
    mut sampler: Sampler,
) -> Result<Option<Parting>> {
    let mut finished = load_finished(run, registry)?;
    let count = generated.len() - prompt_len;
    let trained = finished.trainer.sample_ids(generated[..prompt_len].to_vec(), count, &mut sampler)?;
    let Some(at) = (prompt_len..generated.len()).find(|&i| generated[i] != trained[i]) else {
        return Ok(None);
    };
    let prefix = &generated[..at];
    let context = decoder.text().context;
    let window = &prefix[prefix.len().saturating_sub(context)..];
    let runtime = decoder.window_logits(window, 1).map_err(|e| Error::Config(e.to_string()))?;
    let runtime = &runtime[runtime.len() - decoder.vocab()..];
    let training = finished.trainer.next_logits(prefix)?;
    let (r, t) = (generated[at] as usize, trained[at] as usize);
    Ok(Some(Parting {
        index: at - prompt_len,
        picks: (generated[at], trained[at]),
        runtime: (runtime[r], runtime[t]),
        training: (training[r], training[t]),
    }))
}
