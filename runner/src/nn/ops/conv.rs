//! A 3×3 convolution (full or depthwise, stride 1, zero padding 1, no bias) of quantized
//! weights, on the host.
//!
//! Why on the host: dfdx 0.13's convolution needs nightly Rust, and its gather walks a generic
//! index per element, which at these sizes (≈5M gathered values per batch) costs more than the
//! whole arithmetic. Convolutions read host values and write host values; the first linear op
//! makes the result a graph leaf and hands ∂L/∂features back, and the backward here turns it into
//! each filter's gradient. Maps are HWC per sample, so the inner loops run over contiguous
//! channels and vectorise; images arrive channel-major (as datasets store them), so the first
//! convolution of a colour image transposes them. The engine tests check every gradient against
//! central finite differences.

use qatlab_deploy::conv::tap;
use qatlab_deploy::format::ConvSpec;
use qatlab_deploy::kernel::transpose;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::model::Layer;
use crate::nn::op::{Back, Cx, Forward, Host, Mode, Op, Value};

/// Where a convolution sits: its input map, channels and pooling. Its weights are
/// `channels × (9·in_channels)` (full) or `channels × 9` (depthwise), tap-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input height and width.
    pub side: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub channels: usize,
    /// One filter per channel.
    pub depthwise: bool,
}

/// A convolution op.
pub struct Conv {
    /// Its weights (`channels × taps`) and quantizer.
    pub layer: Layer,
    /// Its geometry.
    pub geom: ConvGeom,
    /// Whether its input is channel-major (the image itself, with several channels).
    pub channel_major_input: bool,
}

/// What the backward pass needs: the (HWC) input, and whether ∂L/∂input is wanted.
struct Saved {
    input: Vec<f32>,
    wants_grad: bool,
}

impl<T: Mode> Forward<T> for Conv {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let g = &self.geom;
        let (data, wants_grad) = match inputs.into_iter().next().expect("a convolution reads one value") {
            Value::Host(h) => (h.data, h.wants_grad),
            // no preset puts a convolution after a graph value; such an input is a constant
            graph => (graph.to_host().0, false),
        };
        let input = if self.channel_major_input {
            channels_last(&data, g.side * g.side, g.in_channels)
        } else {
            data
        };
        let z = convolve(&input, &tap_major(&self.layer.quantized.values, g), g, cx.batch);
        if T::RECORDS {
            cx.save::<T>(Saved { input, wants_grad });
        }
        Value::Host(Host { data: z, cols: g.side * g.side * g.channels, wants_grad: true })
    }
}

impl Op for Conv {
    fn tag(&self) -> &'static str {
        "conv"
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        let (Some(saved), Some(grad_z)) = (back.take::<Saved>(), back.grad_out.take()) else {
            return vec![None];
        };
        let g = &self.geom;
        let batch = saved.input.len() / (g.side * g.side * g.in_channels);
        let w = tap_major(&self.layer.quantized.values, g);
        let (grad_w, grad_input) = convolve_backward(&saved.input, &w, &grad_z, g, batch, saved.wants_grad);
        self.layer.grad_values = from_tap_major(&grad_w, g);
        let grad_input = saved.wants_grad.then(|| {
            if self.channel_major_input {
                channels_first(&grad_input, g.side * g.side, g.in_channels)
            } else {
                grad_input
            }
        });
        vec![grad_input]
    }

    fn layer(&self) -> Option<&Layer> {
        Some(&self.layer)
    }

    fn layer_mut(&mut self) -> Option<&mut Layer> {
        Some(&mut self.layer)
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        let g = self.geom;
        let spec = ConvSpec { side: g.side, in_channels: g.in_channels, depthwise: g.depthwise, pool: false };
        out.layer(node, &self.layer, Some(spec))
    }
}

/// Weights as `[tap][in][out]` (full) or `[tap][channel]` (depthwise), so the innermost loops
/// run over contiguous output channels.
fn tap_major(w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let taps_in = if g.depthwise { 1 } else { g.in_channels };
    let mut out = vec![0.0; w.len()];
    for co in 0..g.channels {
        for k in 0..9 {
            for ci in 0..taps_in {
                out[(k * taps_in + ci) * g.channels + co] = w[co * 9 * taps_in + k * taps_in + ci];
            }
        }
    }
    out
}

