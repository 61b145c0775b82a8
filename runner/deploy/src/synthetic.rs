//! A ternary BitLinear transformer of any shape with random weights, for benchmarks that must
//! stream more weights than the caches hold (`qat bench generate --shape`): the op list of an
//! exported run (learned positions, pre-norm blocks, GELU MLP of 4× the width, head tied to the
//! embedding), its linears' codes drawn straight into a kernel layout so that billions of
//! weights take seconds. Its text is meaningless; its speed is a trained model's of that shape.

use crate::decoder::Decoder;
use crate::error::{invalid, Result};
use crate::format::{
    ActivationKind, LayerSpec, ModelHeader, NormKind, TensorSpec, TensorType, TextEvaluation, TextSpec,
    TokenizerKind,
};
use crate::graph::{Function, Op, RowNorm, INPUT};
use crate::kernel::{CodeMatrix, IntLinear, Layout, Path};
use crate::pack::Packing;
use crate::runtime::{Layer, TernaryLayout};

/// The shape of a synthetic model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Blocks.
    pub depth: usize,
    /// Width of the residual stream (a multiple of 2·heads).
    pub width: usize,
    /// Attention heads.
    pub heads: usize,
    /// Positions.
    pub context: usize,
    /// Tokens (byte tokenizer: 256).
    pub vocab: usize,
}

impl Shape {
    /// Ternary weights in the blocks' linears: 12·width² per block.
    pub fn linear_weights(&self) -> usize {
        12 * self.depth * self.width * self.width
    }
}

