//! Experiment configuration types shared by every crate.
//!
//! Every struct rejects unknown fields and has a default for every field but the experiment
//! name, so an experiment file states only what differs from the reference recipe. The resolved
//! config (defaults filled in) is written next to every run, and its hash is the run id.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_yaml::{Mapping, Value};

/// One run's complete configuration, and the top level of an experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Experiment name; results go to `results/<name>/` (may come from an `extends` base).
    #[serde(default)]
    pub name: String,
    /// A base experiment file (relative to this one) whose keys this file overrides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<String>,
    /// Dynamic plugin libraries to load (paths relative to the file that lists them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<String>,
    /// Free text shown in listings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Dataset and preprocessing.
    #[serde(default)]
    pub data: DataConfig,
    /// Network shape.
    #[serde(default)]
    pub model: ModelConfig,
    /// Weight quantizer of every layer.
    #[serde(default = "PluginSpec::float")]
    pub quantizer: PluginSpec,
    /// Optimisation recipe.
    #[serde(default)]
    pub train: TrainConfig,
    /// Extra evaluations after training.
    #[serde(default, skip_serializing_if = "EvalConfig::is_empty")]
    pub eval: EvalConfig,
    /// Parameter sweep over this config (expanded by the runner); absent in a resolved run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<Value>,
    /// Distillation teachers by name, each a set of overrides of this config; the runner trains
    /// them first (into `<name>-teachers/`) and `train.distill.teacher: <name>` picks one.
    /// Absent in a resolved run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teachers: Option<Value>,
}

/// Evaluations after training.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Post-training quantization: after training, evaluate the latent weights quantized by
    /// each of these quantizers (every layer; a fitted clip is fitted once to the final weights).
    pub post_quantize: Vec<PluginSpec>,
    /// With batch norm, re-estimate its statistics on the training set with each
    /// post-quantized network before evaluating it (PTQ calibration).
    #[serde(default, skip_serializing_if = "is_false")]
    pub recalibrate_batch_norm: bool,
    /// Empirical bias correction (Nagel et al. 2019) of each post-quantized network: every
    /// fully connected layer gets the output bias (W − Ŵ)·E[x], E[x] its mean input in the float
    /// network over the first 4,096 training images, so the quantization error no longer shifts
    /// its mean output.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bias_correction: bool,
    /// Optimizer steps between evaluations (and checkpoints) of a run trained for
    /// `train.steps`; each interval counts as an epoch for every epoch-keyed setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<usize>,
    /// Batches of validation windows a language model is evaluated on (nanoGPT: 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<usize>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

impl EvalConfig {
    /// True when nothing extra is evaluated.
    pub fn is_empty(&self) -> bool {
        self.post_quantize.is_empty()
            && !self.recalibrate_batch_norm
            && !self.bias_correction
            && self.every.is_none()
            && self.batches.is_none()
    }
}

/// A short label of a strategy spec: `name key=value ...`, keys sorted so the label does not
/// depend on the order they were written in.
pub fn spec_label(spec: &PluginSpec) -> String {
    let mut params: Vec<(String, String)> = spec
        .params
        .iter()
        .map(|(k, v)| {
            let value = serde_yaml::to_string(v).map(|s| s.trim().to_string()).unwrap_or_default();
            (k.as_str().unwrap_or("?").to_string(), value)
        })
        .collect();
    params.sort();
    std::iter::once(spec.name.clone())
        .chain(params.into_iter().map(|(k, v)| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The datasets the runner can load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dataset {
    /// Handwritten digits.
    #[default]
    Mnist,
    /// Zalando's clothing images in MNIST's format.
    FashionMnist,
    /// CIFAR-10: 32×32 colour images of ten classes (the binary version).
    #[serde(rename = "cifar10")]
    Cifar10,
    /// Tiny Shakespeare, character level (nanoGPT's `shakespeare_char`): the sorted set of the
    /// file's 65 characters is the vocabulary, the first 90 % trains, the last 10 % validates.
    #[serde(rename = "tinyshakespeare")]
    Tinyshakespeare,
    /// A text file the user brings (`data.path`), tokenized by character or byte
    /// (`data.tokenizer`), its last `data.val_fraction` validating.
    Text,
}

impl Dataset {
    /// Folder name under the data directory.
    pub fn dir_name(self) -> &'static str {
        match self {
            Dataset::Mnist => "mnist",
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Cifar10 => "cifar10",
            Dataset::Tinyshakespeare => "tinyshakespeare",
            Dataset::Text => "text",
        }
    }

    /// Whether the dataset is text (token windows) rather than images.
    pub fn is_text(self) -> bool {
        matches!(self, Dataset::Tinyshakespeare | Dataset::Text)
    }

    /// The published training set's size (None for text).
    pub fn train_images(self) -> Option<usize> {
        match self {
            Dataset::Mnist | Dataset::FashionMnist => Some(60_000),
            Dataset::Cifar10 => Some(50_000),
            Dataset::Tinyshakespeare | Dataset::Text => None,
        }
    }
}

/// Dataset and preprocessing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Which dataset.
    pub dataset: Dataset,
    /// Side of the square input after the antialiased resize (28 keeps the original).
    pub image_size: usize,
    /// Add a freshly augmented copy of the training set to every epoch.
    pub augment: bool,
    /// Also apply an elastic deformation to the augmented copy.
    pub elastic: bool,
    /// CIFAR's training augmentation, in place: a random 32×32 crop of the image padded by 4
    /// zero pixels, then a horizontal flip with probability ½, seeded per (seed, epoch, image).
    #[serde(skip_serializing_if = "is_false")]
    pub crop_flip: bool,
    /// `dataset: text`: the file, relative to the experiment file. Planning resolves it to a
    /// full path for the runs; the run id hashes the file's SHA-256 instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `dataset: text`: `char` (the vocabulary is the sorted set of the file's characters, at
    /// most 256) or `byte` (the 256 byte values; any file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Tokenizer>,
    /// `dataset: text`: the share of the text at its end that validates (default 0.1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// `dataset: text`: the file's SHA-256 (hex). Planning fills it in; written by hand, it pins
    /// the file, and a different file is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `dataset: text`: the vocabulary size, filled in by planning (it depends on the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vocab: Option<usize>,
    /// Image datasets: hold out this many training images as a validation set (the same images
    /// for every run: drawn from a fixed split seed, not the training seed). Searches, pruning,
    /// early stopping and the best epoch then use it; the test set is only reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<usize>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: Dataset::Mnist,
            image_size: 16,
            augment: false,
            elastic: false,
            crop_flip: false,
            path: None,
            tokenizer: None,
            val_fraction: None,
            validation: None,
            sha256: None,
            vocab: None,
        }
    }
}

/// How `dataset: text` turns a file into tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tokenizer {
    /// One token per character; the vocabulary is the sorted set of the file's characters.
    #[default]
    Char,
    /// One token per byte; the vocabulary is all 256 byte values.
    Byte,
}

impl DataConfig {
    /// The share of a `dataset: text` file that validates.
    pub fn val_fraction(&self) -> f64 {
        self.val_fraction.unwrap_or(0.1)
    }
}

