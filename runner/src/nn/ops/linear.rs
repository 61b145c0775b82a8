//! A quantized fully connected layer without bias: y = x·Ŵᵀ, Ŵ the quantizer's output.
//!
//! Its weights enter the tape as a leaf of fake-quantized values; the backward pass yields
//! ∂L/∂Ŵ, which the trainer hands to the quantizer's straight-through backward. When its input
//! is a host value (the first layer reads the constant network input), the product is computed
//! off the tape and becomes a leaf itself: ∂L/∂Ŵ = Gᵀ·x is then one matmul, and ∂L/∂x = G·Ŵ
//! another, computed only when an op upstream has parameters. In a network on the host
//! ([`Cx::host`]) the output stays a host value and both products run on the host.

use dfdx::prelude::*;
use qatlab_deploy::kernel::transpose;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::host::{product, View};
use crate::nn::model::Layer;
use crate::nn::op::{host, Back, Cx, Forward, Host, Mat, Mode, Op, Value};

/// A quantized linear op.
pub struct Linear {
    /// Its weights and quantizer.
    pub layer: Layer,
}

/// What the backward pass needs.
enum Saved {
    /// Host input `x` and the product `z` that became a leaf.
    Host { x: Mat, z: Mat, wants_grad: bool },
    /// The weight leaf (transposed, `cols × rows`).
    Graph { w: Mat },
    /// Host input and output (a network on the host): the input, for ∂L/∂Ŵ = Gᵀ·x.
    OnHost { x: Vec<f32>, wants_grad: bool },
}

impl Linear {
    /// The fake-quantized weights transposed to `inputs × outputs`, so the matmul reads its
    /// right operand contiguously.
    fn weight_t(&self, dev: &Cpu) -> Mat {
        let s = self.layer.shape;
        dev.tensor_from_vec(transpose(&self.layer.quantized.values, s.rows, s.cols), (s.cols, s.rows))
    }

    /// z plus the output bias, when there is one (post-training bias correction).
    fn add_bias<T: Mode>(&self, dev: &Cpu, z: Mat<T>) -> Mat<T> {
        if self.layer.bias.is_empty() {
            return z;
        }
        let shape = *z.shape();
        z + dev.tensor_from_vec(self.layer.bias.clone(), (shape.1,)).broadcast_like::<_, Axis<0>>(&shape)
    }
}

impl<T: Mode> Forward<T> for Linear {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let name = &self.layer.name;
        match inputs.into_iter().next().expect("a linear op reads one value") {
            Value::Host(h) if cx.host => {
                if let Some(collected) = &mut cx.layer_inputs {
                    collected.push((name.clone(), h.data.clone()));
                }
                let s = self.layer.shape;
                let n = h.data.len() / s.cols;
                let w = View::dense(&self.layer.quantized.values, s.rows, s.cols);
                let mut y = product(View::dense(&h.data, n, s.cols), w.t());
                if !self.layer.bias.is_empty() {
                    y.chunks_exact_mut(s.rows)
                        .for_each(|r| r.iter_mut().zip(&self.layer.bias).for_each(|(v, b)| *v += b));
                }
                cx.save::<T>(Saved::OnHost { x: h.data, wants_grad: h.wants_grad });
                Value::Host(Host { data: y, cols: s.rows, wants_grad: true })
            }
            Value::Host(h) => {
                let x = cx.dev.tensor_from_vec(h.data, (cx.batch, h.cols));
                if let Some(collected) = &mut cx.layer_inputs {
                    collected.push((name.clone(), host(&x)));
                }
                let z = self.add_bias(cx.dev, x.clone().matmul(self.weight_t(cx.dev)));
                cx.save::<T>(Saved::Host { x, z: z.clone(), wants_grad: h.wants_grad });
                Value::Graph(T::leaf(z))
            }
            Value::Graph(h) => {
                let w = self.weight_t(cx.dev);
                cx.save::<T>(Saved::Graph { w: w.clone() });
                if let Some(collected) = &mut cx.layer_inputs {
                    collected.push((name.clone(), host(&h)));
                }
                Value::Graph(self.add_bias(cx.dev, h.matmul(T::leaf(w))))
            }
        }
    }
}

impl Op for Linear {
    fn tag(&self) -> &'static str {
        "linear"
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let s = self.layer.shape;
        match back.take::<Saved>() {
            Some(Saved::Host { x, z, wants_grad }) => {
                let g = back.grads.get(&z);
                let grad_x = wants_grad.then(|| {
                    let w = back.dev.tensor_from_vec(self.layer.quantized.values.clone(), (s.rows, s.cols));
                    host(&g.clone().matmul(w))
                });
                self.layer.grad_values = host(&g.permute::<_, Axes2<1, 0>>().matmul(x));
                vec![grad_x]
            }
            Some(Saved::Graph { w }) => {
                self.layer.grad_values = transpose(&host(&back.grads.get(&w)), s.cols, s.rows);
                vec![None]
            }
            Some(Saved::OnHost { x, wants_grad }) => {
                let Some(g) = back.grad_out.take() else { return vec![None] };
                let n = x.len() / s.cols;
                let (g, x) = (View::dense(&g, n, s.rows), View::dense(&x, n, s.cols));
                let w = View::dense(&self.layer.quantized.values, s.rows, s.cols);
                self.layer.grad_values = product(g.t(), x);
                vec![wants_grad.then(|| product(g, w))]
            }
            None => vec![None],
        }
    }

    fn layer(&self) -> Option<&Layer> {
        Some(&self.layer)
    }

    fn layer_mut(&mut self) -> Option<&mut Layer> {
        Some(&mut self.layer)
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        out.layer(node, &self.layer, None)
    }
}
