//! The network as a list of operations (model file version 3): each op a tag plus its fields,
//! reading the values that earlier ops (or the network `input`) wrote by name and writing its
//! own, so skip connections are explicit. The runtime and the C export both dispatch on this
//! list; the last op's value is the logits. Files of versions 1 and 2 have no list: their graph
//! is implied (each layer in order, ReLU between, a max-pool after a pooling convolution).
//!
//! A language model's ops work on rows of one token each: the network input is the token ids
//! (one value per row), `embed` looks them up, and `attention` attends over the earlier positions
//! of the same sequence (the runtime keeps their keys and values; [`crate::decoder`]). Float
//! tensors (embeddings, gains, float weights) are named in the header's `tensors`.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, DeployError, Result};
use crate::format::{LayerSpec, ModelHeader};

/// The name of the network's input value (the preprocessed image, `image_size²` values, or a
/// language model's token ids, one per row).
pub const INPUT: &str = "input";

/// Every op tag this build runs.
pub const TAGS: [&str; 12] = [
    "layer",
    "relu",
    "max-pool",
    "add",
    "embed",
    "positions",
    "norm",
    "matmul",
    "rope",
    "attention",
    "activation",
    "mul",
];

/// Ops that only a language model's rows of tokens can run.
pub const TEXT_TAGS: [&str; 8] =
    ["embed", "positions", "norm", "matmul", "rope", "attention", "activation", "mul"];

/// A norm op's statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RowNorm {
    /// (x − mean)/sqrt(var + 1e-5) (PyTorch's LayerNorm ε).
    Layer,
    /// x/sqrt(mean(x²) + 1e-12).
    Rms,
}

/// An elementwise function of the `activation` op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Function {
    /// x·Φ(x) ([`crate::math::gelu_with_slope`]).
    Gelu,
    /// x·σ(x).
    Silu,
    /// x·max(x, 0).
    Relu2,
}

/// One operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Op {
    /// The weight layer `layer` (a name in the header's `layers`) on `input`: RMS norm where
    /// the header asks for it (fully connected layers), per-sample absmax quantization to the
    /// layer's activation bits, the matmul or 3×3 convolution with its codes, times its scales.
    /// Gives `rows` values, or a convolution's whole (unpooled) output map.
    Layer {
        /// The value it writes.
        name: String,
        /// The value it reads.
        input: String,
        /// The layer whose codes it uses.
        layer: String,
    },
    /// max(x, 0).
    Relu {
        /// The value it writes.
        name: String,
        /// The value it reads.
        input: String,
    },
    /// 2×2 max-pool, stride 2, of a `side × side × channels` map stored HWC.
    MaxPool {
        /// The value it writes.
        name: String,
        /// The value it reads.
        input: String,
        /// Height and width of the input map (even).
        side: usize,
        /// Channels of the map.
        channels: usize,
    },
    /// `input + scale · skip`: a residual connection (scale 1 when it is not learned).
    Add {
        /// The value it writes.
        name: String,
        /// The main branch.
        input: String,
        /// The skipped value.
        skip: String,
        /// The skip's learned scale.
        scale: f32,
    },
    /// Row `id` of the `table` tensor for each token id of `input` (the network input).
    Embed {
        /// The value it writes.
        name: String,
        /// The token ids.
        input: String,
        /// The `vocab × width` tensor.
        table: String,
    },
    /// `input` plus row p of the `table` tensor (`context × width`) for the token at position p.
    Positions {
        /// The value it writes.
        name: String,
        /// The value it reads.
        input: String,
        /// The learned positions.
        table: String,
    },
    /// Each row normalised (`kind`), times the `gain` tensor (1 × width) when there is one.
    Norm {
        /// The value it writes.
        name: String,
        /// The value it reads.
        input: String,
        /// Layer or RMS statistics.
        kind: RowNorm,
        /// The learned gain (absent: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gain: Option<String>,
    },
    /// `input · weightᵀ` in f32, `weight` a `rows × cols` tensor (a float linear, or the head
    /// tied to the embedding table).
    Matmul {
        /// The value it writes.
        name: String,
        /// The value it reads.
        input: String,
        /// The weight tensor.
        weight: String,
    },
    /// RoPE on the q and k thirds of a q|k|v row ([`crate::math::rope_rotate`]) at each token's
    /// position.
    Rope {
        /// The value it writes.
        name: String,
        /// q|k|v.
        input: String,
        /// Heads per third.
        heads: usize,
    },
    /// Causal multi-head attention of each q|k|v row over its own and the earlier positions
    /// of its sequence: per head softmax(q·kᵀ/√d)·v; gives the width (a third of the input).
    Attention {
        /// The value it writes.
        name: String,
        /// q|k|v.
        input: String,
        /// Heads.
        heads: usize,
    },
    /// An elementwise function.
    Activation {
        /// The value it writes.
        name: String,
        /// The value it reads.
        input: String,
        /// Which.
        function: Function,
    },
    /// `input ⊙ other` (a gated MLP's gate times its up projection).
    Mul {
        /// The value it writes.
        name: String,
        /// One factor.
        input: String,
        /// The other.
        other: String,
    },
}

