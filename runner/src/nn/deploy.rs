//! A model graph as the deployment runtime sees it: each op adds itself ([`super::op::Op::deploy`])
//! to a [`Deployment`], which [`crate::export`] packs into a model file.
//!
//! The runtime's ops (`layer`, `relu`, `max-pool`, `add`) differ from the training graph in one
//! way: a deployed layer applies its input prologue itself (the model's norm on fully connected
//! layers, then absmax int8 quantization). Norm and input-quantization ops therefore deploy as
//! annotations of the value they produce, which the next layer checks and absorbs.
//!
//! A language model (`text`) deploys its other ops as the runtime's token ops: the embedding
//! and positions as float tensors read by `embed` and `positions`, gained norms as `norm` ops,
//! float linears (no input bits) and the tied head as `matmul` over float tensors.

use std::collections::HashMap;

use qatlab_deploy::format::{ConvSpec, NormKind, TensorData};
use qatlab_deploy::graph::{self, INPUT};

use super::model::Layer;

/// A node as the deployment sees it: its path and the paths of its inputs.
pub struct Node<'a> {
    /// The node's path (`fc1`, `fc1.act`).
    pub name: &'a str,
    /// Its inputs' paths (`input` for the network input).
    pub inputs: Vec<&'a str>,
}

/// One deployed weight layer.
pub struct DeployLayer<'a> {
    /// The trained layer (weights, quantizer output, bias).
    pub layer: &'a Layer,
    /// Bits of its input quantization.
    pub activation_bits: u32,
    /// Its convolution geometry (None: fully connected).
    pub conv: Option<ConvSpec>,
}

/// What a value carries into the next layer's prologue.
#[derive(Clone, Default)]
struct Prologue {
    /// The runtime value it is computed from.
    value: String,
    /// The norm applied to it.
    norm: Option<NormKind>,
    /// Its input-quantization bits.
    bits: Option<u32>,
}

/// The deployable graph being built.
#[derive(Default)]
pub struct Deployment<'a> {
    /// Runtime ops in order.
    pub ops: Vec<graph::Op>,
    /// Weight layers in order.
    pub layers: Vec<DeployLayer<'a>>,
    /// The norm of every fully connected layer's input (None until one is seen).
    pub norm: Option<NormKind>,
    /// Float tensors the ops read (a language model's).
    pub tensors: Vec<TensorData>,
    /// Whether the model is a language model (rows of tokens): its ops may be token ops.
    pub text: bool,
    values: HashMap<String, Prologue>,
}

impl<'a> Deployment<'a> {
    /// What `input` is, as a runtime value with its pending prologue.
    fn source(&self, input: &str) -> Prologue {
        self.values
            .get(input)
            .cloned()
            .unwrap_or(Prologue { value: input.to_string(), ..Prologue::default() })
    }

    /// `node` is `input` with a norm applied inside the next layer's prologue.
    pub fn annotate_norm(&mut self, node: &Node, norm: NormKind) -> Result<(), String> {
        let mut p = self.source(node.inputs[0]);
        if p.norm.is_some() || p.bits.is_some() {
            return Err("a second norm, or a norm after input quantization, does not deploy".into());
        }
        p.norm = Some(norm);
        self.values.insert(node.name.to_string(), p);
        Ok(())
    }

    /// `node` is `input` quantized to `bits` inside the next layer's prologue.
    pub fn annotate_bits(&mut self, node: &Node, bits: u32) -> Result<(), String> {
        let mut p = self.source(node.inputs[0]);
        if p.bits.is_some() {
            return Err("a second input quantization does not deploy".into());
        }
        p.bits = Some(bits);
        self.values.insert(node.name.to_string(), p);
        Ok(())
    }

    /// `node` passes its input through unchanged at inference (dropout).
    pub fn alias(&mut self, node: &Node) {
        let p = self.source(node.inputs[0]);
        self.values.insert(node.name.to_string(), p);
    }

