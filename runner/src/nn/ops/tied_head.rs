//! The output head tied to the token embedding: logits = x·Eᵀ, E the embedding table it reads
//! as its second input (the same leaf the lookup reads, so the table is stored and trained once).
//! On host values ∂L/∂x = G·E and ∂L/∂E = Gᵀ·x.

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::host::{product, View};
use crate::nn::op::{Back, Cx, Forward, Host, Mode, Op, Value};
use qatlab_deploy::graph;

/// The tied-head op; its inputs are the features, then the table.
pub struct TiedHead;

/// What the host backward pass needs: the features and the table (`vocab × width`).
struct Saved {
    x: Vec<f32>,
    table: Vec<f32>,
    width: usize,
}

impl<T: Mode> Forward<T> for TiedHead {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let mut inputs = inputs.into_iter();
        let (x, table) = (inputs.next().expect("features"), inputs.next().expect("a table"));
        match (x, table) {
            (Value::Host(x), Value::Host(table)) => {
                let width = x.cols;
                let (n, vocab) = (x.data.len() / width, table.data.len() / width);
                let (xv, tv) = (View::dense(&x.data, n, width), View::dense(&table.data, vocab, width));
                let logits = product(xv, tv.t());
                cx.save::<T>(Saved { x: x.data, table: table.data, width });
                Value::Host(Host { data: logits, cols: vocab, wants_grad: true })
            }
            (x, table) => {
                let (x, table) = (x.into_graph(cx.dev, cx.batch), table.into_graph(cx.dev, cx.batch));
                Value::Graph(x.matmul(table.permute::<_, Axes2<1, 0>>()))
            }
        }
    }
}

impl Op for TiedHead {
    fn tag(&self) -> &'static str {
        "tied-head"
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let (input, weight) = (out.value(node, 0), out.value(node, 1));
        out.push_op(node, graph::Op::Matmul { name: node.name.to_string(), input, weight })
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let (Some(Saved { x, table, width }), Some(g)) = (back.take::<Saved>(), back.grad_out.take()) else {
            return vec![None, None];
        };
        let (n, vocab) = (x.len() / width, table.len() / width);
        let g = View::dense(&g, n, vocab);
        let grad_x = product(g, View::dense(&table, vocab, width));
        let grad_table = product(g.t(), View::dense(&x, n, width));
        vec![Some(grad_x), Some(grad_table)]
    }
}
