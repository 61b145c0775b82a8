//! 2×2 max-pooling with stride 2 of HWC maps, on the host (it follows a convolution's
//! activation). Ties take the first value in row-major order, so exactly one input receives each
//! gradient (dfdx's `max` would credit every tied maximum).

use qatlab_deploy::graph;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::op::{Back, Cx, Forward, Host, Mode, Op, Value};

/// A max-pool op over `side × side × channels` maps.
pub struct MaxPool {
    /// Input height and width (even).
    pub side: usize,
    /// Channels.
    pub channels: usize,
}

/// What the backward pass needs: per output, the input index it took, and the input length.
struct Saved {
    argmax: Vec<u32>,
    len: usize,
}

impl<T: Mode> Forward<T> for MaxPool {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let (data, wants_grad) = match inputs.into_iter().next().expect("a max-pool reads one value") {
            Value::Host(h) => (h.data, h.wants_grad),
            graph => (graph.to_host().0, false),
        };
        let (out, argmax) = max_pool(&data, self.side, self.channels, cx.batch);
        if wants_grad {
            cx.save::<T>(Saved { argmax, len: data.len() });
        }
        let half = self.side / 2;
        Value::Host(Host { data: out, cols: half * half * self.channels, wants_grad })
    }
}

impl Op for MaxPool {
    fn tag(&self) -> &'static str {
        "max-pool"
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let (Some(saved), Some(grad)) = (back.take::<Saved>(), back.grad_out.take()) else {
            return vec![None];
        };
        let mut full = vec![0.0f32; saved.len];
        saved.argmax.iter().zip(&grad).for_each(|(&i, &d)| full[i as usize] += d);
        vec![Some(full)]
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let (side, channels) = (self.side, self.channels);
        out.op(node, |name, input| graph::Op::MaxPool { name, input, side, channels })
    }
}

/// 2×2 max-pooling with stride 2 of `batch` HWC maps; ties take the first (row-major) value,
/// so exactly one input receives each gradient.
fn max_pool(y: &[f32], side: usize, c: usize, batch: usize) -> (Vec<f32>, Vec<u32>) {
    let half = side / 2;
    let mut out = vec![0.0f32; batch * half * half * c];
    let mut argmax = vec![0u32; out.len()];
    for b in 0..batch {
        let base = b * side * side * c;
        for i in 0..half {
            for j in 0..half {
                let o = ((b * half + i) * half + j) * c;
                let (best, index) = (&mut out[o..o + c], &mut argmax[o..o + c]);
                let first = base + (2 * i * side + 2 * j) * c;
                best.copy_from_slice(&y[first..first + c]);
                index.iter_mut().enumerate().for_each(|(ch, x)| *x = (first + ch) as u32);
                for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
                    let start = base + ((2 * i + dy) * side + 2 * j + dx) * c;
                    for ch in 0..c {
                        if y[start + ch] > best[ch] {
                            best[ch] = y[start + ch];
                            index[ch] = (start + ch) as u32;
                        }
                    }
                }
            }
        }
    }
    (out, argmax)
}
