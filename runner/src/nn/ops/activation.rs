//! The nonlinearity after a hidden layer: ReLU or any activation plugin.
//!
//! On the tape, ReLU is dfdx's own kernel; a plugin activation enters as `z·f′(z) + (f(z) −
//! z·f′(z))` with both factors constants the plugin computed, so the value is f(z) and the
//! gradient f′(z) (the plugin never sees the tape). On host values (after a convolution) the
//! plugin runs directly and f′ is kept for the backward pass.

use dfdx::prelude::*;
use qatlab_core::Activation;
use qatlab_deploy::graph;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::op::{host, Back, Cx, Forward, Host, Mode, Op, Value};

/// An activation op.
pub struct ActivationOp {
    /// The activation plugin.
    pub activation: Box<dyn Activation>,
    /// Its registered name when it has no parameters (what deployment can name), else empty.
    pub name: String,
}

impl ActivationOp {
    /// The activation `spec` names, built from `registry`.
    pub fn build(
        registry: &qatlab_core::Registry,
        spec: &qatlab_core::config::PluginSpec,
    ) -> qatlab_core::Result<Self> {
        let activation = registry.activations.build(&spec.name, &spec.params)?;
        let name = if spec.params.is_empty() { spec.name.clone() } else { String::new() };
        Ok(Self { activation, name })
    }
}

impl<T: Mode> Forward<T> for ActivationOp {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        match inputs.into_iter().next().expect("an activation reads one value") {
            Value::Host(h) => {
                let (mut y, mut slope) = (vec![0.0; h.data.len()], vec![0.0; h.data.len()]);
                self.activation.apply_rows(&h.data, h.cols, &mut y, &mut slope);
                if h.wants_grad {
                    cx.save::<T>(slope);
                }
                Value::Host(Host { data: y, ..h })
            }
            Value::Graph(z) => {
                let out = if self.activation.is_relu() {
                    z.relu()
                } else {
                    let shape = *z.shape();
                    let zv = host(&z);
                    let (mut y, mut dy) = (vec![0.0; zv.len()], vec![0.0; zv.len()]);
                    self.activation.apply_rows(&zv, shape.1, &mut y, &mut dy);
                    let offset: Vec<f32> = y.iter().zip(&dy).zip(&zv).map(|((y, d), z)| y - z * d).collect();
                    z * cx.dev.tensor_from_vec(dy, shape) + cx.dev.tensor_from_vec(offset, shape)
                };
                if let Some(count) = &mut cx.positive {
                    let values = host(&out);
                    count.0 += values.iter().filter(|v| **v > 0.0).count() as u64;
                    count.1 += values.len() as u64;
                }
                Value::Graph(out)
            }
        }
    }
}

impl Op for ActivationOp {
    fn tag(&self) -> &'static str {
        "activation"
    }

    fn backward(&mut self, back: Back) -> Vec<Option<Vec<f32>>> {
        back.times_saved_derivative()
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        if self.activation.is_relu() {
            return out.op(node, |name, input| graph::Op::Relu { name, input });
        }
        let function = match self.name.as_str() {
            "gelu" if out.text => graph::Function::Gelu,
            "silu" if out.text => graph::Function::Silu,
            "relu2" if out.text => graph::Function::Relu2,
            _ => {
                return Err("the kernels support relu only (and gelu, silu, relu2 in language models)".into())
            }
        };
        let input = out.value(node, 0);
        out.push_op(node, graph::Op::Activation { name: node.name.to_string(), input, function })
    }
}