/// Each sample of `x` (`channels` planes of `pixels`) as pixels of `channels` values.
fn channels_last(x: &[f32], pixels: usize, channels: usize) -> Vec<f32> {
    x.chunks_exact(pixels * channels).flat_map(|sample| transpose(sample, channels, pixels)).collect()
}

/// The inverse of [`channels_last`].
fn channels_first(x: &[f32], pixels: usize, channels: usize) -> Vec<f32> {
    x.chunks_exact(pixels * channels).flat_map(|sample| transpose(sample, pixels, channels)).collect()
}

/// For tap k and output row y: the source row and the output columns x0..x1 whose source
/// column x + dx lies inside the map (None when the source row is outside).
fn row_run(side: usize, y: usize, k: usize) -> Option<(usize, usize, usize, isize)> {
    let (dy, dx) = tap(k);
    let sy = y as isize + dy;
    if sy < 0 || sy as usize >= side {
        return None;
    }
    let x0 = if dx < 0 { 1 } else { 0 };
    let x1 = if dx > 0 { side - 1 } else { side };
    Some((sy as usize, x0, x1, dx))
}

/// `w` repeated `times` times.
fn tile(w: &[f32], times: usize) -> Vec<f32> {
    w.iter().copied().cycle().take(w.len() * times).collect()
}

/// How a convolution walks its rows. Depthwise: along a row, output and source are contiguous
/// runs of (x, channel) values, so each (tap, row) is one long multiply-add against the tap's
/// weights tiled across the row. A single-channel input (the image) is first repeated across
/// the output channels, so a full convolution of it takes the same contiguous path.
struct RowPlan {
    /// Whether the contiguous path applies.
    runs: bool,
    /// Per tap, its weights repeated across a row (contiguous path only).
    tiles: Vec<Vec<f32>>,
    /// The current sample's input repeated across channels (single-channel full convolution).
    expanded: Vec<f32>,
    /// Channels per source pixel on the path taken.
    c_run: usize,
}

impl RowPlan {
    fn new(w: &[f32], g: &ConvGeom) -> Self {
        let (side, c_in, c_out) = (g.side, g.in_channels, g.channels);
        let runs = g.depthwise || c_in == 1;
        let tiles = if runs {
            (0..9).map(|k| tile(&w[k * c_out..(k + 1) * c_out], side)).collect()
        } else {
            Vec::new()
        };
        let expanded = vec![0.0f32; if c_in == 1 && !g.depthwise { side * side * c_out } else { 0 }];
        Self { runs, tiles, expanded, c_run: if runs { c_out } else { c_in } }
    }

    /// Sample `b`'s source map on the path taken.
    fn source<'a>(&'a mut self, input: &'a [f32], b: usize, g: &ConvGeom) -> &'a [f32] {
        let len = g.side * g.side * g.in_channels;
        let src = &input[b * len..(b + 1) * len];
        if self.expanded.is_empty() {
            return src;
        }
        self.expanded.chunks_exact_mut(g.channels).zip(src).for_each(|(e, &a)| e.fill(a));
        &self.expanded
    }
}

fn convolve(input: &[f32], w: &[f32], g: &ConvGeom, batch: usize) -> Vec<f32> {
    let (side, c_in, c_out) = (g.side, g.in_channels, g.channels);
    let pixels = side * side;
    let mut z = vec![0.0f32; batch * pixels * c_out];
    let mut plan = RowPlan::new(w, g);
    let (runs, c_run) = (plan.runs, plan.c_run);
    let tiles = std::mem::take(&mut plan.tiles);
    for b in 0..batch {
        let src = plan.source(input, b, g);
        let dst = &mut z[b * pixels * c_out..(b + 1) * pixels * c_out];
        for k in 0..9 {
            for y in 0..side {
                let Some((sy, x0, x1, dx)) = row_run(side, y, k) else { continue };
                let sx0 = (x0 as isize + dx) as usize;
                let out = &mut dst[(y * side + x0) * c_out..(y * side + x1) * c_out];
                if runs {
                    let a = &src[(sy * side + sx0) * c_run..(sy * side + sx0 + x1 - x0) * c_run];
                    let wt = &tiles[k][..out.len()];
                    out.iter_mut().zip(a).zip(wt).for_each(|((o, a), w)| *o += a * w);
                } else {
                    for (i, o) in out.chunks_exact_mut(c_out).enumerate() {
                        let q = sy * side + sx0 + i;
                        for ci in 0..c_in {
                            let a = src[q * c_in + ci];
                            let wk = &w[(k * c_in + ci) * c_out..(k * c_in + ci + 1) * c_out];
                            o.iter_mut().zip(wk).for_each(|(o, w)| *o += a * w);
                        }
                    }
                }
            }
        }
    }
    z
}

