//! Text datasets for language models: the token streams of the training and validation splits,
//! and the windows drawn from them.
//!
//! Tiny Shakespeare follows nanoGPT's `shakespeare_char`: the vocabulary is the sorted set of
//! the file's characters (65), the first 90 % of the characters train and the last 10 %
//! validate, so numbers compare with nanoGPT's. `dataset: text` does the same for a file the
//! user brings, by character or by byte, with its own validation share; planning resolves the
//! file ([`TextFiles::resolve`]) so every problem is reported before a run starts. A window is `context + 1` consecutive tokens at
//! an offset drawn uniformly from [0, len − context): its first `context` tokens are the input,
//! its last `context` the targets. Training windows are drawn from (seed, step), so a resumed
//! run sees the batches an uninterrupted one would; evaluation windows from a fixed seed, so
//! every run of a sweep is scored on the same text.

use std::path::Path;

use qatlab_core::config::{DataConfig, Dataset, Tokenizer};
use qatlab_deploy::format::{decode_tokens, encode_text, TokenizerKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::augment::stream_seed;
use crate::error::{Error, Result};

/// Share of the text that trains (nanoGPT's split).
pub const TRAIN_FRACTION: f64 = 0.9;
/// The seed of evaluation windows (the same for every run).
pub const EVAL_SEED: u64 = 0x5e1f_e7a1;
/// Tiny Shakespeare's vocabulary size.
pub const SHAKESPEARE_VOCAB: usize = 65;
/// Tiny Shakespeare's validation tokens (1,115,394 characters, the last 10 %).
pub const SHAKESPEARE_VAL_TOKENS: usize = 111_540;

/// A tokenized text split into training and validation streams.
#[derive(Clone, Debug)]
pub struct Text {
    /// How text becomes tokens.
    pub tokenizer: Tokenizer,
    /// The vocabulary of the char tokenizer: token id → character (empty for bytes).
    pub vocab: Vec<char>,
    /// Training tokens.
    pub train: Vec<u8>,
    /// Validation tokens.
    pub val: Vec<u8>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// One batch of windows: inputs as token ids (`batch × context`, as f32 for the graph's host
/// input) and the next token of each position (`batch × context`).
pub struct Windows {
    /// Input token ids.
    pub x: Vec<f32>,
    /// Target token ids.
    pub targets: Vec<u8>,
}

impl Text {
    /// Load `dataset` from `root/<dataset>/` and check its SHA-256.
    pub fn load(dataset: Dataset, root: &Path) -> Result<Self> {
        let remote = super::fetch::dataset(dataset.dir_name())?;
        let file = &remote.files[0];
        let path = root.join(dataset.dir_name()).join(file.name);
        let bytes =
            std::fs::read(&path).map_err(|e| Error::Data(format!("cannot read {}: {e}", path.display())))?;
        let sha256 = super::sha256_hex(&bytes);
        if sha256 != file.sha256 {
            return Err(Error::Data(format!(
                "{}: SHA-256 {sha256}, expected {}; the file is not the dataset's (fetch it again with `qat data fetch {}`)",
                path.display(),
                file.sha256,
                dataset.dir_name()
            )));
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::Data(format!("{}: not UTF-8 ({e}); the char tokenizer needs text", path.display()))
        })?;
        Self::from_text(&text, sha256)
    }

    /// Tokenize `text` by character and split it 90 / 10.
    pub fn from_text(text: &str, sha256: String) -> Result<Self> {
        Self::tokenize(text.as_bytes(), Tokenizer::Char, 1.0 - TRAIN_FRACTION, sha256)
    }

    /// Read a `dataset: text` file as planning resolved it ([`TextFiles`]): the same bytes (by
    /// SHA-256), tokenized and split as configured.
    pub fn from_file(config: &DataConfig) -> Result<Self> {
        let path = config.path.as_deref().unwrap_or_default();
        let bytes = std::fs::read(path).map_err(|e| Error::Data(format!("data.path {path}: {e}")))?;
        let sha256 = super::sha256_hex(&bytes);
        if let Some(expected) = config.sha256.as_deref().filter(|&e| e != sha256) {
            return Err(Error::Data(format!(
                "data.path {path}: SHA-256 {sha256}, but the run was planned with {expected}; the file changed (restore it, or start a new experiment)"
            )));
        }
        Self::tokenize(&bytes, config.tokenizer.unwrap_or_default(), config.val_fraction(), sha256)
    }

    /// Tokenize `bytes`; the last `val_fraction` of the tokens validate.
    fn tokenize(bytes: &[u8], tokenizer: Tokenizer, val_fraction: f64, sha256: String) -> Result<Self> {
        let (vocab, tokens) = match tokenizer {
            Tokenizer::Byte => (Vec::new(), bytes.to_vec()),
            Tokenizer::Char => {
                let text = std::str::from_utf8(bytes).map_err(|e| {
                    Error::Data(format!(
                        "not UTF-8 ({e}); the char tokenizer needs text, or use data.tokenizer: byte"
                    ))
                })?;
                let chars: Vec<char> = text.chars().collect();
                let mut vocab = chars.clone();
                vocab.sort_unstable();
                vocab.dedup();
                if vocab.len() > 256 {
                    return Err(Error::Data(format!(
                        "{} distinct characters; the char tokenizer holds 256 (use data.tokenizer: byte)",
                        vocab.len()
                    )));
                }
                let tokens =
                    chars.iter().map(|c| vocab.binary_search(c).expect("in the vocabulary") as u8).collect();
                (vocab, tokens)
            }
        };
        let split = (tokens.len() as f64 * (1.0 - val_fraction)) as usize;
        Ok(Self { tokenizer, vocab, val: tokens[split..].to_vec(), train: tokens[..split].to_vec(), sha256 })
    }

    /// Tokens the model can tell apart: the characters, or 256 bytes.
    pub fn vocab_size(&self) -> usize {
        match self.tokenizer {
            Tokenizer::Char => self.vocab.len(),
            Tokenizer::Byte => 256,
        }
    }

    /// `batch` training windows of `context` tokens for optimizer step `step`.
    pub fn train_windows(&self, seed: u64, step: usize, batch: usize, context: usize) -> Result<Windows> {
        windows(&self.train, "training", stream_seed(seed, step, 0x7e87), batch, context)
    }

    /// Evaluation batch `index` (of `batch` validation windows).
    pub fn eval_windows(&self, index: usize, batch: usize, context: usize) -> Result<Windows> {
        windows(&self.val, "validation", stream_seed(EVAL_SEED, index, 0xe7a1), batch, context)
    }

    /// Validation batch `index` of draw `draw` of random windows (draws other than the fixed
    /// evaluation set, to see how much a sampled estimate of the loss varies).
    pub fn random_val_windows(
        &self,
        draw: u64,
        index: usize,
        batch: usize,
        context: usize,
    ) -> Result<Windows> {
        let seed = stream_seed(EVAL_SEED ^ draw.wrapping_mul(0x9e37_79b9_7f4a_7c15), index, 0xd7a3);
        windows(&self.val, "validation", seed, batch, context)
    }

    /// The whole validation split as consecutive windows of `context` tokens (the last partial
    /// one left out), in batches of `batch`.
    pub fn validation_split(&self, batch: usize, context: usize) -> Vec<Windows> {
        let starts: Vec<usize> = (0..self.val.len().saturating_sub(context)).step_by(context).collect();
        starts
            .chunks(batch.max(1))
            .map(|chunk| Windows {
                x: chunk
                    .iter()
                    .flat_map(|&at| self.val[at..at + context].iter().map(|&t| t as f32))
                    .collect(),
                targets: chunk
                    .iter()
                    .flat_map(|&at| self.val[at + 1..at + 1 + context].iter().copied())
                    .collect(),
            })
            .collect()
    }

    /// Token ids of `text`; characters outside the vocabulary are an error naming them.
    pub fn encode(&self, text: &str) -> Result<Vec<u8>> {
        encode_text(self.tokenizer_kind(), &self.vocab, text).map_err(Error::Config)
    }

    /// Decode token ids to text (bytes that are not UTF-8 show as U+FFFD).
    pub fn decode(&self, tokens: &[u8]) -> String {
        decode_tokens(self.tokenizer_kind(), &self.vocab, tokens)
    }

    /// The tokenizer as the model file names it.
    pub fn tokenizer_kind(&self) -> TokenizerKind {
        match self.tokenizer {
            Tokenizer::Char => TokenizerKind::Char,
            Tokenizer::Byte => TokenizerKind::Byte,
        }
    }
}

/// What planning learns of a text file: its full path, SHA-256, and the tokenizer's vocabulary
/// and split sizes (or why it cannot tokenize).
struct Facts {
    full: String,
    sha256: String,
    tokens: std::result::Result<(usize, usize, usize), String>,
}

/// The `dataset: text` files of one experiment being planned, each read and tokenized once
/// however many runs of the sweep name it.
#[derive(Default)]
pub struct TextFiles {
    seen: std::collections::HashMap<String, std::result::Result<Facts, String>>,
}

impl std::fmt::Debug for TextFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextFiles").field("files", &self.seen.len()).finish()
    }
}

