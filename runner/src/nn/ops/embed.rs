//! Token lookup: each token id of the input (a host value of `batch × tokens` ids) selects its
//! row of the embedding table, giving `batch·tokens × width`. The gradients of repeated tokens
//! add into their row: dfdx's `gather` does so on the tape, the host backward by scattering.

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::op::{Back, Cx, Forward, Host, Mode, Op, Value};
use qatlab_deploy::graph;

/// The token-lookup op; its inputs are the table, then the token ids.
pub struct Embed;

/// What the host backward pass needs: the ids and the table's shape.
struct Saved {
    ids: Vec<usize>,
    rows: usize,
    cols: usize,
}

impl<T: Mode> Forward<T> for Embed {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let mut inputs = inputs.into_iter();
        let table = inputs.next().expect("a table");
        let (ids, _) = inputs.next().expect("token ids").to_host();
        let ids: Vec<usize> = ids.iter().map(|&t| t as usize).collect();
        match table {
            Value::Host(table) => {
                let cols = table.cols;
                let data = ids.iter().flat_map(|&t| &table.data[t * cols..(t + 1) * cols]).copied().collect();
                cx.save::<T>(Saved { ids, rows: table.data.len() / cols, cols });
                Value::Host(Host { data, cols, wants_grad: table.wants_grad })
            }
            Value::Graph(table) => {
                let n = ids.len();
                Value::Graph(table.gather(cx.dev.tensor_from_vec(ids, (n,))))
            }
        }
    }
}

impl Op for Embed {
    fn tag(&self) -> &'static str {
        "embed"
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let (table, input) = (out.value(node, 0), out.value(node, 1));
        out.push_op(node, graph::Op::Embed { name: node.name.to_string(), input, table })
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let (Some(Saved { ids, rows, cols }), Some(grad)) = (back.take::<Saved>(), back.grad_out.take())
        else {
            return vec![None, None];
        };
        let mut table = vec![0.0f32; rows * cols];
        for (&t, g) in ids.iter().zip(grad.chunks_exact(cols)) {
            table[t * cols..(t + 1) * cols].iter_mut().zip(g).for_each(|(s, g)| *s += g);
        }
        vec![Some(table), None]
    }
}
