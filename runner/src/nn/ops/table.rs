//! A learned table as a value: a token embedding (`vocab × width`), read by the token lookup
//! ([`super::embed`]) and, with tied embeddings, by the output head ([`super::tied_head`]).
//! Both readers receive the same graph leaf, so dfdx adds their gradients; the table is stored
//! once. On the host ([`Cx::host`]) it is a host value whose gradient the runner sums over its
//! readers the same way.

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::model::Layer;
use crate::nn::op::{Back, Cx, Forward, Host, Mat, Mode, Op, Value};

/// A table op; its values are its layer's (quantized, by default float) weights.
pub struct Table {
    /// The table (`rows × cols`) and its quantizer.
    pub layer: Layer,
}

impl<T: Mode> Forward<T> for Table {
    fn forward(&self, cx: &mut Cx, _inputs: Vec<Value<T>>) -> Value<T> {
        let s = self.layer.shape;
        if cx.host {
            let data = self.layer.quantized.values.clone();
            return Value::Host(Host { data, cols: s.cols, wants_grad: true });
        }
        let table: Mat = cx.dev.tensor_from_vec(self.layer.quantized.values.clone(), (s.rows, s.cols));
        cx.save::<T>(table.clone());
        Value::Graph(T::leaf(table))
    }
}

impl Op for Table {
    fn tag(&self) -> &'static str {
        "table"
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        out.text_only("an embedding table")?;
        let s = self.layer.shape;
        out.tensor(node.name, s.rows, s.cols, &self.layer.quantized.values);
        Ok(())
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        if let Some(table) = back.take::<Mat>() {
            self.layer.grad_values = back.grads.get(&table).as_vec();
        } else {
            let len = self.layer.quantized.values.len();
            self.layer.grad_values = back.grad_out.take().unwrap_or_else(|| vec![0.0; len]);
        }
        Vec::new()
    }

    fn layer(&self) -> Option<&Layer> {
        Some(&self.layer)
    }

    fn layer_mut(&mut self) -> Option<&mut Layer> {
        Some(&mut self.layer)
    }
}
