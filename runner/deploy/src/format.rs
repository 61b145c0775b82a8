//! The model file: a versioned, self-describing container for a packed low-bit network.
//!
//! ```text
//! offset 0   magic  "QATMODEL"                 8 bytes
//!        8   format version, u32 little-endian
//!       12   header length H, u32 little-endian
//!       16   header: UTF-8 JSON (ModelHeader)  H bytes
//!   16 + H   payload: each layer's packed codes at its (offset, bytes), then each tensor
//!            (embeddings, norm gains, float linears) back to back: f32 values little-endian,
//!            or for an int8 tensor one f32 scale per row, then the i8 codes row-major
//!  end − 4   CRC-32 of every byte before it, u32 little-endian
//! ```
//!
//! JSON keeps the header readable with any tool and lets a reader name the key that is wrong;
//! the weights stay binary. [`ModelFile::read`] validates everything it returns (shapes chain,
//! codes within the level set, payload ranges), so the kernels can trust it.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, DeployError, Result};
use crate::graph::{self, Op};
use crate::pack::Packing;

/// First bytes of every model file.
pub const MAGIC: &[u8; 8] = b"QATMODEL";
/// The format version this build writes (3: the network as an op list, [`crate::graph`]; 2:
/// convolution layers).
pub const VERSION: u32 = 3;
/// The oldest version this build reads (1: fully connected layers only, otherwise the same).
pub const OLDEST_VERSION: u32 = 1;
const PREAMBLE: usize = 16;

/// How raw images become the network's input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Dataset the model was trained on (`mnist`, `fashion-mnist`).
    pub dataset: String,
    /// Side of the square image after the antialiased resize.
    pub image_size: usize,
    /// Pixels are mapped to `(p/255 − mean)/std`.
    pub mean: f32,
    /// See `mean`.
    pub std: f32,
}

/// How a language model turns text into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// One token per character of [`TextSpec::vocab`] (its position is the id).
    Char,
    /// One token per byte (256).
    Byte,
}

/// A language model's text side: its tokenizer, its context, and the windows its training
/// evaluated on, so that `qat infer` scores the same text without any path of the machine the
/// model was made on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSpec {
    /// The tokenizer.
    pub tokenizer: TokenizerKind,
    /// The char tokenizer's vocabulary in id order (empty for bytes).
    #[serde(default)]
    pub vocab: String,
    /// Positions the model attends over; longer texts are cropped to the last `context` tokens.
    pub context: usize,
    /// The training-time evaluation.
    pub evaluation: TextEvaluation,
}

/// Where the training evaluation's windows come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEvaluation {
    /// The dataset id (`tinyshakespeare`, or `text` for a file the user brought).
    pub dataset: String,
    /// SHA-256 of the text file (hex).
    pub sha256: String,
    /// The share of tokens at the end of the file that validate.
    pub val_fraction: f64,
    /// The seed evaluation windows are drawn from.
    pub seed: u64,
    /// Batches of windows per evaluation.
    pub batches: usize,
    /// Windows per batch.
    pub batch: usize,
}

impl TextSpec {
    /// Distinct tokens: the characters, or 256 bytes.
    pub fn vocab_size(&self) -> usize {
        match self.tokenizer {
            TokenizerKind::Char => self.vocab.chars().count(),
            TokenizerKind::Byte => 256,
        }
    }

    /// Token ids of `text`; characters outside the vocabulary are an error that lists them.
    pub fn encode(&self, text: &str) -> Result<Vec<u8>> {
        let vocab: Vec<char> = self.vocab.chars().collect();
        encode_text(self.tokenizer, &vocab, text).map_err(DeployError::Unsupported)
    }

    /// Text of token ids (bytes that are not UTF-8 show as U+FFFD).
    pub fn decode(&self, tokens: &[u8]) -> String {
        let vocab: Vec<char> = self.vocab.chars().collect();
        decode_tokens(self.tokenizer, &vocab, tokens)
    }
}

/// Token ids of `text` under `tokenizer` (`vocab`: the char tokenizer's characters in id order,
/// ascending); characters outside the vocabulary are an error that lists them. Training's text
/// data and the runtime share it.
pub fn encode_text(
    tokenizer: TokenizerKind,
    vocab: &[char],
    text: &str,
) -> std::result::Result<Vec<u8>, String> {
    if tokenizer == TokenizerKind::Byte {
        return Ok(text.as_bytes().to_vec());
    }
    let mut unknown: Vec<char> = text.chars().filter(|c| vocab.binary_search(c).is_err()).collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        unknown.dedup();
        return Err(format!(
            "characters outside the model's vocabulary: {unknown:?}; the vocabulary is {:?}",
            vocab.iter().collect::<String>()
        ));
    }
    Ok(text.chars().map(|c| vocab.binary_search(&c).expect("checked") as u8).collect())
}

/// Text of token ids under `tokenizer` (bytes that are not UTF-8, and ids past the vocabulary,
/// show as U+FFFD).
pub fn decode_tokens(tokenizer: TokenizerKind, vocab: &[char], tokens: &[u8]) -> String {
    match tokenizer {
        TokenizerKind::Char => {
            tokens.iter().map(|&t| vocab.get(t as usize).copied().unwrap_or('\u{fffd}')).collect()
        }
        TokenizerKind::Byte => String::from_utf8_lossy(tokens).into_owned(),
    }
}

/// A tensor of the payload: `rows × cols` values, row-major, stored as [`TensorSpec::dtype`]
/// says. Ops read its values as f32 whatever the storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The name ops read it by (`embed`, `pos`, `blocks.0.norm1.gain`).
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// How the values are stored (absent: f32).
    #[serde(default, skip_serializing_if = "TensorType::is_f32")]
    pub dtype: TensorType,
    /// Start in the payload (after the last layer's codes).
    pub offset: usize,
    /// Length in bytes ([`TensorType::bytes`]).
    pub bytes: usize,
}

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TensorType {
    /// f32 values, little-endian.
    #[default]
    F32,
    /// One f32 scale per row, then one i8 code per value: value = code · its row's scale. A
    /// quantized embedding table (its levels an integer grid within int8) stored exactly.
    Int8,
}

impl TensorType {
    fn is_f32(&self) -> bool {
        *self == TensorType::F32
    }

