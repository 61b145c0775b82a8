//! A residual connection: `input + a·skip`, with `a` a learned scalar (initialised to 1) in the
//! scaled variants and 1 otherwise.

use dfdx::prelude::*;
use qatlab_deploy::graph;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::op::{Back, Cx, Forward, Host, Mode, Op, Scalar, Value};
use crate::nn::params::{Param, ParamKind, ParamMut};

/// What the backward pass needs (with a learned scale).
enum Saved {
    /// The scale's leaf (graph inputs).
    Graph(Scalar),
    /// The skip values (host inputs).
    Host(Vec<f32>),
}

/// A residual add; its inputs are the main branch, then the skip.
pub struct Add {
    /// The learned skip scale `[a]` (empty: a fixed 1).
    pub scale: Vec<f32>,
    /// ∂L/∂a.
    pub grad_scale: Vec<f32>,
}

impl Add {
    /// A residual add, with a learned scale when `learned`.
    pub fn new(learned: bool) -> Self {
        Self { scale: if learned { vec![1.0] } else { Vec::new() }, grad_scale: Vec::new() }
    }
}

impl<T: Mode> Forward<T> for Add {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let mut inputs = inputs.into_iter();
        let (main, skip) = (inputs.next().expect("add reads a value"), inputs.next().expect("and a skip"));
        let (main, skip) = match (main, skip) {
            (Value::Host(mut main), Value::Host(skip)) => {
                let a = self.scale.first().copied().unwrap_or(1.0);
                main.data.iter_mut().zip(&skip.data).for_each(|(m, s)| *m += a * s);
                if !self.scale.is_empty() {
                    cx.save::<T>(Saved::Host(skip.data));
                }
                return Value::Host(Host { wants_grad: main.wants_grad || skip.wants_grad, ..main });
            }
            (main, skip) => (main.into_graph(cx.dev, cx.batch), skip.into_graph(cx.dev, cx.batch)),
        };
        let skip = match self.scale.first() {
            Some(&a) => {
                let shape = *main.shape();
                let a: Scalar = cx.dev.tensor(a);
                cx.save::<T>(Saved::Graph(a.clone()));
                skip * T::leaf0(a).broadcast_like::<_, Axes2<0, 1>>(&shape)
            }
            None => skip,
        };
        Value::Graph(skip + main)
    }
}

impl Op for Add {
    fn tag(&self) -> &'static str {
        "add"
    }

    fn params(&self) -> Vec<Param<'_>> {
        if self.scale.is_empty() {
            return Vec::new();
        }
        vec![Param::vector("scale", ParamKind::ResidualScale, &self.scale)]
    }

    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        if self.scale.is_empty() {
            return Vec::new();
        }
        vec![ParamMut::of("scale", ParamKind::ResidualScale, &mut self.scale, &mut self.grad_scale)]
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let saved = back.take::<Saved>();
        if let Some(Saved::Graph(a)) = &saved {
            self.grad_scale = back.grads.get(a).as_vec();
        }
        let Some(grad) = back.grad_out.take() else { return vec![None, None] };
        // host: ∂L/∂main = G, ∂L/∂skip = a·G, ∂L/∂a = Σ G·skip
        let a = self.scale.first().copied().unwrap_or(1.0);
        if let Some(Saved::Host(skip)) = &saved {
            self.grad_scale = vec![grad.iter().zip(skip).map(|(g, s)| g * s).sum()];
        }
        let grad_skip = grad.iter().map(|g| a * g).collect();
        vec![Some(grad), Some(grad_skip)]
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let skip = out.value(node, 1);
        let scale = self.scale.first().copied().unwrap_or(1.0);
        out.op(node, |name, input| graph::Op::Add { name, input, skip, scale })
    }
}
