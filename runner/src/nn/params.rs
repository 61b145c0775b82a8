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

impl Layer {
    /// This layer's parameters, in a fixed order: weight, quantizer parameters, residual scale,
    /// norm gain, norm bias. Absent ones (empty buffers) are left out.
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let name = &self.name;
        let cols = self.shape.cols;
        let mut out = Vec::with_capacity(5);
        self.grad_weight.resize(self.weight.len(), 0.0);
        out.push(ParamMut {
            path: format!("{name}.weight"),
            kind: ParamKind::Weight,
            values: &mut self.weight,
            grad: &mut self.grad_weight,
        });
        let quantizer = self.quantizer.params_mut();
        if !quantizer.is_empty() {
            self.grad_params.resize(quantizer.len(), 0.0);
            out.push(ParamMut {
                path: format!("{name}.quantizer.params"),
                kind: ParamKind::QuantizerParam,
                values: quantizer,
                grad: &mut self.grad_params,
            });
        }
        if !self.residual_scale.is_empty() {
            self.grad_residual.resize(self.residual_scale.len(), 0.0);
            out.push(ParamMut {
                path: format!("{name}.residual.scale"),
                kind: ParamKind::ResidualScale,
                values: &mut self.residual_scale,
                grad: &mut self.grad_residual,
            });
        }
        if !self.norm_affine.is_empty() {
            self.grad_norm_affine.resize(self.norm_affine.len(), 0.0);
            let (gain, bias) = self.norm_affine.split_at_mut(cols);
            let (grad_gain, grad_bias) = self.grad_norm_affine.split_at_mut(cols);
            for (part, values, grad) in [("gain", gain, grad_gain), ("bias", bias, grad_bias)] {
                out.push(ParamMut {
                    path: format!("{name}.norm.{part}"),
                    kind: ParamKind::NormParam,
                    values,
                    grad,
                });
            }
        }
        out
    }

    /// This layer's parameters, read-only, in the order of [`Layer::params_mut`].
    pub fn params(&self) -> Vec<Param<'_>> {
        let name = &self.name;
        let cols = self.shape.cols;
        let mut out = vec![Param {
            path: format!("{name}.weight"),
            kind: ParamKind::Weight,
            values: &self.weight,
            shape: vec![self.shape.rows, cols],
        }];
        let quantizer = self.quantizer.params();
        if !quantizer.is_empty() {
            out.push(Param {
                path: format!("{name}.quantizer.params"),
                kind: ParamKind::QuantizerParam,
                values: quantizer,
                shape: vec![quantizer.len()],
            });
        }
        if !self.residual_scale.is_empty() {
            out.push(Param {
                path: format!("{name}.residual.scale"),
                kind: ParamKind::ResidualScale,
                values: &self.residual_scale,
                shape: vec![self.residual_scale.len()],
            });
        }
        if !self.norm_affine.is_empty() {
            let (gain, bias) = self.norm_affine.split_at(cols);
            for (part, values) in [("gain", gain), ("bias", bias)] {
                out.push(Param {
                    path: format!("{name}.norm.{part}"),
                    kind: ParamKind::NormParam,
                    values,
                    shape: vec![cols],
                });
            }
        }
        out
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
