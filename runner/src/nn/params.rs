//! Parameters by path: every trainable buffer of a network with its name (`fc1.weight`,
//! `fc1.quantizer.params`, `fc2.residual.scale`, `fc1.norm.gain`), its kind and its gradient.
//! The optimizer, gradient clipping and accumulation, EMA and SWA and checkpoints iterate this
//! list and never name a layer's fields, so a new parameter is declared once, here.

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

/// Which of a layer's buffers a parameter lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Buffer {
    Weight,
    Quantizer,
    Residual,
    NormAffine,
}

/// One declared parameter: its path suffix, kind, buffer, and length and shape in that buffer
/// (a norm's gain and bias share one buffer, gain first).
struct Declared {
    suffix: &'static str,
    kind: ParamKind,
    buffer: Buffer,
    len: usize,
    shape: Vec<usize>,
}

impl Layer {
    /// The one declaration of this layer's parameters, in order: weight, quantizer parameters,
    /// residual scale, norm gain, norm bias. Absent ones (empty buffers) are left out.
    fn declared(&self) -> Vec<Declared> {
        let (rows, cols) = (self.shape.rows, self.shape.cols);
        let one = |suffix, kind, buffer, len: usize| Declared { suffix, kind, buffer, len, shape: vec![len] };
        let mut out = vec![Declared {
            suffix: "weight",
            kind: ParamKind::Weight,
            buffer: Buffer::Weight,
            len: self.weight.len(),
            shape: vec![rows, cols],
        }];
        let quantizer = self.quantizer.params().len();
        if quantizer > 0 {
            out.push(one("quantizer.params", ParamKind::QuantizerParam, Buffer::Quantizer, quantizer));
        }
        if !self.residual_scale.is_empty() {
            out.push(one(
                "residual.scale",
                ParamKind::ResidualScale,
                Buffer::Residual,
                self.residual_scale.len(),
            ));
        }
        if !self.norm_affine.is_empty() {
            out.push(one("norm.gain", ParamKind::NormParam, Buffer::NormAffine, cols));
            out.push(one("norm.bias", ParamKind::NormParam, Buffer::NormAffine, cols));
        }
        out
    }

    /// This layer's parameters with their gradients (sized to them), in declaration order.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let declared = self.declared();
        let name = self.name.clone();
        // disjoint borrows of each buffer and its gradient, handed out front to back
        let mut buffers = [
            (Buffer::Weight, &mut self.weight[..], &mut self.grad_weight),
            (Buffer::Quantizer, self.quantizer.params_mut(), &mut self.grad_params),
            (Buffer::Residual, &mut self.residual_scale[..], &mut self.grad_residual),
            (Buffer::NormAffine, &mut self.norm_affine[..], &mut self.grad_norm_affine),
        ]
        .map(|(buffer, values, grad)| {
            grad.resize(values.len(), 0.0);
            (buffer, values, &mut grad[..])
        });
        declared
            .into_iter()
            .map(|d| {
                let (_, values, grad) =
                    buffers.iter_mut().find(|(b, _, _)| *b == d.buffer).expect("every buffer");
                let (head, rest) = std::mem::take(values).split_at_mut(d.len);
                let (grad_head, grad_rest) = std::mem::take(grad).split_at_mut(d.len);
                (*values, *grad) = (rest, grad_rest);
                ParamMut { path: format!("{name}.{}", d.suffix), kind: d.kind, values: head, grad: grad_head }
            })
            .collect()
    }

    /// This layer's parameters, read-only, in declaration order.
    pub fn params(&self) -> Vec<Param<'_>> {
        let mut offsets = [0usize; 4];
        self.declared()
            .into_iter()
            .map(|d| {
                let buffer: &[f32] = match d.buffer {
                    Buffer::Weight => &self.weight,
                    Buffer::Quantizer => self.quantizer.params(),
                    Buffer::Residual => &self.residual_scale,
                    Buffer::NormAffine => &self.norm_affine,
                };
                let at = &mut offsets[d.buffer as usize];
                let values = &buffer[*at..*at + d.len];
                *at += d.len;
                Param { path: format!("{}.{}", self.name, d.suffix), kind: d.kind, values, shape: d.shape }
            })
            .collect()
    }
}

impl Network {
    /// Every parameter of the network, layer by layer, in the order of [`Layer::params_mut`].
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        self.layers.iter_mut().flat_map(Layer::params_mut).collect()
    }

    /// Every parameter of the network, read-only.
    pub fn params(&self) -> Vec<Param<'_>> {
        self.layers.iter().flat_map(Layer::params).collect()
    }
}