/// ∂L/∂w (tap-major) and, when `need_input`, ∂L/∂input of one convolution, with the same row
/// runs as [`convolve`].
fn convolve_backward(
    input: &[f32],
    w: &[f32],
    grad_z: &[f32],
    g: &ConvGeom,
    batch: usize,
    need_input: bool,
) -> (Vec<f32>, Vec<f32>) {
    let (side, c_in, c_out) = (g.side, g.in_channels, g.channels);
    let pixels = side * side;
    let mut grad_w = vec![0.0f32; w.len()];
    let mut grad_in = vec![0.0f32; if need_input { input.len() } else { 0 }];
    // The same row plan as `convolve`; on the contiguous path the weight gradients accumulate per
    // (tap, x, channel), folded over x at the end.
    let mut plan = RowPlan::new(w, g);
    let (runs, c_run) = (plan.runs, plan.c_run);
    let tiles = std::mem::take(&mut plan.tiles);
    let mut partial = vec![vec![0.0f32; if runs { side * c_out } else { 0 }]; 9];
    for b in 0..batch {
        let src = plan.source(input, b, g);
        let gz_sample = &grad_z[b * pixels * c_out..(b + 1) * pixels * c_out];
        for k in 0..9 {
            for y in 0..side {
                let Some((sy, x0, x1, dx)) = row_run(side, y, k) else { continue };
                let sx0 = (x0 as isize + dx) as usize;
                let gz = &gz_sample[(y * side + x0) * c_out..(y * side + x1) * c_out];
                let source = (sy * side + sx0) * c_run..(sy * side + sx0 + x1 - x0) * c_run;
                if runs {
                    let a = &src[source.clone()];
                    let acc = &mut partial[k][..gz.len()];
                    acc.iter_mut().zip(gz).zip(a).for_each(|((s, d), a)| *s += d * a);
                    if need_input && g.depthwise {
                        let gi =
                            &mut grad_in[b * pixels * c_in + source.start..b * pixels * c_in + source.end];
                        gi.iter_mut().zip(gz).zip(&tiles[k]).for_each(|((gi, d), w)| *gi += d * w);
                    } else if need_input {
                        // single input channel: ∂L/∂a = Σ_channels ∂L/∂z·w
                        for (i, d) in gz.chunks_exact(c_out).enumerate() {
                            let dot: f32 = tiles[k][..c_out].iter().zip(d).map(|(w, d)| w * d).sum();
                            grad_in[b * pixels + sy * side + sx0 + i] += dot;
                        }
                    }
                } else {
                    for (i, d) in gz.chunks_exact(c_out).enumerate() {
                        let q = sy * side + sx0 + i;
                        for ci in 0..c_in {
                            let a = src[q * c_in + ci];
                            let row = (k * c_in + ci) * c_out..(k * c_in + ci + 1) * c_out;
                            grad_w[row.clone()].iter_mut().zip(d).for_each(|(gw, d)| *gw += d * a);
                            if need_input {
                                let dot: f32 = w[row].iter().zip(d).map(|(w, d)| w * d).sum();
                                grad_in[(b * pixels + q) * c_in + ci] += dot;
                            }
                        }
                    }
                }
            }
        }
    }
    if runs {
        for (k, acc) in partial.iter().enumerate() {
            for x in acc.chunks_exact(c_out) {
                grad_w[k * c_out..(k + 1) * c_out].iter_mut().zip(x).for_each(|(gw, v)| *gw += v);
            }
        }
    }
    (grad_w, grad_in)
}

/// The inverse of [`tap_major`].
fn from_tap_major(w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let taps_in = if g.depthwise { 1 } else { g.in_channels };
    let mut out = vec![0.0; w.len()];
    for co in 0..g.channels {
        for k in 0..9 {
            for ci in 0..taps_in {
                out[co * 9 * taps_in + k * taps_in + ci] = w[(k * taps_in + ci) * g.channels + co];
            }
        }
    }
    out
}
