//! A learned table as a value: a token embedding (`vocab × width`), read by the token lookup
//! ([`super::embed`]) and, with tied embeddings, by the output head ([`super::tied_head`]).
//! Both readers receive the same graph leaf, so dfdx adds their gradients; the table is stored
//! once. On the host ([`Cx::host`]) it is a host value whose gradient the runner sums over its
//! readers the same way.

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::model::Layer;
use crate::nn::op::{Back, Cx, Forward, Host, Mat, Mode, Op, Value};
use qatlab_core::quantizer::Quantized;
use qatlab_deploy::format::{Int8Rows, TensorData};
use qatlab_deploy::runtime::IntGrid;

/// A quantized table as int8 codes with a scale per row, when its levels are an integer grid
/// within int8 (`levels[k] · m = offset + step·k`): code = offset + step·k, row scale = its
/// scale / m, so code · row scale is the trained value (to the last bit of the f32 product or
/// one rounding off). None for a float table, or levels int8 cannot hold that way (NF4's, or
/// symmetric 8-bit's 256 half-integer levels), which deploy as their f32 values.
fn int8_rows(q: &Quantized, rows: usize) -> Option<Int8Rows> {
    if q.codes.is_empty() {
        return None;
    }
    let grid = IntGrid::of(&q.levels)?;
    let code = |k: usize| grid.offset + grid.step * k as i32;
    if (0..q.levels.len()).any(|k| i8::try_from(code(k)).is_err()) {
        return None;
    }
    let scales = (0..rows).map(|r| q.scale_of_row(r) / grid.multiplier as f32).collect();
    Some(Int8Rows { scales, codes: q.codes.iter().map(|&k| code(k as usize) as i8).collect() })
}

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
        match int8_rows(&self.layer.quantized, s.rows) {
            Some(int8) => out.stored(TensorData::int8(node.name, s.rows, int8)),
            None => out.tensor(node.name, s.rows, s.cols, &self.layer.quantized.values),
        };
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
