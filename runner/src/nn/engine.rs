//! The only module that knows dfdx: it runs the network's forward pass on dfdx tensors and
//! returns plain gradients on the fake-quantized weights.
//!
//! How plain-slice plugins enter the autodiff graph without a custom-op API:
//! - weights: each layer's fake-quantized weights ŵ (computed on the host by its quantizer)
//!   become a *leaf* of the graph; the backward pass yields ∂L/∂ŵ, which the host hands to the
//!   quantizer's straight-through backward. The quantizer never sees the tape.
//! - activation fake-quantization: `x + (q(x) − x)` with the difference a constant, exactly
//!   PyTorch's `x + (q − x).detach()`; the gradient is the identity.
//! - plugin activations: `z·f′(z) + (f(z) − z·f′(z))` with both factors constants computed by the
//!   plugin, so the value is f(z) and the gradient f′(z). ReLU uses dfdx's own kernel.
//! - the loss: computed on the host (cross-entropy or a distiller) with its gradient G on the
//!   logits; the graph is closed by Σ logits·G, whose gradient is G.
//!
//! The first layer's input is a constant, so its norm and quantization run on the host and its
//! output is a leaf; ∂L/∂ŵ₁ = Gᵀ·x₁ is one more matmul. This spares the unused ∂L/∂x.

use dfdx::prelude::*;
use qatlab_core::config::{Norm, Residual};
use qatlab_deploy::kernel::transpose;

use crate::nn::model::{
    layer_norm_rows, quantize_activations, rms_norm_rows, BatchStats, Network, RunningStats, Stage,
    BATCH_NORM_EPS, LAYER_NORM_EPS, RMS_EPS,
};

type Mat<T = NoneTape> = Tensor<(usize, usize), f32, Cpu, T>;

type Scalar<T = NoneTape> = Tensor<(), f32, Cpu, T>;

type Row<T = NoneTape> = Tensor<(usize,), f32, Cpu, T>;

/// A tape mode: either recording (training) or not (evaluation).
trait Mode: Tape<f32, Cpu> + Merge<NoneTape> + 'static {
    /// Turn a constant into a graph leaf (or leave it as is when not recording).
    fn leaf(t: Mat) -> Mat<Self>;
    /// The same for a scalar.
    fn leaf0(t: Scalar) -> Scalar<Self>;
    /// The same for a vector.
    fn leaf1(t: Row) -> Row<Self>;
}

impl Mode for NoneTape {
    fn leaf(t: Mat) -> Mat {
        t
    }
    fn leaf0(t: Scalar) -> Scalar {
        t
    }
    fn leaf1(t: Row) -> Row {
        t
    }
}

impl Mode for OwnedTape<f32, Cpu> {
    fn leaf(t: Mat) -> Mat<Self> {
        t.leaky_traced()
    }
    fn leaf0(t: Scalar) -> Scalar<Self> {
        t.leaky_traced()
    }
    fn leaf1(t: Row) -> Row<Self> {
        t.leaky_traced()
    }
}

/// What one forward pass produced.
struct Forward<T: Mode> {
    logits: Mat<T>,
    /// First layer's host-prepared input.
    x1: Mat,
    /// First layer's output, a leaf.
    z1: Mat,
    /// Leaves of the fake-quantized weights of layers 2.. (same ids as in the graph).
    weights: Vec<Mat>,
    /// Positive activations counted and the number of activations seen (when tracked).
    positive: (u64, u64),
    /// Batch statistics of each layer's input (batch norm in a training pass only).
    batch_stats: Vec<BatchStats>,
    /// Leaves of the learned residual scales, by layer index.
    residual_scales: Vec<(usize, Scalar)>,
    /// The last layer's input before its norm: the penultimate features (None without hidden
    /// layers).
    features: Option<Mat<T>>,
    /// The convolutional front-end's cache and its output before the first fully connected
    /// layer's norm (None without convolutions).
    conv: Option<(crate::nn::conv::ConvCache, Vec<f32>)>,
    /// The first layer's normalised input before its learned gain and bias (when it has them).
    first_normalised: Option<Vec<f32>>,
    /// Leaves of the learned layer-norm gains and biases, by layer index.
    affine: Vec<(usize, Row, Row)>,
    /// Each fully connected layer's matmul input (`batch × cols`), when collected.
    inputs: Vec<(usize, Vec<f32>)>,
}