/// A decoder of `shape` with random ternary codes in `layout` (2-bit or trits) on `path`, on
/// `threads` threads.
pub fn random_ternary(shape: Shape, layout: TernaryLayout, path: Path, threads: usize) -> Result<Decoder> {
    let Shape { depth, width, heads, context, vocab } = shape;
    if depth == 0 || heads == 0 || width % (2 * heads) != 0 || context == 0 || vocab == 0 || vocab > 256 {
        return Err(invalid(format!(
            "{shape:?}: depth, heads and context positive, width a multiple of 2·heads, vocab 1 to 256"
        )));
    }
    let kernel_layout = match layout {
        TernaryLayout::Trits => Layout::Trits,
        _ => Layout::Bits(2),
    };
    let (mut layers, mut specs, mut ops, mut tensors) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut tensor_specs = Vec::new();
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut values = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let mut add_tensor = |name: &str, rows: usize, cols: usize, v: Vec<f32>| {
        tensor_specs.push(TensorSpec {
            name: name.into(),
            rows,
            cols,
            dtype: TensorType::F32,
            offset: 0,
            bytes: 4 * v.len(),
        });
        tensors.push((v, rows, cols));
        name.to_string()
    };
    let mut add_layer = |name: String, input: &str, rows: usize, cols: usize| -> Op {
        let spec = LayerSpec {
            name: name.clone(),
            rows,
            cols,
            quantizer: "random ternary".into(),
            levels: vec![-1.0, 0.0, 1.0],
            packing: if kernel_layout == Layout::Trits {
                Packing::Base3Bytes
            } else {
                Packing::Bits { bits: 2 }
            },
            scales: vec![1.0 / (cols as f32).sqrt()],
            activation_bits: 8,
            offset: 0,
            bytes: 0,
            conv: None,
        };
        let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(specs.len() as u64 + 1);
        let codes = CodeMatrix::random_ternary(rows, cols, kernel_layout, seed);
        layers.push(Layer::from_linear(spec.clone(), IntLinear { codes, offset: -1, step: 1 }));
        specs.push(spec);
        Op::Layer { name: name.clone(), input: input.into(), layer: name }
    };
    let op_name = |op: &Op| op.name().to_string();
    let embed = add_tensor("embed", vocab, width, values(vocab * width, 0.5));
    let pos = add_tensor("pos", context, width, values(context * width, 0.1));
    ops.push(Op::Embed { name: "tokens".into(), input: INPUT.into(), table: embed.clone() });
    ops.push(Op::Positions { name: "pos".into(), input: "tokens".into(), table: pos });
    let mut x = "pos".to_string();
    for i in 0..depth {
        let p = format!("blocks.{i}");
        let norm = |name: String, input: &str, gain: String| Op::Norm {
            name,
            input: input.into(),
            kind: RowNorm::Layer,
            gain: Some(gain),
        };
        let gain = add_tensor(&format!("{p}.norm1.gain"), 1, width, vec![1.0; width]);
        ops.push(norm(format!("{p}.norm1"), &x, gain));
        ops.push(add_layer(format!("{p}.attn.qkv"), &format!("{p}.norm1"), 3 * width, width));
        ops.push(Op::Attention { name: format!("{p}.attn"), input: format!("{p}.attn.qkv"), heads });
        ops.push(add_layer(format!("{p}.attn.proj"), &format!("{p}.attn"), width, width));
        ops.push(Op::Add { name: format!("{p}.add1"), input: format!("{p}.attn.proj"), skip: x, scale: 1.0 });
        let gain = add_tensor(&format!("{p}.norm2.gain"), 1, width, vec![1.0; width]);
        ops.push(norm(format!("{p}.norm2"), &format!("{p}.add1"), gain));
        ops.push(add_layer(format!("{p}.mlp.fc"), &format!("{p}.norm2"), 4 * width, width));
        ops.push(Op::Activation {
            name: format!("{p}.mlp.act"),
            input: format!("{p}.mlp.fc"),
            function: Function::Gelu,
        });
        ops.push(add_layer(format!("{p}.mlp.proj"), &format!("{p}.mlp.act"), width, 4 * width));
        let add2 = Op::Add {
            name: format!("{p}.add2"),
            input: format!("{p}.mlp.proj"),
            skip: format!("{p}.add1"),
            scale: 1.0,
        };
        x = op_name(&add2);
        ops.push(add2);
    }
    let gain = add_tensor("norm.gain", 1, width, vec![1.0; width]);
    ops.push(Op::Norm { name: "norm".into(), input: x, kind: RowNorm::Layer, gain: Some(gain) });
    ops.push(Op::Matmul { name: "head".into(), input: "norm".into(), weight: embed });
    let header = ModelHeader {
        name: format!("random ternary {depth}×{width}"),
        run_id: "synthetic".into(),
        input: None,
        text: Some(TextSpec {
            tokenizer: TokenizerKind::Byte,
            vocab: String::new(),
            context,
            evaluation: TextEvaluation {
                dataset: "none".into(),
                sha256: String::new(),
                val_fraction: 0.1,
                seed: 0,
                batches: 0,
                batch: 1,
            },
        }),
        classes: vocab,
        norm: NormKind::Rms,
        activation: ActivationKind::Relu,
        layers: specs,
        ops,
        writer: env!("CARGO_PKG_VERSION").into(),
        tensors: tensor_specs,
    };
    Decoder::assemble(&header, layers, tensors, path, threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_model_runs_and_both_layouts_read_what_they_should() {
        let shape = Shape { depth: 2, width: 64, heads: 2, context: 16, vocab: 256 };
        let two_bit = random_ternary(shape, TernaryLayout::TwoBit, Path::best(), 1).unwrap();
        let trits = random_ternary(shape, TernaryLayout::Trits, Path::best(), 1).unwrap();
        for decoder in [&two_bit, &trits] {
            let logits = decoder.window_logits(&[1, 2, 3, 250], 1).unwrap();
            assert_eq!(logits.len(), 4 * 256);
            assert!(logits.iter().all(|v| v.is_finite()));
        }
        // 12·64² weights per block, in 2-bit codes exactly (rows of 64 and 256 columns are 16 and
        // 64 bytes); trits pad rows to 80 and 280 columns (16 and 56 bytes)
        let tables = 4 * (64 + 64 + 256 * 64 + 5 * 64);
        assert_eq!(two_bit.weight_bytes_per_token(), 2 * 12 * 64 * 64 / 4 + 4 * 8 + tables);
        let trit_bytes = 2 * ((3 * 64 + 64 + 256) * 16 + 64 * 56);
        assert_eq!(trits.weight_bytes_per_token(), trit_bytes + 4 * 8 + tables);
        assert!(random_ternary(Shape { width: 63, ..shape }, TernaryLayout::Auto, Path::Scalar, 1).is_err());
    }

    #[test]
    fn two_threads_give_the_logits_of_one_bit_for_bit() {
        // width 256: the MLP's 1024×256 layers reach the split threshold, and a full window of 256
        // the attention heads' one
        let shape = Shape { depth: 1, width: 256, heads: 4, context: 256, vocab: 256 };
        for layout in [TernaryLayout::TwoBit, TernaryLayout::Trits] {
            let mut decoder = random_ternary(shape, layout, Path::best(), 1).unwrap();
            let tokens: Vec<u8> = (0..256).map(|i| (i * 37 % 251) as u8).collect();
            let run = |decoder: &Decoder| {
                let mut state = decoder.state(1);
                let mut logits = decoder.forward(&mut state, &tokens[..250]).unwrap();
                for &t in &tokens[250..] {
                    logits.extend(decoder.forward(&mut state, &[t]).unwrap());
                }
                logits
            };
            let one = run(&decoder);
            decoder.set_threads(2);
            assert_eq!(decoder.threads(), 2);
            assert_eq!(run(&decoder), one, "{layout:?}");
        }
    }
}
