//! The graph runner, the only module besides the ops that knows dfdx: it runs a network's ops
//! in order on one pass context and returns plain gradients.
//!
//! How plain-slice plugins enter the autodiff graph without a custom-op API:
//! - weights: each quantized op's fake-quantized weights ŵ (computed on the host by its
//!   quantizer) become a *leaf* of the graph; the backward pass yields ∂L/∂ŵ, which the host
//!   hands to the quantizer's straight-through backward. The quantizer never sees the tape.
//! - the loss: computed on the host (cross-entropy or a distiller) with its gradient G on the
//!   logits; the graph is closed by Σ logits·G, whose gradient is G.
//! - host values: ops up to the first linear one compute on the host (see [`super::op`]); after
//!   dfdx's backward pass the runner walks the ops in reverse and hands each one ∂L/∂ of its host
//!   output, which it turns into its parameters' gradients and ∂L/∂ of its host input.
//! - a network on the host throughout ([`Network::host`]) yields host logits: ∂L/∂logits goes
//!   straight to the reverse walk and dfdx's backward pass is not run at all.

use dfdx::prelude::*;

use super::model::{BatchStats, Network, INPUT_NODE};
pub use super::op::Pass;
use super::op::{Back, Cx, Host, Mode, Taped, Value};

/// What one forward pass produced.
struct Forward<T: Mode> {
    logits: Value<T>,
    /// The penultimate features (None when the network has none).
    features: Option<Value<T>>,
    /// What each node saved for its backward pass.
    saved: Vec<Option<Box<dyn std::any::Any>>>,
    /// Positive activations counted and the number of activations seen (when tracked).
    positive: (u64, u64),
    /// Batch statistics of each batch norm (training passes).
    batch_stats: Vec<BatchStats>,
    /// Each linear op's matmul input by layer name (when collected).
    layer_inputs: Vec<(String, Vec<f32>)>,
}