/// A loss on (logits, features) that writes (∂L/∂logits, ∂L/∂features) and returns L.
pub type FeatureLoss<'a> = dyn FnMut(&[f32], &[f32], &mut [f32], &mut [f32]) -> f32 + 'a;

/// Which statistics a forward pass normalises with (it matters for batch norm only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Batch statistics, as in training.
    Train,
    /// Running statistics, as in evaluation.
    Eval,
}

/// Runs forward and backward passes on a dfdx CPU device.
pub struct Engine {
    dev: Cpu,
}

impl Default for Engine {
    fn default() -> Self {
        Self::new()
    }
}

impl Engine {
    /// A CPU engine. dfdx's tensor cache stays off: it never reuses the buffers we build on
    /// the host, so it only grows; mimalloc (see `alloc`) recycles them instead.
    pub fn new() -> Self {
        Self { dev: Cpu::default() }
    }

    /// Logits for `batch` samples of `x` (row-major `batch × inputs`), without recording a
    /// tape. Also returns (positive activations, activations) over the hidden layers.
    pub fn logits(&self, net: &Network, x: &[f32], batch: usize, pass: Pass) -> (Vec<f32>, (u64, u64)) {
        let f = self.forward::<NoneTape>(net, x, batch, pass, true, false);
        (host(&f.logits), f.positive)
    }

    /// Each batch-normalised layer input's statistics over `batch` samples of `x` (a training
    /// forward pass without a tape), for re-estimating running statistics.
    pub fn batch_statistics(&self, net: &Network, x: &[f32], batch: usize) -> Vec<BatchStats> {
        self.forward::<NoneTape>(net, x, batch, Pass::Train, false, false).batch_stats
    }

    /// The penultimate features (the last layer's input before its norm, `batch × width`) of an
    /// evaluation pass; empty for a network without hidden layers.
    pub fn features(&self, net: &Network, x: &[f32], batch: usize) -> Vec<f32> {
        self.forward::<NoneTape>(net, x, batch, Pass::Eval, false, false)
            .features
            .map_or(Vec::new(), |f| host(&f))
    }

    /// One training forward and backward pass. `loss_grad` receives the logits and writes
    /// ∂L/∂logits, returning the loss; afterwards each layer's `grad_values` holds ∂L/∂ŵ.
    pub fn backward(
        &self,
        net: &mut Network,
        x: &[f32],
        batch: usize,
        loss_grad: &mut dyn FnMut(&[f32], &mut [f32]) -> f32,
    ) -> f32 {
        self.backward_with_features(net, x, batch, false, &mut |logits, _, grad, _| loss_grad(logits, grad))
    }

    /// [`Engine::backward`] with a loss that may also depend on the penultimate features
    /// (`with_features`): `loss_grad(logits, features, ∂L/∂logits, ∂L/∂features)`.
    pub fn backward_with_features(
        &self,
        net: &mut Network,
        x: &[f32],
        batch: usize,
        with_features: bool,
        loss_grad: &mut FeatureLoss,
    ) -> f32 {
        let f = self.forward::<OwnedTape<f32, Cpu>>(net, x, batch, Pass::Train, false, false);
        for (running, batch) in net.norm_stats.iter_mut().zip(&f.batch_stats) {
            running.update(batch);
        }
        let logits = host(&f.logits);
        let features = f.features.as_ref().filter(|_| with_features).map_or(Vec::new(), host);
        let (mut grad, mut grad_features) = (vec![0.0; logits.len()], vec![0.0; features.len()]);
        let loss = loss_grad(&logits, &features, &mut grad, &mut grad_features);
        let shape = *f.logits.shape();
        let mut surrogate = (f.logits * self.dev.tensor_from_vec(grad, shape)).sum::<Rank0, _>();
        if let (Some(feature_tensor), true) = (f.features, with_features) {
            let shape = *feature_tensor.shape();
            surrogate = surrogate
                + (feature_tensor * self.dev.tensor_from_vec(grad_features, shape)).sum::<Rank0, _>();
        }
        let grads = surrogate.backward();
        let convs = net.conv_count();
        let g1 = grads.get(&f.z1);
        if f.conv.is_some() || f.first_normalised.is_some() {
            // ∂L/∂x₁ = G·W₁ (through the input quantization, straight through), for the first
            // layer's learned norm gain and bias or the convolutional front-end.
            let first = &net.layers[convs];
            let cols = first.shape.cols;
            let w1 = self.dev.tensor_from_vec(first.quantized.values.clone(), (first.shape.rows, cols));
            let grad_x1 = host(&g1.clone().matmul(w1));
            if let Some(normalised) = &f.first_normalised {
                let mut grad = vec![0.0f32; 2 * cols];
                for (row, g) in normalised.chunks_exact(cols).zip(grad_x1.chunks_exact(cols)) {
                    for j in 0..cols {
                        grad[j] += row[j] * g[j];
                        grad[cols + j] += g[j];
                    }
                }
                net.layers[convs].grad_norm_affine = grad;
            }
            if let Some((cache, features)) = &f.conv {
                let grad_features = norm_backward(net.stage.norm, features, grad_x1, cols);
                crate::nn::conv::backward(&mut net.layers[..convs], cache, &grad_features);
            }
        }
        for (l, gain, bias) in &f.affine {
            net.layers[*l].grad_norm_affine = [grads.get(gain).as_vec(), grads.get(bias).as_vec()].concat();
        }
        let dw1 = g1.permute::<_, Axes2<1, 0>>().matmul(f.x1);
        net.layers[convs].grad_values = host(&dw1);
        for (layer, leaf) in net.layers[convs + 1..].iter_mut().zip(&f.weights) {
            layer.grad_values = transpose(&host(&grads.get(leaf)), layer.shape.cols, layer.shape.rows);
        }
        for (l, leaf) in &f.residual_scales {
            net.layers[*l].grad_residual = grads.get(leaf).as_vec();
        }
        loss
    }

