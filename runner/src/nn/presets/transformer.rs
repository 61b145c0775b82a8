//! `model.kind: transformer`: a decoder-only language model in nanoGPT's form. Per block `i`
//! (0-based), with `x` the residual stream:
//!
//! ```text
//! embed (table) → tokens (lookup of the input ids) → [pos (+ learned positions)] → [dropout]
//! blocks.i:  [norm1] → attn.qkv (q|k|v) → [attn.rope] → attn (causal softmax per head)
//!            → [attn.subln] → attn.proj → [attn.dropout] → add1 = x + that
//!            [norm2] → mlp.fc → mlp.act → [mlp.subln] → mlp.proj → [mlp.dropout] → add2 = x + that
//!     gated: [norm2] → mlp.act(mlp.gate) ⊙ mlp.up = mlp.gated → [mlp.subln] → mlp.proj → …
//! norm → head (tied: x·embedᵀ; untied: its own linear)
//! ```
//!
//! `pos` is there with `position: learned` (the default), `attn.rope` with `position: rope`; the
//! block norms `norm1`/`norm2` unless `block_norms: false`; the SubLN norms with `subln: true`.
//! The block norms, SubLN norms and the final norm are `model.norm` with a learned gain and no
//! bias (nanoGPT's LayerNorm). A quantized linear with input bits (`activation_bits`, BitNet's
//! BitLinear) first normalises its input with an RMS norm without gain (`<layer>.input_norm`) and
//! quantizes it per token (`<layer>.input_quant`). Weights are initialised as nanoGPT:
//! normal(0, 0.02), the two residual output projections of each block normal(0, 0.02/√(2·depth));
//! gains 1.

use qatlab_core::config::{Norm, Position, RunConfig, TransformerConfig};
use qatlab_core::{Registry, Shape};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::{weight_layer, GraphBuilder};
use crate::data::Task;
use crate::error::{Error, Result};
use crate::nn::model::{Layer, Network};
use crate::nn::ops::{
    act_quant::ActQuant, activation::ActivationOp, add::Add, attention::Attention, dropout::Dropout,
    embed::Embed, gate::Gate, linear::Linear, norm::NormOp, positions::Positions, rope::Rope, table::Table,
    tied_head::TiedHead,
};

