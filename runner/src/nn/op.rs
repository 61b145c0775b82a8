//! What an op is: the [`Op`] trait every layer of a model graph implements, the values that flow
//! between ops ([`Value`]: host buffers or dfdx tensors), and the pass context ([`Cx`]) an op
//! reads and records into. The graph runner is [`super::engine`]; the ops are in [`super::ops`].
//!
//! Why two kinds of value: the network's input is a constant, so everything up to the first
//! fully connected layer (convolutions, their activations and pooling, the first norm and input
//! quantization) runs on the host, where it is cheaper than dfdx and needs no tape. An op that
//! receives a [`Value::Host`] computes on the host and, when a later backward pass needs it,
//! saves what its own host backward needs; the first linear op turns its host input into a graph
//! leaf. From there on values are [`Value::Graph`] tensors and dfdx differentiates them.
//!
//! A network may also run on the host throughout ([`Cx::host`], the transformer preset): tables
//! and linear ops then keep host values too, every op computes its own backward pass, and the
//! tape is never used. dfdx's composed ops stay as the reference those host passes are tested
//! against (`tests/it/engine.rs`), and carry the MLP presets.

use std::any::Any;

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::model::{BatchStats, Layer, RunningStats};
use crate::nn::params::{Param, ParamMut};

/// A matrix `rows × cols` on the CPU device with tape `T`.
pub type Mat<T = NoneTape> = Tensor<(usize, usize), f32, Cpu, T>;
/// A scalar.
pub type Scalar<T = NoneTape> = Tensor<(), f32, Cpu, T>;
/// A vector.
pub type Row<T = NoneTape> = Tensor<(usize,), f32, Cpu, T>;
/// The recording tape of a training pass.
pub type Taped = OwnedTape<f32, Cpu>;

/// A tape mode: recording (a training pass that will run backward) or not.
pub trait Mode: Tape<f32, Cpu> + Merge<NoneTape> + Merge<Self> + 'static {
    /// Whether this mode records a tape (ops then save what their backward needs).
    const RECORDS: bool;
    /// A constant as a graph leaf (left as is when not recording).
    fn leaf(t: Mat) -> Mat<Self>;
    /// The same for a scalar.
    fn leaf0(t: Scalar) -> Scalar<Self>;
    /// The same for a vector.
    fn leaf1(t: Row) -> Row<Self>;
    /// Run `op`'s forward pass in this mode.
    fn forward(op: &dyn Op, cx: &mut Cx, inputs: Vec<Value<Self>>) -> Value<Self>;
}

impl Mode for NoneTape {
    const RECORDS: bool = false;
    fn leaf(t: Mat) -> Mat {
        t
    }
    fn leaf0(t: Scalar) -> Scalar {
        t
    }
    fn leaf1(t: Row) -> Row {
        t
    }
    fn forward(op: &dyn Op, cx: &mut Cx, inputs: Vec<Value<Self>>) -> Value<Self> {
        Forward::<NoneTape>::forward(op, cx, inputs)
    }
}

impl Mode for Taped {
    const RECORDS: bool = true;
    fn leaf(t: Mat) -> Mat<Self> {
        t.leaky_traced()
    }
    fn leaf0(t: Scalar) -> Scalar<Self> {
        t.leaky_traced()
    }
    fn leaf1(t: Row) -> Row<Self> {
        t.leaky_traced()
    }
    fn forward(op: &dyn Op, cx: &mut Cx, inputs: Vec<Value<Self>>) -> Value<Self> {
        Forward::<Taped>::forward(op, cx, inputs)
    }
}

/// A batch of rows on the host: `data.len() / cols` samples of `cols` values.
pub struct Host {
    /// Row-major values.
    pub data: Vec<f32>,
    /// Values per sample.
    pub cols: usize,
    /// Whether an op upstream has parameters, so the backward pass needs ∂L/∂this.
    pub wants_grad: bool,
}

/// A value flowing between ops.
pub enum Value<T> {
    /// Computed on the host, off the tape.
    Host(Host),
    /// A dfdx tensor (`batch × features`), on the tape of a training pass.
    Graph(Mat<T>),
}

impl<T: Mode> Value<T> {
    /// A second handle on the same value for another consumer. The tape stays with `self`;
    /// dfdx orders backward operations by creation, so which branch holds it does not matter.
    pub fn share(&self) -> Self {
        match self {
            Value::Host(h) => {
                Value::Host(Host { data: h.data.clone(), cols: h.cols, wants_grad: h.wants_grad })
            }
            Value::Graph(t) => Value::Graph(t.retaped::<T>()),
        }
    }

    /// The value as a tensor. A host value enters as a constant: ops that mix host and graph
    /// inputs sit after the first linear op in every preset, where no host value wants a
    /// gradient.
    pub fn into_graph(self, dev: &Cpu, batch: usize) -> Mat<T> {
        match self {
            Value::Host(h) => dev.tensor_from_vec(h.data, (batch, h.cols)).retaped::<T>(),
            Value::Graph(t) => t,
        }
    }

    /// The values as a plain row-major vector and the width of a row.
    pub fn to_host(&self) -> (Vec<f32>, usize) {
        match self {
            Value::Host(h) => (h.data.clone(), h.cols),
            Value::Graph(t) => (host(t), t.shape().1),
        }
    }
}