/// Normalisation applied to each layer's input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// x / sqrt(mean(x²)), no gain (the reference's choice).
    #[default]
    Rms,
    /// (x − mean) / std over the features of each sample, no affine.
    Layer,
    /// (x − mean) / std per feature over the batch, no affine; running statistics (momentum
    /// 0.1, unbiased variance, as PyTorch's `BatchNorm1d`) are used at evaluation.
    Batch,
    /// Identity.
    None,
}

/// Skip connections of the square hidden layers (the reference notebook's variants); x is the
/// layer's input (the previous activation's output), fc(x) its normalised, quantized linear map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Residual {
    /// x ← act(fc(x)).
    #[default]
    None,
    /// x ← act(x + fc(x)).
    ReluSum,
    /// x ← x + act(fc(x)).
    SumRelu,
    /// x ← a·x + act(fc(x)), a learned per layer.
    ScaledSumRelu,
    /// x ← act(a·x + fc(x)), a learned per layer.
    ReluScaledSum,
}

impl Residual {
    /// True when the variant has a learned scale a.
    pub fn learned_scale(self) -> bool {
        matches!(self, Residual::ScaledSumRelu | Residual::ReluScaledSum)
    }
}

/// The model: its family (`kind`) and that family's keys. Keys left out take the family's
/// defaults (an MLP normalises with RMS and quantizes activations to 8 bits; a transformer uses
/// LayerNorm and float activations, as nanoGPT).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawModelConfig", into = "WrittenModelConfig")]
pub struct ModelConfig {
    /// The model family: the preset that expands this config into a graph of ops.
    #[serde(skip_serializing_if = "ModelKind::is_default")]
    pub kind: ModelKind,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Input normalisation of every layer.
    pub norm: Norm,
    /// Bits of the per-sample absmax fake-quantization of every layer's input; `null` disables.
    pub activation_bits: Option<u32>,
    /// Activation after every layer but the last.
    pub activation: PluginSpec,
    /// Skip connections around the hidden layers whose input and output widths match.
    #[serde(skip_serializing_if = "is_no_residual")]
    pub residual: Residual,
    /// Per-layer overrides (mixed precision), keyed by a layer name (`fc1`, `conv2`), a glob
    /// over names (`"fc*"`, `"blocks.*.attn.*"`; `*` matches within one dot-separated segment),
    /// a 1-based layer index, or `first` / `last`. An exact name beats a glob, a glob beats an
    /// index, an index beats `first`/`last`; several globs apply in key order.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub layers: std::collections::BTreeMap<String, LayerOverride>,
    /// Convolutional layers before the fully connected ones (3×3, stride 1, zero padding 1, no
    /// bias), each quantized by its own quantizer like any layer and counted in `layers` keys.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conv: Vec<ConvSpec>,
    /// With `norm: layer`, a learned per-feature gain and bias after the normalisation
    /// (PyTorch's `elementwise_affine`), initialised to 1 and 0.
    #[serde(skip_serializing_if = "is_false")]
    pub norm_affine: bool,
    /// Dropout probability after every hidden activation (0: none). Masks are drawn from
    /// (`train.seed`, step, layer path), so a resumed run draws the same ones; evaluation keeps
    /// every value.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub dropout: f64,
    /// The transformer's shape (`kind: transformer` only).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub transformer: Option<TransformerConfig>,
}

/// The shape of a decoder-only transformer language model (`model.kind: transformer`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Blocks.
    pub depth: usize,
    /// Attention heads per block (`width` must be a multiple).
    pub heads: usize,
    /// Model width (embedding size).
    pub width: usize,
    /// Context length in tokens.
    pub context: usize,
    /// The feed-forward block.
    pub mlp: MlpConfig,
    /// Position encoding.
    pub position: Position,
    /// Whether the output head reuses the token embedding (stored once).
    pub tie_embeddings: bool,
    /// Whether each block normalises the input of its attention and its MLP (pre-norm; true).
    /// BitNet's training notes drop these when every linear is a BitLinear with its own norm.
    #[serde(skip_serializing_if = "is_true")]
    pub block_norms: bool,
    /// SubLN (BitNet b1.58 2B4T): a gained norm before the attention output projection and
    /// before the MLP's down projection.
    #[serde(skip_serializing_if = "is_false")]
    pub subln: bool,
}

/// A transformer block's feed-forward network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Hidden width as a multiple of the model width.
    pub ratio: usize,
    /// Its activation (a registered activation plugin).
    pub activation: PluginSpec,
    /// A gated MLP: `down(act(gate(x)) ⊙ up(x))` (SwiGLU with `silu`, BitNet's gated squared
    /// ReLU with `relu2`), hidden width `ratio·width` rounded up to a multiple of 32.
    #[serde(skip_serializing_if = "is_false")]
    pub gated: bool,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { ratio: 4, activation: PluginSpec::named("gelu"), gated: false }
    }
}

impl MlpConfig {
    /// The hidden width for a model of `width`: `ratio·width`, rounded up to a multiple of 32
    /// when gated (as LLaMA-style gated MLPs do, so packed rows stay whole).
    pub fn hidden(&self, width: usize) -> usize {
        let hidden = self.ratio * width;
        if self.gated {
            hidden.div_ceil(32) * 32
        } else {
            hidden
        }
    }
}

/// How a transformer knows where a token is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    /// A learned embedding per position, added to the token embedding (GPT-2, nanoGPT).
    #[default]
    Learned,
    /// Rotary embeddings: q and k of each head turned by position-dependent angles (LLaMA,
    /// BitNet b1.58 2B4T); no position table.
    Rope,
}

/// [`ModelConfig`] as serialised (and hashed into run ids): an MLP's keys as they always were,
/// a transformer's without the MLP-only ones.
#[derive(Serialize)]
struct WrittenModelConfig {
    #[serde(skip_serializing_if = "ModelKind::is_default")]
    kind: ModelKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    hidden: Option<Vec<usize>>,
    norm: Norm,
    activation_bits: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    activation: Option<PluginSpec>,
    #[serde(skip_serializing_if = "is_no_residual")]
    residual: Residual,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    layers: std::collections::BTreeMap<String, LayerOverride>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conv: Vec<ConvSpec>,
    #[serde(skip_serializing_if = "is_false")]
    norm_affine: bool,
    #[serde(skip_serializing_if = "is_zero_f64")]
    dropout: f64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    transformer: Option<TransformerConfig>,
}

impl From<ModelConfig> for WrittenModelConfig {
    fn from(m: ModelConfig) -> Self {
        let mlp = m.kind == ModelKind::Mlp;
        Self {
            kind: m.kind,
            hidden: mlp.then_some(m.hidden),
            norm: m.norm,
            activation_bits: m.activation_bits,
            activation: mlp.then_some(m.activation),
            residual: m.residual,
            layers: m.layers,
            conv: m.conv,
            norm_affine: m.norm_affine,
            dropout: m.dropout,
            transformer: m.transformer,
        }
    }
}