impl Op {
    /// The value the op writes.
    pub fn name(&self) -> &str {
        match self {
            Op::Layer { name, .. }
            | Op::Relu { name, .. }
            | Op::MaxPool { name, .. }
            | Op::Add { name, .. }
            | Op::Embed { name, .. }
            | Op::Positions { name, .. }
            | Op::Norm { name, .. }
            | Op::Matmul { name, .. }
            | Op::Rope { name, .. }
            | Op::Attention { name, .. }
            | Op::Activation { name, .. }
            | Op::Mul { name, .. } => name,
        }
    }

    /// The values the op reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Op::Layer { input, .. }
            | Op::Relu { input, .. }
            | Op::MaxPool { input, .. }
            | Op::Embed { input, .. }
            | Op::Positions { input, .. }
            | Op::Norm { input, .. }
            | Op::Matmul { input, .. }
            | Op::Rope { input, .. }
            | Op::Attention { input, .. }
            | Op::Activation { input, .. } => vec![input],
            Op::Add { input, skip, .. } => vec![input, skip],
            Op::Mul { input, other, .. } => vec![input, other],
        }
    }

    /// Its tag, as the file spells it.
    pub fn tag(&self) -> &'static str {
        match self {
            Op::Layer { .. } => "layer",
            Op::Relu { .. } => "relu",
            Op::MaxPool { .. } => "max-pool",
            Op::Add { .. } => "add",
            Op::Embed { .. } => "embed",
            Op::Positions { .. } => "positions",
            Op::Norm { .. } => "norm",
            Op::Matmul { .. } => "matmul",
            Op::Rope { .. } => "rope",
            Op::Attention { .. } => "attention",
            Op::Activation { .. } => "activation",
            Op::Mul { .. } => "mul",
        }
    }

    /// The float tensors the op reads.
    pub fn tensors(&self) -> Vec<&str> {
        match self {
            Op::Embed { table, .. } | Op::Positions { table, .. } => vec![table],
            Op::Matmul { weight, .. } => vec![weight],
            Op::Norm { gain: Some(gain), .. } => vec![gain],
            _ => Vec::new(),
        }
    }
}

/// A residual connection around one layer, as ops express it: the layer's input `x` is added,
/// times `scale`, to its output `z` — before the ReLU (`relu(z + a·x)`) or after it
/// (`relu(z) + a·x`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Skip {
    /// The skip's scale a (1 when it is not learned).
    pub scale: f32,
    /// Add after the ReLU instead of before it.
    pub after_relu: bool,
}