    fn forward<T: Mode>(
        &self,
        net: &Network,
        x: &[f32],
        batch: usize,
        pass: Pass,
        track: bool,
        collect_inputs: bool,
    ) -> Forward<T> {
        let convs = net.conv_count();
        let (mut input, mut conv) = if convs > 0 {
            let (features, cache) = crate::nn::conv::forward(&net.layers[..convs], &net.stage, x, batch);
            (features.clone(), Some((cache, features)))
        } else {
            (x.to_vec(), None)
        };
        if pass == Pass::Eval {
            conv = None; // only a backward pass needs it
        }
        let first = &net.layers[convs];
        let mut batch_stats = Vec::new();
        let features = first.shape.cols;
        if net.stage.norm == Norm::Batch {
            let stats = &net.norm_stats[convs];
            match pass {
                Pass::Eval => BatchStats::normalise(&mut input, &stats.mean, &stats.var),
                Pass::Train => {
                    let b = BatchStats::of(&input, features);
                    BatchStats::normalise(&mut input, &b.mean, &b.var);
                    batch_stats.push(b);
                }
            }
        }
        let first_normalised = prepare_input_on_host(&net.stage, first, &mut input, features);
        let mut affine = Vec::new();
        let x1 = self.dev.tensor_from_vec(input, (batch, features));
        let mut inputs = Vec::new();
        if collect_inputs {
            inputs.push((convs, host(&x1)));
        }
        let z1 = self.add_bias(x1.clone().matmul(self.weight_t(first)), first);
        let count = net.layers.len();
        let mut weights = Vec::new();
        let mut residual_scales = Vec::new();
        let mut positive = (0, 0);
        let mut tracked = track.then_some(&mut positive);
        let leaf1: Mat<T> = T::leaf(z1.clone());
        let (logits, features) = if count == convs + 1 {
            (leaf1, None)
        } else {
            let mut last = None;
            // x: the input of the current layer (the previous layer's activation, with its skip)
            let mut x = self.activate(leaf1, &net.stage, tracked.as_deref_mut());
            for (l, layer) in net.layers.iter().enumerate().skip(convs + 1) {
                let features = (l + 1 == count).then(|| x.retaped::<T>());
                let residual = net.stage.residual != Residual::None && layer.has_residual(l, count);
                let skip = residual.then(|| x.retaped::<T>());
                let mut h = match (net.stage.norm, pass) {
                    (Norm::Batch, Pass::Train) => {
                        batch_stats.push(BatchStats::of(&host(&x), layer.shape.cols));
                        x.normalize::<Axis<0>>(BATCH_NORM_EPS)
                    }
                    (Norm::Batch, Pass::Eval) => self.normalize_with(x, &net.norm_stats[l]),
                    (norm, _) => normalize(x, norm),
                };
                if !layer.norm_affine.is_empty() {
                    let (gain, bias) = layer.norm_affine.split_at(layer.shape.cols);
                    let shape = *h.shape();
                    let gain = self.dev.tensor_from_vec(gain.to_vec(), (shape.1,));
                    let bias = self.dev.tensor_from_vec(bias.to_vec(), (shape.1,));
                    affine.push((l, gain.clone(), bias.clone()));
                    h = h * T::leaf1(gain).broadcast_like::<_, Axis<0>>(&shape)
                        + T::leaf1(bias).broadcast_like::<_, Axis<0>>(&shape);
                }
                h = self.quantize_input(h, layer.activation_bits);
                let w = self.weight_t(layer);
                weights.push(w.clone());
                if collect_inputs {
                    inputs.push((l, host(&h)));
                }
                let z = self.add_bias(h.matmul(T::leaf(w)), layer);
                if l + 1 == count {
                    last = Some((z, features));
                    break;
                }
                let shape = *z.shape();
                let mut scaled = |skip: Mat<T>| {
                    let a = self.dev.tensor(layer.residual_scale.first().copied().unwrap_or(1.0));
                    residual_scales.push((l, a.clone()));
                    skip * T::leaf0(a).broadcast_like::<_, Axes2<0, 1>>(&shape)
                };
                let stage = &net.stage;
                x = match (skip, stage.residual) {
                    (Some(s), Residual::ReluSum) => self.activate(z + s, stage, tracked.as_deref_mut()),
                    (Some(s), Residual::SumRelu) => s + self.activate(z, stage, tracked.as_deref_mut()),
                    (Some(s), Residual::ScaledSumRelu) => {
                        let s = scaled(s);
                        s + self.activate(z, stage, tracked.as_deref_mut())
                    }
                    (Some(s), Residual::ReluScaledSum) => {
                        let s = scaled(s);
                        self.activate(s + z, stage, tracked.as_deref_mut())
                    }
                    _ => self.activate(z, stage, tracked.as_deref_mut()),
                };
            }
            last.expect("the last layer ends the loop")
        };
        Forward {
            logits,
            x1,
            z1,
            weights,
            positive,
            batch_stats,
            residual_scales,
            features,
            conv,
            first_normalised,
            affine,
            inputs,
        }
    }