/// [`ModelConfig`] as written: every key optional, so defaults can depend on `kind`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelConfig {
    #[serde(default)]
    kind: ModelKind,
    hidden: Option<Vec<usize>>,
    norm: Option<Norm>,
    #[serde(default, deserialize_with = "present")]
    activation_bits: Option<Option<u32>>,
    activation: Option<PluginSpec>,
    residual: Option<Residual>,
    #[serde(default)]
    layers: std::collections::BTreeMap<String, LayerOverride>,
    conv: Option<Vec<ConvSpec>>,
    norm_affine: Option<bool>,
    #[serde(default)]
    dropout: f64,
    depth: Option<usize>,
    heads: Option<usize>,
    width: Option<usize>,
    context: Option<usize>,
    mlp: Option<MlpConfig>,
    position: Option<Position>,
    tie_embeddings: Option<bool>,
    block_norms: Option<bool>,
    subln: Option<bool>,
}

impl TryFrom<RawModelConfig> for ModelConfig {
    type Error = String;

    fn try_from(raw: RawModelConfig) -> Result<Self, String> {
        let mlp = ModelConfig::default();
        let only = |present: bool, key: &str, kind: &str| {
            if present {
                Err(format!("model.{key}: not a key of model.kind {kind}; remove it"))
            } else {
                Ok(())
            }
        };
        match raw.kind {
            ModelKind::Mlp => {
                for (present, key) in [
                    (raw.depth.is_some(), "depth"),
                    (raw.heads.is_some(), "heads"),
                    (raw.width.is_some(), "width"),
                    (raw.context.is_some(), "context"),
                    (raw.mlp.is_some(), "mlp"),
                    (raw.position.is_some(), "position"),
                    (raw.tie_embeddings.is_some(), "tie_embeddings"),
                    (raw.block_norms.is_some(), "block_norms"),
                    (raw.subln.is_some(), "subln"),
                ] {
                    only(present, key, "mlp (set kind: transformer)")?;
                }
                Ok(Self {
                    kind: raw.kind,
                    hidden: raw.hidden.unwrap_or(mlp.hidden),
                    norm: raw.norm.unwrap_or(mlp.norm),
                    activation_bits: raw.activation_bits.unwrap_or(mlp.activation_bits),
                    activation: raw.activation.unwrap_or(mlp.activation),
                    residual: raw.residual.unwrap_or_default(),
                    layers: raw.layers,
                    conv: raw.conv.unwrap_or_default(),
                    norm_affine: raw.norm_affine.unwrap_or(false),
                    dropout: raw.dropout,
                    transformer: None,
                })
            }
            ModelKind::Transformer => {
                for (present, key) in [
                    (raw.hidden.is_some(), "hidden"),
                    (raw.activation.is_some(), "activation (the block MLP's is model.mlp.activation)"),
                    (raw.residual.is_some(), "residual"),
                    (raw.conv.is_some(), "conv"),
                    (raw.norm_affine.is_some(), "norm_affine"),
                ] {
                    only(present, key, "transformer")?;
                }
                let t = TransformerConfig {
                    depth: raw.depth.unwrap_or(4),
                    heads: raw.heads.unwrap_or(4),
                    width: raw.width.unwrap_or(128),
                    context: raw.context.unwrap_or(64),
                    mlp: raw.mlp.unwrap_or_default(),
                    position: raw.position.unwrap_or_default(),
                    tie_embeddings: raw.tie_embeddings.unwrap_or(true),
                    block_norms: raw.block_norms.unwrap_or(true),
                    subln: raw.subln.unwrap_or(false),
                };
                if t.heads == 0 || t.width % t.heads != 0 {
                    return Err(format!(
                        "model.width: {} is not a multiple of model.heads ({}); choose a width divisible by the heads",
                        t.width, t.heads
                    ));
                }
                for (value, key) in [(t.depth, "depth"), (t.context, "context"), (t.mlp.ratio, "mlp.ratio")] {
                    if value == 0 {
                        return Err(format!("model.{key}: must be at least 1"));
                    }
                }
                if t.position == Position::Rope && (t.width / t.heads) % 2 != 0 {
                    return Err(format!(
                        "model.position: rope turns pairs of dimensions, but a head has {} (width {} / heads {}); \
                         choose an even head width",
                        t.width / t.heads,
                        t.width,
                        t.heads
                    ));
                }
                Ok(Self {
                    kind: raw.kind,
                    hidden: Vec::new(),
                    norm: raw.norm.unwrap_or(Norm::Layer),
                    activation_bits: raw.activation_bits.unwrap_or(None),
                    activation: PluginSpec::named("relu"),
                    residual: Residual::None,
                    layers: raw.layers,
                    conv: Vec::new(),
                    norm_affine: false,
                    dropout: raw.dropout,
                    transformer: Some(t),
                })
            }
        }
    }
}

/// A model family (`model.kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Fully connected layers, optionally after 3×3 convolutions, with optional norms, input
    /// quantization and skip connections: every form the `hidden`, `conv`, `norm`, `residual`
    /// keys describe.
    #[default]
    Mlp,
    /// A decoder-only transformer language model (token and position embeddings, pre-norm
    /// blocks of causal self-attention and an MLP, a final norm, an output head).
    Transformer,
}

impl ModelKind {
    /// Whether this is the default (left out of the serialised config, so run ids of configs
    /// written before the key existed do not change).
    pub fn is_default(&self) -> bool {
        *self == ModelKind::default()
    }
}

/// One 3×3 convolution of the convolutional front-end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvSpec {
    /// Output channels.
    pub channels: usize,
    /// One filter per channel (groups = channels; the channel count must stay the same);
    /// otherwise a full convolution (groups = 1).
    #[serde(default)]
    pub depthwise: bool,
    /// 2×2 max-pooling (stride 2) after the activation.
    #[serde(default)]
    pub pool: bool,
}

impl ModelConfig {
    /// Number of weight layers: convolutions, hidden layers and the output layer.
    pub fn layer_count(&self) -> usize {
        self.layer_names().len()
    }

    /// Problems of the convolutional front-end on `size × size` single-channel images.
    pub fn check_conv(&self, size: usize) -> Result<(), String> {
        let (mut channels, mut side) = (1usize, size);
        for (i, c) in self.conv.iter().enumerate() {
            if c.channels == 0 {
                return Err(format!("model.conv[{i}].channels: must be at least 1"));
            }
            if c.depthwise && c.channels != channels {
                return Err(format!(
                    "model.conv[{i}]: a depthwise convolution keeps the channel count ({channels}), got {}",
                    c.channels
                ));
            }
            if c.pool && side % 2 != 0 {
                return Err(format!("model.conv[{i}].pool: the {side}×{side} map has an odd side"));
            }
            channels = c.channels;
            side /= if c.pool { 2 } else { 1 };
        }
        if !self.conv.is_empty() && !matches!(self.norm, Norm::Rms | Norm::None) {
            return Err("model.norm: with model.conv, use rms or none".into());
        }
        if !self.conv.is_empty() && self.residual != Residual::None {
            return Err("model.residual: not supported with model.conv".into());
        }
        Ok(())
    }
}

/// What one layer does differently from the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    /// This layer's weight quantizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantizer: Option<PluginSpec>,
    /// Bits of this layer's input quantization; `null` turns it off for this layer.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub activation_bits: Option<Option<u32>>,
}

/// A key that is present deserialises to `Some`, even when its value is `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

