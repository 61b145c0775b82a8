//! Causal multi-head self-attention over a `q|k|v` value: the input is `batch·tokens × 3·width`
//! (the output of the `attn.qkv` linear, as GPT-2's `c_attn`), and per head the output is
//! softmax(q·kᵀ/√d + M)·v, M = −∞ above the diagonal, giving `batch·tokens × width`. The op has no
//! parameters; the projections around it are linear ops.
//!
//! On host values (every transformer, see [`crate::nn::op`]) it runs fused: each head reads its
//! columns of `q|k|v` in place, the softmax skips the masked half, and the backward pass is
//! written out: with P the probabilities and G = ∂L/∂y per head, ∂v = Pᵀ·G, ∂P = G·vᵀ,
//! ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))/√d, ∂q = ∂S·k, ∂k = ∂Sᵀ·q.
//!
//! On the tape (the reference the host pass is tested against) q, k and v are taken out of the
//! input by products with constant 0/1 matrices (dfdx's `slice` would overwrite gradients), heads
//! are folded into the batch for the batched matmuls (`batch·heads × tokens × d`), the mask is
//! *added* (0·∞ would be NaN), and softmax keeps its max off the tape.

use dfdx::prelude::*;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::host::{causal_softmax, matmul, View};
use crate::nn::op::{Back, Cx, Forward, Host, Mat, Mode, Op, Value};
use qatlab_deploy::graph;

/// An attention op.
pub struct Attention {
    /// Heads (the width is a multiple).
    pub heads: usize,
}

/// What the host backward pass needs.
struct Saved {
    /// q|k|v, `n × 3·width`.
    qkv: Vec<f32>,
    /// The attention probabilities, `batch·heads` blocks of `tokens × tokens`.
    probs: Vec<f32>,
    /// Tokens per sample.
    tokens: usize,
}

/// One head's place inside the `n × 3·width` q|k|v buffer.
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

impl<T: Mode> Forward<T> for Attention {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        match inputs.into_iter().next().expect("attention reads q|k|v") {
            Value::Host(h) => self.forward_host::<T>(cx, h),
            Value::Graph(x) => Value::Graph(self.forward_graph(cx, x)),
        }
    }
}

impl Attention {
    fn forward_host<T: Mode>(&self, cx: &mut Cx, h: Host) -> Value<T> {
        let width = h.cols / 3;
        let n = h.data.len() / h.cols;
        let batch = cx.batch.max(1);
        let s = Heads { tokens: n / batch, width, d: width / self.heads };
        let tokens = s.tokens;
        let scale = 1.0 / (s.d as f32).sqrt();
        let mut probs = vec![0.0; batch * self.heads * tokens * tokens];
        let mut y = vec![0.0; n * width];
        for (i, p) in probs.chunks_exact_mut(tokens * tokens).enumerate() {
            let (b, head) = (i / self.heads, i % self.heads);
            matmul(s.view(&h.data, b, head, 0), s.view(&h.data, b, head, 1).t(), p, tokens, false);
            p.iter_mut().for_each(|v| *v *= scale);
            causal_softmax(p, tokens);
            let out = &mut y[b * tokens * width + head * s.d..];
            matmul(View::dense(p, tokens, tokens), s.view(&h.data, b, head, 2), out, width, false);
        }
        cx.save::<T>(Saved { qkv: h.data, probs, tokens });
        Value::Host(Host { data: y, cols: width, wants_grad: h.wants_grad })
    }

    fn backward_host(&self, saved: Saved, g: &[f32]) -> Vec<f32> {
        let Saved { qkv, probs, tokens } = saved;
        let n = probs.len() / (self.heads * tokens);
        let width = qkv.len() / n / 3;
        let s = Heads { tokens, width, d: width / self.heads };
        let scale = 1.0 / (s.d as f32).sqrt();
        let mut dqkv = vec![0.0; n * 3 * width];
        let mut dp = vec![0.0; tokens * tokens];
        for (i, p) in probs.chunks_exact(tokens * tokens).enumerate() {
            let (b, head) = (i / self.heads, i % self.heads);
            let gy = View::new(&g[b * tokens * width + head * s.d..], tokens, s.d, width);
            let (q, k, v) = (s.view(&qkv, b, head, 0), s.view(&qkv, b, head, 1), s.view(&qkv, b, head, 2));
            matmul(View::dense(p, tokens, tokens).t(), gy, &mut dqkv[s.at(b, head, 2)..], 3 * width, false);
            matmul(gy, v.t(), &mut dp, tokens, false);
            for (row_p, row_d) in p.chunks_exact(tokens).zip(dp.chunks_exact_mut(tokens)) {
                let dot: f32 = row_p.iter().zip(row_d.iter()).map(|(p, d)| p * d).sum();
                row_d.iter_mut().zip(row_p).for_each(|(d, p)| *d = p * (*d - dot) * scale);
            }
            let ds = View::dense(&dp, tokens, tokens);
            matmul(ds, k, &mut dqkv[s.at(b, head, 0)..], 3 * width, false);
            matmul(ds.t(), q, &mut dqkv[s.at(b, head, 1)..], 3 * width, false);
        }
        dqkv
    }

    fn forward_graph<T: Mode>(&self, cx: &mut Cx, x: Mat<T>) -> Mat<T> {
        let (n, cols) = *x.shape();
        let width = cols / 3;
        let (batch, heads) = (cx.batch.max(1), self.heads);
        let (tokens, d) = (n / batch, width / heads);
        // part `part` of q|k|v as x·E, E the 0/1 matrix that picks its columns
        let part = |x: Mat<T>, part: usize| {
            let pick: Vec<f32> =
                (0..cols * width).map(|i| f32::from(i / width == part * width + i % width)).collect();
            x.matmul(cx.dev.tensor_from_vec(pick, (cols, width)))
                .reshape_like(&(batch, tokens, heads, d))
                .permute::<_, Axes4<0, 2, 1, 3>>()
                .reshape_like(&(batch * heads, tokens, d))
        };
        // the last part takes `x` itself, which carries the tape of everything before
        let (q, k) = (part(x.retaped::<T>(), 0), part(x.retaped::<T>(), 1));
        let v = part(x, 2);
        let scores = q.matmul(k.permute::<_, Axes3<0, 2, 1>>()) * (1.0 / (d as f32).sqrt());
        let mask = cx.dev.upper_tri_like(&scores, f32::NEG_INFINITY, 1);
        (scores + mask)
            .softmax::<Axis<2>>()
            .matmul(v)
            .reshape_like(&(batch, heads, tokens, d))
            .permute::<_, Axes4<0, 2, 1, 3>>()
            .reshape_like(&(n, width))
    }
}

impl Op for Attention {
    fn tag(&self) -> &'static str {
        "attention"
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let input = out.value(node, 0);
        out.push_op(node, graph::Op::Attention { name: node.name.to_string(), input, heads: self.heads })
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        match (back.take::<Saved>(), back.grad_out.take()) {
            (Some(saved), Some(g)) => vec![Some(self.backward_host(saved, &g))],
            _ => vec![None],
        }
    }
}