/// Build the transformer `config.model` describes; the vocabulary is the task's classes and the
/// input's values per sample are token ids.
pub fn build(registry: &Registry, config: &RunConfig, task: &Task, t: &TransformerConfig) -> Result<Network> {
    let model = &config.model;
    let (width, vocab) = (t.width, task.classes);
    let mut rng = ChaCha8Rng::seed_from_u64(config.train.seed ^ 0x7a4f_0b1e);
    let mut index = 0;
    // the next layer in `names` order, initialised normal(0, std)
    let mut layer = |shape: Shape, std: f32| -> Result<(Layer, Option<u32>)> {
        let normal = Normal::new(0.0, std).expect("a positive deviation");
        let weight = (0..shape.len()).map(|_| normal.sample(&mut rng)).collect();
        index += 1;
        weight_layer(registry, config, index - 1, shape, weight)
    };
    let activation = || {
        ActivationOp::build(registry, &t.mlp.activation)
            .map_err(|e| Error::Config(format!("model.mlp.activation: {e}")))
    };
    let dropout = |g: &mut GraphBuilder, name: String, x: usize| {
        let p = model.dropout as f32;
        if p > 0.0 {
            g.push(name, &[x], Dropout { p, seed: config.train.seed })
        } else {
            x
        }
    };
    let std = 0.02;
    let residual_std = 0.02 / (2.0 * t.depth as f32).sqrt();

    let mut g = GraphBuilder::new();
    let input = g.input();
    let (table, _) = layer(Shape::new(vocab, width), std)?;
    let embed = g.push("embed", &[], Table { layer: table });
    let mut x = g.push("tokens", &[embed, input], Embed);
    if t.position == Position::Learned {
        let normal = Normal::new(0.0, std).expect("a positive deviation");
        let mut pos_rng = ChaCha8Rng::seed_from_u64(config.train.seed ^ 0x9051_7105);
        let weight = (0..t.context * width).map(|_| normal.sample(&mut pos_rng)).collect();
        x = g.push("pos", &[x], Positions { weight, grad: Vec::new(), width });
    }
    x = dropout(&mut g, "pos.dropout".into(), x);
    // a block's pre-norm (unless `block_norms: false`) or SubLN norm (when `subln`)
    let norm = |g: &mut GraphBuilder, on: bool, name: String, x: usize, features: usize| {
        if on {
            g.push(name, &[x], NormOp::new(model.norm, features, true, false))
        } else {
            x
        }
    };
    for i in 0..t.depth {
        let p = format!("blocks.{i}");
        let h = norm(&mut g, t.block_norms, format!("{p}.norm1"), x, width);
        let (qkv, bits) = layer(Shape::new(3 * width, width), std)?;
        let h = prologue(&mut g, &format!("{p}.attn.qkv"), bits, h, width);
        let mut a = g.push(format!("{p}.attn.qkv"), &[h], Linear { layer: qkv });
        if t.position == Position::Rope {
            a = g.push(format!("{p}.attn.rope"), &[a], Rope { heads: t.heads });
        }
        let a = g.push(format!("{p}.attn"), &[a], Attention { heads: t.heads });
        let a = norm(&mut g, t.subln, format!("{p}.attn.subln"), a, width);
        let (proj, bits) = layer(Shape::new(width, width), residual_std)?;
        let a = prologue(&mut g, &format!("{p}.attn.proj"), bits, a, width);
        let a = g.push(format!("{p}.attn.proj"), &[a], Linear { layer: proj });
        let a = dropout(&mut g, format!("{p}.attn.dropout"), a);
        x = g.push(format!("{p}.add1"), &[a, x], Add::new(false));
        let h = norm(&mut g, t.block_norms, format!("{p}.norm2"), x, width);
        let hidden = t.mlp.hidden(width);
        let m = if t.mlp.gated {
            let (gate, bits) = layer(Shape::new(hidden, width), std)?;
            let gate_in = prologue(&mut g, &format!("{p}.mlp.gate"), bits, h, width);
            let gate = g.push(format!("{p}.mlp.gate"), &[gate_in], Linear { layer: gate });
            let gate = g.push(format!("{p}.mlp.act"), &[gate], activation()?);
            let (up, bits) = layer(Shape::new(hidden, width), std)?;
            // BitLinear's prologue reads the block input again (the same values as the gate's; not
            // the gate's quantized input, whose second norm and quantization deployment lacks)
            let h = prologue(&mut g, &format!("{p}.mlp.up"), bits, h, width);
            let up = g.push(format!("{p}.mlp.up"), &[h], Linear { layer: up });
            g.push(format!("{p}.mlp.gated"), &[gate, up], Gate)
        } else {
            let (fc, bits) = layer(Shape::new(hidden, width), std)?;
            let h = prologue(&mut g, &format!("{p}.mlp.fc"), bits, h, width);
            let m = g.push(format!("{p}.mlp.fc"), &[h], Linear { layer: fc });
            g.push(format!("{p}.mlp.act"), &[m], activation()?)
        };
        let m = norm(&mut g, t.subln, format!("{p}.mlp.subln"), m, hidden);
        let (down, bits) = layer(Shape::new(width, hidden), residual_std)?;
        let m = prologue(&mut g, &format!("{p}.mlp.proj"), bits, m, hidden);
        let m = g.push(format!("{p}.mlp.proj"), &[m], Linear { layer: down });
        let m = dropout(&mut g, format!("{p}.mlp.dropout"), m);
        x = g.push(format!("{p}.add2"), &[m, x], Add::new(false));
    }
    let features = g.push("norm", &[x], NormOp::new(model.norm, width, true, false));
    let logits = if t.tie_embeddings {
        g.push("head", &[features, embed], TiedHead)
    } else {
        let (head, bits) = layer(Shape::new(vocab, width), std)?;
        let h = prologue(&mut g, "head", bits, features, width);
        g.push("head", &[h], Linear { layer: head })
    };
    let mut net = g.finish(logits, Some(features));
    // every op has a host pass: faster than dfdx's composed ops at these shapes (see op.rs)
    net.host = true;
    Ok(net)
}

/// BitLinear's input prologue for an input of `features` values per token: an RMS norm without
/// gain, then per-token absmax quantization (nothing without input bits).
fn prologue(g: &mut GraphBuilder, name: &str, bits: Option<u32>, x: usize, features: usize) -> usize {
    match bits {
        Some(bits) => {
            let x =
                g.push(format!("{name}.input_norm"), &[x], NormOp::new(Norm::Rms, features, false, false));
            g.push(format!("{name}.input_quant"), &[x], ActQuant { bits })
        }
        None => x,
    }
}
