//! Per-sample absmax fake quantization of a layer's input to `bits` (BitNet's activation
//! quantization): `x + (q(x) − x)` with the difference a constant, PyTorch's
//! `x + (q − x).detach()`, so the gradient passes straight through.

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::model::{quantize_activations, quantize_activations_in_place};
use crate::nn::op::{host, Back, Cx, Forward, Mode, Op, Value};

/// An input-quantization op.
pub struct ActQuant {
    /// Bits of the quantized values.
    pub bits: u32,
}

impl<T: Mode> Forward<T> for ActQuant {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        match inputs.into_iter().next().expect("input quantization reads one value") {
            Value::Host(mut h) => {
                quantize_activations_in_place(&mut h.data, h.cols, self.bits);
                Value::Host(h)
            }
            Value::Graph(x) => {
                let shape = *x.shape();
                let values = host(&x);
                let mut delta = vec![0.0; values.len()];
                quantize_activations(&values, shape.1, self.bits, &mut delta);
                delta.iter_mut().zip(&values).for_each(|(q, v)| *q -= v);
                Value::Graph(x + cx.dev.tensor_from_vec(delta, shape))
            }
        }
    }
}

impl Op for ActQuant {
    fn tag(&self) -> &'static str {
        "input-quantization"
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        vec![back.grad_out.take()]
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        out.annotate_bits(node, self.bits)
    }
}