impl ModelConfig {
    /// The layer names, input first: `conv1`… for the convolutions, then `fc1`… for the fully
    /// connected layers (numbered from 1 again). Parameters, checkpoints, metrics, TensorBoard,
    /// analysis and exported files all use these names.
    ///
    /// A transformer's: `embed`, then per block `blocks.<i>.attn.qkv`, `blocks.<i>.attn.proj`,
    /// `blocks.<i>.mlp.fc`, `blocks.<i>.mlp.proj` (0-based blocks), then `head` unless the head
    /// is tied to the embedding.
    pub fn layer_names(&self) -> Vec<String> {
        if let Some(t) = &self.transformer {
            let mut names = vec!["embed".to_string()];
            let parts: &[&str] = if t.mlp.gated {
                &["attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.proj"]
            } else {
                &["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
            };
            for i in 0..t.depth {
                for part in parts {
                    names.push(format!("blocks.{i}.{part}"));
                }
            }
            if !t.tie_embeddings {
                names.push("head".into());
            }
            return names;
        }
        let convs = (1..=self.conv.len()).map(|i| format!("conv{i}"));
        convs.chain((1..=self.hidden.len() + 1).map(|i| format!("fc{i}"))).collect()
    }

    /// The resolved quantizer and input bits of layer `index` (0-based) of `count`, given the
    /// network-wide `quantizer`.
    ///
    /// A transformer's embedding and head stay float unless `layers` names them.
    pub fn layer(&self, index: usize, count: usize, quantizer: &PluginSpec) -> (PluginSpec, Option<u32>) {
        let name = self.layer_names().get(index).cloned().unwrap_or_default();
        let float_by_default = self.transformer.is_some() && (name == "embed" || name == "head");
        let mut spec = if float_by_default { PluginSpec::named("none") } else { quantizer.clone() };
        let mut bits = if float_by_default { None } else { self.activation_bits };
        for o in self.overrides_of(index, count, &name) {
            if let Some(q) = &o.quantizer {
                spec = q.clone();
            }
            if let Some(b) = o.activation_bits {
                bits = b;
            }
        }
        (spec, bits)
    }

    /// The `layers` entries that apply to layer `index` (named `name`) of `count`, weakest
    /// first, so that applying them in order lets the strongest win.
    fn overrides_of(&self, index: usize, count: usize, name: &str) -> Vec<&LayerOverride> {
        // a transformer's first layer is its embedding and its last the head, which with tied
        // embeddings is the embedding table again
        let (first, last) = match &self.transformer {
            Some(t) => (name == "embed", name == "head" || (t.tie_embeddings && name == "embed")),
            None => (index == 0, index + 1 == count),
        };
        let positional = [(first, "first"), (last, "last")];
        let mut found: Vec<&LayerOverride> = positional
            .into_iter()
            .filter(|(hit, _)| *hit)
            .filter_map(|(_, key)| self.layers.get(key))
            .collect();
        found.extend(self.layers.get(&(index + 1).to_string()));
        found.extend(
            self.layers.iter().filter(|(k, _)| k.contains('*') && glob_matches(k, name)).map(|(_, o)| o),
        );
        found.extend(self.layers.get(name));
        found
    }

    /// Check that every `layers` key names a layer of a network with `count` layers (or, for a
    /// glob, matches at least one).
    pub fn check_layer_keys(&self, count: usize) -> Result<(), String> {
        let names = self.layer_names();
        for key in self.layers.keys() {
            let ok = key == "first"
                || key == "last"
                || key.parse::<usize>().is_ok_and(|i| (1..=count).contains(&i))
                || names.contains(key)
                || (key.contains('*') && names.iter().any(|n| glob_matches(key, n)));
            if !ok {
                let candidates: Vec<&str> = names.iter().map(String::as_str).collect();
                let hint = crate::registry::did_you_mean(key, &candidates);
                return Err(format!(
                    "model.layers: no layer `{key}`{hint}; use a layer name ({}), a glob over them, \
                     `first`, `last` or an index from 1 to {count}",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }
}

/// Whether `pattern` matches `name`, where `*` stands for any run of characters within one
/// dot-separated segment (`fc*` matches `fc12`, `blocks.*.attn` matches `blocks.0.attn` but
/// not `blocks.0.1.attn`).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else { return false };
            // `*` takes 0.. characters of `rest`, never a dot
            let mut end = 0;
            loop {
                if glob_matches(tail, &rest[end..]) {
                    return true;
                }
                match rest[end..].chars().next() {
                    Some(c) if c != '.' => end += c.len_utf8(),
                    _ => return false,
                }
            }
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Mlp,
            hidden: vec![64, 64, 64],
            norm: Norm::Rms,
            activation_bits: Some(8),
            activation: PluginSpec::named("relu"),
            residual: Residual::None,
            layers: Default::default(),
            conv: Vec::new(),
            norm_affine: false,
            dropout: 0.0,
            transformer: None,
        }
    }
}

/// Optimisation recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Optimizer steps instead of epochs (language models): training batches are random
    /// windows drawn from (seed, step), evaluated every `eval.every` steps, and learning-rate
    /// schedules see (step, total steps).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Samples per optimizer step.
    pub batch_size: usize,
    /// Optimizer and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// A multiplier of `optimizer.weight_decay` over training, any registered schedule (evaluated
    /// like the learning rate's: per epoch, or per step with `train.steps`); BitNet b1.58 decays
    /// by 0.1 in its first stage and not at all in its second: `{name: step, size: <half>, gamma: 0}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay_schedule: Option<PluginSpec>,
    /// Learning-rate multiplier over training, stepped per epoch.
    pub schedule: PluginSpec,
    /// Seed of data order, augmentation, initialisation and stochastic strategies.
    pub seed: u64,
    /// Delayed quantization: train with float weights for this many epochs first.
    #[serde(skip_serializing_if = "is_zero")]
    pub float_epochs: usize,
    /// Delayed quantization as a share of training: float for the first ⌊fraction·epochs⌋ epochs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub float_fraction: Option<f64>,
    /// Knowledge distillation from a finished run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
    /// Label smoothing ε of the cross-entropy: targets (1 − ε)·onehot + ε/classes.
    #[serde(skip_serializing_if = "is_zero_f64")]
    pub label_smoothing: f64,
    /// Clip the global L2 norm of all gradients to this value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Exponential moving average of the latent weights with this decay (e.g. 0.999), updated
    /// after every optimizer step; evaluation, analysis and export use the average.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// Stop when a test metric has not improved for `patience` epochs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Batches whose gradients are averaged before each optimizer step (1: none).
    #[serde(skip_serializing_if = "is_one")]
    pub grad_accumulation: usize,
    /// Mixup or CutMix of training batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<MixConfig>,
    /// Stochastic weight averaging: average the latent weights at the end of every epoch from
    /// `start_epoch` on, and evaluate the average at the end (reported as `swa_test_acc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swa: Option<SwaConfig>,
    /// Quantizer changes over training: from each entry's epoch on, every layer without a
    /// quantizer of its own (`model.layers`) uses the entry's quantizer. Progressive precision
    /// is a list (8 → 4 → 2 bits → ternary), a switch is one entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quantizer_schedule: Vec<QuantizerSwitch>,
}

/// One step of `train.quantizer_schedule`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizerSwitch {
    /// First epoch (from 0) that uses `quantizer`.
    pub epoch: usize,
    /// The quantizer from then on.
    pub quantizer: PluginSpec,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Early stopping on a test metric.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// `test_acc` (higher is better) or `test_loss` (lower is better).
    #[serde(default = "default_stop_metric")]
    pub metric: StopMetric,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

fn default_stop_metric() -> StopMetric {
    StopMetric::TestAcc
}

/// The metric early stopping watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopMetric {
    /// Test accuracy, higher is better.
    TestAcc,
    /// Test loss, lower is better.
    TestLoss,
}