    /// A float tensor the ops read by `name` (`rows × cols`), stored once however many read it.
    pub fn tensor(&mut self, name: &str, rows: usize, cols: usize, values: &[f32]) -> String {
        self.stored(TensorData::f32(name, rows, cols, values.to_vec()))
    }

    /// A tensor the ops read by its name, stored once however many read it (f32 or int8).
    pub fn stored(&mut self, tensor: TensorData) -> String {
        let name = tensor.name.clone();
        if !self.tensors.iter().any(|t| t.name == name) {
            self.tensors.push(tensor);
        }
        name
    }

    /// Refuse a token op outside a language model.
    pub fn text_only(&self, what: &str) -> Result<(), String> {
        if self.text {
            Ok(())
        } else {
            Err(format!("{what} deploys in language models only"))
        }
    }

    /// A weight layer reading `node`'s input through its prologue; in a language model, a
    /// layer with float inputs runs as a float `matmul` of its (fake-quantized) weights.
    pub fn layer(&mut self, node: &Node, layer: &'a Layer, conv: Option<ConvSpec>) -> Result<(), String> {
        let p = self.source(node.inputs[0]);
        let Some(bits) = p.bits else {
            if !self.text || p.norm.is_some() {
                return Err("its inputs are float; set model.activation_bits (the kernels take int8)".into());
            }
            let weight =
                self.tensor(&layer.name, layer.shape.rows, layer.shape.cols, &layer.quantized.values);
            self.push(node, |name, input| graph::Op::Matmul { name, input, weight }, &p);
            return Ok(());
        };
        let norm = p.norm.unwrap_or(NormKind::None);
        if conv.is_some() && norm != NormKind::None {
            return Err("a normalised convolution input does not deploy".into());
        }
        if conv.is_none() {
            match self.norm {
                Some(seen) if seen != norm => {
                    return Err(format!("its input norm {norm:?} differs from an earlier layer's {seen:?}"))
                }
                _ => self.norm = Some(norm),
            }
        }
        self.layers.push(DeployLayer { layer, activation_bits: bits, conv });
        self.push(node, |name, input| graph::Op::Layer { name, input, layer: layer.name.clone() }, &p);
        Ok(())
    }

    /// An op the runtime runs as is; `make` gets the node's name and its first input's runtime
    /// value.
    pub fn op(&mut self, node: &Node, make: impl FnOnce(String, String) -> graph::Op) -> Result<(), String> {
        let p = self.source(node.inputs[0]);
        if p.norm.is_some() || p.bits.is_some() {
            return Err("only a weight layer can read a normalised or quantized value".into());
        }
        self.push(node, make, &p);
        Ok(())
    }

    /// A token op whose inputs the runtime reads as they are (none normalised or quantized for
    /// a next layer).
    pub fn push_op(&mut self, node: &Node, op: graph::Op) -> Result<(), String> {
        self.text_only(&format!("`{}`", op.tag()))?;
        for input in &node.inputs {
            let p = self.source(input);
            if p.norm.is_some() || p.bits.is_some() {
                return Err("only a weight layer can read a normalised or quantized value".into());
            }
        }
        let p = Prologue { value: node.name.to_string(), ..Prologue::default() };
        self.push(node, |_, _| op, &p);
        Ok(())
    }

    /// The runtime value of input `i` of `node` (for ops with several inputs).
    pub fn value(&self, node: &Node, i: usize) -> String {
        self.source(node.inputs[i]).value
    }

    fn push(&mut self, node: &Node, make: impl FnOnce(String, String) -> graph::Op, p: &Prologue) {
        self.ops.push(make(node.name.to_string(), p.value.clone()));
        self.values
            .insert(node.name.to_string(), Prologue { value: node.name.to_string(), ..Prologue::default() });
    }
}

/// The network input's name in both graphs.
pub const NETWORK_INPUT: &str = INPUT;