impl TextFiles {
    /// Resolve `data` of a run planned from an experiment file in `base` for a model of
    /// `context` tokens: read the file (its path relative to `base`), fill in its full path,
    /// SHA-256 and vocabulary size, and check that both splits hold more than one window.
    /// Errors name the key and the fix.
    pub fn resolve(
        &mut self,
        data: &mut DataConfig,
        base: &Path,
        context: usize,
    ) -> std::result::Result<(), String> {
        let written = data.path.clone().unwrap_or_default();
        let (tokenizer, val_fraction) = (data.tokenizer.unwrap_or_default(), data.val_fraction());
        let key = format!("{written}\0{tokenizer:?}\0{val_fraction}");
        let facts = self
            .seen
            .entry(key)
            .or_insert_with(|| inspect(&base.join(&written), &written, tokenizer, val_fraction));
        let facts = facts.as_ref().map_err(String::clone)?;
        if let Some(pinned) = data.sha256.as_deref().filter(|&p| p != facts.sha256) {
            return Err(format!(
                "data.sha256: {written} has SHA-256 {}, the experiment pins {pinned}; restore the file or update the pin",
                facts.sha256
            ));
        }
        let (vocab, train, val) = facts.tokens.clone()?;
        for (split, tokens, fix) in [
            ("validation", val, "a larger data.val_fraction"),
            ("training", train, "a smaller data.val_fraction"),
        ] {
            if tokens <= context {
                return Err(format!(
                    "data.val_fraction: the {split} split of {written} has {tokens} tokens, not more than one context window ({context}); use a longer text, {fix} or a shorter model.context"
                ));
            }
        }
        data.path = Some(facts.full.clone());
        data.vocab = Some(vocab);
        data.sha256 = Some(facts.sha256.clone());
        Ok(())
    }
}