impl EarlyStopping {
    /// Whether training should stop after the epochs whose metric values are `history`:
    /// the best value lies `patience` or more epochs back.
    pub fn should_stop(&self, history: &[(f64, f64)]) -> bool {
        let value = |&(acc, loss): &(f64, f64)| match self.metric {
            StopMetric::TestAcc => acc,
            StopMetric::TestLoss => -loss,
        };
        let mut best = (f64::NEG_INFINITY, 0);
        for (i, m) in history.iter().enumerate() {
            if value(m) > best.0 + self.min_delta || i == 0 {
                best = (value(m), i);
            }
        }
        !history.is_empty() && history.len() - 1 - best.1 >= self.patience
    }
}

/// Mixing of training batches: each sample is mixed with another of its batch with a weight
/// λ ~ Beta(α, α), the loss is λ·loss(y) + (1 − λ)·loss(y').
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MixConfig {
    /// `mixup` (blend the images) or `cutmix` (paste a box of the other image; λ becomes the
    /// kept area).
    pub kind: MixKind,
    /// α of the Beta distribution.
    #[serde(default = "default_mix_alpha")]
    pub alpha: f64,
    /// Share of batches that are mixed.
    #[serde(default = "default_mix_prob")]
    pub prob: f64,
}

fn default_mix_alpha() -> f64 {
    1.0
}

fn default_mix_prob() -> f64 {
    1.0
}

/// Which mixing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MixKind {
    /// λ·x + (1 − λ)·x'.
    Mixup,
    /// x with a box of x' pasted in.
    Cutmix,
}

/// Stochastic weight averaging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwaConfig {
    /// First epoch (from 0) whose final weights enter the average.
    pub start_epoch: usize,
}

fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}

/// Distillation from a teacher: a finished run's directory and the loss on logits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillConfig {
    /// The teacher: a finished run's directory (holding config.yaml and checkpoint.json),
    /// relative to the directory qat runs in, or the name of an entry of the experiment's
    /// `teachers:` (trained first by the runner).
    pub teacher: String,
    /// The distillation loss (a registered distiller).
    #[serde(default = "default_distiller")]
    pub loss: PluginSpec,
    /// The directory a named teacher was trained in, set by the runner; not part of the config
    /// (so not of the run id).
    #[serde(skip)]
    pub resolved_dir: Option<String>,
}

impl DistillConfig {
    /// The teacher's run directory.
    pub fn teacher_dir(&self) -> &str {
        self.resolved_dir.as_deref().unwrap_or(&self.teacher)
    }
}

fn default_distiller() -> PluginSpec {
    PluginSpec::named("kd")
}

fn is_no_residual(r: &Residual) -> bool {
    *r == Residual::None
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TrainConfig {
    /// Epochs trained with float weights before quantization starts.
    pub fn float_epochs(&self) -> usize {
        match self.float_fraction {
            Some(f) => (f * self.epochs as f64).floor() as usize,
            None => self.float_epochs,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            steps: None,
            weight_decay_schedule: None,
            batch_size: 128,
            optimizer: OptimizerConfig::default(),
            schedule: PluginSpec::named("cosine"),
            seed: 0,
            float_epochs: 0,
            float_fraction: None,
            distill: None,
            label_smoothing: 0.0,
            grad_clip: None,
            ema: None,
            early_stopping: None,
            grad_accumulation: 1,
            mix: None,
            swa: None,
            quantizer_schedule: Vec::new(),
        }
    }
}

/// Optimizers the engine implements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient.
    #[default]
    Adam,
    /// AdamW (Loshchilov & Hutter 2019): weight decay decoupled from the gradient.
    Adamw,
    /// SGD with momentum (and optionally Nesterov), weight decay added to the gradient.
    Sgd,
}

/// Optimizer hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Which optimizer.
    pub name: OptimizerKind,
    /// Base learning rate (the schedule multiplies it).
    pub lr: f64,
    /// Adam's β₁ and β₂.
    pub betas: [f64; 2],
    /// Adam's ε.
    pub eps: f64,
    /// Weight decay on weights (never on quantizer scales or norms).
    pub weight_decay: f64,
    /// SGD momentum (0.9 when not given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// SGD with Nesterov momentum.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub nesterov: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            name: OptimizerKind::Adam,
            lr: 1e-3,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: None,
            nesterov: false,
        }
    }
}

/// A strategy by registered name with its parameters. In YAML either a bare name
/// (`quantizer: ternary`) or a mapping (`quantizer: {name: int, bits: 4}`).
#[derive(Clone, Debug, PartialEq)]
pub struct PluginSpec {
    /// Registered name.
    pub name: String,
    /// Every key but `name`.
    pub params: Mapping,
}

impl PluginSpec {
    /// A spec with no parameters.
    pub fn named(name: &str) -> Self {
        Self { name: name.to_string(), params: Mapping::new() }
    }
    /// The float "quantizer".
    pub fn float() -> Self {
        Self::named("none")
    }
}

impl Default for PluginSpec {
    fn default() -> Self {
        Self::float()
    }
}

impl Serialize for PluginSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = Mapping::new();
        map.insert("name".into(), self.name.clone().into());
        for (k, v) in &self.params {
            map.insert(k.clone(), v.clone());
        }
        map.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PluginSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(name) => Ok(Self::named(&name)),
            Value::Mapping(mut params) => match params.remove("name") {
                Some(Value::String(name)) => Ok(Self { name, params }),
                Some(other) => Err(D::Error::custom(format!("`name` must be a string, found {other:?}"))),
                None => Err(D::Error::custom("a strategy needs a `name` key, e.g. `{name: ternary}`")),
            },
            other => Err(D::Error::custom(format!(
                "expected a strategy name or a mapping with `name`, found {other:?}"
            ))),
        }
    }
}

impl RunConfig {
    /// (optimizer steps between evaluations, total steps) of a run that trains by steps (a
    /// language model; `eval.every` defaults to one evaluation at the end); None for epochs.
    pub fn steps_per_eval(&self) -> Option<(usize, usize)> {
        self.train.steps.map(|steps| (self.eval.every.unwrap_or(steps).max(1), steps))
    }

    /// The network-wide quantizer of `epoch`: `quantizer`, or the last schedule entry that has
    /// started.
    pub fn quantizer_at(&self, epoch: usize) -> &PluginSpec {
        self.train
            .quantizer_schedule
            .iter()
            .rev()
            .find(|s| s.epoch <= epoch)
            .map_or(&self.quantizer, |s| &s.quantizer)
    }