/// A loss on (logits, features) that writes (∂L/∂logits, ∂L/∂features) and returns L.
pub type FeatureLoss<'a> = dyn FnMut(&[f32], &[f32], &mut [f32], &mut [f32]) -> f32 + 'a;

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
        (f.logits.to_host().0, f.positive)
    }

    /// Each batch norm's statistics over `batch` samples of `x` (a training forward pass at
    /// `step` without a tape), for re-estimating running statistics.
    pub fn batch_statistics(&self, net: &Network, x: &[f32], batch: usize, step: u64) -> Vec<BatchStats> {
        self.forward::<NoneTape>(net, x, batch, Pass::Train { step }, false, false).batch_stats
    }

    /// The penultimate features (the last layer's input before its norm, `batch × width`) of an
    /// evaluation pass; empty for a network without hidden layers.
    pub fn features(&self, net: &Network, x: &[f32], batch: usize) -> Vec<f32> {
        self.forward::<NoneTape>(net, x, batch, Pass::Eval, false, false)
            .features
            .map_or(Vec::new(), |f| f.to_host().0)
    }

    /// The mean over `batch` samples of each linear op's matmul input (after its norm and input
    /// quantization), by layer name.
    pub fn mean_layer_inputs(&self, net: &Network, x: &[f32], batch: usize) -> Vec<(String, Vec<f32>)> {
        let f = self.forward::<NoneTape>(net, x, batch, Pass::Eval, false, true);
        f.layer_inputs
            .into_iter()
            .map(|(name, values)| {
                let cols = values.len() / batch.max(1);
                let mut mean = vec![0.0f32; cols];
                values.chunks_exact(cols).for_each(|row| mean.iter_mut().zip(row).for_each(|(m, v)| *m += v));
                mean.iter_mut().for_each(|m| *m /= batch.max(1) as f32);
                (name, mean)
            })
            .collect()
    }

    /// One training forward and backward pass at optimizer step `step`. `loss_grad` receives
    /// the logits and writes ∂L/∂logits, returning the loss; afterwards each layer's
    /// `grad_values` holds ∂L/∂ŵ and every other parameter its gradient.
    pub fn backward(
        &self,
        net: &mut Network,
        x: &[f32],
        batch: usize,
        step: u64,
        loss_grad: &mut dyn FnMut(&[f32], &mut [f32]) -> f32,
    ) -> f32 {
        self.backward_with_features(net, x, batch, step, false, &mut |logits, _, grad, _| {
            loss_grad(logits, grad)
        })
    }

    /// [`Engine::backward`] with a loss that may also depend on the penultimate features
    /// (`with_features`): `loss_grad(logits, features, ∂L/∂logits, ∂L/∂features)`.
    pub fn backward_with_features(
        &self,
        net: &mut Network,
        x: &[f32],
        batch: usize,
        step: u64,
        with_features: bool,
        loss_grad: &mut FeatureLoss,
    ) -> f32 {
        let mut f = self.forward::<Taped>(net, x, batch, Pass::Train { step }, false, false);
        for ((_, running), batch) in net.running_stats_mut().into_iter().zip(&f.batch_stats) {
            running.update(batch);
        }
        let logits = f.logits.to_host().0;
        let features = f.features.as_ref().filter(|_| with_features).map_or(Vec::new(), |f| f.to_host().0);
        let (mut grad, mut grad_features) = (vec![0.0; logits.len()], vec![0.0; features.len()]);
        let loss = loss_grad(&logits, &features, &mut grad, &mut grad_features);
        let mut grad_of: Vec<Option<Vec<f32>>> = (0..net.nodes.len()).map(|_| None).collect();
        let grads = match f.logits {
            Value::Host(_) => {
                grad_of[net.output] = Some(grad);
                if let (Some(i), true) = (net.features, with_features) {
                    add_into(&mut grad_of[i], grad_features);
                }
                Gradients::leaky()
            }
            Value::Graph(logits) => {
                let shape = *logits.shape();
                let mut surrogate = (logits * self.dev.tensor_from_vec(grad, shape)).sum::<Rank0, _>();
                if let (Some(feature), true) = (f.features, with_features) {
                    let feature_tensor = feature.into_graph(&self.dev, batch);
                    let shape = *feature_tensor.shape();
                    surrogate = surrogate
                        + (feature_tensor * self.dev.tensor_from_vec(grad_features, shape)).sum::<Rank0, _>();
                }
                surrogate.backward()
            }
        };
        for (i, node) in net.nodes.iter_mut().enumerate().rev() {
            let back =
                Back { grads: &grads, saved: f.saved[i].take(), grad_out: grad_of[i].take(), dev: &self.dev };
            for (&input, grad) in node.inputs.iter().zip(node.op.backward(back)) {
                if let (Some(grad), true) = (grad, input != INPUT_NODE) {
                    add_into(&mut grad_of[input], grad);
                }
            }
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
        let mut cx = Cx {
            dev: &self.dev,
            pass,
            batch,
            name: "",
            host: net.host,
            positive: track.then_some((0, 0)),
            batch_stats: Vec::new(),
            layer_inputs: collect_inputs.then(Vec::new),
            saved: None,
        };
        // how many nodes still read each value; the last reader takes it, earlier ones share it
        let mut readers = vec![0usize; net.nodes.len()];
        net.nodes.iter().flat_map(|n| &n.inputs).filter(|&&i| i != INPUT_NODE).for_each(|&i| readers[i] += 1);
        readers[net.output] += 1;
        let mut values: Vec<Option<Value<T>>> = (0..net.nodes.len()).map(|_| None).collect();
        let mut saved = Vec::with_capacity(net.nodes.len());
        let mut features = None;
        for (i, node) in net.nodes.iter().enumerate() {
            let inputs = node
                .inputs
                .iter()
                .map(|&j| {
                    if j == INPUT_NODE {
                        let cols = x.len() / batch.max(1);
                        return Value::Host(Host { data: x.to_vec(), cols, wants_grad: false });
                    }
                    readers[j] -= 1;
                    let slot = &mut values[j];
                    if readers[j] == 0 {
                        slot.take().expect("each value is read after it is written")
                    } else {
                        slot.as_ref().expect("each value is read after it is written").share()
                    }
                })
                .collect();
            cx.name = &node.name;
            let out = T::forward(&*node.op, &mut cx, inputs);
            saved.push(cx.saved.take());
            if net.features == Some(i) {
                features = Some(out.share());
            }
            values[i] = Some(out);
        }
        let logits = values[net.output].take().expect("the output is computed");
        Forward {
            logits,
            features,
            saved,
            positive: cx.positive.unwrap_or((0, 0)),
            batch_stats: cx.batch_stats,
            layer_inputs: cx.layer_inputs.unwrap_or_default(),
        }
    }
}

/// Add `grad` to the gradient collected so far in `slot` (several readers of one value).
fn add_into(slot: &mut Option<Vec<f32>>, grad: Vec<f32>) {
    match slot {
        Some(sum) => sum.iter_mut().zip(&grad).for_each(|(s, g)| *s += g),
        None => *slot = Some(grad),
    }
}
