//! Parameters by path: every trainable buffer of a network with its name (`fc1.weight`,
//! `fc1.quantizer.params`, `fc2.residual.scale`, `fc1.norm.gain`), its kind and its gradient.
//! The optimizer, gradient clipping and accumulation, EMA and SWA and checkpoints iterate this
//! list and never name an op's fields: each op declares its parameters once, in its own file.

use super::model::{Layer, Network};

/// What a parameter is; it decides how the optimizer and the recipe treat it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Latent weights of a quantized op (weight decay applies).
    Weight,
    /// A quantizer's learnable parameters (scales, thresholds; never decayed).
    QuantizerParam,
    /// A residual connection's learned scale (never decayed).
    ResidualScale,
    /// A norm's learned gain or bias (never decayed).
    NormParam,
}

impl ParamKind {
    /// Whether weight decay applies (nanoGPT's rule: matrices yes; scales, norms, quantizer
    /// parameters no).
    pub fn decayed(self) -> bool {
        self == ParamKind::Weight
    }
}

/// One parameter buffer, mutable, with its gradient.
pub struct ParamMut<'a> {
    /// Its path.
    pub path: String,
    /// What it is.
    pub kind: ParamKind,
    /// Its values.
    pub values: &'a mut [f32],
    /// ∂L/∂values from the last backward pass (same length as `values`).
    pub grad: &'a mut [f32],
}

/// One parameter buffer, read-only.
pub struct Param<'a> {
    /// Its path.
    pub path: String,
    /// What it is.
    pub kind: ParamKind,
    /// Its values.
    pub values: &'a [f32],
    /// Its shape (`[rows, cols]` for weights, `[len]` otherwise).
    pub shape: Vec<usize>,
}

impl<'a> Param<'a> {
    /// A one-dimensional parameter.
    pub fn vector(path: &str, kind: ParamKind, values: &'a [f32]) -> Self {
        Self { path: path.to_string(), kind, values, shape: vec![values.len()] }
    }
}

impl<'a> ParamMut<'a> {
    /// A parameter and its gradient buffer (resized to it).
    pub fn of(path: &str, kind: ParamKind, values: &'a mut [f32], grad: &'a mut Vec<f32>) -> Self {
        grad.resize(values.len(), 0.0);
        Self { path: path.to_string(), kind, values, grad }
    }
}

impl Layer {
    /// The weight tensor's parameters, paths relative to its op: `weight`, then
    /// `quantizer.params` when the quantizer learns any.
    pub fn params(&self) -> Vec<Param<'_>> {
        let (rows, cols) = (self.shape.rows, self.shape.cols);
        let mut out = vec![Param {
            path: "weight".into(),
            kind: ParamKind::Weight,
            values: &self.weight,
            shape: vec![rows, cols],
        }];
        let quantizer = self.quantizer.params();
        if !quantizer.is_empty() {
            out.push(Param::vector("quantizer.params", ParamKind::QuantizerParam, quantizer));
        }
        out
    }

    /// The same with their gradients.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out =
            vec![ParamMut::of("weight", ParamKind::Weight, &mut self.weight, &mut self.grad_weight)];
        let quantizer = self.quantizer.params_mut();
        if !quantizer.is_empty() {
            out.push(ParamMut::of(
                "quantizer.params",
                ParamKind::QuantizerParam,
                quantizer,
                &mut self.grad_params,
            ));
        }
        out
    }
}

impl Network {
    /// Every parameter of the network with its gradient, node by node, each path prefixed with
    /// its node's name.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        for node in &mut self.nodes {
            for mut p in node.op.params_mut() {
                p.path = format!("{}.{}", node.name, p.path);
                out.push(p);
            }
        }
        out
    }

    /// Every parameter of the network, read-only.
    pub fn params(&self) -> Vec<Param<'_>> {
        let mut out = Vec::new();
        for node in &self.nodes {
            for mut p in node.op.params() {
                p.path = format!("{}.{}", node.name, p.path);
                out.push(p);
            }
        }
        out
    }
}
