//! The output head tied to the token embedding: logits = x·Eᵀ, E the embedding table it reads
//! as its second input (the same leaf the lookup reads, so the table is stored and trained once).

use dfdx::prelude::*;

use crate::nn::op::{Cx, Forward, Mode, Op, Value};

/// The tied-head op; its inputs are the features, then the table.
pub struct TiedHead;

impl<T: Mode> Forward<T> for TiedHead {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let mut inputs = inputs.into_iter().map(|v| v.into_graph(cx.dev, cx.batch));
        let (x, table) = (inputs.next().expect("features"), inputs.next().expect("a table"));
        Value::Graph(x.matmul(table.permute::<_, Axes2<1, 0>>()))
    }
}

impl Op for TiedHead {
    fn tag(&self) -> &'static str {
        "tied-head"
    }
}
