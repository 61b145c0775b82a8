//! Causal multi-head self-attention, with its query/key/value projection: q, k, v = x·Ŵᵀ for the
//! three `width × width` blocks of one quantized `3·width × width` weight (`qkv.weight`, as
//! GPT-2's `c_attn`, quantized as one tensor), then softmax(q·kᵀ/√d + M)·v per head, M = −∞
//! above the diagonal. The output projection is a separate linear op.
//!
//! Shapes: the input is `batch·tokens × width`; heads are folded into the batch for the batched
//! matmuls (`batch·heads × tokens × d`). The mask is *added* (0·∞ would be NaN), and softmax
//! keeps its max off the tape, so no tied maximum shares a gradient.
//!
//! On host values ([`crate::nn::op::Cx::host`]) the same computation runs fused on the host: one
//! matmul gives `q|k|v`, each head reads its columns in place, the softmax skips the masked half,
//! and the backward pass is written out: with P the probabilities and G = ∂L/∂y per head,
//! ∂v = Pᵀ·G, ∂P = G·vᵀ, ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))/√d, ∂q = ∂S·k, ∂k = ∂Sᵀ·q.

use dfdx::prelude::*;
use qatlab_deploy::kernel::transpose;

use crate::nn::host::{causal_softmax, matmul, product, View};
use crate::nn::model::Layer;
use crate::nn::op::{host, Back, Cx, Forward, Host, Mat, Mode, Op, Value};
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
        let x = match inputs.into_iter().next().expect("attention reads one value") {
            Value::Host(h) => return self.forward_host::<T>(cx, h),
            Value::Graph(x) => x,
        };
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
        cx.save::<T>(Saved::Graph(blocks.clone()));
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

/// What the backward pass needs.
enum Saved {
    /// The three weight leaves (graph input).
    Graph(Vec<Mat>),
    /// The host pass's values.
    Host(OnHost),
}

/// What the host backward pass needs.
struct OnHost {
    /// The input, `n × width`.
    x: Vec<f32>,
    /// q|k|v, `n × 3·width`.
    qkv: Vec<f32>,
    /// The attention probabilities, `batch·heads` blocks of `tokens × tokens`.
    probs: Vec<f32>,
    /// Whether ∂L/∂x is wanted.
    wants_grad: bool,
}

/// One head's shape inside the `n × 3·width` q|k|v buffer.
#[derive(Clone, Copy)]
struct Heads {
    tokens: usize,
    width: usize,
    d: usize,
}

impl Heads {
    /// The offset of part `part` (0 q, 1 k, 2 v) of head `head` of sample `b` in q|k|v.
    fn at(&self, b: usize, head: usize, part: usize) -> usize {
        b * self.tokens * 3 * self.width + part * self.width + head * self.d
    }

    /// That part as a `tokens × d` view.
    fn view<'a>(&self, qkv: &'a [f32], b: usize, head: usize, part: usize) -> View<'a> {
        View::new(&qkv[self.at(b, head, part)..], self.tokens, self.d, 3 * self.width)
    }
}

impl Attention {
    fn forward_host<T: Mode>(&self, cx: &mut Cx, h: Host) -> Value<T> {
        let width = h.cols;
        let n = h.data.len() / width;
        let batch = cx.batch.max(1);
        let s = Heads { tokens: n / batch, width, d: width / self.heads };
        let tokens = s.tokens;
        let w = View::dense(&self.layer.quantized.values, 3 * width, width);
        let qkv = product(View::dense(&h.data, n, width), w.t());
        let scale = 1.0 / (s.d as f32).sqrt();
        let mut probs = vec![0.0; batch * self.heads * tokens * tokens];
        let mut y = vec![0.0; n * width];
        for (i, p) in probs.chunks_exact_mut(tokens * tokens).enumerate() {
            let (b, head) = (i / self.heads, i % self.heads);
            matmul(s.view(&qkv, b, head, 0), s.view(&qkv, b, head, 1).t(), p, tokens, false);
            p.iter_mut().for_each(|v| *v *= scale);
            causal_softmax(p, tokens);
            let out = &mut y[b * tokens * width + head * s.d..];
            matmul(View::dense(p, tokens, tokens), s.view(&qkv, b, head, 2), out, width, false);
        }
        cx.save::<T>(Saved::Host(OnHost { x: h.data, qkv, probs, wants_grad: h.wants_grad }));
        Value::Host(Host { data: y, cols: width, wants_grad: true })
    }

    fn backward_host(&mut self, saved: OnHost, g: &[f32]) -> Option<Vec<f32>> {
        let OnHost { x, qkv, probs, wants_grad } = saved;
        let width = self.layer.shape.cols;
        let n = x.len() / width;
        // probs holds batch·heads·tokens² values and n = batch·tokens
        let tokens = probs.len() / n / self.heads;
        let s = Heads { tokens, width, d: width / self.heads };
        let scale = 1.0 / (s.d as f32).sqrt();
        let mut dqkv = vec![0.0; n * 3 * width];
        let mut dp = vec![0.0; tokens * tokens];
        for (i, p) in probs.chunks_exact(tokens * tokens).enumerate() {
            let (b, head) = (i / self.heads, i % self.heads);
            let p = View::dense(p, tokens, tokens);
            let gy = View::new(&g[b * tokens * width + head * s.d..], tokens, s.d, width);
            let (q, k, v) = (s.view(&qkv, b, head, 0), s.view(&qkv, b, head, 1), s.view(&qkv, b, head, 2));
            matmul(p.t(), gy, &mut dqkv[s.at(b, head, 2)..], 3 * width, false);
            matmul(gy, v.t(), &mut dp, tokens, false);
            let probs_block = &probs[i * tokens * tokens..(i + 1) * tokens * tokens];
            for (row_p, row_d) in probs_block.chunks_exact(tokens).zip(dp.chunks_exact_mut(tokens)) {
                let dot: f32 = row_p.iter().zip(row_d.iter()).map(|(p, d)| p * d).sum();
                row_d.iter_mut().zip(row_p).for_each(|(d, p)| *d = p * (*d - dot) * scale);
            }
            let ds = View::dense(&dp, tokens, tokens);
            matmul(ds, k, &mut dqkv[s.at(b, head, 0)..], 3 * width, false);
            matmul(ds.t(), q, &mut dqkv[s.at(b, head, 1)..], 3 * width, false);
        }
        let dqkv_view = View::dense(&dqkv, n, 3 * width);
        self.layer.grad_values = product(dqkv_view.t(), View::dense(&x, n, width));
        wants_grad.then(|| product(dqkv_view, View::dense(&self.layer.quantized.values, 3 * width, width)))
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
        match back.take::<Saved>() {
            Some(Saved::Host(saved)) => {
                let Some(g) = back.grad_out.take() else { return vec![None] };
                vec![self.backward_host(saved, &g)]
            }
            Some(Saved::Graph(blocks)) => {
                let width = self.layer.shape.cols;
                self.layer.grad_values =
                    blocks.iter().flat_map(|w| transpose(&host(&back.grads.get(w)), width, width)).collect();
                vec![None]
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
}
