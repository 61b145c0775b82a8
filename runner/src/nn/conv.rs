//! The convolutional front-end: 3×3 convolutions (full or depthwise, stride 1, zero padding 1),
//! per-sample absmax input quantization, the activation and 2×2 max-pooling, forward and
//! backward, on the host.
//!
//! Why on the host: dfdx 0.13's convolution needs nightly Rust, and its gather walks a generic
//! index per element, which at these sizes (≈5M gathered values per batch) costs more than the
//! whole arithmetic. The front-end's output enters the dfdx graph as a leaf, exactly like the
//! first fully connected layer's prepared input; the graph hands back ∂L/∂features and the
//! backward here turns them into each filter's gradient. Maps are HWC per sample, so the inner
//! loops run over contiguous channels and vectorise. The tests check every gradient against
//! central finite differences of this forward pass.

use qatlab_deploy::conv::tap;

use crate::nn::model::{quantize_activations, ConvGeom, Layer, Stage};

/// What the backward pass needs from the forward pass, per layer.
pub struct ConvCache {
    layers: Vec<LayerCache>,
    batch: usize,
}

struct LayerCache {
    /// The layer's (quantized) input, `batch × side² × in_channels`.
    input: Vec<f32>,
    /// f′ of the activation at each output.
    slope: Vec<f32>,
    /// Per pooled output, the index of the map value it took (empty without pooling).
    argmax: Vec<u32>,
}

/// Weights as `[tap][in][out]` (full) or `[tap][channel]` (depthwise), so the innermost loops
/// run over contiguous output channels.
fn tap_major(layer: &Layer, g: &ConvGeom) -> Vec<f32> {
    let w = &layer.quantized.values;
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

/// Run the convolution layers (the leading `layers` that have a geometry) on `batch` images
/// `x` (`batch × channels × side²`, channel-major); returns the flattened features and the cache for [`backward`].
pub fn forward(layers: &[Layer], stage: &Stage, x: &[f32], batch: usize) -> (Vec<f32>, ConvCache) {
    let mut current = match layers.first().and_then(|l| l.conv) {
        // images arrive channel-major (as datasets store them); the maps here are HWC
        Some(g) if g.in_channels > 1 => channels_last(x, g.side * g.side, g.in_channels),
        _ => x.to_vec(),
    };
    let mut caches = Vec::new();
    for layer in layers {
        let g = layer.conv.expect("convolution layers come first");
        let features = g.side * g.side * g.in_channels;
        let mut input = current.clone();
        if let Some(bits) = layer.activation_bits {
            quantize_activations(&current, features, bits, &mut input);
        }
        let z = convolve(&input, &tap_major(layer, &g), &g, batch);
        let (mut y, mut slope) = (vec![0.0; z.len()], vec![0.0; z.len()]);
        stage.activation.apply_rows(&z, g.side * g.side * g.channels, &mut y, &mut slope);
        let (out, argmax) = if g.pool { max_pool(&y, &g, batch) } else { (y, Vec::new()) };
        caches.push(LayerCache { input, slope, argmax });
        current = out;
    }
    (current, ConvCache { layers: caches, batch })
}

/// Each sample of `x` (`channels` planes of `pixels`) as pixels of `channels` values.
fn channels_last(x: &[f32], pixels: usize, channels: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (sample, into) in x.chunks_exact(pixels * channels).zip(out.chunks_exact_mut(pixels * channels)) {
        for (c, plane) in sample.chunks_exact(pixels).enumerate() {
            for (p, &v) in plane.iter().enumerate() {
                into[p * channels + c] = v;
            }
        }
    }
    out
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

/// 2×2 max-pooling with stride 2 of `batch` HWC maps; ties take the first (row-major) value,
/// so exactly one input receives each gradient.
fn max_pool(y: &[f32], g: &ConvGeom, batch: usize) -> (Vec<f32>, Vec<u32>) {
    let (side, c) = (g.side, g.channels);
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

/// Given ∂L/∂features, write each convolution's ∂L/∂ŵ into its `grad_values` (weights in their
/// stored `channels × taps` layout). Input quantization passes gradients straight through.
pub fn backward(layers: &mut [Layer], cache: &ConvCache, grad_features: &[f32]) {
    let batch = cache.batch;
    let mut grad = grad_features.to_vec();
    for (l, layer) in layers.iter_mut().enumerate().rev() {
        let g = layer.conv.expect("convolution layers come first");
        let c = &cache.layers[l];
        let mut grad_z = if g.pool {
            let mut full = vec![0.0f32; c.slope.len()];
            c.argmax.iter().zip(&grad).for_each(|(&i, &d)| full[i as usize] += d);
            full
        } else {
            grad
        };
        grad_z.iter_mut().zip(&c.slope).for_each(|(d, s)| *d *= s);
        let w = tap_major(layer, &g);
        let (grad_w, grad_input) = convolve_backward(&c.input, &w, &grad_z, &g, batch, l > 0);
        layer.grad_values = from_tap_major(&grad_w, &g);
        grad = grad_input;
    }
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