    /// z plus the layer's output bias, when it has one (post-training bias correction).
    fn add_bias<T: Mode>(&self, z: Mat<T>, layer: &crate::nn::model::Layer) -> Mat<T> {
        if layer.bias.is_empty() {
            return z;
        }
        let shape = *z.shape();
        z + self.dev.tensor_from_vec(layer.bias.clone(), (shape.1,)).broadcast_like::<_, Axis<0>>(&shape)
    }

    /// The mean over `batch` samples of each fully connected layer's matmul input (after its
    /// norm and activation quantization), by layer index.
    pub fn mean_layer_inputs(&self, net: &Network, x: &[f32], batch: usize) -> Vec<(usize, Vec<f32>)> {
        let f = self.forward::<NoneTape>(net, x, batch, Pass::Eval, false, true);
        f.inputs
            .into_iter()
            .map(|(l, values)| {
                let cols = values.len() / batch.max(1);
                let mut mean = vec![0.0f32; cols];
                values.chunks_exact(cols).for_each(|row| mean.iter_mut().zip(row).for_each(|(m, v)| *m += v));
                mean.iter_mut().for_each(|m| *m /= batch.max(1) as f32);
                (l, mean)
            })
            .collect()
    }

    /// (h − mean)/sqrt(var + ε) per feature with fixed (running) statistics.
    fn normalize_with<T: Mode>(&self, h: Mat<T>, stats: &RunningStats) -> Mat<T> {
        let shape = *h.shape();
        let inv: Vec<f32> = stats.var.iter().map(|v| 1.0 / (v + BATCH_NORM_EPS).sqrt()).collect();
        let shift: Vec<f32> = stats.mean.iter().zip(&inv).map(|(m, i)| -m * i).collect();
        let inv = self.dev.tensor_from_vec(inv, (shape.1,)).broadcast_like::<_, Axis<0>>(&shape);
        let shift = self.dev.tensor_from_vec(shift, (shape.1,)).broadcast_like::<_, Axis<0>>(&shape);
        h * inv + shift
    }

    /// The layer's fake-quantized weights, transposed to `inputs × outputs` so the matmul
    /// reads its right operand contiguously.
    fn weight_t(&self, layer: &crate::nn::model::Layer) -> Mat {
        let s = layer.shape;
        self.dev.tensor_from_vec(transpose(&layer.quantized.values, s.rows, s.cols), (s.cols, s.rows))
    }

