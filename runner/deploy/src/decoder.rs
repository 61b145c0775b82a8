//! Runs a language model file token by token: the op list ([`crate::graph`]) over rows of one
//! token each, with a key/value cache per attention op so that each new token costs one pass
//! over the weights (every quantized linear on the integer kernels: RMS norm and per-token
//! absmax int8 quantization of its input, integer sums, scales after the sum; embeddings, norms,
//! attention scores, softmax and float weights in f32).
//!
//! A [`State`] holds `batch` sequences of equal length. [`Decoder::forward`] appends the same
//! number of tokens to each and gives their logits; a sequence never grows past the model's
//! context (the caller crops and starts again, as [`Decoder::generate`] does, nanoGPT's rule).
//! The row sums of norms use the training engine's eight lanes ([`Sums::Lanes`]), so the
//! runtime rounds as training's evaluation did wherever the arithmetic is the same.

use crate::act::{dot, layer_norm_row, rms_norm_row, Sums};
use crate::attention;
use crate::error::{DeployError, Result};
use crate::format::{ModelFile, ModelHeader, NormKind, TextSpec};
use crate::graph::{Function, Op, RowNorm, INPUT};
use crate::kernel::Path;
use crate::kv::{KvPrecision, Store};
use crate::math::{gelu_with_slope, relu2, rope_angle, rope_rotate, silu};
use crate::runtime::{Layer, TernaryLayout};
use crate::sample::Sampler;
use crate::team::{Team, Workers};

/// An op resolved to value slots (slot 0 holds the token ids; op `i` writes slot `i + 1`),
/// tensors and layers by index.
#[derive(Clone, Debug)]
enum Step {
    Layer { layer: usize, input: usize },
    Embed { table: usize },
    Positions { input: usize, table: usize },
    Norm { input: usize, kind: RowNorm, gain: Option<usize> },
    Matmul { input: usize, weight: usize },
    Rope { input: usize, heads: usize },
    Attention { input: usize, heads: usize, cache: usize },
    Activation { input: usize, function: Function },
    Relu { input: usize },
    Add { input: usize, skip: usize, scale: f32 },
    Mul { input: usize, other: usize },
}

/// A language model ready to run on one kernel path.
pub struct Decoder {
    header: ModelHeader,
    text: TextSpec,
    layers: Vec<Layer>,
    tensors: Vec<(Vec<f32>, usize, usize)>,
    steps: Vec<Step>,
    /// Widths of the values, slot by slot.
    widths: Vec<usize>,
    /// Width of each attention op's keys (and values).
    cache_widths: Vec<usize>,
    /// RoPE's (cos, sin) per position and pair, per head width that a rope op uses.
    angles: Vec<(usize, AngleTable)>,
    path: Path,
    /// The threads the products and attention heads split over.
    team: Team,
    /// How new states store their keys and values.
    kv: KvPrecision,
}

/// (cos, sin) of RoPE's angle per position and pair, for one head width.
type AngleTable = Vec<Vec<(f32, f32)>>;

/// The keys and values of one attention op for `batch` sequences, `context` positions each,
/// head-major (sequence, head, position, then the head's d values).
struct Cache {
    keys: Store,
    values: Store,
}

/// Sequences being decoded: their length so far and their caches.
pub struct State {
    batch: usize,
    len: usize,
    caches: Vec<Cache>,
}

impl State {
    /// Tokens each sequence holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token has been run yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequences in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }
}

impl Decoder {
    /// Prepare `model` (a language model file) for `path`, with large layers' rows and the
    /// attention heads split over `threads` threads (a [`Team`] of its own).
    pub fn new(model: &ModelFile, path: Path, threads: usize) -> Result<Self> {
        Self::with_layout(model, path, threads, TernaryLayout::Auto)
    }

    /// [`Decoder::new`] with ternary layers in `layout`.
    pub fn with_layout(model: &ModelFile, path: Path, threads: usize, layout: TernaryLayout) -> Result<Self> {
        let header = &model.header;
        let layers: Vec<Layer> = header
            .layers
            .iter()
            .zip(&model.codes)
            .map(|(s, c)| Layer::with_layout(s, c, path, layout))
            .collect();
        let tensors: Vec<(Vec<f32>, usize, usize)> =
            header.tensors.iter().zip(&model.tensors).map(|(t, v)| (v.clone(), t.rows, t.cols)).collect();
        Self::assemble(header, layers, tensors, path, threads)
    }