/// Which statistics and behaviour a forward pass uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Training behaviour: batch statistics, dropout masks drawn from `step`.
    Train {
        /// The optimizer step the pass belongs to.
        step: u64,
    },
    /// Evaluation behaviour: running statistics, no dropout.
    Eval,
}

/// The context of one forward pass: the device, the pass, and what ops record for the backward
/// pass and for the caller.
pub struct Cx<'a> {
    /// The device.
    pub dev: &'a Cpu,
    /// Training or evaluation behaviour.
    pub pass: Pass,
    /// Samples in the batch.
    pub batch: usize,
    /// The path of the op running now (`fc1`, `fc2.norm`).
    pub name: &'a str,
    /// Whether the network runs on the host throughout (tables and linear ops emit host values).
    pub host: bool,
    /// (positive activations, activations) over the graph-side activations, when counted.
    pub positive: Option<(u64, u64)>,
    /// Batch statistics of each batch norm, in graph order (training passes).
    pub batch_stats: Vec<BatchStats>,
    /// Each linear op's matmul input by layer name, when collected.
    pub layer_inputs: Option<Vec<(String, Vec<f32>)>>,
    /// What the running op saved for its backward pass.
    pub saved: Option<Box<dyn Any>>,
}

impl Cx<'_> {
    /// Keep `what` for this op's backward pass (only when a tape is recorded).
    pub fn save<T: Mode>(&mut self, what: impl Any) {
        if T::RECORDS {
            self.saved = Some(Box::new(what));
        }
    }
}

/// What an op's backward pass gets: dfdx's gradients, what its forward pass saved, and ∂L/∂ of
/// its output when that output was a host value.
pub struct Back<'a> {
    /// Gradients of every graph leaf.
    pub grads: &'a Gradients<f32, Cpu>,
    /// What the forward pass saved ([`Cx::save`]).
    pub saved: Option<Box<dyn Any>>,
    /// ∂L/∂output for a host output (None for a graph output, or when nothing needs it).
    pub grad_out: Option<Vec<f32>>,
    /// The device.
    pub dev: &'a Cpu,
}

impl Back<'_> {
    /// The saved record, of the type the forward pass saved.
    pub fn take<S: 'static>(&mut self) -> Option<S> {
        self.saved.take().and_then(|s| s.downcast::<S>().ok()).map(|s| *s)
    }

    /// The backward pass of an elementwise op whose forward pass saved its derivative per value
    /// (a `Vec<f32>`): ∂L/∂input = ∂L/∂output · derivative, for its one input.
    pub fn times_saved_derivative(mut self) -> Vec<Option<Vec<f32>>> {
        let (Some(derivative), Some(mut grad)) = (self.take::<Vec<f32>>(), self.grad_out.take()) else {
            return vec![None];
        };
        grad.iter_mut().zip(&derivative).for_each(|(g, d)| *g *= d);
        vec![Some(grad)]
    }
}

/// One op's forward pass in tape mode `T`. Ops implement it once, generically over `T`.
pub trait Forward<T: Mode> {
    /// Compute the output from `inputs` (in the order the node names them).
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T>;
}

/// A layer of a model graph. Parameter paths are the node's name, a dot, and the suffix the op
/// gives (`fc1` + `weight`).
pub trait Op: Forward<NoneTape> + Forward<Taped> + Send {
    /// The op's tag (`linear`, `norm`, `dropout`, …), for messages.
    fn tag(&self) -> &'static str;
    /// Its parameters, path suffixes relative to the node (by default its quantized weight
    /// tensor's, if it has one).
    fn params(&self) -> Vec<Param<'_>> {
        self.layer().map_or(Vec::new(), Layer::params)
    }
    /// Its parameters with their gradients.
    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        self.layer_mut().map_or(Vec::new(), Layer::params_mut)
    }
    /// Write parameter gradients from a training pass, and return ∂L/∂ of each host input
    /// that wants one (None elsewhere).
    fn backward(&mut self, _back: Back) -> Vec<Option<Vec<f32>>> {
        Vec::new()
    }
    /// The quantized weight tensor, for ops that have one.
    fn layer(&self) -> Option<&Layer> {
        None
    }
    /// The same, mutable.
    fn layer_mut(&mut self) -> Option<&mut Layer> {
        None
    }
    /// Running statistics, for batch norms.
    fn running_stats(&self) -> Option<&RunningStats> {
        None
    }
    /// The same, mutable.
    fn running_stats_mut(&mut self) -> Option<&mut RunningStats> {
        None
    }
    /// Add this op to a deployable graph ([`crate::nn::deploy`]); ops the runtime cannot run
    /// keep the default, an error naming them.
    fn deploy<'a>(&'a self, _node: &Node, _out: &mut Deployment<'a>) -> Result<(), String> {
        Err(format!("the {} op has no deployment", self.tag()))
    }
}

/// The values of a contiguous tensor (every op output and gradient buffer here is one) as a
/// plain vector. `copy_into` is a memcpy, where `as_vec` walks a strided index per element.
pub fn host<T>(t: &Tensor<(usize, usize), f32, Cpu, T>) -> Vec<f32> {
    let mut out = vec![0.0; t.shape().0 * t.shape().1];
    t.copy_into(&mut out);
    out
}