/// The ops of a chain of `layers`: each on the value before it, ReLU after every layer but the
/// last, a max-pool after a pooling convolution's ReLU, and a residual add around layer `i`
/// where `skips[i]` says so (missing entries: none).
pub fn chain(layers: &[LayerSpec], skips: &[Option<Skip>]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut x = INPUT.to_string();
    fn push(ops: &mut Vec<Op>, op: Op) -> String {
        let name = op.name().to_string();
        ops.push(op);
        name
    }
    for (i, spec) in layers.iter().enumerate() {
        let name = &spec.name;
        let z = push(&mut ops, Op::Layer { name: name.clone(), input: x.clone(), layer: name.clone() });
        if i + 1 == layers.len() {
            break;
        }
        let relu = |input: String| Op::Relu { name: format!("{name}.relu"), input };
        let add = |input: String, skip: Skip| Op::Add {
            name: format!("{name}.add"),
            input,
            skip: x.clone(),
            scale: skip.scale,
        };
        let out = match skips.get(i).copied().flatten() {
            Some(skip) if skip.after_relu => {
                let activated = push(&mut ops, relu(z));
                push(&mut ops, add(activated, skip))
            }
            Some(skip) => {
                let sum = push(&mut ops, add(z, skip));
                push(&mut ops, relu(sum))
            }
            None => push(&mut ops, relu(z)),
        };
        x = match spec.conv.filter(|c| c.pool) {
            Some(conv) => push(
                &mut ops,
                Op::MaxPool {
                    name: format!("{name}.pool"),
                    input: out,
                    side: conv.side,
                    channels: spec.rows,
                },
            ),
            None => out,
        };
    }
    ops
}

/// The graph of a version 1 or 2 header: each layer in order, ReLU between, a max-pool after a
/// pooling convolution.
pub fn implied_ops(header: &ModelHeader) -> Vec<Op> {
    chain(&header.layers, &[])
}

/// Check every op's tag before the header is parsed, so that a file from a newer qatlab names
/// what this build lacks instead of failing on a generic JSON error.
pub fn check_tags(header: &serde_json::Value) -> Result<()> {
    let Some(ops) = header.get("ops").and_then(|o| o.as_array()) else { return Ok(()) };
    for (i, op) in ops.iter().enumerate() {
        let tag = op.get("op").and_then(|t| t.as_str()).unwrap_or("");
        if !TAGS.contains(&tag) {
            let writer = header.get("writer").and_then(|w| w.as_str()).unwrap_or("an unknown version");
            return Err(DeployError::Unsupported(format!(
                "op {i} is `{tag}`, which this qatlab ({}) cannot run (it runs {}); the file was written by \
                 qatlab {writer}: upgrade qatlab, or re-export the run with this one",
                env!("CARGO_PKG_VERSION"),
                TAGS.join(", ")
            )));
        }
    }
    Ok(())
}