    /// A decoder of `header`'s ops over prepared `layers` and `tensors` (values, rows, cols), in
    /// the header's order.
    pub(crate) fn assemble(
        header: &ModelHeader,
        layers: Vec<Layer>,
        tensors: Vec<(Vec<f32>, usize, usize)>,
        path: Path,
        threads: usize,
    ) -> Result<Self> {
        let text = header.text.clone().ok_or_else(|| {
            DeployError::Unsupported("an image classifier, not a language model: use qat infer".into())
        })?;
        if !Path::available().contains(&path) {
            return Err(DeployError::Unsupported(format!(
                "the {} kernels need a CPU feature this one lacks",
                path.name()
            )));
        }
        let ops = header.graph();
        let widths = std::iter::once(1).chain(crate::graph::check(header, &ops)?).collect::<Vec<_>>();
        let slot = |name: &str, upto: usize| -> usize {
            if name == INPUT {
                return 0;
            }
            ops[..upto].iter().rposition(|o| o.name() == name).map_or(0, |i| i + 1)
        };
        let tensor = |name: &str| header.tensors.iter().position(|t| t.name == name).expect("validated");
        let (mut cache_widths, mut angles) = (Vec::new(), Vec::<(usize, AngleTable)>::new());
        let mut steps = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            steps.push(match op {
                Op::Layer { input, layer, .. } => Step::Layer {
                    layer: header.layers.iter().position(|l| l.name == *layer).expect("validated"),
                    input: slot(input, i),
                },
                Op::Embed { table, .. } => Step::Embed { table: tensor(table) },
                Op::Positions { input, table, .. } => {
                    Step::Positions { input: slot(input, i), table: tensor(table) }
                }
                Op::Norm { input, kind, gain, .. } => {
                    Step::Norm { input: slot(input, i), kind: *kind, gain: gain.as_deref().map(tensor) }
                }
                Op::Matmul { input, weight, .. } => {
                    Step::Matmul { input: slot(input, i), weight: tensor(weight) }
                }
                Op::Rope { input, heads, .. } => {
                    let d = widths[slot(input, i)] / 3 / heads;
                    if !angles.iter().any(|(w, _)| *w == d) {
                        let table =
                            (0..text.context).map(|p| (0..d / 2).map(|j| rope_angle(p, j, d)).collect());
                        angles.push((d, table.collect()));
                    }
                    Step::Rope { input: slot(input, i), heads: *heads }
                }
                Op::Attention { input, heads, .. } => {
                    cache_widths.push(widths[slot(input, i)] / 3);
                    Step::Attention { input: slot(input, i), heads: *heads, cache: cache_widths.len() - 1 }
                }
                Op::Activation { input, function, .. } => {
                    Step::Activation { input: slot(input, i), function: *function }
                }
                Op::Relu { input, .. } => Step::Relu { input: slot(input, i) },
                Op::Add { input, skip, scale, .. } => {
                    Step::Add { input: slot(input, i), skip: slot(skip, i), scale: *scale }
                }
                Op::Mul { input, other, .. } => Step::Mul { input: slot(input, i), other: slot(other, i) },
                Op::MaxPool { .. } => unreachable!("validation refuses max-pool in a language model"),
            });
        }
        Ok(Self {
            header: header.clone(),
            text,
            layers,
            tensors,
            steps,
            widths,
            cache_widths,
            angles,
            path,
            team: Team::new(threads),
            kv: KvPrecision::F32,
        })
    }

    /// Store the keys and values of states made from now on in `precision` (f32 unless set).
    pub fn set_kv_precision(&mut self, precision: KvPrecision) {
        self.kv = precision;
    }

    /// How new states store their keys and values.
    pub fn kv_precision(&self) -> KvPrecision {
        self.kv
    }

    /// Run on `threads` threads from now on.
    pub fn set_threads(&mut self, threads: usize) {
        if threads.max(1) != self.team.threads() {
            self.team = Team::new(threads);
        }
    }

    /// Threads the decoder runs on.
    pub fn threads(&self) -> usize {
        self.team.threads()
    }

    /// The model's description.
    pub fn header(&self) -> &ModelHeader {
        &self.header
    }

    /// The tokenizer, context and evaluation settings.
    pub fn text(&self) -> &TextSpec {
        &self.text
    }

    /// Vocabulary size (logits per token).
    pub fn vocab(&self) -> usize {
        self.header.classes
    }

    /// Empty state for `batch` sequences (caches allocated for the whole context).
    pub fn state(&self, batch: usize) -> State {
        let context = self.text.context;
        let caches = self
            .cache_widths
            .iter()
            .map(|&w| Cache {
                keys: Store::zeros(self.kv, batch * context * w),
                values: Store::zeros(self.kv, batch * context * w),
            })
            .collect();
        State { batch, len: 0, caches }
    }

    /// Bytes of weights one token reads: every layer's codes (in their kernel layout) and
    /// scales, the float weights of `matmul` and `norm` ops, and one row of each table.
    pub fn weight_bytes_per_token(&self) -> usize {
        let layers: usize = self.layers.iter().map(|l| l.bytes_read()).sum();
        let tensors: usize = self
            .steps
            .iter()
            .map(|step| match *step {
                Step::Matmul { weight, .. } => 4 * self.tensors[weight].0.len(),
                Step::Norm { gain: Some(g), .. } => 4 * self.tensors[g].0.len(),
                Step::Embed { table } | Step::Positions { table, .. } => 4 * self.tensors[table].2,
                _ => 0,
            })
            .sum();
        layers + tensors
    }

    /// Bytes of key/value cache per position of one sequence, in the states' precision.
    pub fn cache_bytes_per_position(&self) -> usize {
        self.cache_widths.iter().map(|w| 2 * self.kv.bytes() * w).sum()
    }

    /// Append `tokens` (`batch × n`, row-major: n tokens for each sequence of `state`) and give
    /// their logits (`batch·n × vocab`). Errors if a token is outside the vocabulary or the
    /// sequences would pass the context.
    pub fn forward(&self, state: &mut State, tokens: &[u8]) -> Result<Vec<f32>> {
        let (batch, context) = (state.batch, self.text.context);
        let n = tokens.len() / batch.max(1);
        if batch == 0 || tokens.len() != batch * n || n == 0 {
            return Err(DeployError::Unsupported(format!(
                "{} tokens for {batch} sequences: give the same positive number for each",
                tokens.len()
            )));
        }
        if state.len + n > context {
            return Err(DeployError::Unsupported(format!(
                "{} + {n} tokens pass the context of {context}; crop and start a new state",
                state.len
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.vocab()) {
            return Err(DeployError::Unsupported(format!(
                "token id {t} is outside the vocabulary of {}",
                self.vocab()
            )));
        }
        let rows = batch * n;
        let mut slots: Vec<Vec<f32>> = Vec::with_capacity(self.steps.len() + 1);
        slots.push(tokens.iter().map(|&t| t as f32).collect());
        for (i, step) in self.steps.iter().enumerate() {
            let width = self.widths[i + 1];
            let value = match *step {
                Step::Layer { layer, input } => {
                    let mut x = slots[input].clone();
                    let norm = (self.header.norm == NormKind::Rms).then_some(Sums::Lanes);
                    self.layers[layer].linear(&mut x, rows, norm, self.path, Workers::Team(&self.team))
                }
                Step::Embed { table } => {
                    let (t, _, cols) = &self.tensors[table];
                    tokens
                        .iter()
                        .flat_map(|&id| &t[id as usize * cols..(id as usize + 1) * cols])
                        .copied()
                        .collect()
                }
                Step::Positions { input, table } => {
                    let (t, _, cols) = &self.tensors[table];
                    let mut x = slots[input].clone();
                    for (r, row) in x.chunks_exact_mut(width).enumerate() {
                        let p = state.len + r % n;
                        row.iter_mut().zip(&t[p * cols..(p + 1) * cols]).for_each(|(v, p)| *v += p);
                    }
                    x
                }
                Step::Norm { input, kind, gain } => {
                    let mut x = slots[input].clone();
                    for row in x.chunks_exact_mut(width) {
                        match kind {
                            RowNorm::Layer => layer_norm_row(row, Sums::Lanes),
                            RowNorm::Rms => rms_norm_row(row, Sums::Lanes),
                        };
                        if let Some(g) = gain {
                            row.iter_mut().zip(&self.tensors[g].0).for_each(|(v, g)| *v *= g);
                        }
                    }
                    x
                }
                Step::Matmul { input, weight } => {
                    let (w, _, cols) = &self.tensors[weight];
                    let mut y = Vec::with_capacity(rows * width);
                    for x in slots[input].chunks_exact(*cols) {
                        y.extend(w.chunks_exact(*cols).map(|wr| dot(x, wr)));
                    }
                    y
                }
                Step::Rope { input, heads } => {
                    let mut x = slots[input].clone();
                    let d = width / 3 / heads;
                    let table = &self.angles.iter().find(|(w, _)| *w == d).expect("prepared").1;
                    for (r, row) in x.chunks_exact_mut(width).enumerate() {
                        rope_rotate(&mut row[..2 * width / 3], d, &table[state.len + r % n], 1.0);
                    }
                    x
                }
                Step::Attention { input, heads, cache } => {
                    self.attend(&slots[input], &mut state.caches[cache], state.len, n, batch, heads)
                }
                Step::Activation { input, function } => {
                    // one loop per function, so each inlines (not a call per value)
                    let x = &slots[input];
                    match function {
                        Function::Gelu => x.iter().map(|&x| gelu_with_slope(x).0).collect(),
                        Function::Silu => x.iter().map(|&x| silu(x)).collect(),
                        Function::Relu2 => x.iter().map(|&x| relu2(x)).collect(),
                    }
                }
                Step::Relu { input } => slots[input].iter().map(|&x| x.max(0.0)).collect(),
                Step::Add { input, skip, scale } => {
                    slots[input].iter().zip(&slots[skip]).map(|(x, s)| x + scale * s).collect()
                }
                Step::Mul { input, other } => {
                    slots[input].iter().zip(&slots[other]).map(|(a, b)| a * b).collect()
                }
            };
            slots.push(value);
        }
        state.len += n;
        Ok(slots.pop().expect("one op at least"))
    }

    /// Causal attention of `n` new q|k|v rows per sequence at positions `len..len + n`: their
    /// keys and values go into the cache, then each query attends over positions 0 to its own,
    /// head by head (the heads split over the team once the cache is long enough to pay for it:
    /// at batch 1 the cache reads are a tenth of a large model's bytes per token).
    fn attend(
        &self,
        qkv: &[f32],
        cache: &mut Cache,
        len: usize,
        n: usize,
        batch: usize,
        heads: usize,
    ) -> Vec<f32> {
        let width = qkv.len() / (batch * n) / 3;
        let (context, d) = (self.text.context, width / heads);
        let scale = 1.0 / (d as f32).sqrt();
        // head-major: head `h` of sequence `b` keeps its positions' keys (and values) back to
        // back, so a head reads one contiguous run rather than d of every `width` floats
        let at = |b: usize, h: usize, p: usize| ((b * heads + h) * context + p) * d;
        for b in 0..batch {
            for t in 0..n {
                let row = &qkv[(b * n + t) * 3 * width..(b * n + t + 1) * 3 * width];
                for h in 0..heads {
                    let i = at(b, h, len + t);
                    cache.keys.write(i, &row[width + h * d..][..d]);
                    cache.values.write(i, &row[2 * width + h * d..][..d]);
                }
            }
        }
        let cache = &*cache;
        // output head `h` of token `t` of sequence `b` is chunk (b·n + t)·heads + h of y
        let head = |i: usize, out: &mut [f32]| {
            let (row, h) = (i / heads, i % heads);
            let (b, t) = (row / n, row % n);
            let q = &qkv[row * 3 * width + h * d..][..d];
            // positions 0 ..= len + t of this head, back to back
            let (first, count) = (at(b, h, 0), (len + t + 1) * d);
            let (keys, values) = (cache.keys.rows(first, count), cache.values.rows(first, count));
            attention::head(q, keys, values, scale, out, self.path);
        };
        let mut y = vec![0.0f32; batch * n * width];
        let workers = if (len + n) * width >= 1 << 16 { Workers::Team(&self.team) } else { Workers::One };
        workers.for_chunks(&mut y, d, head);
        y
    }

    /// Logits of every position of `batch` windows of `tokens.len() / batch` tokens each (each
    /// window from position 0, as training's evaluation runs them).
    pub fn window_logits(&self, tokens: &[u8], batch: usize) -> Result<Vec<f32>> {
        let mut state = self.state(batch);
        self.forward(&mut state, tokens)
    }

    /// `prompt` followed by `count` tokens drawn by `sampler`, one at a time on the cache; past
    /// the context, nanoGPT's rule: crop to the last `context` tokens and recompute from a new
    /// state (as `qat sample` does), so both give the same text for the same seed. `each`
    /// sees every new token as it is drawn.
    pub fn generate(
        &self,
        prompt: &[u8],
        count: usize,
        sampler: &mut Sampler,
        mut each: impl FnMut(u8),
    ) -> Result<Vec<u8>> {
        if prompt.is_empty() {
            return Err(DeployError::Unsupported("the prompt is empty; give at least one token".into()));
        }
        let context = self.text.context;
        let mut ids = prompt.to_vec();
        let mut state = self.state(1);
        let mut pending = ids[ids.len().saturating_sub(context)..].to_vec();
        for _ in 0..count {
            if state.len() + pending.len() > context {
                state = self.state(1);
                pending = ids[ids.len() - context..].to_vec();
            }
            let logits = self.forward(&mut state, &pending)?;
            let next = sampler.pick(&logits[logits.len() - self.vocab()..]) as u8;
            each(next);
            ids.push(next);
            pending = vec![next];
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::tiny_language_model;

    #[test]
    fn cached_tokens_give_the_logits_of_the_whole_window() {
        let model = tiny_language_model();
        let tokens = [1u8, 4, 2, 2, 0, 3, 1, 4];
        for path in Path::available() {
            let decoder = Decoder::new(&model, path, 1).unwrap();
            let whole = decoder.window_logits(&tokens, 1).unwrap();
            let mut state = decoder.state(1);
            let mut stepped = decoder.forward(&mut state, &tokens[..3]).unwrap();
            for &t in &tokens[3..] {
                stepped.extend(decoder.forward(&mut state, &[t]).unwrap());
            }
            assert_eq!(whole.len(), stepped.len());
            for (a, b) in whole.iter().zip(&stepped) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{path:?}: {a} vs {b}");
            }
            // a batch of two windows gives each window's own logits
            let two = decoder.window_logits(&[tokens, [3, 3, 0, 1, 2, 4, 4, 0]].concat(), 2).unwrap();
            assert_eq!(&two[..whole.len()], &whole[..], "{path:?}");
            let err = decoder.forward(&mut state, &[1]).unwrap_err().to_string();
            assert!(err.contains("pass the context of 8"), "{err}");
        }
    }

    #[test]
    fn later_tokens_do_not_change_earlier_logits_and_bad_input_is_refused() {
        let decoder = Decoder::new(&tiny_language_model(), Path::Scalar, 1).unwrap();
        let a = decoder.window_logits(&[1, 2, 3, 0], 1).unwrap();
        let b = decoder.window_logits(&[1, 2, 4, 4], 1).unwrap();
        let v = decoder.vocab();
        assert_eq!(a[..2 * v], b[..2 * v], "causal: positions 0 and 1 see only tokens 0 and 1");
        assert_ne!(a[2 * v..3 * v], b[2 * v..3 * v]);
        let err = decoder.window_logits(&[1, 9], 1).unwrap_err().to_string();
        assert!(err.contains("token id 9"), "{err}");
        let err = decoder.window_logits(&[1, 2, 3], 2).unwrap_err().to_string();
        assert!(err.contains("same positive number"), "{err}");
        assert!(decoder.generate(&[], 3, &mut Sampler::new(0.0, None, 1), |_| ()).is_err());
    }

    #[test]
    fn a_half_precision_cache_halves_its_bytes_and_moves_logits_by_its_rounding_only() {
        let model = tiny_language_model();
        let tokens = [1u8, 4, 2, 2, 0, 3, 1, 4];
        let mut decoder = Decoder::new(&model, Path::Scalar, 1).unwrap();
        let (exact, bytes) = (decoder.window_logits(&tokens, 1).unwrap(), decoder.cache_bytes_per_position());
        decoder.set_kv_precision(KvPrecision::F16);
        assert_eq!(decoder.kv_precision(), KvPrecision::F16);
        assert_eq!(2 * decoder.cache_bytes_per_position(), bytes);
        let half = decoder.window_logits(&tokens, 1).unwrap();
        // the first position attends to itself only: softmax weight 1 on its own value, which
        // rounds to f16; later positions mix rounded keys and values
        let largest = exact.iter().zip(&half).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(largest > 0.0 && largest < 1e-2, "largest difference {largest}");
    }

    #[test]
    fn generation_past_the_context_crops_and_recomputes() {
        let decoder = Decoder::new(&tiny_language_model(), Path::best(), 1).unwrap();
        let context = decoder.text().context;
        let ids = decoder.generate(&[1, 2], 3 * context, &mut Sampler::new(0.0, None, 1), |_| ()).unwrap();
        assert_eq!(ids.len(), 2 + 3 * context);
        // the reference: each next token from a fresh window of the last `context` tokens
        let mut expected = vec![1u8, 2];
        for _ in 0..3 * context {
            let window = &expected[expected.len().saturating_sub(context)..];
            let logits = decoder.window_logits(window, 1).unwrap();
            let last = &logits[logits.len() - decoder.vocab()..];
            expected.push(Sampler::new(0.0, None, 1).pick(last) as u8);
        }
        assert_eq!(ids, expected);
    }
}
