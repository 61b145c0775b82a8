//! Learned absolute positions (GPT-2, nanoGPT): row `p` of a `context × width` table is added to
//! the embedding of the token at position `p` of every sample.

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::op::{Back, Cx, Forward, Host, Mat, Mode, Op, Value};
use crate::nn::params::{Param, ParamKind, ParamMut};
use qatlab_deploy::graph;

/// What the backward pass needs.
enum Saved {
    /// The table leaf (graph input).
    Graph(Mat),
    /// Tokens per sample (host input).
    Host { tokens: usize },
}

/// A learned-positions op.
pub struct Positions {
    /// The table, `context × width`, row-major.
    pub weight: Vec<f32>,
    /// ∂L/∂weight.
    pub grad: Vec<f32>,
    /// Model width.
    pub width: usize,
}

impl<T: Mode> Forward<T> for Positions {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let x = match inputs.into_iter().next().expect("positions read one value") {
            Value::Host(mut h) => {
                let tokens = h.data.len() / self.width / cx.batch.max(1);
                for (i, row) in h.data.chunks_exact_mut(self.width).enumerate() {
                    let p = i % tokens;
                    row.iter_mut().zip(&self.weight[p * self.width..]).for_each(|(v, p)| *v += p);
                }
                cx.save::<T>(Saved::Host { tokens });
                return Value::Host(Host { wants_grad: true, ..h });
            }
            Value::Graph(x) => x,
        };
        let shape = *x.shape();
        let tokens = shape.0 / cx.batch.max(1);
        let table: Mat =
            cx.dev.tensor_from_vec(self.weight.clone(), (self.weight.len() / self.width, self.width));
        cx.save::<T>(Saved::Graph(table.clone()));
        let index: Vec<usize> = (0..shape.0).map(|i| i % tokens).collect();
        let rows = T::leaf(table).gather(cx.dev.tensor_from_vec(index, (shape.0,)));
        Value::Graph(x + rows)
    }
}

impl Op for Positions {
    fn tag(&self) -> &'static str {
        "positions"
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        out.text_only("learned positions")?;
        let table = out.tensor(node.name, self.weight.len() / self.width, self.width, &self.weight);
        let input = out.value(node, 0);
        out.push_op(node, graph::Op::Positions { name: node.name.to_string(), input, table })
    }

    fn params(&self) -> Vec<Param<'_>> {
        let shape = vec![self.weight.len() / self.width, self.width];
        vec![Param { path: "weight".into(), kind: ParamKind::Weight, values: &self.weight, shape }]
    }

    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        vec![ParamMut::of("weight", ParamKind::Weight, &mut self.weight, &mut self.grad)]
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        match back.take::<Saved>() {
            Some(Saved::Graph(table)) => {
                self.grad = back.grads.get(&table).as_vec();
                vec![None]
            }
            Some(Saved::Host { tokens }) => {
                let grad = back.grad_out.take().unwrap_or_default();
                self.grad = vec![0.0; self.weight.len()];
                for (i, g) in grad.chunks_exact(self.width).enumerate() {
                    let p = i % tokens;
                    self.grad[p * self.width..(p + 1) * self.width]
                        .iter_mut()
                        .zip(g)
                        .for_each(|(s, g)| *s += g);
                }
                vec![Some(grad)]
            }
            None => vec![None],
        }
    }
}