    /// Range checks that serde's types cannot express. Returns `key: problem (fix)`.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.train;
        let o = &t.optimizer;
        let checks: [(bool, &str, String); 9] = [
            (self.name.trim().is_empty(), "name", "must not be empty".into()),
            (t.epochs == 0, "train.epochs", "must be at least 1".into()),
            (t.batch_size == 0, "train.batch_size", "must be at least 1".into()),
            (!(o.lr > 0.0 && o.lr.is_finite()), "train.optimizer.lr", format!("must be > 0, got {}", o.lr)),
            (
                !o.betas.iter().all(|b| (0.0..1.0).contains(b)),
                "train.optimizer.betas",
                format!("must lie in [0, 1), got {:?}", o.betas),
            ),
            (
                o.eps.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater),
                "train.optimizer.eps",
                format!("must be > 0, got {}", o.eps),
            ),
            (o.weight_decay < 0.0, "train.optimizer.weight_decay", "must be >= 0".into()),
            (
                self.model.hidden.contains(&0),
                "model.hidden",
                format!("widths must be at least 1, got {:?}", self.model.hidden),
            ),
            (
                !matches!(self.model.activation_bits, None | Some(2..=16))
                    || self
                        .model
                        .layers
                        .values()
                        .any(|o| matches!(o.activation_bits, Some(Some(b)) if !(2..=16).contains(&b))),
                "model.activation_bits",
                "must be between 2 and 16, or null to disable".into(),
            ),
        ];
        let mut problems: Vec<String> =
            checks.into_iter().filter(|c| c.0).map(|(_, k, m)| format!("{k}: {m}")).collect();
        if !(0.0..1.0).contains(&t.label_smoothing) {
            problems.push(format!("train.label_smoothing: must lie in [0, 1), got {}", t.label_smoothing));
        }
        if t.grad_clip.is_some_and(|c| !(c > 0.0)) {
            problems.push(format!("train.grad_clip: must be > 0, got {:?}", t.grad_clip));
        }
        if o.momentum.is_some_and(|m| !(0.0..1.0).contains(&m)) {
            problems.push(format!("train.optimizer.momentum: must lie in [0, 1), got {:?}", o.momentum));
        }
        if t.ema.is_some_and(|d| !(d > 0.0 && d < 1.0)) {
            problems.push(format!("train.ema: the decay must lie in (0, 1), e.g. 0.999; got {:?}", t.ema));
        }
        if t.early_stopping.as_ref().is_some_and(|e| e.patience == 0 || !(e.min_delta >= 0.0)) {
            problems.push("train.early_stopping: patience must be at least 1 and min_delta >= 0".into());
        }
        if t.grad_accumulation == 0 {
            problems.push("train.grad_accumulation: must be at least 1 (1 turns it off)".into());
        }
        if let Some(m) = &t.mix {
            if !(m.alpha > 0.0) || !(0.0..=1.0).contains(&m.prob) {
                problems.push(format!(
                    "train.mix: alpha must be > 0 and prob in [0, 1], got {} and {}",
                    m.alpha, m.prob
                ));
            }
        }
        if t.swa.as_ref().is_some_and(|s| s.start_epoch >= t.epochs) {
            problems.push(format!("train.swa.start_epoch: must be below train.epochs ({})", t.epochs));
        }
        let switches: Vec<usize> = t.quantizer_schedule.iter().map(|s| s.epoch).collect();
        if !switches.windows(2).all(|w| w[0] < w[1]) || switches.iter().any(|&e| e == 0 || e >= t.epochs) {
            problems.push(format!(
                "train.quantizer_schedule: epochs must rise strictly and lie in 1..{} (epoch 0 uses `quantizer`), got {switches:?}",
                t.epochs
            ));
        }
        if t.float_epochs > 0 && t.float_fraction.is_some() {
            problems.push("train.float_epochs, train.float_fraction: give one of them, not both".into());
        }
        if t.float_fraction.is_some_and(|f| !(0.0..1.0).contains(&f)) {
            problems.push(format!("train.float_fraction: must lie in [0, 1), got {:?}", t.float_fraction));
        }
        if let Err(e) = self.model.check_layer_keys(self.model.layer_count()) {
            problems.push(e);
        }
        if let Err(e) = self.model.check_conv(self.data.image_size) {
            problems.push(e);
        }
        if !(0.0..1.0).contains(&self.model.dropout) {
            problems.push(format!("model.dropout: a probability in [0, 1), got {}", self.model.dropout));
        }
        if self.model.norm_affine && self.model.norm != Norm::Layer {
            problems.push(format!(
                "model.norm_affine: the learned gain and bias belong to norm: layer, not {:?}",
                self.model.norm
            ));
        }
        let d = &self.data;
        match d.dataset {
            Dataset::Cifar10 => {
                if d.image_size != 32 {
                    problems.push(format!(
                        "data.image_size: cifar10 images are 32×32; set 32, not {}",
                        d.image_size
                    ));
                }
                if d.augment || d.elastic {
                    problems.push(
                        "data.augment, data.elastic: the digit augmentations; cifar10 uses data.crop_flip"
                            .into(),
                    );
                }
            }
            Dataset::Mnist | Dataset::FashionMnist => {
                if !(4..=28).contains(&d.image_size) {
                    problems.push(format!("data.image_size: must be between 4 and 28, got {}", d.image_size));
                }
                if d.crop_flip {
                    problems.push(
                        "data.crop_flip: CIFAR's augmentation (flips change digits); use data.augment".into(),
                    );
                }
            }
            Dataset::Tinyshakespeare | Dataset::Text => {
                if d.validation.is_some() {
                    problems.push(
                        "data.validation: an image key; text validates on its last share (data.val_fraction, tinyshakespeare's last 10 %)".into(),
                    );
                }
                if d.augment || d.elastic || d.crop_flip {
                    problems
                        .push("data.augment, data.elastic, data.crop_flip: image keys; text has none".into());
                }
                if self.model.kind != ModelKind::Transformer {
                    problems.push(format!(
                        "data.dataset {}: text needs model.kind: transformer",
                        d.dataset.dir_name()
                    ));
                }
            }
        }
        if let (Some(n), Some(train)) = (d.validation, d.dataset.train_images()) {
            if n == 0 || n >= train {
                problems.push(format!(
                    "data.validation: {n} images; {} has {train} training images, so hold out between 1 and {}",
                    d.dataset.dir_name(),
                    train - 1
                ));
            }
        }
        let text_keys = [
            (d.path.is_some(), "path"),
            (d.tokenizer.is_some(), "tokenizer"),
            (d.val_fraction.is_some(), "val_fraction"),
            (d.sha256.is_some(), "sha256"),
            (d.vocab.is_some(), "vocab"),
        ];
        if d.dataset == Dataset::Text {
            if d.path.is_none() {
                problems.push(
                    "data.path: dataset text reads a file; set data.path (relative to the experiment file)"
                        .into(),
                );
            }
            if !(d.val_fraction() > 0.0 && d.val_fraction() < 1.0) {
                problems.push(format!(
                    "data.val_fraction: must be between 0 and 1 (exclusive), got {}",
                    d.val_fraction()
                ));
            }
        } else {
            for (_, key) in text_keys.iter().filter(|(present, _)| *present) {
                problems.push(format!(
                    "data.{key}: a key of dataset text; {} has its own file and split",
                    d.dataset.dir_name()
                ));
            }
        }
        if self.model.kind == ModelKind::Transformer && !d.dataset.is_text() {
            problems.push(format!(
                "model.kind transformer: a language model needs a text dataset (tinyshakespeare or text), not {}",
                d.dataset.dir_name()
            ));
        }
        let t = &self.train;
        match (t.steps, d.dataset.is_text()) {
            (None, true) => problems.push("train.steps: a language model trains for a number of optimizer steps; set it (nanoGPT's CPU run: 2000)".into()),
            (Some(_), false) => problems.push("train.steps: only language models train by steps; use train.epochs".into()),
            (Some(0), true) => problems.push("train.steps: must be at least 1".into()),
            _ => {}
        }
        if self.eval.every == Some(0) || self.eval.batches == Some(0) {
            problems.push("eval.every, eval.batches: must be at least 1".into());
        }
        if !d.dataset.is_text() && (self.eval.every.is_some() || self.eval.batches.is_some()) {
            problems.push("eval.every, eval.batches: language-model keys; classifiers evaluate every epoch on the test set".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_alone_gives_the_reference_recipe() {
        let c: RunConfig = serde_yaml::from_str("name: x").unwrap();
        assert_eq!(c.model.hidden, vec![64, 64, 64]);
        assert_eq!(c.model.activation_bits, Some(8));
        assert_eq!((c.train.epochs, c.train.batch_size, c.train.optimizer.lr), (30, 128, 1e-3));
        assert_eq!(c.quantizer, PluginSpec::float());
        assert_eq!(c.train.schedule.name, "cosine");
        c.validate().unwrap();
    }

    #[test]
    fn strategies_are_a_name_or_a_mapping() {
        let c: RunConfig = serde_yaml::from_str("name: x\nquantizer: ternary").unwrap();
        assert_eq!(c.quantizer, PluginSpec::named("ternary"));
        let c: RunConfig =
            serde_yaml::from_str("name: x\nquantizer: {name: ternary, granularity: channel}").unwrap();
        assert_eq!(c.quantizer.name, "ternary");
        assert_eq!(c.quantizer.params.get("granularity").unwrap(), "channel");
        let err = serde_yaml::from_str::<RunConfig>("name: x\nquantizer: {bits: 2}").unwrap_err().to_string();
        assert!(err.contains("needs a `name` key"), "{err}");
    }

    #[test]
    fn resolved_config_round_trips_through_yaml() {
        let c: RunConfig =
            serde_yaml::from_str("name: x\nquantizer: {name: ternary, learn_scale: true}").unwrap();
        let back: RunConfig = serde_yaml::from_str(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let err = serde_yaml::from_str::<RunConfig>("name: x\ntrain:\n  epocs: 3\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `epocs`"), "{err}");
        assert_eq!(err.location().unwrap().line(), 3);
    }

    #[test]
    fn layer_overrides_resolve_first_last_and_index() {
        let c: RunConfig = serde_yaml::from_str(
            "name: x\nquantizer: ternary\nmodel:\n  hidden: [8, 8]\n  layers:\n    first: {quantizer: {name: int, bits: 8}}\n    last: {activation_bits: null}\n    \"3\": {activation_bits: 4}\n",
        )
        .unwrap();
        let q = &c.quantizer;
        let (first, first_bits) = c.model.layer(0, 3, q);
        assert_eq!(
            (first.name.as_str(), first.params.get("bits").and_then(|v| v.as_u64()), first_bits),
            ("int", Some(8), Some(8))
        );
        assert_eq!(c.model.layer(1, 3, q), (PluginSpec::named("ternary"), Some(8)));
        // the index (3) wins over `last` for the last layer
        assert_eq!(c.model.layer(2, 3, q), (PluginSpec::named("ternary"), Some(4)));
        c.validate().unwrap();
        let bad: RunConfig =
            serde_yaml::from_str("name: x\nmodel: {hidden: [8], layers: {\"5\": {activation_bits: 4}}}")
                .unwrap();
        assert_eq!(
            bad.validate().unwrap_err(),
            "model.layers: no layer `5`; use a layer name (fc1, fc2), a glob over them, `first`, `last` \
             or an index from 1 to 2"
        );
    }

    #[test]
    fn layer_overrides_by_name_and_glob_and_their_precedence() {
        let c: RunConfig = serde_yaml::from_str(
            "name: x\nquantizer: ternary\nmodel:\n  conv: [{channels: 2}]\n  hidden: [8, 8]\n  layers:\n    \
             first: {activation_bits: 2}\n    \"1\": {activation_bits: 3}\n    \"conv*\": {activation_bits: 4}\n    \
             conv1: {activation_bits: 5}\n    \"fc*\": {quantizer: {name: int, bits: 4}}\n    fc3: {quantizer: binary}\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.model.layer_names(), ["conv1", "fc1", "fc2", "fc3"]);
        let q = &c.quantizer;
        // conv1: first (2) < index 1 (3) < glob conv* (4) < exact name conv1 (5)
        assert_eq!(c.model.layer(0, 4, q), (PluginSpec::named("ternary"), Some(5)));
        let int4 = c.model.layer(1, 4, q).0;
        assert_eq!((int4.name.as_str(), int4.params.get("bits").and_then(|v| v.as_u64())), ("int", Some(4)));
        assert_eq!(c.model.layer(3, 4, q).0, PluginSpec::named("binary"), "the exact name beats the glob");
        let bad: RunConfig =
            serde_yaml::from_str("name: x\nmodel: {hidden: [8], layers: {fc3: {activation_bits: 4}}}")
                .unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .starts_with("model.layers: no layer `fc3` (did you mean `fc1`?)"));
        let glob: RunConfig =
            serde_yaml::from_str("name: x\nmodel: {hidden: [8], layers: {\"conv*\": {activation_bits: 4}}}")
                .unwrap();
        assert!(glob.validate().unwrap_err().contains("no layer `conv*`"), "a glob must match a layer");
    }

    #[test]
    fn each_dataset_has_its_own_size_and_augmentation_rules() {
        let problems = |yaml: &str| {
            serde_yaml::from_str::<RunConfig>(yaml).unwrap().validate().err().unwrap_or_default()
        };
        assert_eq!(problems("name: x\ndata: {dataset: cifar10, image_size: 32, crop_flip: true}"), "");
        assert!(problems("name: x\ndata: {dataset: cifar10}")
            .contains("cifar10 images are 32×32; set 32, not 16"));
        assert!(problems("name: x\ndata: {dataset: cifar10, image_size: 32, augment: true}")
            .contains("cifar10 uses data.crop_flip"));
        assert!(problems("name: x\ndata: {crop_flip: true}").contains("data.crop_flip: CIFAR's augmentation"));
        // the key is left out of the resolved config (and so the run id) when off
        let c: RunConfig = serde_yaml::from_str("name: x").unwrap();
        assert!(!serde_yaml::to_string(&c).unwrap().contains("crop_flip"));
    }

    #[test]
    fn globs_match_within_one_segment() {
        assert!(glob_matches("fc*", "fc12"));
        assert!(glob_matches("blocks.*.attn.*", "blocks.0.attn.qkv"));
        assert!(!glob_matches("blocks.*.attn", "blocks.0.1.attn"));
        assert!(glob_matches("*", "fc1") && !glob_matches("*", "a.b"));
        assert!(!glob_matches("fc*", "conv1"));
        assert!(glob_matches("f*1", "fc1") && !glob_matches("f*1", "fc2"));
    }

    #[test]
    fn range_problems_name_their_key_and_all_are_reported() {
        let mut c: RunConfig = serde_yaml::from_str("name: x").unwrap();
        c.train.optimizer.lr = -1.0;
        c.train.epochs = 0;
        let err = c.validate().unwrap_err();
        assert!(err.contains("train.optimizer.lr: must be > 0, got -1"), "{err}");
        assert!(err.contains("train.epochs: must be at least 1"), "{err}");
    }

    #[test]
    fn recipe_options_are_range_checked() {
        let c: RunConfig = serde_yaml::from_str(
            "name: x\ntrain: {ema: 1.5, grad_accumulation: 0, early_stopping: {patience: 0}, \
             mix: {kind: cutmix, alpha: 0}, swa: {start_epoch: 30}}",
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        for expected in [
            "train.ema: the decay must lie in (0, 1)",
            "train.grad_accumulation: must be at least 1",
            "train.early_stopping: patience must be at least 1",
            "train.mix: alpha must be > 0",
            "train.swa.start_epoch: must be below train.epochs (30)",
        ] {
            assert!(err.contains(expected), "`{expected}` in {err}");
        }
        let c: RunConfig = serde_yaml::from_str(
            "name: x\ntrain: {epochs: 4, quantizer_schedule: [{epoch: 2, quantizer: ternary}, {epoch: 2, quantizer: binary}]}",
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.contains("train.quantizer_schedule: epochs must rise strictly and lie in 1..4"), "{err}");
        assert_eq!(c.quantizer_at(0), &PluginSpec::float());
        assert_eq!(c.quantizer_at(3).name, "binary");
        let c: RunConfig = serde_yaml::from_str("name: x\nmodel: {norm: rms, norm_affine: true}").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .contains("model.norm_affine: the learned gain and bias belong to norm: layer"));
        let c: RunConfig = serde_yaml::from_str(
            "name: x\nmodel: {conv: [{channels: 4}, {channels: 8, depthwise: true}, {channels: 8, pool: true}]}",
        )
        .unwrap();
        let err = c.validate().unwrap_err();
        assert!(
            err.contains("model.conv[1]: a depthwise convolution keeps the channel count (4), got 8"),
            "{err}"
        );
        let unknown = serde_yaml::from_str::<RunConfig>("name: x\ntrain: {mix: {kind: blend}}").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown variant `blend`, expected `mixup` or `cutmix`"),
            "{unknown}"
        );
    }

    #[test]
    fn early_stopping_counts_epochs_since_the_best() {
        let acc = |v: &[f64]| v.iter().map(|&a| (a, 0.0)).collect::<Vec<_>>();
        let stop = EarlyStopping { metric: StopMetric::TestAcc, patience: 2, min_delta: 0.0 };
        assert!(!stop.should_stop(&acc(&[0.9, 0.91, 0.9])));
        assert!(stop.should_stop(&acc(&[0.9, 0.91, 0.9, 0.905])));
        let strict = EarlyStopping { min_delta: 0.02, ..stop.clone() };
        assert!(strict.should_stop(&acc(&[0.9, 0.91, 0.915])), "gains below min_delta do not count");
        let loss = EarlyStopping { metric: StopMetric::TestLoss, patience: 1, min_delta: 0.0 };
        assert!(!loss.should_stop(&[(0.0, 0.5), (0.0, 0.4)]));
        assert!(loss.should_stop(&[(0.0, 0.5), (0.0, 0.4), (0.0, 0.45)]));
        assert!(!stop.should_stop(&[]));
    }

    #[test]
    fn model_kind_sets_the_family_and_its_defaults() {
        let parse = |yaml: &str| serde_yaml::from_str::<RunConfig>(&format!("name: x\nmodel: {yaml}"));
        let lm = parse("{kind: transformer}").unwrap().model;
        let t = lm.transformer.clone().unwrap();
        assert_eq!((t.depth, t.heads, t.width, t.context, t.mlp.ratio), (4, 4, 128, 64, 4));
        assert!(t.tie_embeddings);
        assert_eq!(
            (lm.norm, lm.activation_bits),
            (Norm::Layer, None),
            "nanoGPT's LayerNorm, float activations"
        );
        assert_eq!(lm.layer_names()[..3], ["embed", "blocks.0.attn.qkv", "blocks.0.attn.proj"]);
        assert_eq!(lm.layer_count(), 1 + 4 * 4, "tied: no separate head");
        let ternary = PluginSpec::named("ternary");
        assert_eq!(lm.layer(0, 17, &ternary).0.name, "none", "the embedding stays float by default");
        assert_eq!(lm.layer(1, 17, &ternary).0.name, "ternary");
        let mlp = parse("{hidden: [8]}").unwrap().model;
        assert_eq!((mlp.norm, mlp.activation_bits), (Norm::Rms, Some(8)), "the MLP's defaults stay");
        assert_eq!(
            serde_yaml::to_string(&mlp).unwrap(),
            serde_yaml::to_string(&ModelConfig { hidden: vec![8], ..Default::default() }).unwrap()
        );
        let err = |yaml: &str| parse(yaml).unwrap_err().to_string();
        assert!(err("{kind: transformer, width: 130, heads: 4}")
            .contains("model.width: 130 is not a multiple of model.heads (4)"));
        assert!(err("{kind: transformer, hidden: [8]}")
            .contains("model.hidden: not a key of model.kind transformer"));
        assert!(
            err("{depth: 2}").contains("model.depth: not a key of model.kind mlp (set kind: transformer)")
        );
        assert!(err("{kind: rnn}").contains("unknown variant `rnn`, expected `mlp` or `transformer`"));
        assert!(err("{kind: transformer, width: 12, heads: 4, position: rope}")
            .contains("model.position: rope turns pairs of dimensions, but a head has 3"));
        assert!(err("{block_norms: false}").contains("model.block_norms: not a key of model.kind mlp"));
        let gated = parse(
            "{kind: transformer, width: 20, heads: 4, mlp: {ratio: 3, gated: true, activation: relu2}}",
        )
        .unwrap()
        .model;
        let t = gated.transformer.clone().unwrap();
        assert_eq!(
            (t.mlp.hidden(20), MlpConfig::default().hidden(20)),
            (64, 80),
            "60 rounds up to 64 when gated"
        );
        assert_eq!(
            gated.layer_names()[1..4],
            ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.gate"]
        );
        assert!(t.block_norms && !t.subln, "pre-norm blocks without SubLN by default");
        // `first` and `last` name a transformer's embedding and head (tied: the embedding too)
        for (tie, head) in [(true, "embed"), (false, "head")] {
            let m = parse(&format!(
                "{{kind: transformer, depth: 2, tie_embeddings: {tie}, layers: {{last: {{quantizer: {{name: int, bits: 8}}}}}}}}"
            ))
            .unwrap()
            .model;
            let names = m.layer_names();
            let spec = |name: &str| {
                let i = names.iter().position(|n| n == name).unwrap();
                m.layer(i, names.len(), &PluginSpec::named("ternary")).0.name
            };
            assert_eq!((spec(head), spec("blocks.1.mlp.proj")), ("int".to_string(), "ternary".to_string()));
        }
    }
}
