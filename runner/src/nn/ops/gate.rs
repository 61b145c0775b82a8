//! The product of a gated MLP: `a ⊙ b` of two values of the same shape (the activated gate
//! projection and the up projection); ∂L/∂a = G ⊙ b, ∂L/∂b = G ⊙ a.

use crate::nn::deploy::{Deployment, Node};
use crate::nn::op::{Back, Cx, Forward, Host, Mode, Op, Value};
use qatlab_deploy::graph;

/// The elementwise product op; its inputs are the gate, then the value it gates.
pub struct Gate;

impl<T: Mode> Forward<T> for Gate {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let mut inputs = inputs.into_iter();
        let (a, b) = (inputs.next().expect("a gate"), inputs.next().expect("a gated value"));
        match (a, b) {
            (Value::Host(a), Value::Host(b)) => {
                let data = a.data.iter().zip(&b.data).map(|(a, b)| a * b).collect();
                let wants_grad = a.wants_grad || b.wants_grad;
                let cols = a.cols;
                cx.save::<T>((a.data, b.data));
                Value::Host(Host { data, cols, wants_grad })
            }
            (a, b) => Value::Graph(a.into_graph(cx.dev, cx.batch) * b.into_graph(cx.dev, cx.batch)),
        }
    }
}

impl Op for Gate {
    fn tag(&self) -> &'static str {
        "gate"
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let (input, other) = (out.value(node, 0), out.value(node, 1));
        out.push_op(node, graph::Op::Mul { name: node.name.to_string(), input, other })
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let (Some((a, b)), Some(g)) = (back.take::<(Vec<f32>, Vec<f32>)>(), back.grad_out.take()) else {
            return vec![None, None];
        };
        let grad_a = g.iter().zip(&b).map(|(g, b)| g * b).collect();
        let grad_b = g.iter().zip(&a).map(|(g, a)| g * a).collect();
        vec![Some(grad_a), Some(grad_b)]
    }
}