/// Values per sample of each op's output, checking that every op reads values that exist, of
/// the widths it takes; that every layer is used exactly once; and that the last value holds
/// the classes.
pub fn check(header: &ModelHeader, ops: &[Op]) -> Result<Vec<usize>> {
    if ops.is_empty() {
        return Err(invalid("the graph has no ops"));
    }
    let text = header.text.is_some();
    let mut names: Vec<&str> = vec![INPUT];
    let mut widths: Vec<usize> = vec![header.input_width()];
    let tensor = |name: &str| header.tensors.iter().find(|t| t.name == name);
    let mut tensors_used = vec![false; header.tensors.len()];
    let mut used = vec![false; header.layers.len()];
    for (i, op) in ops.iter().enumerate() {
        let at = |what: String| invalid(format!("op {i} ({} `{}`): {what}", op.tag(), op.name()));
        if names.contains(&op.name()) {
            return Err(at("a value of that name exists already".into()));
        }
        if TEXT_TAGS.contains(&op.tag()) != text && TEXT_TAGS.contains(&op.tag()) {
            return Err(at("runs on a language model's tokens only; this model reads images".into()));
        }
        if matches!(op, Op::MaxPool { .. }) && text {
            return Err(at("a language model's rows are tokens, not maps".into()));
        }
        for name in op.tensors() {
            let k = header
                .tensors
                .iter()
                .position(|t| t.name == name)
                .ok_or_else(|| at(format!("reads tensor `{name}`, which the header does not list")))?;
            tensors_used[k] = true;
        }
        let mut read = Vec::new();
        for input in op.inputs() {
            let k = names
                .iter()
                .position(|n| *n == input)
                .ok_or_else(|| at(format!("reads `{input}`, which no earlier op writes")))?;
            read.push(widths[k]);
        }
        let width = match op {
            Op::Layer { layer, .. } => {
                let l = header
                    .layers
                    .iter()
                    .position(|s| s.name == *layer)
                    .ok_or_else(|| at(format!("no layer `{layer}` in the header")))?;
                if std::mem::replace(&mut used[l], true) {
                    return Err(at(format!("layer `{layer}` is used twice")));
                }
                let spec = &header.layers[l];
                if read[0] != spec.input_features() {
                    return Err(at(format!(
                        "layer `{layer}` takes {} values, its input has {}",
                        spec.input_features(),
                        read[0]
                    )));
                }
                spec.map_features()
            }
            Op::Relu { .. } => read[0],
            Op::MaxPool { side, channels, .. } => {
                let map = side.checked_mul(*side).and_then(|m| m.checked_mul(*channels));
                if map != Some(read[0]) || *side == 0 || side % 2 != 0 {
                    return Err(at(format!(
                        "a {side}×{side}×{channels} map (even side) does not hold {} values",
                        read[0]
                    )));
                }
                (side / 2) * (side / 2) * channels
            }
            Op::Add { scale, .. } => {
                if read[0] != read[1] || !scale.is_finite() {
                    return Err(at(format!(
                        "adds {} values to {} (scale {scale}): widths must match, scale finite",
                        read[1], read[0]
                    )));
                }
                read[0]
            }
            Op::Embed { input, table, .. } => {
                let t = tensor(table).expect("checked above");
                if input != INPUT || t.rows != header.classes {
                    return Err(at(format!(
                        "looks up the network input's token ids in a table of one row per class ({} rows, {} classes)",
                        t.rows, header.classes
                    )));
                }
                t.cols
            }
            Op::Positions { table, .. } => {
                let t = tensor(table).expect("checked above");
                let context = header.text.as_ref().map_or(0, |x| x.context);
                if t.cols != read[0] || t.rows < context {
                    return Err(at(format!(
                        "a {}×{} table for rows of {} values and a context of {context}",
                        t.rows, t.cols, read[0]
                    )));
                }
                read[0]
            }
            Op::Norm { gain, .. } => {
                if let Some(t) = gain.as_deref().map(|g| tensor(g).expect("checked above")) {
                    if t.rows * t.cols != read[0] {
                        return Err(at(format!(
                            "a gain of {} values for rows of {}",
                            t.rows * t.cols,
                            read[0]
                        )));
                    }
                }
                read[0]
            }
            Op::Matmul { weight, .. } => {
                let t = tensor(weight).expect("checked above");
                if t.cols != read[0] {
                    return Err(at(format!("a {}×{} weight for rows of {} values", t.rows, t.cols, read[0])));
                }
                t.rows
            }
            Op::Rope { heads, .. } | Op::Attention { heads, .. } => {
                let ok = *heads > 0 && read[0] % (3 * heads) == 0 && (read[0] / 3 / heads) % 2 == 0;
                if !ok {
                    return Err(at(format!(
                        "rows of {} values are not q|k|v of {heads} heads of an even width",
                        read[0]
                    )));
                }
                if matches!(op, Op::Attention { .. }) {
                    read[0] / 3
                } else {
                    read[0]
                }
            }
            Op::Activation { .. } => read[0],
            Op::Mul { .. } => {
                if read[0] != read[1] {
                    return Err(at(format!(
                        "multiplies {} values by {}: widths must match",
                        read[0], read[1]
                    )));
                }
                read[0]
            }
        };
        names.push(op.name());
        widths.push(width);
    }
    if let Some(l) = used.iter().position(|u| !u) {
        return Err(invalid(format!("layer {} is in the header but no op uses it", header.layers[l].name)));
    }
    if let Some(t) = tensors_used.iter().position(|u| !u) {
        return Err(invalid(format!(
            "tensor {} is in the header but no op reads it",
            header.tensors[t].name
        )));
    }
    let last = *widths.last().expect("one op at least");
    if last != header.classes {
        return Err(invalid(format!("the last op gives {last} values for {} classes", header.classes)));
    }
    Ok(widths[1..].to_vec())
}
