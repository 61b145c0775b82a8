//! The weight quantizer trait.
//!
//! A quantizer sees one layer's latent (full-precision) weights as a row-major slice, rows being
//! output channels. Its forward pass returns the fake-quantized weights *with their metadata*
//! (level codes, scales, level set) in a [`Quantized`], so export, kernels and histograms read
//! that and never a plugin's private fields. Its backward pass maps the gradient on the
//! fake-quantized weights to the latent weights (the straight-through estimator) and to any
//! learnable parameters it owns. The engine does the rest; a quantizer never sees autodiff.

use crate::Result;

/// A weight matrix shape: `rows` output channels × `cols` inputs, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Output channels.
    pub rows: usize,
    /// Inputs per output channel.
    pub cols: usize,
}

impl Shape {
    /// A `rows × cols` shape.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self { rows, cols }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// True when the shape holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where in training a quantizer is called; lets stochastic quantizers seed per run and step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QuantCtx {
    /// True in the training forward pass, false at evaluation and export.
    pub training: bool,
    /// Optimizer steps taken so far in the run.
    pub step: u64,
    /// Current epoch, from 0.
    pub epoch: usize,
    /// The run's seed combined with the layer index.
    pub seed: u64,
}

/// The output of a quantizer's forward pass, reused between calls to avoid allocation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quantized {
    /// Fake-quantized weights ŵ, same layout as the latent weights.
    pub values: Vec<f32>,
    /// Per weight, the index into [`Quantized::levels`] of its level (empty for float).
    pub codes: Vec<u8>,
    /// Scale per tensor (length 1) or per output row; `ŵ = levels[code] · scale`.
    pub scales: Vec<f32>,
    /// The level set u (unscaled), ascending; empty for a float "quantizer".
    pub levels: Vec<f32>,
}

impl Quantized {
    /// Scale that applies to `row` (per-tensor scales have length 1).
    pub fn scale_of_row(&self, row: usize) -> f32 {
        if self.scales.len() == 1 {
            self.scales[0]
        } else {
            self.scales[row]
        }
    }

    /// Resize the buffers for `shape`, keeping their allocations.
    pub fn prepare(&mut self, shape: Shape, with_codes: bool) {
        self.values.resize(shape.len(), 0.0);
        self.codes.resize(if with_codes { shape.len() } else { 0 }, 0);
    }
}

/// A weight quantizer. Required: [`Quantizer::quantize`] and [`Quantizer::bits_per_weight`];
/// everything else has a default that is correct for a quantizer with an identity
/// straight-through gradient and no learnable parameters.
pub trait Quantizer: Send {
    /// Forward pass: fake-quantize `w` (shape `shape`) into `out` (values, codes, scales, levels).
    fn quantize(&mut self, w: &[f32], shape: Shape, ctx: QuantCtx, out: &mut Quantized) -> Result<()>;

    /// Storage cost of one weight in bits (1.6 for ternary packed 5 trits per byte, 32 for float).
    fn bits_per_weight(&self) -> f64;

    /// Backward pass. Given ∂L/∂ŵ in `grad_values`, write ∂L/∂w into `grad_w` and add ∂L/∂θ for
    /// each learnable parameter θ into `grad_params` (same order as [`Quantizer::params`]).
    /// The default is the identity straight-through estimator.
    fn backward(
        &self,
        _w: &[f32],
        _shape: Shape,
        _q: &Quantized,
        grad_values: &[f32],
        grad_w: &mut [f32],
        _grad_params: &mut [f32],
    ) {
        grad_w.copy_from_slice(grad_values);
    }

    /// Learnable parameters the optimizer updates (e.g. a per-channel scale). Default: none.
    fn params(&self) -> &[f32] {
        &[]
    }

    /// Mutable access to the learnable parameters, for the optimizer and checkpoints.
    fn params_mut(&mut self) -> &mut [f32] {
        &mut []
    }

    /// Called once at the end of each epoch with the latent weights (e.g. to refit a clip scalar).
    fn end_epoch(&mut self, _w: &[f32], _shape: Shape, _epoch: usize) -> Result<()> {
        Ok(())
    }

    /// A loss term the quantizer adds to the training loss (e.g. a size penalty), with its
    /// gradient added into `grad_params`. Default: none.
    fn regularizer(&self, _shape: Shape, _grad_params: &mut [f32]) -> f32 {
        0.0
    }

    /// Output channels currently pruned (all weights forced to zero). Default: none.
    fn pruned_channels(&self, _shape: Shape) -> usize {
        0
    }

    /// The straight-through surrogate of the forward pass at the current parameters: the values
    /// with every rounding residual held at its value in `frozen`. Its derivative in each
    /// learnable parameter, times [`Quantizer::param_grad_scale`], is what `backward` returns;
    /// the conformance suite checks that by finite differences. Needed only with parameters.
    fn surrogate(&self, _w: &[f32], _shape: Shape, _frozen: &Quantized, _out: &mut [f32]) -> Result<()> {
        Err(crate::PluginError::Invalid(
            "this quantizer has no surrogate (it has no learnable parameters)".into(),
        ))
    }

    /// Everything a checkpoint must hold to resume this quantizer exactly (learnable parameters
    /// and fitted state such as clip scalars). Default: the learnable parameters.
    fn state(&self) -> Vec<f32> {
        self.params().to_vec()
    }

    /// Restore what [`Quantizer::state`] returned.
    fn load_state(&mut self, state: &[f32]) -> Result<()> {
        let params = self.params_mut();
        if params.len() != state.len() && !params.is_empty() {
            return Err(crate::PluginError::Invalid(format!(
                "checkpoint holds {} quantizer values, this quantizer has {}",
                state.len(),
                params.len()
            )));
        }
        if params.is_empty() && !state.is_empty() {
            return Err(crate::PluginError::Invalid(
                "this quantizer keeps its parameters elsewhere; implement `load_state`".into(),
            ));
        }
        params.copy_from_slice(state);
        Ok(())
    }

    /// Factor by which `backward` scales the parameter gradient (LSQ's 1/√(N·Qp)). Default 1.
    fn param_grad_scale(&self, _shape: Shape) -> f32 {
        1.0
    }
}
