//! Rotary position embedding (RoPE; Su et al. 2021, as in LLaMA and BitNet b1.58 2B4T) on a
//! `q|k|v` value (`batch·tokens × 3·width`): in each head of q and k, the pair of dimensions
//! (i, i + d/2) of the token at position p turns by the angle p·θᵢ, θᵢ = 10000^(−2i/d) (the
//! "rotate half" pairing); v passes unchanged. A rotation's transpose is its inverse, so the
//! backward pass turns ∂L/∂output back by −p·θᵢ.
//!
//! On the tape (the reference the host pass is tested against) the same map is
//! `x ⊙ C + (x·R) ⊙ S` with constant cosines C, sines S and the signed pair swap R.

use dfdx::prelude::*;

use crate::nn::op::{Back, Cx, Forward, Mode, Op, Value};

use crate::nn::deploy::{Deployment, Node};
use qatlab_deploy::graph;
pub use qatlab_deploy::math::rope_angle;
use qatlab_deploy::math::rope_rotate;

/// A rotary-position op over q|k|v with `heads` heads.
pub struct Rope {
    /// Heads (the width is a multiple).
    pub heads: usize,
}

impl Rope {
    /// Turn the q and k heads of each row of `x` (`cols` = 3·width per row, `tokens` rows per
    /// sample) by `sign`·p·θ.
    fn rotate(&self, x: &mut [f32], cols: usize, tokens: usize, sign: f32) {
        let width = cols / 3;
        let d = width / self.heads;
        let table: Vec<Vec<(f32, f32)>> =
            (0..tokens).map(|p| (0..d / 2).map(|i| rope_angle(p, i, d)).collect()).collect();
        for (r, row) in x.chunks_exact_mut(cols).enumerate() {
            rope_rotate(&mut row[..2 * width], d, &table[r % tokens], sign);
        }
    }
}

impl<T: Mode> Forward<T> for Rope {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        match inputs.into_iter().next().expect("rope reads q|k|v") {
            Value::Host(mut h) => {
                let tokens = h.data.len() / h.cols / cx.batch.max(1);
                self.rotate(&mut h.data, h.cols, tokens, 1.0);
                cx.save::<T>((h.cols, tokens));
                Value::Host(h)
            }
            Value::Graph(x) => {
                let shape = *x.shape();
                let (n, cols) = shape;
                let tokens = n / cx.batch.max(1);
                // cosines and sines per column: 1 and 0 on v's columns, which pass unchanged
                let (mut c, mut s) = (vec![1.0f32; n * cols], vec![0.0f32; n * cols]);
                let (width, d) = (cols / 3, cols / 3 / self.heads);
                for r in 0..n {
                    for j in 0..2 * width {
                        let i = j % d % (d / 2);
                        let (cos, sin) = rope_angle(r % tokens, i, d);
                        c[r * cols + j] = cos;
                        s[r * cols + j] = sin;
                    }
                }
                // (x·R)[j] = −x[j + d/2] in a head's first half, x[j − d/2] in its second
                let mut swap = vec![0.0f32; cols * cols];
                for j in 0..2 * width {
                    let (head, within) = (j / d, j % d);
                    let (from, sign) =
                        if within < d / 2 { (j + d / 2, -1.0) } else { (head * d + within - d / 2, 1.0) };
                    swap[from * cols + j] = sign;
                }
                let swapped = x.retaped::<T>().matmul(cx.dev.tensor_from_vec(swap, (cols, cols)));
                Value::Graph(
                    x * cx.dev.tensor_from_vec(c, shape) + swapped * cx.dev.tensor_from_vec(s, shape),
                )
            }
        }
    }
}

impl Op for Rope {
    fn tag(&self) -> &'static str {
        "rope"
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let input = out.value(node, 0);
        out.push_op(node, graph::Op::Rope { name: node.name.to_string(), input, heads: self.heads })
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let (Some((cols, tokens)), Some(mut grad)) = (back.take::<(usize, usize)>(), back.grad_out.take())
        else {
            return vec![None];
        };
        self.rotate(&mut grad, cols, tokens, -1.0);
        vec![Some(grad)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row of q|k|v (width 4, 1 head) per position, q and k set to `q` and `k`.
    fn rows(q: [f32; 4], k: [f32; 4], tokens: usize) -> Vec<f32> {
        (0..tokens).flat_map(|_| q.into_iter().chain(k).chain([9.0; 4])).collect()
    }

    #[test]
    fn scores_depend_on_the_distance_only_and_v_and_norms_are_kept() {
        let rope = Rope { heads: 1 };
        let tokens = 7;
        let mut x = rows([0.3, -1.2, 0.8, 0.5], [1.1, 0.4, -0.7, 0.2], tokens);
        rope.rotate(&mut x, 12, tokens, 1.0);
        let (q, k) =
            (|p: usize| x[p * 12..p * 12 + 4].to_vec(), |p: usize| x[p * 12 + 4..p * 12 + 8].to_vec());
        let dot = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).map(|(a, b)| a * b).sum::<f32>();
        for (m, n) in [(3, 1), (5, 3), (6, 4)] {
            assert!((dot(q(m), k(n)) - dot(q(2), k(0))).abs() < 1e-5, "q_m·k_n depends on m − n only");
        }
        assert!((dot(q(6), q(6)) - dot(q(0), q(0))).abs() < 1e-5, "a rotation keeps the norm");
        assert_eq!(q(0), vec![0.3, -1.2, 0.8, 0.5], "position 0 is not turned");
        assert!(x.chunks_exact(12).all(|row| row[8..] == [9.0; 4]), "v passes unchanged");
        // pair (0, 2) of position 1 turns by θ₀ = 1 radian
        let (cos, sin) = (1f32.cos(), 1f32.sin());
        assert!((q(1)[0] - (0.3 * cos - 0.8 * sin)).abs() < 1e-6);
        assert!((q(1)[2] - (0.8 * cos + 0.3 * sin)).abs() < 1e-6);
        rope.rotate(&mut x, 12, tokens, -1.0);
        let back = rows([0.3, -1.2, 0.8, 0.5], [1.1, 0.4, -0.7, 0.2], tokens);
        x.iter().zip(&back).for_each(|(a, b)| assert!((a - b).abs() < 1e-5, "turning back is the inverse"));
    }
}
