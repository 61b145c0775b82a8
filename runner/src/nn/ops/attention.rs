//! Causal multi-head self-attention, with its query/key/value projection: q, k, v = x·Ŵᵀ for the
//! three `width × width` blocks of one quantized `3·width × width` weight (`qkv.weight`, as
//! GPT-2's `c_attn`, quantized as one tensor), then softmax(q·kᵀ/√d + M)·v per head, M = −∞
//! above the diagonal. The output projection is a separate linear op.
//!
//! Shapes: the input is `batch·tokens × width`; heads are folded into the batch for the batched
//! matmuls (`batch·heads × tokens × d`). The mask is *added* (0·∞ would be NaN), and softmax
//! keeps its max off the tape, so no tied maximum shares a gradient.

use dfdx::prelude::*;
use qatlab_deploy::kernel::transpose;

use crate::nn::model::Layer;
use crate::nn::op::{host, Back, Cx, Forward, Mat, Mode, Op, Value};
use crate::nn::params::{Param, ParamMut};

/// An attention op.
pub struct Attention {
    /// The query/key/value weights, `3·width × width`, and their quantizer.
    pub layer: Layer,
    /// Heads (the width is a multiple).
    pub heads: usize,
}

impl<T: Mode> Forward<T> for Attention {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let x = inputs.into_iter().next().expect("attention reads one value").into_graph(cx.dev, cx.batch);
        let (n, width) = *x.shape();
        let (batch, heads) = (cx.batch.max(1), self.heads);
        let (tokens, d) = (n / batch, width / heads);
        // the three blocks of Ŵ, each transposed to `in × out` for the matmul
        let blocks: Vec<Mat> = self
            .layer
            .quantized
            .values
            .chunks_exact(width * width)
            .map(|w| cx.dev.tensor_from_vec(transpose(w, width, width), (width, width)))
            .collect();
        cx.save::<T>(blocks.clone());
        let project = |x: Mat<T>, w: Mat| {
            x.matmul(T::leaf(w))
                .reshape_like(&(batch, tokens, heads, d))
                .permute::<_, Axes4<0, 2, 1, 3>>()
                .reshape_like(&(batch * heads, tokens, d))
        };
        let [wq, wk, wv]: [Mat; 3] = blocks.try_into().expect("three blocks");
        // the last projection takes `x` itself, which carries the tape of everything before
        let (q, k) = (project(x.retaped::<T>(), wq), project(x.retaped::<T>(), wk));
        let v = project(x, wv);
        let scores = q.matmul(k.permute::<_, Axes3<0, 2, 1>>()) * (1.0 / (d as f32).sqrt());
        let mask = cx.dev.upper_tri_like(&scores, f32::NEG_INFINITY, 1);
        let attention = (scores + mask).softmax::<Axis<2>>();
        let y = attention
            .matmul(v)
            .reshape_like(&(batch, heads, tokens, d))
            .permute::<_, Axes4<0, 2, 1, 3>>()
            .reshape_like(&(n, width));
        Value::Graph(y)
    }
}

impl Op for Attention {
    fn tag(&self) -> &'static str {
        "attention"
    }

    fn params(&self) -> Vec<Param<'_>> {
        let mut params = self.layer.params();
        params.iter_mut().for_each(|p| p.path = format!("qkv.{}", p.path));
        params
    }

    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut params = self.layer.params_mut();
        params.iter_mut().for_each(|p| p.path = format!("qkv.{}", p.path));
        params
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        if let Some(blocks) = back.take::<Vec<Mat>>() {
            let width = self.layer.shape.cols;
            self.layer.grad_values =
                blocks.iter().flat_map(|w| transpose(&host(&back.grads.get(w)), width, width)).collect();
        }
        vec![None]
    }

    fn layer(&self) -> Option<&Layer> {
        Some(&self.layer)
    }

    fn layer_mut(&mut self) -> Option<&mut Layer> {
        Some(&mut self.layer)
    }
}