    /// Bytes of a `rows × cols` tensor stored this way.
    pub fn bytes(self, rows: usize, cols: usize) -> Option<usize> {
        let count = rows.checked_mul(cols)?;
        match self {
            TensorType::F32 => count.checked_mul(4),
            TensorType::Int8 => rows.checked_mul(4)?.checked_add(count),
        }
    }
}

/// An int8 tensor's contents: a scale per row and the codes, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Rows {
    /// One scale per row.
    pub scales: Vec<f32>,
    /// `rows × cols` codes.
    pub codes: Vec<i8>,
}

impl Int8Rows {
    /// The values the codes stand for (code · scale of its row).
    pub fn values(&self) -> Vec<f32> {
        let cols = self.codes.len() / self.scales.len().max(1);
        self.codes
            .chunks_exact(cols.max(1))
            .zip(&self.scales)
            .flat_map(|(row, &s)| row.iter().map(move |&c| c as f32 * s))
            .collect()
    }
}

/// One tensor to write: its name and shape, its values, and for an int8 tensor its codes.
pub struct TensorData {
    /// The name ops read it by.
    pub name: String,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows × cols` values, row-major (for an int8 tensor, what its codes stand for).
    pub values: Vec<f32>,
    /// The int8 storage (None: f32).
    pub int8: Option<Int8Rows>,
}

impl TensorData {
    /// An f32 tensor.
    pub fn f32(name: &str, rows: usize, cols: usize, values: Vec<f32>) -> Self {
        Self { name: name.to_string(), rows, cols, values, int8: None }
    }

    /// An int8 tensor of `rows` rows, stored as its codes and row scales.
    pub fn int8(name: &str, rows: usize, int8: Int8Rows) -> Self {
        let cols = int8.codes.len() / rows.max(1);
        Self { name: name.to_string(), rows, cols, values: int8.values(), int8: Some(int8) }
    }
}

/// Normalisation of each layer's input (before its activation quantization).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// x / sqrt(mean(x²) + 1e-12).
    Rms,
    /// Identity.
    None,
}

/// Activation after every hidden layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationKind {
    /// max(x, 0).
    Relu,
}

/// A 3×3 convolution, stride 1, zero padding 1, over a square map stored HWC (channels
/// innermost), then the activation and an optional 2×2 max-pool. Its weights are the layer's
/// `rows` (output channels) × `cols` matrix, each row the 9 taps (row-major, (dy, dx) from
/// (−1, −1)) × the input channels it reads (all of them, or its own one when depthwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvSpec {
    /// Height and width of the input map.
    pub side: usize,
    /// Channels of the input map.
    pub in_channels: usize,
    /// One filter per channel (`in_channels` = `rows`) instead of one over all channels.
    pub depthwise: bool,
    /// 2×2 max-pool, stride 2, after the activation (`side` even).
    pub pool: bool,
}

impl ConvSpec {
    /// Inputs each filter reads per tap.
    pub fn taps_in(&self) -> usize {
        if self.depthwise {
            1
        } else {
            self.in_channels
        }
    }

    /// Side of the output map (after pooling).
    pub fn out_side(&self) -> usize {
        if self.pool {
            self.side / 2
        } else {
            self.side
        }
    }
}

/// One layer without bias, `rows` outputs × `cols` inputs: fully connected, or a convolution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// `fc1`, `fc2`, ...
    pub name: String,
    /// Output channels.
    pub rows: usize,
    /// Inputs.
    pub cols: usize,
    /// The quantizer that produced the codes, as configured (for people; not interpreted).
    pub quantizer: String,
    /// The level set, ascending; weight = levels[code] · scale of its row.
    pub levels: Vec<f32>,
    /// How the codes are stored.
    pub packing: Packing,
    /// One scale per tensor, or one per row.
    pub scales: Vec<f32>,
    /// Bits of the per-sample absmax quantization of this layer's input.
    pub activation_bits: u32,
    /// Start of the packed codes in the payload.
    pub offset: usize,
    /// Length of the packed codes.
    pub bytes: usize,
    /// The convolution this layer's weights are the filters of (absent: fully connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvSpec>,
}

impl LayerSpec {
    /// Values per sample this layer reads: `cols`, or the whole input map of a convolution.
    pub fn input_features(&self) -> usize {
        self.conv.map_or(self.cols, |c| c.side * c.side * c.in_channels)
    }

    /// Values per sample this layer gives: `rows`, or the whole (pooled) output map.
    pub fn output_features(&self) -> usize {
        self.conv.map_or(self.rows, |c| c.out_side() * c.out_side() * self.rows)
    }

    /// Values per sample before pooling: `rows`, or the whole output map.
    pub fn map_features(&self) -> usize {
        self.conv.map_or(self.rows, |c| c.side * c.side * self.rows)
    }

    /// The scale of output row (channel) `row`.
    pub fn row_scale(&self, row: usize) -> f32 {
        self.scales[if self.scales.len() == 1 { 0 } else { row }]
    }

    /// Storage bits per weight including the scales (f32 each).
    pub fn bits_per_weight(&self) -> f64 {
        (self.bytes as f64 * 8.0 + self.scales.len() as f64 * 32.0) / (self.rows * self.cols).max(1) as f64
    }
}

/// Everything about the network except the packed codes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelHeader {
    /// The run's name.
    pub name: String,
    /// The run id it was exported from.
    pub run_id: String,
    /// Input preprocessing of an image classifier (absent for a language model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputSpec>,
    /// A language model's tokenizer, context and evaluation settings (absent for images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// Number of classes (outputs of the last layer; a language model's vocabulary).
    pub classes: usize,
    /// Input normalisation of every layer.
    pub norm: NormKind,
    /// Hidden activation.
    pub activation: ActivationKind,
    /// Layers from input to logits.
    pub layers: Vec<LayerSpec>,
    /// The network as an op list (version 3); empty in older files, whose graph is implied
    /// ([`graph::implied_ops`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ops: Vec<Op>,
    /// The qatlab version that wrote the file (version 3; empty before).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
    /// Float tensors the ops read by name, stored after the layers' codes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensors: Vec<TensorSpec>,
}

impl ModelHeader {
    /// An image classifier's input preprocessing, or an error saying this model reads text.
    pub fn image(&self) -> Result<&InputSpec> {
        self.input.as_ref().ok_or_else(|| {
            DeployError::Unsupported(
                "a language model reads text, not images: use qat generate, or qat infer for its loss".into(),
            )
        })
    }

    /// The values per sample of the network input: the image's pixels, or one token id.
    pub fn input_width(&self) -> usize {
        self.input.as_ref().map_or(1, |i| i.image_size * i.image_size)
    }

    /// The network's op list: the stored one, or the one a version 1 or 2 file implies.
    pub fn graph(&self) -> Vec<Op> {
        if self.ops.is_empty() {
            graph::implied_ops(self)
        } else {
            self.ops.clone()
        }
    }
}

/// A model: header plus each layer's codes (unpacked, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// The header.
    pub header: ModelHeader,
    /// Per layer, `rows × cols` codes into its level set.
    pub codes: Vec<Vec<u8>>,
    /// Per tensor of the header, its values (an int8 tensor's dequantized).
    pub tensors: Vec<Vec<f32>>,
    /// Per tensor of the header, its int8 storage (None for f32 tensors).
    pub int8: Vec<Option<Int8Rows>>,
}

/// One layer to write: its description (offset and bytes are filled in) and codes.
pub struct LayerData {
    /// Everything but `offset` and `bytes`.
    pub spec: LayerSpec,
    /// Row-major codes.
    pub codes: Vec<u8>,
}

impl ModelFile {
    /// Pack `layers` under `header` (whose `layers` are replaced) and validate the result.
    pub fn new(header: ModelHeader, layers: Vec<LayerData>) -> Result<Self> {
        Self::with_tensors(header, layers, Vec::new())
    }

    /// Pack `layers` and float `tensors` under `header` (whose `layers` and `tensors` are
    /// replaced) and validate the result.
    pub fn with_tensors(
        mut header: ModelHeader,
        layers: Vec<LayerData>,
        tensors: Vec<TensorData>,
    ) -> Result<Self> {
        header.layers.clear();
        header.tensors.clear();
        let mut offset = 0;
        let mut codes = Vec::new();
        for mut layer in layers {
            layer.spec.offset = offset;
            layer.spec.bytes = layer.spec.packing.packed_len(layer.codes.len());
            offset += layer.spec.bytes;
            header.layers.push(layer.spec);
            codes.push(layer.codes);
        }
        let (mut values, mut int8) = (Vec::new(), Vec::new());
        for tensor in tensors {
            let dtype = if tensor.int8.is_some() { TensorType::Int8 } else { TensorType::F32 };
            let bytes = dtype
                .bytes(tensor.rows, tensor.cols)
                .ok_or_else(|| invalid(format!("tensor {}: overflowing shape", tensor.name)))?;
            header.tensors.push(TensorSpec {
                name: tensor.name,
                rows: tensor.rows,
                cols: tensor.cols,
                dtype,
                offset,
                bytes,
            });
            offset += bytes;
            values.push(tensor.values);
            int8.push(tensor.int8);
        }
        let model = Self { header, codes, tensors: values, int8 };
        model.validate_header(offset)?;
        model.validate_codes()?;
        Ok(model)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = serde_json::to_vec_pretty(&self.header).map_err(|e| invalid(format!("header: {e}")))?;
        let mut out = Vec::with_capacity(PREAMBLE + header.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        for (spec, codes) in self.header.layers.iter().zip(&self.codes) {
            out.extend_from_slice(&spec.packing.pack(codes)?);
        }
        for (values, int8) in self.tensors.iter().zip(&self.int8) {
            match int8 {
                None => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
                Some(t) => {
                    t.scales.iter().for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
                    out.extend(t.codes.iter().map(|&c| c as u8));
                }
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parse and validate a model file.
    pub fn read(bytes: &[u8]) -> Result<Self> {
        let have = bytes.len();
        let truncated = |what, offset, need| DeployError::Truncated { what, offset, need, have };
        if have < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            let found = bytes[..have.min(MAGIC.len())].to_vec();
            return Err(DeployError::BadMagic { found, expected: MAGIC });
        }
        if have < PREAMBLE + 4 {
            return Err(truncated("the preamble and checksum", 0, PREAMBLE + 4));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(DeployError::Version { found: version, oldest: OLDEST_VERSION, newest: VERSION });
        }
        let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        if header_len > have - PREAMBLE - 4 {
            return Err(truncated("the header", PREAMBLE, header_len));
        }
        let body = &bytes[..have - 4];
        let stored = u32::from_le_bytes([bytes[have - 4], bytes[have - 3], bytes[have - 2], bytes[have - 1]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(DeployError::Checksum { stored, computed });
        }
        let header: serde_json::Value = serde_json::from_slice(&bytes[PREAMBLE..PREAMBLE + header_len])
            .map_err(|e| invalid(format!("header JSON: {e}")))?;
        graph::check_tags(&header)?;
        let header: ModelHeader =
            serde_json::from_value(header).map_err(|e| invalid(format!("header JSON: {e}")))?;
        if version < 3 && !header.ops.is_empty() {
            return Err(invalid(format!("an op list needs format version 3, the file says {version}")));
        }
        let payload = &body[PREAMBLE + header_len..];
        let mut model = Self { header, codes: Vec::new(), tensors: Vec::new(), int8: Vec::new() };
        model.validate_header(payload.len())?;
        for spec in &model.header.layers {
            let packed = &payload[spec.offset..spec.offset + spec.bytes];
            let codes =
                spec.packing.unpack(packed, spec.rows * spec.cols).map_err(|e| in_layer(&spec.name, e))?;
            model.codes.push(codes);
        }
        let f32s = |bytes: &[u8]| -> Vec<f32> {
            bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        for spec in &model.header.tensors {
            let bytes = &payload[spec.offset..spec.offset + spec.bytes];
            match spec.dtype {
                TensorType::F32 => {
                    model.tensors.push(f32s(bytes));
                    model.int8.push(None);
                }
                TensorType::Int8 => {
                    let (scales, codes) = bytes.split_at(4 * spec.rows);
                    let t =
                        Int8Rows { scales: f32s(scales), codes: codes.iter().map(|&c| c as i8).collect() };
                    model.tensors.push(t.values());
                    model.int8.push(Some(t));
                }
            }
        }
        model.validate_codes()?;
        Ok(model)
    }

    /// Shapes chain from the input to the classes; levels, scales, bits and payload ranges are
    /// sane. Checked before anything is allocated from the header's numbers.
    fn validate_header(&self, payload_len: usize) -> Result<()> {
        let h = &self.header;
        if h.layers.is_empty() && h.tensors.is_empty() {
            return Err(invalid("the model has no layers and no tensors"));
        }
        match (&h.input, &h.text) {
            (Some(input), None) => validate_image(input)?,
            (None, Some(text)) => validate_text(text, h.classes)?,
            _ => {
                return Err(invalid(
                    "the header needs exactly one of `input` (images) and `text` (a language model)",
                ))
            }
        }
        if h.ops.is_empty() && h.layers.last().is_some_and(|l| l.conv.is_some()) {
            return Err(invalid(
                "the last layer gives the logits and must be fully connected, not a convolution",
            ));
        }
        let mut next_offset = 0usize;
        for spec in &h.layers {
            let at = |what: String| invalid(format!("layer {}: {what}", spec.name));
            if let Some(conv) = spec.conv {
                validate_conv(&conv, spec).map_err(at)?;
                if conv.pool && !h.ops.is_empty() {
                    return Err(at(
                        "with an op list, pooling is a max-pool op: conv.pool must be false".into()
                    ));
                }
            }
            let count = spec
                .rows
                .checked_mul(spec.cols)
                .filter(|&c| c > 0)
                .ok_or_else(|| at("empty or overflowing shape".into()))?;
            if count / 8 > payload_len {
                return Err(at(format!("{count} weights cannot fit a {payload_len}-byte payload")));
            }
            if spec.bytes != spec.packing.packed_len(count) {
                return Err(at(format!(
                    "{count} codes as {:?} take {} bytes, the header says {}",
                    spec.packing,
                    spec.packing.packed_len(count),
                    spec.bytes
                )));
            }
            next_offset =
                stored_after(spec.offset, spec.bytes, next_offset, payload_len, "the layers before it")
                    .map_err(at)?;
            if spec.levels.is_empty() || spec.levels.len() > spec.packing.max_levels() {
                return Err(at(format!("{} levels do not fit {:?}", spec.levels.len(), spec.packing)));
            }
            if !spec.levels.windows(2).all(|w| w[0] < w[1]) || !spec.levels.iter().all(|l| l.is_finite()) {
                return Err(at("levels must be finite and strictly ascending".into()));
            }
            if !(spec.scales.len() == 1 || spec.scales.len() == spec.rows)
                || !spec.scales.iter().all(|s| s.is_finite())
            {
                return Err(at(format!("needs 1 or {} finite scales, has {}", spec.rows, spec.scales.len())));
            }
            if !(2..=8).contains(&spec.activation_bits) {
                return Err(at(format!("activation_bits {} (2 to 8 are supported)", spec.activation_bits)));
            }
        }
        for spec in &h.tensors {
            let at = |what: String| invalid(format!("tensor {}: {what}", spec.name));
            let need = spec
                .dtype
                .bytes(spec.rows, spec.cols)
                .filter(|_| spec.rows * spec.cols > 0)
                .ok_or_else(|| at("empty or overflowing shape".into()))?;
            if need != spec.bytes {
                return Err(at(format!(
                    "{}×{} {:?} values take {need} bytes, the header says {}",
                    spec.rows, spec.cols, spec.dtype, spec.bytes
                )));
            }
            next_offset =
                stored_after(spec.offset, spec.bytes, next_offset, payload_len, "the parts before it")
                    .map_err(at)?;
            if h.tensors.iter().filter(|t| t.name == spec.name).count() > 1 {
                return Err(at("the name is used twice".into()));
            }
        }
        graph::check(h, &h.graph())?;
        if next_offset != payload_len {
            return Err(invalid(format!(
                "the layers and tensors hold {next_offset} bytes but the payload has {payload_len}"
            )));
        }
        Ok(())
    }

    fn validate_codes(&self) -> Result<()> {
        for ((spec, values), int8) in self.header.tensors.iter().zip(&self.tensors).zip(&self.int8) {
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(invalid(format!("tensor {}: value {i} is {}", spec.name, values[i])));
            }
            if let Some(t) = int8 {
                if t.scales.len() != spec.rows || t.codes.len() != spec.rows * spec.cols {
                    return Err(invalid(format!(
                        "tensor {}: {} scales and {} codes for {}×{}",
                        spec.name,
                        t.scales.len(),
                        t.codes.len(),
                        spec.rows,
                        spec.cols
                    )));
                }
                if let Some(r) = t.scales.iter().position(|s| !(s.is_finite() && *s >= 0.0)) {
                    return Err(invalid(format!("tensor {}: row {r} has scale {}", spec.name, t.scales[r])));
                }
            }
        }
        for (spec, codes) in self.header.layers.iter().zip(&self.codes) {
            if codes.len() != spec.rows * spec.cols {
                return Err(invalid(format!(
                    "layer {}: {} codes for a {}×{} matrix",
                    spec.name,
                    codes.len(),
                    spec.rows,
                    spec.cols
                )));
            }
            if let Some(i) = codes.iter().position(|&c| c as usize >= spec.levels.len()) {
                return Err(invalid(format!(
                    "layer {}: weight {i} has code {} but there are {} levels",
                    spec.name,
                    codes[i],
                    spec.levels.len()
                )));
            }
        }
        Ok(())
    }

    /// Bytes of packed codes and f32 scales over all layers.
    pub fn weight_bytes(&self) -> usize {
        self.header.layers.iter().map(|l| l.bytes + 4 * l.scales.len()).sum()
    }

    /// The values of float tensor `name`, with its (rows, cols).
    pub fn tensor(&self, name: &str) -> Option<(&[f32], usize, usize)> {
        let i = self.header.tensors.iter().position(|t| t.name == name)?;
        let spec = &self.header.tensors[i];
        Some((&self.tensors[i], spec.rows, spec.cols))
    }
}

/// The end of a part of the payload stored at `offset` for `bytes`: it must start where the
/// parts before it end (`next`; layers, then tensors, back to back) and lie inside the payload.
fn stored_after(
    offset: usize,
    bytes: usize,
    next: usize,
    payload_len: usize,
    before: &str,
) -> std::result::Result<usize, String> {
    if offset != next {
        return Err(format!(
            "starts at payload byte {offset}, but {before} end at {next} (stored back to back)"
        ));
    }
    next.checked_add(bytes)
        .filter(|&end| end <= payload_len)
        .ok_or_else(|| format!("bytes {offset}..+{bytes} lie outside the {payload_len}-byte payload"))
}

/// An image input can be preprocessed.
fn validate_image(input: &InputSpec) -> Result<()> {
    if input.image_size == 0 || input.image_size > 4096 {
        return Err(invalid(format!("input.image_size {} (1 to 4096)", input.image_size)));
    }
    if !(input.std > 0.0) || !input.mean.is_finite() {
        return Err(invalid(format!(
            "input: std must be positive and mean finite (mean {}, std {})",
            input.mean, input.std
        )));
    }
    Ok(())
}

/// A language model's tokenizer gives its classes, and its context and evaluation are usable.
fn validate_text(text: &TextSpec, classes: usize) -> Result<()> {
    if text.vocab_size() != classes {
        return Err(invalid(format!(
            "text: the {:?} tokenizer has {} tokens but the model has {classes} classes",
            text.tokenizer,
            text.vocab_size()
        )));
    }
    if text.tokenizer == TokenizerKind::Char {
        let chars: Vec<char> = text.vocab.chars().collect();
        if !chars.windows(2).all(|w| w[0] < w[1]) {
            return Err(invalid("text.vocab: characters must be distinct and in ascending order"));
        }
    }
    if text.context == 0 || text.context > 1 << 16 {
        return Err(invalid(format!("text.context {} (1 to 65536)", text.context)));
    }
    let e = &text.evaluation;
    if !(e.val_fraction > 0.0 && e.val_fraction < 1.0)
        || e.batch == 0
        || e.batch > 1 << 16
        || e.batches > 1 << 20
    {
        return Err(invalid(format!(
            "text.evaluation: val_fraction {} (between 0 and 1), batch {} (1 to 65536), batches {} (up to 2^20)",
            e.val_fraction, e.batch, e.batches
        )));
    }
    Ok(())
}

/// A convolution's geometry agrees with its weight matrix and can run. Bounds the map so that
/// the feature counts computed from it cannot overflow.
fn validate_conv(conv: &ConvSpec, spec: &LayerSpec) -> std::result::Result<(), String> {
    if conv.side == 0 || conv.side > 4096 || conv.in_channels == 0 || conv.in_channels > 65536 {
        return Err(format!(
            "conv side {} and in_channels {} must be 1 to 4096 and 1 to 65536",
            conv.side, conv.in_channels
        ));
    }
    if conv.pool && !conv.side.is_multiple_of(2) {
        return Err(format!("2×2 pooling needs an even side, not {}", conv.side));
    }
    if conv.depthwise && conv.in_channels != spec.rows {
        return Err(format!(
            "a depthwise conv keeps its channels: in_channels {} but {} filters",
            conv.in_channels, spec.rows
        ));
    }
    if spec.cols != 9 * conv.taps_in() {
        return Err(format!(
            "a 3×3 conv over {} input channel(s) per filter has {} weights per filter, not {}",
            conv.taps_in(),
            9 * conv.taps_in(),
            spec.cols
        ));
    }
    Ok(())
}

fn in_layer(name: &str, e: DeployError) -> DeployError {
    match e {
        DeployError::Invalid(m) => invalid(format!("layer {name}: {m}")),
        other => other,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ternary fully connected layer with one scale per tensor.
    pub(crate) fn ternary_layer(
        name: &str,
        rows: usize,
        cols: usize,
        packing: Packing,
        codes: Vec<u8>,
    ) -> LayerData {
        LayerData {
            spec: LayerSpec {
                name: name.into(),
                rows,
                cols,
                quantizer: "ternary".into(),
                levels: vec![-1.0, 0.0, 1.0],
                packing,
                scales: vec![0.5],
                activation_bits: 8,
                offset: 0,
                bytes: 0,
                conv: None,
            },
            codes,
        }
    }

    /// A model of `layers` on `image_size`² MNIST inputs with RMS norm and ReLU.
    pub(crate) fn model_of(image_size: usize, layers: Vec<LayerData>) -> ModelFile {
        let header = ModelHeader {
            name: "test".into(),
            run_id: "0123456789".into(),
            input: Some(InputSpec { dataset: "mnist".into(), image_size, mean: 0.1307, std: 0.3081 }),
            text: None,
            classes: layers.last().map_or(0, |l| l.spec.rows),
            norm: NormKind::Rms,
            activation: ActivationKind::Relu,
            layers: Vec::new(),
            ops: Vec::new(),
            writer: String::new(),
            tensors: Vec::new(),
        };
        ModelFile::new(header, layers).unwrap()
    }

    /// A two-layer ternary model on 2×2 inputs.
    pub(crate) fn tiny() -> ModelFile {
        model_of(
            2,
            vec![
                ternary_layer("fc1", 3, 4, Packing::Base3Words, vec![0, 1, 2, 2, 1, 1, 0, 0, 2, 1, 0, 2]),
                ternary_layer("fc2", 2, 3, Packing::Bits { bits: 2 }, vec![2, 0, 1, 0, 2, 2]),
            ],
        )
    }

    type HeaderEdit = dyn Fn(&mut serde_json::Value);

    fn conv(side: usize, in_channels: usize, depthwise: bool, pool: bool) -> serde_json::Value {
        serde_json::json!({"side": side, "in_channels": in_channels, "depthwise": depthwise, "pool": pool})
    }

    #[test]
    fn a_convolutional_model_round_trips_and_chains_its_maps() {
        // 2×2 image → 3 full 3×3 filters, pooled to 1×1×3 → 2 classes.
        let mut model = tiny();
        model.header.layers[0].cols = 9;
        model.header.layers[0].conv =
            Some(ConvSpec { side: 2, in_channels: 1, depthwise: false, pool: true });
        model.codes[0] = (0..27).map(|i| (i % 3) as u8).collect();
        let layers = model.header.layers.iter().zip(&model.codes);
        let data =
            layers.map(|(spec, codes)| LayerData { spec: spec.clone(), codes: codes.clone() }).collect();
        let model = ModelFile::new(model.header.clone(), data).unwrap();
        assert_eq!(model.header.layers[0].output_features(), 3);
        assert_eq!(ModelFile::read(&model.to_bytes().unwrap()).unwrap(), model);
        // Without pooling the map is 2×2×3 = 12 values, which the 3-input fc2 cannot take.
        let err = error_of(&with_header(&model, |h| h["layers"][0]["conv"]["pool"] = false.into()));
        assert!(err.contains("op 2 (layer `fc2`): layer `fc2` takes 3 values, its input has 12"), "{err}");
        // With an op list, pooling is an op, not the convolution's flag.
        let ops = serde_json::json!([
            {"op": "layer", "name": "fc1", "input": "input", "layer": "fc1"},
            {"op": "relu", "name": "r", "input": "fc1"},
            {"op": "max-pool", "name": "p", "input": "r", "side": 2, "channels": 3},
            {"op": "layer", "name": "fc2", "input": "p", "layer": "fc2"},
        ]);
        let err = error_of(&with_header(&model, |h| h["ops"] = ops.clone()));
        assert!(err.contains("layer fc1: with an op list, pooling is a max-pool op"), "{err}");
        let unpooled = with_header(&model, |h| {
            h["ops"] = ops.clone();
            h["layers"][0]["conv"]["pool"] = false.into();
        });
        let read = ModelFile::read(&unpooled).unwrap();
        assert_eq!(read.header.graph()[2].tag(), "max-pool");
    }

    fn error_of(bytes: &[u8]) -> String {
        ModelFile::read(bytes).unwrap_err().to_string()
    }

    /// Rewrite the header JSON with `edit` and fix up the length and checksum.
    fn with_header(model: &ModelFile, edit: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
        let bytes = model.to_bytes().unwrap();
        let len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + len]).unwrap();
        edit(&mut header);
        let text = serde_json::to_vec(&header).unwrap();
        let mut out = bytes[..12].to_vec();
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(&text);
        out.extend_from_slice(&bytes[16 + len..bytes.len() - 4]);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn a_model_round_trips_through_its_bytes() {
        let model = tiny();
        let bytes = model.to_bytes().unwrap();
        assert_eq!(&bytes[..8], MAGIC);
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), VERSION);
        assert_eq!(ModelFile::read(&bytes).unwrap(), model);
        assert_eq!(model.header.layers[0].bytes, 4, "12 trits in one 20-trit word");
        assert_eq!(model.header.layers[1].offset, 4);
        assert_eq!(model.header.layers[1].bytes, 2);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = tiny().to_bytes().unwrap();
        for len in 0..bytes.len() {
            let err = error_of(&bytes[..len]);
            assert!(
                err.contains("truncated") || err.contains("checksum") || err.contains("magic"),
                "length {len}: {err}"
            );
        }
        assert!(
            error_of(&bytes[..20]).contains("truncated file: the header needs"),
            "{}",
            error_of(&bytes[..20])
        );
    }

    #[test]
    fn corruption_wrong_magic_and_wrong_version_are_named() {
        let mut bytes = tiny().to_bytes().unwrap();
        let last = bytes.len() - 6;
        bytes[last] ^= 0x10;
        assert!(error_of(&bytes).contains("checksum mismatch"), "{}", error_of(&bytes));
        let mut bytes = tiny().to_bytes().unwrap();
        bytes[8] = 9;
        assert_eq!(
            error_of(&bytes),
            "model file version 9; this build reads versions 1 to 3: re-export with this qat or upgrade qat"
        );
        assert!(error_of(b"GIF89a....").starts_with("not a qatlab model file"));
    }

    #[test]
    fn inconsistent_headers_are_named() {
        let model = tiny();
        let cases: Vec<(Box<HeaderEdit>, &str)> = vec![
            (
                Box::new(|h| h["layers"][1]["cols"] = 4.into()),
                "op 2 (layer `fc2`): layer `fc2` takes 4 values, its input has 3",
            ),
            (Box::new(|h| h["classes"] = 3.into()), "the last op gives 2 values for 3 classes"),
            (
                Box::new(|h| h["layers"][0]["levels"] = serde_json::json!([1.0, 0.0, -1.0])),
                "strictly ascending",
            ),
            (
                Box::new(|h| h["layers"][0]["scales"] = serde_json::json!([1.0, 2.0])),
                "needs 1 or 3 finite scales, has 2",
            ),
            (Box::new(|h| h["layers"][0]["activation_bits"] = 12.into()), "activation_bits 12"),
            (
                Box::new(|h| h["layers"][1]["offset"] = 5.into()),
                "layer fc2: starts at payload byte 5, but the layers before it end at 4",
            ),
            (Box::new(|h| h["layers"][1]["bytes"] = 3.into()), "take 2 bytes, the header says 3"),
            (Box::new(|h| h["layers"][0]["bytes"] = 3.into()), "take 4 bytes, the header says 3"),
            (
                Box::new(|h| h["layers"][0]["rows"] = serde_json::json!(usize::MAX)),
                "layer fc1: empty or overflowing shape",
            ),
            (Box::new(|h| h["norm"] = "batch".into()), "header JSON: unknown variant `batch`"),
            (
                Box::new(|h| h["layers"][0]["conv"] = conv(2, 1, false, false)),
                "layer fc1: a 3×3 conv over 1 input channel(s) per filter has 9 weights per filter, not 4",
            ),
            (
                Box::new(|h| h["layers"][0]["conv"] = conv(2, 1, true, false)),
                "layer fc1: a depthwise conv keeps its channels: in_channels 1 but 3 filters",
            ),
            (
                Box::new(|h| h["layers"][0]["conv"] = conv(3, 1, false, true)),
                "layer fc1: 2×2 pooling needs an even side, not 3",
            ),
            (
                Box::new(|h| h["layers"][1]["conv"] = conv(1, 3, false, false)),
                "the last layer gives the logits and must be fully connected",
            ),
            (
                Box::new(|h| h["layers"][1]["levels"] = serde_json::json!([-1.0, 1.0])),
                "layer fc2: weight 0 has code 2 but there are 2 levels",
            ),
        ];
        for (edit, expected) in cases {
            let err = error_of(&with_header(&model, edit));
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
        }
    }

    /// `tiny` with an explicit op list: fc1, its ReLU, a skip around nothing (scale `scale`),
    /// then fc2.
    pub(crate) fn tiny_with_ops(scale: f32) -> ModelFile {
        let mut model = tiny();
        let op = |v: serde_json::Value| serde_json::from_value::<Op>(v).unwrap();
        model.header.ops = vec![
            op(serde_json::json!({"op": "layer", "name": "fc1", "input": "input", "layer": "fc1"})),
            op(serde_json::json!({"op": "relu", "name": "h", "input": "fc1"})),
            op(serde_json::json!({"op": "add", "name": "h2", "input": "h", "skip": "fc1", "scale": scale})),
            op(serde_json::json!({"op": "layer", "name": "fc2", "input": "h2", "layer": "fc2"})),
        ];
        model.header.writer = "0.1.0".into();
        model
    }

    /// A small language model with every text op: vocabulary 5, width 8, context 8, two heads,
    /// learned positions and RoPE, a ternary BitLinear q|k|v and output projection, a gated
    /// SiLU MLP (ternary gate, 4-bit up, ternary down), GELU on a float side branch, and the
    /// head tied to the embedding. Values from a fixed generator.
    pub(crate) fn tiny_language_model() -> ModelFile {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut values = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|_| ((next() % 2001) as f32 / 1000.0 - 1.0) * scale).collect()
        };
        let (vocab, width, context, hidden) = (5usize, 8usize, 8usize, 16usize);
        let mut layer = |name: &str, rows: usize, cols: usize, levels: usize| {
            let codes: Vec<u8> = values(rows * cols, 1.0)
                .iter()
                .map(|v| ((v + 1.0) * 0.5 * (levels as f32 - 0.01)) as u8)
                .collect();
            let grid: Vec<f32> = (0..levels).map(|k| k as f32 - (levels / 2) as f32).collect();
            let mut data = ternary_layer(name, rows, cols, Packing::bits_for(levels), codes);
            data.spec.levels = grid;
            data.spec.scales = values(rows, 0.2).iter().map(|s| s.abs() + 0.05).collect();
            data
        };
        let layers = vec![
            layer("qkv", 3 * width, width, 3),
            layer("proj", width, width, 3),
            layer("gate", hidden, width, 3),
            layer("up", hidden, width, 16),
            layer("down", width, hidden, 3),
        ];
        // the embedding stored as int8 codes with a scale per row (a quantized table)
        let embed = Int8Rows {
            scales: values(vocab, 0.01).iter().map(|s| s.abs() + 0.002).collect(),
            codes: values(vocab * width, 127.0).iter().map(|&v| v as i8).collect(),
        };
        let mut tensor = |name: &str, rows: usize, cols: usize, scale: f32| {
            TensorData::f32(name, rows, cols, values(rows * cols, scale))
        };
        let tensors = vec![
            TensorData::int8("embed", vocab, embed),
            tensor("pos", context, width, 0.3),
            tensor("norm1.gain", 1, width, 1.0),
            tensor("side", width, width, 0.5),
            tensor("norm.gain", 1, width, 1.0),
        ];
        let op = |v: serde_json::Value| serde_json::from_value::<Op>(v).unwrap();
        let ops = vec![
            op(serde_json::json!({"op": "embed", "name": "tokens", "input": "input", "table": "embed"})),
            op(serde_json::json!({"op": "positions", "name": "x0", "input": "tokens", "table": "pos"})),
            op(
                serde_json::json!({"op": "norm", "name": "h", "input": "x0", "kind": "layer", "gain": "norm1.gain"}),
            ),
            op(serde_json::json!({"op": "layer", "name": "qkv", "input": "h", "layer": "qkv"})),
            op(serde_json::json!({"op": "rope", "name": "qkv.rope", "input": "qkv", "heads": 2})),
            op(serde_json::json!({"op": "attention", "name": "attn", "input": "qkv.rope", "heads": 2})),
            op(serde_json::json!({"op": "layer", "name": "proj", "input": "attn", "layer": "proj"})),
            op(serde_json::json!({"op": "add", "name": "x1", "input": "proj", "skip": "x0", "scale": 1.0})),
            op(serde_json::json!({"op": "norm", "name": "h2", "input": "x1", "kind": "rms"})),
            op(serde_json::json!({"op": "layer", "name": "gate", "input": "h2", "layer": "gate"})),
            op(
                serde_json::json!({"op": "activation", "name": "gate.act", "input": "gate", "function": "silu"}),
            ),
            op(serde_json::json!({"op": "layer", "name": "up", "input": "h2", "layer": "up"})),
            op(serde_json::json!({"op": "mul", "name": "gated", "input": "gate.act", "other": "up"})),
            op(serde_json::json!({"op": "layer", "name": "down", "input": "gated", "layer": "down"})),
            op(serde_json::json!({"op": "matmul", "name": "side", "input": "x1", "weight": "side"})),
            op(
                serde_json::json!({"op": "activation", "name": "side.act", "input": "side", "function": "gelu"}),
            ),
            op(
                serde_json::json!({"op": "add", "name": "x2", "input": "down", "skip": "side.act", "scale": 1.0}),
            ),
            op(serde_json::json!({"op": "relu", "name": "x3", "input": "x2"})),
            op(
                serde_json::json!({"op": "norm", "name": "out", "input": "x3", "kind": "layer", "gain": "norm.gain"}),
            ),
            op(serde_json::json!({"op": "matmul", "name": "head", "input": "out", "weight": "embed"})),
        ];
        let header = ModelHeader {
            name: "tiny-lm".into(),
            run_id: "0123456789".into(),
            input: None,
            text: Some(TextSpec {
                tokenizer: TokenizerKind::Char,
                vocab: "\n abc".into(),
                context,
                evaluation: TextEvaluation {
                    dataset: "text".into(),
                    sha256: "00".repeat(32),
                    val_fraction: 0.1,
                    seed: 7,
                    batches: 2,
                    batch: 3,
                },
            }),
            classes: vocab,
            norm: NormKind::Rms,
            activation: ActivationKind::Relu,
            layers: Vec::new(),
            ops,
            writer: "0.1.0".into(),
            tensors: Vec::new(),
        };
        ModelFile::with_tensors(header, layers, tensors).unwrap()
    }

    #[test]
    fn a_language_model_round_trips_with_its_tensors_and_tokenizer() {
        let model = tiny_language_model();
        let bytes = model.to_bytes().unwrap();
        let read = ModelFile::read(&bytes).unwrap();
        assert_eq!(read, model);
        assert_eq!(read.tensor("pos").map(|(_, r, c)| (r, c)), Some((8, 8)));
        // the int8 embedding: a scale per row and a byte per value, read back as code · scale
        let embed = &read.header.tensors[0];
        assert_eq!((embed.dtype, embed.bytes), (TensorType::Int8, 5 * 4 + 5 * 8));
        let int8 = read.int8[0].as_ref().unwrap();
        assert_eq!(read.tensors[0][9], int8.codes[9] as f32 * int8.scales[1]);
        assert!(read.int8[1].is_none(), "positions stay f32");
        let header = String::from_utf8_lossy(&bytes);
        assert_eq!(header.matches("\"dtype\"").count(), 1, "f32 tensors omit their dtype");
        let err = error_of(&with_header(&model, |h| h["tensors"][0]["dtype"] = "f32".into()));
        assert!(err.contains("tensor embed: 5×8 F32 values take 160 bytes, the header says 60"), "{err}");
        let err = error_of(&with_header(&model, |h| h["tensors"][0]["dtype"] = "int4".into()));
        assert!(err.contains("unknown variant `int4`, expected `f32` or `int8`"), "{err}");
        let text = read.header.text.as_ref().unwrap();
        assert_eq!(text.encode("ab\n").unwrap(), vec![2, 3, 0]);
        assert_eq!(text.decode(&[4, 1, 0]), "c \n");
        let err = text.encode("abz!").unwrap_err().to_string();
        assert!(err.contains("['!', 'z']"), "{err}");
        // every cut of the file is an error, never a panic
        for cut in [17, bytes.len() / 2, bytes.len() - 5] {
            assert!(ModelFile::read(&bytes[..cut]).is_err());
        }
        // a tensor no op reads, a matmul of the wrong width, a text op on an image model
        let err = error_of(&with_header(&model, |h| h["ops"][19]["weight"] = "side".into()));
        assert!(err.contains("the last op gives 8 values for 5 classes"), "{err}");
        let err = error_of(&with_header(&model, |h| h["ops"][2]["gain"] = serde_json::Value::Null));
        assert!(err.contains("tensor norm1.gain is in the header but no op reads it"), "{err}");
        let err = error_of(&with_header(&model, |h| h["ops"][14]["weight"] = "missing".into()));
        assert!(err.contains("reads tensor `missing`, which the header does not list"), "{err}");
        let err = error_of(&with_header(&model, |h| h["ops"][14]["weight"] = "embed".into()));
        assert!(err.contains("op 16 (add `x2`): adds 5 values to 8"), "{err}");
        let err = error_of(&with_header(&model, |h| h["text"]["vocab"] = "ab".into()));
        assert!(err.contains("2 tokens but the model has 5 classes"), "{err}");
        let err = error_of(&with_header(&tiny_with_ops(1.0), |h| {
            h["ops"][1] =
                serde_json::json!({"op": "activation", "name": "h", "input": "fc1", "function": "gelu"})
        }));
        assert!(err.contains("language model's tokens only"), "{err}");
    }

    #[test]
    fn an_op_list_round_trips_and_older_files_imply_theirs() {
        let model = tiny_with_ops(0.5);
        assert_eq!(ModelFile::read(&model.to_bytes().unwrap()).unwrap(), model);
        let implied: Vec<&str> = tiny().header.graph().iter().map(|o| o.tag()).collect();
        assert_eq!(implied, ["layer", "relu", "layer"]);
        // a version 2 file: no op list, read as before
        let mut bytes = tiny().to_bytes().unwrap();
        bytes[8] = 2;
        let crc = crc32fast::hash(&bytes[..bytes.len() - 4]);
        let end = bytes.len() - 4;
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(ModelFile::read(&bytes).unwrap(), tiny());
    }

    #[test]
    fn an_unknown_op_names_its_tag_and_the_writer() {
        let model = tiny_with_ops(1.0);
        let bytes = with_header(&model, |h| {
            h["ops"][1] = serde_json::json!({"op": "gelu", "name": "h", "input": "fc1"});
            h["writer"] = "9.9.0".into();
        });
        let err = error_of(&bytes);
        assert!(err.contains("op 1 is `gelu`"), "{err}");
        assert!(err.contains("written by qatlab 9.9.0"), "{err}");
        assert!(err.contains("it runs layer, relu, max-pool, add, embed"), "{err}");
    }

    #[test]
    fn inconsistent_graphs_are_named() {
        let model = tiny_with_ops(1.0);
        let cases: Vec<(Box<HeaderEdit>, &str)> = vec![
            (
                Box::new(|h| h["ops"][1]["input"] = "nothing".into()),
                "op 1 (relu `h`): reads `nothing`, which no earlier op writes",
            ),
            (Box::new(|h| h["ops"][3]["layer"] = "fc1".into()), "layer `fc1` is used twice"),
            (Box::new(|h| h["ops"][3]["layer"] = "fc9".into()), "no layer `fc9` in the header"),
            (Box::new(|h| h["ops"][2]["name"] = "fc1".into()), "a value of that name exists already"),
            (Box::new(|h| h["ops"][2]["skip"] = "input".into()), "adds 4 values to 3"),
            (Box::new(|h| h["ops"][2]["scale"] = serde_json::json!(null)), "header JSON"),
            (
                Box::new(|h| h["ops"].as_array_mut().unwrap().truncate(3)),
                "layer fc2 is in the header but no op uses it",
            ),
        ];
        for (edit, expected) in cases {
            let err = error_of(&with_header(&model, edit));
            assert!(err.contains(expected), "expected `{expected}` in: {err}");
        }
        let mut bytes = model.to_bytes().unwrap();
        bytes[8] = 2;
        let end = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
        assert!(error_of(&bytes).contains("an op list needs format version 3"), "{}", error_of(&bytes));
    }
}