    fn activate<T: Mode>(&self, z: Mat<T>, stage: &Stage, positive: Option<&mut (u64, u64)>) -> Mat<T> {
        let out = if stage.activation.is_relu() {
            z.relu()
        } else {
            let shape = *z.shape();
            let zv = host(&z);
            let (mut y, mut dy) = (vec![0.0; zv.len()], vec![0.0; zv.len()]);
            stage.activation.apply_rows(&zv, shape.1, &mut y, &mut dy);
            let offset: Vec<f32> = y.iter().zip(&dy).zip(&zv).map(|((y, d), z)| y - z * d).collect();
            z * self.dev.tensor_from_vec(dy, shape) + self.dev.tensor_from_vec(offset, shape)
        };
        if let Some(count) = positive {
            let values = host(&out);
            count.0 += values.iter().filter(|v| **v > 0.0).count() as u64;
            count.1 += values.len() as u64;
        }
        out
    }

    fn quantize_input<T: Mode>(&self, h: Mat<T>, bits: Option<u32>) -> Mat<T> {
        let Some(bits) = bits else { return h };
        let shape = *h.shape();
        let values = host(&h);
        let mut delta = vec![0.0; values.len()];
        quantize_activations(&values, shape.1, bits, &mut delta);
        delta.iter_mut().zip(&values).for_each(|(q, v)| *q -= v);
        h + self.dev.tensor_from_vec(delta, shape)
    }
}

/// The values of a contiguous tensor (every op output and gradient buffer here is one) as a
/// plain vector. `copy_into` is a memcpy, where `as_vec` walks a strided index per element.
fn host<T>(t: &Tensor<(usize, usize), f32, Cpu, T>) -> Vec<f32> {
    let mut out = vec![0.0; t.shape().0 * t.shape().1];
    t.copy_into(&mut out);
    out
}

/// ∂L/∂x of the host-side input norm from ∂L/∂y (`x` before the norm, rows of `features`).
/// RMS: y = x·r, r = (mean x² + ε)^(−1/2), so ∂L/∂x = r·(∂L/∂y − y·mean(∂L/∂y·y)).
fn norm_backward(norm: Norm, x: &[f32], mut grad: Vec<f32>, features: usize) -> Vec<f32> {
    if norm != Norm::Rms {
        return grad; // none (batch and layer norm are rejected with convolutions)
    }
    for (row, g) in x.chunks_exact(features).zip(grad.chunks_exact_mut(features)) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f32>() / features as f32 + RMS_EPS).sqrt();
        let mean: f32 = row.iter().zip(g.iter()).map(|(x, d)| x * r * d).sum::<f32>() / features as f32;
        g.iter_mut().zip(row).for_each(|(d, x)| *d = r * (*d - x * r * mean));
    }
    grad
}

/// Norm (with the layer's learned gain and bias, if any) and activation quantization of the
/// (constant) network input, on the host. Returns the normalised input before the gain and bias
/// when the layer has them (their gradients need it).
fn prepare_input_on_host(
    stage: &Stage,
    layer: &crate::nn::model::Layer,
    x: &mut [f32],
    features: usize,
) -> Option<Vec<f32>> {
    match stage.norm {
        Norm::Rms => rms_norm_rows(x, features),
        Norm::Layer => layer_norm_rows(x, features),
        Norm::None | Norm::Batch => {}
    }
    let normalised = (!layer.norm_affine.is_empty()).then(|| x.to_vec());
    if normalised.is_some() {
        let (gain, bias) = layer.norm_affine.split_at(features);
        for row in x.chunks_exact_mut(features) {
            row.iter_mut().zip(gain).zip(bias).for_each(|((v, g), b)| *v = *v * g + b);
        }
    }
    if let Some(bits) = layer.activation_bits {
        let copy = x.to_vec();
        quantize_activations(&copy, features, bits, x);
    }
    normalised
}

fn normalize<T: Mode>(h: Mat<T>, norm: Norm) -> Mat<T> {
    let shape = *h.shape();
    match norm {
        Norm::None | Norm::Batch => h,
        Norm::Layer => h.normalize::<Axis<1>>(LAYER_NORM_EPS),
        Norm::Rms => {
            let mean_square = h.retaped::<T>().square().mean::<(usize,), Axis<1>>();
            let inv_rms = (mean_square + RMS_EPS).sqrt().recip();
            h * inv_rms.broadcast_like::<_, Axis<1>>(&shape)
        }
    }
}
