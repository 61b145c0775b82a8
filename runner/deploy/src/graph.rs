//! The network as a list of operations (model file version 3): each op a tag plus its fields,
//! reading the values that earlier ops (or the network `input`) wrote by name and writing its
//! own, so skip connections are explicit. The runtime and the C export both dispatch on this
//! list; the last op's value is the logits. Files of versions 1 and 2 have no list: their graph
//! is implied (each layer in order, ReLU between, a max-pool after a pooling convolution).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, DeployError, Result};
use crate::format::{LayerSpec, ModelHeader};

/// The name of the network's input value (the preprocessed image, `image_size²` values).
pub const INPUT: &str = "input";

/// Every op tag this build runs.
pub const TAGS: [&str; 4] = ["layer", "relu", "max-pool", "add"];

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
}

impl Op {
    /// The value the op writes.
    pub fn name(&self) -> &str {
        match self {
            Op::Layer { name, .. }
            | Op::Relu { name, .. }
            | Op::MaxPool { name, .. }
            | Op::Add { name, .. } => name,
        }
    }

    /// The values the op reads.
    pub fn inputs(&self) -> Vec<&str> {
        match self {
            Op::Layer { input, .. } | Op::Relu { input, .. } | Op::MaxPool { input, .. } => vec![input],
            Op::Add { input, skip, .. } => vec![input, skip],
        }
    }

    /// Its tag, as the file spells it.
    pub fn tag(&self) -> &'static str {
        match self {
            Op::Layer { .. } => "layer",
            Op::Relu { .. } => "relu",
            Op::MaxPool { .. } => "max-pool",
            Op::Add { .. } => "add",
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
    let size = header.input.image_size;
    let mut names: Vec<&str> = vec![INPUT];
    let mut widths: Vec<usize> = vec![size * size];
    let mut used = vec![false; header.layers.len()];
    for (i, op) in ops.iter().enumerate() {
        let at = |what: String| invalid(format!("op {i} ({} `{}`): {what}", op.tag(), op.name()));
        if names.contains(&op.name()) {
            return Err(at("a value of that name exists already".into()));
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
        };
        names.push(op.name());
        widths.push(width);
    }
    if let Some(l) = used.iter().position(|u| !u) {
        return Err(invalid(format!("layer {} is in the header but no op uses it", header.layers[l].name)));
    }
    let last = *widths.last().expect("one op at least");
    if last != header.classes {
        return Err(invalid(format!("the last op gives {last} values for {} classes", header.classes)));
    }
    Ok(widths[1..].to_vec())
}