/// Read and tokenize the file at `path` (`written` as the experiment names it).
fn inspect(
    path: &Path,
    written: &str,
    tokenizer: Tokenizer,
    val_fraction: f64,
) -> std::result::Result<Facts, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "data.path: cannot read {written} (relative to the experiment file's folder): {e}; fix the path"
        )
    })?;
    if bytes.is_empty() {
        return Err(format!("data.path: {written} is empty; a language model needs text to train on"));
    }
    let sha256 = super::sha256_hex(&bytes);
    let tokens = Text::tokenize(&bytes, tokenizer, val_fraction, sha256.clone())
        .map(|text| (text.vocab_size(), text.train.len(), text.val.len()))
        .map_err(|e| format!("data.tokenizer: {written}: {e}"));
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    Ok(Facts { full: full.to_string_lossy().into_owned(), sha256, tokens })
}

/// `batch` windows of `context + 1` tokens of `stream` at offsets drawn from `seed`.
fn windows(stream: &[u8], split: &str, seed: u64, batch: usize, context: usize) -> Result<Windows> {
    if stream.len() <= context {
        return Err(Error::Data(format!(
            "the {split} split has {} tokens, not more than one context window ({context}); use a shorter model.context",
            stream.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut x, mut targets) = (Vec::with_capacity(batch * context), Vec::with_capacity(batch * context));
    for _ in 0..batch {
        let at = rng.gen_range(0..stream.len() - context);
        x.extend(stream[at..at + context].iter().map(|&t| t as f32));
        targets.extend_from_slice(&stream[at + 1..at + 1 + context]);
    }
    Ok(Windows { x, targets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vocabulary_is_the_sorted_characters_and_the_split_is_ninety_ten() {
        let text = Text::from_text("abcabcabca", String::new()).unwrap();
        assert_eq!(text.vocab, ['a', 'b', 'c']);
        assert_eq!(text.train, [0, 1, 2, 0, 1, 2, 0, 1, 2]);
        assert_eq!(text.val, [0]);
        assert_eq!(text.decode(&[2, 0]), "ca");
    }

    #[test]
    fn windows_are_shifted_by_one_and_depend_on_seed_and_step_only() {
        let text = Text::from_text(&"the quick brown fox jumps over the lazy dog ".repeat(5), String::new())
            .unwrap();
        let w = text.train_windows(3, 7, 4, 8).unwrap();
        assert_eq!((w.x.len(), w.targets.len()), (32, 32));
        for (row, targets) in w.x.chunks(8).zip(w.targets.chunks(8)) {
            assert_eq!(row[1..].iter().map(|&t| t as u8).collect::<Vec<_>>(), targets[..7]);
        }
        assert_eq!(w.x, text.train_windows(3, 7, 4, 8).unwrap().x);
        assert_ne!(w.x, text.train_windows(3, 8, 4, 8).unwrap().x);
        assert_eq!(text.eval_windows(0, 2, 8).unwrap().x, text.eval_windows(0, 2, 8).unwrap().x);
        let err = text.eval_windows(0, 2, 100).err().unwrap().to_string();
        assert!(
            err.contains("the validation split has 22 tokens, not more than one context window (100)"),
            "{err}"
        );
    }
}
