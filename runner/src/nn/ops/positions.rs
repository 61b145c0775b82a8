//! Learned absolute positions (GPT-2, nanoGPT): row `p` of a `context × width` table is added to
//! the embedding of the token at position `p` of every sample.

use dfdx::prelude::*;

use crate::nn::op::{Back, Cx, Forward, Mat, Mode, Op, Value};
use crate::nn::params::{Param, ParamKind, ParamMut};

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
        let x = inputs.into_iter().next().expect("positions read one value").into_graph(cx.dev, cx.batch);
        let shape = *x.shape();
        let tokens = shape.0 / cx.batch.max(1);
        let table: Mat =
            cx.dev.tensor_from_vec(self.weight.clone(), (self.weight.len() / self.width, self.width));
        cx.save::<T>(table.clone());
        let index: Vec<usize> = (0..shape.0).map(|i| i % tokens).collect();
        let rows = T::leaf(table).gather(cx.dev.tensor_from_vec(index, (shape.0,)));
        Value::Graph(x + rows)
    }
}

impl Op for Positions {
    fn tag(&self) -> &'static str {
        "positions"
    }

    fn params(&self) -> Vec<Param<'_>> {
        let shape = vec![self.weight.len() / self.width, self.width];
        vec![Param { path: "weight".into(), kind: ParamKind::Weight, values: &self.weight, shape }]
    }

    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        vec![ParamMut::of("weight", ParamKind::Weight, &mut self.weight, &mut self.grad)]
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        if let Some(table) = back.take::<Mat>() {
            self.grad = back.grads.get(&table).as_vec();
        }
        vec![None]
    }
}
