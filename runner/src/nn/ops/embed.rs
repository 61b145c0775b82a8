//! Token lookup: each token id of the input (a host value of `batch × tokens` ids) selects its
//! row of the embedding table (a graph value), giving `batch·tokens × width`. dfdx's `gather`
//! adds the gradients of repeated tokens into their row.

use dfdx::prelude::*;

use crate::nn::op::{Cx, Forward, Mode, Op, Value};

/// The token-lookup op; its inputs are the table, then the token ids.
pub struct Embed;

impl<T: Mode> Forward<T> for Embed {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let mut inputs = inputs.into_iter();
        let table = inputs.next().expect("a table").into_graph(cx.dev, cx.batch);
        let (ids, _) = inputs.next().expect("token ids").to_host();
        let ids: Vec<usize> = ids.iter().map(|&t| t as usize).collect();
        let n = ids.len();
        Value::Graph(table.gather(cx.dev.tensor_from_vec(ids, (n,))))
    }
}

impl Op for Embed {
    fn tag(&self) -> &'static str {
        "embed"
    }
}
