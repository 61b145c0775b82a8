//! Runs a [`ModelFile`] on the integer kernels, reproducing training's evaluation pass: the
//! model's op list ([`crate::graph`]) in order, each weight layer as norm (fully connected
//! layers) → absmax activation quantization → matmul or 3×3 convolution with the quantized
//! weights, then ReLU, max-pool and residual adds as the ops say.
//!
//! Layers whose levels are a uniform grid (ternary, binary, pentary, k-bit) run on the integer
//! kernels, repacked once at load (large ternary layers into five trits per byte where the path
//! decodes that as fast as 2-bit codes); the rest (NF4, FP130) multiply dequantized f32 weights by
//! the int8 activations. Between two integer layers with one positive scale per tensor, the
//! requantization is done in integers (norm and scales cancel in absmax quantization): where a
//! layer's output goes only through a ReLU (and a max-pool) into the next layer, those ops are
//! fused into one step on the integer sums. Anything else (a residual add) runs in floats.

use crate::act::{qmax, quantize_row, requantize_relu, rms_norm_row, rms_norm_rows, Sums as ActSums};
use crate::conv;
use crate::error::{DeployError, Result};
use crate::format::{LayerSpec, ModelFile, ModelHeader, NormKind};
use crate::graph::{Op, INPUT};
use crate::kernel::{prefers_trits, transpose, CodeMatrix, IntLinear, Path, Workers};

/// Index of the largest value (the first of ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
}

/// How ternary layers are laid out for the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TernaryLayout {
    /// Five trits per byte where the path decodes them fast and the layer streams from memory
    /// ([`prefers_trits`]), 2-bit codes otherwise.
    #[default]
    Auto,
    /// 2-bit codes (`--packing bits`).
    TwoBit,
    /// Five trits per byte, 1.6 bits per weight (`--packing base3`).
    Trits,
}

/// Integer form of a level set: `levels[k] · multiplier = offset + step·k` exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntGrid {
    /// Integer level of code 0.
    pub offset: i32,
    /// Distance between neighbouring integer levels.
    pub step: i32,
    /// What the levels were multiplied by.
    pub multiplier: i32,
}

impl IntGrid {
    /// The smallest multiplier (up to 256) that makes `levels` an integer arithmetic sequence
    /// within int8, if there is one.
    pub fn of(levels: &[f32]) -> Option<Self> {
        (1..=256).find_map(|m| {
            let ints: Vec<f64> = levels.iter().map(|&l| l as f64 * m as f64).collect();
            let exact = ints.iter().all(|v| (v - v.round()).abs() < 1e-4 && v.abs() <= 128.0);
            let (offset, step) =
                (ints[0].round() as i32, ints.get(1).map_or(1.0, |v| v.round() - ints[0].round()) as i32);
            let uniform = ints.iter().enumerate().all(|(k, v)| v.round() as i32 == offset + step * k as i32);
            (exact && uniform && step > 0).then_some(Self { offset, step, multiplier: m })
        })
    }
}

/// A layer ready to run.
pub(crate) enum Weights {
    /// Integer kernel over codes: a fully connected layer, or a full convolution over patches.
    Int(IntLinear, IntGrid),
    /// A depthwise convolution's integer levels (`offset + step·code`), nine per channel.
    IntTaps(Vec<i32>, IntGrid),
    /// Dequantized f32 weights (levels[code] · scale), row-major.
    Float(Vec<f32>),
}

pub(crate) struct Layer {
    pub(crate) spec: LayerSpec,
    weights: Weights,
}

impl Layer {
    pub(crate) fn new(spec: &LayerSpec, codes: &[u8], path: Path) -> Self {
        Self::with_layout(spec, codes, path, TernaryLayout::Auto)
    }

    /// A layer of `codes` whose ternary weights take `layout` in the kernels.
    pub(crate) fn with_layout(spec: &LayerSpec, codes: &[u8], path: Path, layout: TernaryLayout) -> Self {
        let depthwise = spec.conv.is_some_and(|c| c.depthwise);
        let trits = match layout {
            TernaryLayout::Auto => prefers_trits(path, spec.rows, spec.cols),
            TernaryLayout::TwoBit => false,
            TernaryLayout::Trits => true,
        };
        let weights = match IntGrid::of(&spec.levels) {
            Some(grid) if depthwise => {
                Weights::IntTaps(codes.iter().map(|&c| grid.offset + grid.step * c as i32).collect(), grid)
            }
            Some(grid) => {
                let codes = if spec.levels.len() == 3 && trits {
                    CodeMatrix::from_trits(codes, spec.rows, spec.cols)
                } else {
                    let bits = [2, 4, 8].into_iter().find(|&b| spec.levels.len() <= 1 << b).unwrap_or(8);
                    CodeMatrix::from_codes(codes, spec.rows, spec.cols, bits)
                };
                Weights::Int(IntLinear { codes, offset: grid.offset, step: grid.step }, grid)
            }
            None => Weights::Float(
                codes
                    .chunks_exact(spec.cols)
                    .enumerate()
                    .flat_map(|(r, row)| {
                        row.iter().map(move |&c| spec.levels[c as usize] * spec.row_scale(r))
                    })
                    .collect(),
            ),
        };
        Layer { spec: spec.clone(), weights }
    }

    /// A layer of integer levels `offset + step·code` already in a kernel layout.
    pub(crate) fn from_linear(spec: LayerSpec, linear: IntLinear) -> Self {
        let grid = IntGrid { offset: linear.offset, step: linear.step, multiplier: 1 };
        Layer { spec, weights: Weights::Int(linear, grid) }
    }

    /// Bytes the kernels read per pass over the layer's weights (codes in their layout, with
    /// row padding; f32 weights; scales).
    pub(crate) fn bytes_read(&self) -> usize {
        let weights = match &self.weights {
            Weights::Int(linear, _) => linear.codes.bytes(),
            Weights::IntTaps(taps, _) => 4 * taps.len(),
            Weights::Float(w) => 4 * w.len(),
        };
        weights + 4 * self.spec.scales.len()
    }

    /// Length of one input row of codes: the kernel's padded row for a fully connected integer
    /// layer, otherwise exactly the layer's input features.
    fn stride(&self) -> usize {
        match (&self.weights, self.spec.conv) {
            (Weights::Int(l, _), None) => l.codes.padded_cols(),
            _ => self.spec.input_features(),
        }
    }

    /// The scale of output feature `f` (a convolution's maps are HWC: channel = f mod rows).
    fn scale(&self, f: usize) -> f32 {
        self.spec.row_scale(f % self.spec.rows)
    }

    /// What integer weights were multiplied by (1 for float weights).
    fn multiplier(&self) -> i32 {
        match &self.weights {
            Weights::Int(_, grid) | Weights::IntTaps(_, grid) => grid.multiplier,
            Weights::Float(_) => 1,
        }
    }

    /// Whether the next layer's input can be requantized in integers from this layer's sums.
    fn integer_requant(&self) -> bool {
        !matches!(self.weights, Weights::Float(_)) && self.spec.scales.len() == 1 && self.spec.scales[0] > 0.0
    }

    /// A fully connected layer's products, `n × rows`, of `n` rows of input codes at its stride.
    fn fully_connected(&self, q: &[i8], n: usize, path: Path, workers: Workers) -> Sums {
        let rows = self.spec.rows;
        match &self.weights {
            Weights::Int(linear, _) => {
                let mut out = vec![0i32; rows * n];
                linear.forward(q, n, &mut out, path, workers);
                // one activation row: the sums are already in order
                Sums::Int(if n == 1 { out } else { transpose(&out, rows, n) })
            }
            Weights::Float(w) => Sums::Float(float_products(w, self.spec.cols, q, self.stride(), n)),
            Weights::IntTaps(..) => unreachable!("only convolutions have taps"),
        }
    }

    /// Real-valued outputs (`n × map features`): sums × scale / (multiplier × input scale).
    fn real_outputs(&self, sums: &Sums, input_scales: &[f32], n: usize) -> Vec<f32> {
        let features = self.spec.map_features();
        let mut y = vec![0f32; n * features];
        for (i, row) in y.chunks_exact_mut(features).enumerate() {
            let per_unit = 1.0 / (self.multiplier() as f32 * input_scales[i]);
            for (f, v) in row.iter_mut().enumerate() {
                *v = match sums {
                    Sums::Int(s) => s[i * features + f] as f32 * self.scale(f) * per_unit,
                    Sums::Float(s) => s[i * features + f] * per_unit,
                };
            }
        }
        y
    }

    /// A fully connected layer on `n` float rows as deployment runs it: RMS norm of each row
    /// (when `norm` is given, with those sums), absmax quantization to the layer's input bits,
    /// the integer (or dequantized) products, and the scales. Gives `n × rows`.
    pub(crate) fn linear(
        &self,
        x: &mut [f32],
        n: usize,
        norm: Option<ActSums>,
        path: Path,
        workers: Workers,
    ) -> Vec<f32> {
        let (cols, stride) = (self.spec.cols, self.stride());
        let mut q = vec![0i8; n * stride];
        let scales: Vec<f32> = x
            .chunks_exact_mut(cols)
            .zip(q.chunks_exact_mut(stride))
            .map(|(row, out)| {
                if let Some(sums) = norm {
                    rms_norm_row(row, sums);
                }
                quantize_row(row, self.spec.activation_bits, &mut out[..cols])
            })
            .collect();
        let sums = self.fully_connected(&q, n, path, workers);
        self.real_outputs(&sums, &scales, n)
    }

    /// Whether training normalises this layer's input (fully connected layers only; absmax
    /// quantization makes it matter only for the input scale).
    fn normalised(&self, norm: NormKind) -> bool {
        norm == NormKind::Rms && self.spec.conv.is_none()
    }
}

/// ReLU, then a 2×2 max-pool of a `side × side × channels` map when `pool` is given, on one
/// sample's values.
fn activate<T: Copy + PartialOrd + Default>(values: &[T], pool: Option<(usize, usize)>) -> Vec<T> {
    let relu: Vec<T> = values.iter().map(|&v| if v > T::default() { v } else { T::default() }).collect();
    match pool {
        Some((side, channels)) => conv::max_pool(&relu, side, channels),
        None => relu,
    }
}

/// One step of the plan: an op with its values resolved to slots (slot 0 is the input; op `i`
/// writes slot `i + 1`).
#[derive(Clone, Debug)]
enum Step {
    /// Weight layer `layer` on slot `input` (taken, not copied, when `last_read`: nothing after
    /// reads it); with `fused`, its ReLU (and max-pool) run on the integer sums and the result
    /// is requantized straight into the codes of layer `next`.
    Layer { layer: usize, input: usize, last_read: bool, fused: Option<Fused> },
    /// ReLU of slot `input`.
    Relu { input: usize },
    /// Max-pool of slot `input`.
    MaxPool { input: usize, side: usize, channels: usize },
    /// `input + scale · skip`.
    Add { input: usize, skip: usize, scale: f32 },
    /// Done inside the fused layer step before it.
    Fused,
}

/// What a fused layer step also does.
#[derive(Clone, Copy, Debug)]
struct Fused {
    /// The max-pool between the ReLU and the next layer, as (side, channels).
    pool: Option<(usize, usize)>,
    /// The layer whose input codes it writes.
    next: usize,
}

/// A slot of a running plan: a float value (`n ×` its width), or nothing (a fused step's).
enum Slot {
    Empty,
    Float(Vec<f32>),
}

/// The float value of a slot that a later op reads (validation and the fusion rule ensure it).
fn float(slot: &Slot) -> &[f32] {
    match slot {
        Slot::Float(v) => v,
        Slot::Empty => unreachable!("fused values are read only by the fused steps"),
    }
}

/// Resolve `ops` into steps over `layers`, fusing ReLU (→ max-pool) → next layer after an
/// integer layer whose output nothing else reads.
fn plan(ops: &[Op], layers: &[Layer]) -> Vec<Step> {
    let slot = |name: &str, upto: usize| -> usize {
        if name == INPUT {
            return 0;
        }
        ops[..upto].iter().rposition(|o| o.name() == name).map_or(0, |i| i + 1)
    };
    let readers =
        |i: usize| -> usize { ops.iter().flat_map(|o| o.inputs()).filter(|n| *n == ops[i].name()).count() };
    let layer_index = |name: &str| layers.iter().position(|l| l.spec.name == name).expect("validated");
    let mut steps: Vec<Step> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| match op {
            Op::Layer { input, layer, .. } => Step::Layer {
                layer: layer_index(layer),
                input: slot(input, i),
                last_read: !ops[i + 1..].iter().any(|o| o.inputs().contains(&input.as_str())),
                fused: None,
            },
            Op::Relu { input, .. } => Step::Relu { input: slot(input, i) },
            Op::MaxPool { input, side, channels, .. } => {
                Step::MaxPool { input: slot(input, i), side: *side, channels: *channels }
            }
            Op::Add { input, skip, scale, .. } => {
                Step::Add { input: slot(input, i), skip: slot(skip, i), scale: *scale }
            }
            other => unreachable!("Runtime::new refuses language models, whose ops `{}` are", other.tag()),
        })
        .collect();
    for i in 0..ops.len() {
        let Step::Layer { layer, .. } = steps[i] else { continue };
        if !layers[layer].integer_requant() || readers(i) != 1 {
            continue;
        }
        // layer → relu [→ max-pool] → next layer, each value read once, by the op after it
        let Some(Step::Relu { input }) = steps.get(i + 1).cloned() else { continue };
        if input != i + 1 || readers(i + 1) != 1 {
            continue;
        }
        let (pool, after) = match steps.get(i + 2).cloned() {
            Some(Step::MaxPool { input, side, channels }) if input == i + 2 && readers(i + 2) == 1 => {
                (Some((side, channels)), i + 3)
            }
            _ => (None, i + 2),
        };
        let Some(Step::Layer { layer: next, input, .. }) = steps.get(after).cloned() else { continue };
        if input != after {
            continue;
        }
        if let Step::Layer { fused, .. } = &mut steps[i] {
            *fused = Some(Fused { pool, next });
        }
        for step in &mut steps[i + 1..after] {
            *step = Step::Fused;
        }
    }
    steps
}

/// A loaded model bound to one kernel path.
pub struct Runtime {
    header: ModelHeader,
    image_size: usize,
    layers: Vec<Layer>,
    steps: Vec<Step>,
    path: Path,
    parallel: bool,
}

/// Activations entering a layer: `n` rows of int8 codes at the layer's stride, and each row's
/// scale (real value = code / scale).
struct Codes {
    q: Vec<i8>,
    scales: Vec<f32>,
}

/// A layer's raw products per sample (`n × map features`): integer level sums, or float sums
/// of dequantized weights times codes.
pub(crate) enum Sums {
    Int(Vec<i32>),
    Float(Vec<f32>),
}

impl Runtime {
    /// Where the kernels run: batches split their rows over the current rayon pool when the
    /// runtime is parallel (long products, so waking its threads costs little).
    fn workers(&self) -> Workers<'static> {
        if self.parallel {
            Workers::Rayon
        } else {
            Workers::One
        }
    }

    /// Repack `model` for `path` (see [`Path::best`]); `parallel` splits large layers' rows
    /// over the current rayon pool.
    pub fn new(model: &ModelFile, path: Path, parallel: bool) -> Result<Self> {
        if !Path::available().contains(&path) {
            return Err(DeployError::Unsupported(format!(
                "the {} kernels need a CPU feature this one lacks",
                path.name()
            )));
        }
        let image_size = model.header.image()?.image_size;
        let layers: Vec<Layer> =
            model.header.layers.iter().zip(&model.codes).map(|(s, c)| Layer::new(s, c, path)).collect();
        let steps = plan(&model.header.graph(), &layers);
        Ok(Self { header: model.header.clone(), image_size, layers, steps, path, parallel })
    }

    /// The model's description.
    pub fn header(&self) -> &ModelHeader {
        &self.header
    }

    /// Logits (`n × classes`, row-major) of `n` preprocessed inputs (`n × image_size²`).
    pub fn logits(&self, x: &[f32], n: usize) -> Vec<f32> {
        let size = self.image_size;
        let mut slots: Vec<Slot> = Vec::with_capacity(self.steps.len() + 1);
        slots.push(Slot::Float(x[..n * size * size].to_vec()));
        // codes prepared by a fused step for the layer that reads them
        let mut prepared: Option<(usize, Codes)> = None;
        for step in &self.steps {
            let value = match *step {
                Step::Layer { layer: l, input, last_read, fused } => {
                    let layer = &self.layers[l];
                    let codes = match prepared.take() {
                        Some((for_layer, codes)) if for_layer == l => codes,
                        _ if last_read => match std::mem::replace(&mut slots[input], Slot::Empty) {
                            Slot::Float(mut x) => self.quantize_float(&mut x, n, layer),
                            Slot::Empty => unreachable!("fused values are read only by the fused steps"),
                        },
                        _ => self.quantize_float(&mut float(&slots[input]).to_vec(), n, layer),
                    };
                    let sums = self.multiply(layer, &codes.q, n);
                    match fused {
                        Some(f) => {
                            let next = &self.layers[f.next];
                            prepared = Some((
                                f.next,
                                self.requantize_integers(layer, &sums, &codes.scales, n, next, f.pool),
                            ));
                            Slot::Empty
                        }
                        None => Slot::Float(self.real_outputs(layer, &sums, &codes.scales, n)),
                    }
                }
                Step::Relu { input } => Slot::Float(activate(float(&slots[input]), None)),
                Step::MaxPool { input, side, channels } => {
                    let map = side * side * channels;
                    Slot::Float(
                        float(&slots[input])
                            .chunks_exact(map)
                            .flat_map(|s| conv::max_pool(s, side, channels))
                            .collect(),
                    )
                }
                Step::Add { input, skip, scale } => Slot::Float(
                    float(&slots[input])
                        .iter()
                        .zip(float(&slots[skip]))
                        .map(|(x, s)| x + scale * s)
                        .collect(),
                ),
                Step::Fused => Slot::Empty,
            };
            slots.push(value);
        }
        match slots.pop() {
            Some(Slot::Float(logits)) => logits,
            _ => unreachable!("validation makes the last op give the logits"),
        }
    }

    /// Index of the largest logit per input.
    pub fn predict(&self, x: &[f32], n: usize) -> Vec<usize> {
        let classes = self.header.classes;
        self.logits(x, n).chunks_exact(classes).map(argmax).collect()
    }

    /// Norm (where training has one) and absmax quantization of float rows for `layer`.
    fn quantize_float(&self, x: &mut [f32], n: usize, layer: &Layer) -> Codes {
        let features = layer.spec.input_features();
        if layer.normalised(self.header.norm) {
            rms_norm_rows(x, features);
        }
        let stride = layer.stride();
        let mut q = vec![0i8; n * stride];
        let scales = x
            .chunks_exact(features)
            .zip(q.chunks_exact_mut(stride))
            .map(|(row, out)| quantize_row(row, layer.spec.activation_bits, &mut out[..features]))
            .collect();
        Codes { q, scales }
    }

    /// The layer's raw products, `n × map features`.
    fn multiply(&self, layer: &Layer, q: &[i8], n: usize) -> Sums {
        let Some(conv) = layer.spec.conv else { return self.fully_connected(layer, q, n) };
        let (stride, pixels, rows) = (layer.stride(), conv.side * conv.side, layer.spec.rows);
        // Rows of every pixel's neighbourhood (all nine taps of every input channel), at the
        // stride the kernel's padded layout wants for the integer full convolution.
        let patch_stride = match &layer.weights {
            Weights::Int(linear, _) => linear.codes.padded_cols(),
            _ => 9 * conv.in_channels,
        };
        let mut patches = Vec::with_capacity(n * pixels * patch_stride);
        for sample in q.chunks_exact(stride).take(n) {
            conv::patches(sample, conv.side, conv.in_channels, patch_stride, &mut patches);
        }
        match &layer.weights {
            Weights::Int(linear, _) => {
                let mut out = vec![0i32; rows * n * pixels];
                linear.forward(&patches, n * pixels, &mut out, self.path, self.workers());
                Sums::Int(transpose(&out, rows, n * pixels))
            }
            Weights::IntTaps(taps, _) => Sums::Int(conv::depthwise(&patches, patch_stride, rows, taps)),
            Weights::Float(w) if conv.depthwise => {
                Sums::Float(conv::depthwise(&patches, patch_stride, rows, w))
            }
            Weights::Float(w) => {
                Sums::Float(float_products(w, layer.spec.cols, &patches, patch_stride, n * pixels))
            }
        }
    }

    /// A fully connected layer's products, `n × rows`.
    fn fully_connected(&self, layer: &Layer, q: &[i8], n: usize) -> Sums {
        layer.fully_connected(q, n, self.path, self.workers())
    }

    /// Real-valued outputs (`n × map features`): sums × scale / (multiplier × input scale).
    fn real_outputs(&self, layer: &Layer, sums: &Sums, input_scales: &[f32], n: usize) -> Vec<f32> {
        layer.real_outputs(sums, input_scales, n)
    }

    /// ReLU, pooling and absmax requantization straight from the integer sums. The next
    /// layer's input scale (needed only for real-valued logits) follows from the sums as well.
    fn requantize_integers(
        &self,
        layer: &Layer,
        sums: &Sums,
        input_scales: &[f32],
        n: usize,
        next: &Layer,
        pool: Option<(usize, usize)>,
    ) -> Codes {
        let Sums::Int(sums) = sums else { unreachable!("integer layers give integer sums") };
        let (stride, bits) = (next.stride(), next.spec.activation_bits);
        let mut q = vec![0i8; n * stride];
        let mut scales = Vec::with_capacity(n);
        for (i, sample) in sums.chunks_exact(layer.spec.map_features()).enumerate() {
            let column = activate(sample, pool);
            requantize_relu(&column, bits, &mut q[i * stride..i * stride + column.len()]);
            let max = column.iter().copied().max().unwrap_or(0).max(1) as f64;
            let real_per_unit = layer.scale(0) as f64 / (layer.multiplier() as f64 * input_scales[i] as f64);
            let divisor = if next.normalised(self.header.norm) {
                let ms = column.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() / column.len() as f64;
                ms.sqrt()
            } else {
                1.0 / real_per_unit
            };
            scales.push((qmax(bits) as f64 * divisor / max) as f32);
        }
        Codes { q, scales }
    }
}

/// `out[i·rows + r] = Σ_c w[r·cols + c] · x[i·stride + c]` for `n` rows of codes.
fn float_products(w: &[f32], cols: usize, x: &[i8], stride: usize, n: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let mut out = vec![0f32; n * rows];
    for (i, o) in out.chunks_exact_mut(rows).enumerate() {
        let x = &x[i * stride..i * stride + cols];
        for (o, wr) in o.iter_mut().zip(w.chunks_exact(cols)) {
            *o = wr.iter().zip(x).map(|(w, &x)| w * x as f32).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{model_of, ternary_layer};
    use crate::pack::Packing;

    /// A ternary model whose first layer is large enough for the trit layout (64×64 inputs,
    /// 1100 hidden, 10 classes), with codes from a fixed generator.
    fn large_ternary() -> ModelFile {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut codes = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 3) as u8
                })
                .collect()
        };
        let two_bit = Packing::Bits { bits: 2 };
        let fc1 = ternary_layer("fc1", 1100, 4096, two_bit, codes(1100 * 4096));
        model_of(64, vec![fc1, ternary_layer("fc2", 10, 1100, two_bit, codes(11000))])
    }

    #[test]
    fn a_residual_add_runs_as_its_op_says_on_every_path() {
        use crate::format::tests::{tiny, tiny_with_ops};
        let x = [0.3f32, -1.2, 0.8, 2.0, -0.1, 0.4, 1.5, -0.7];
        let logits = |model: &ModelFile, path| Runtime::new(model, path, false).unwrap().logits(&x, 2);
        let edited = |scale: f32, edit: &dyn Fn(&mut Op)| {
            let mut model = tiny_with_ops(scale);
            edit(&mut model.header.ops[2]);
            model
        };
        for path in Path::available() {
            // h2 = h + 0·fc1 equals h2 = h + 0·h: the scale applies to the skip
            let zero_skip_h = edited(0.0, &|op| {
                if let Op::Add { skip, .. } = op {
                    *skip = "h".into()
                }
            });
            assert_eq!(logits(&tiny_with_ops(0.0), path), logits(&zero_skip_h, path), "{path:?}");
            // h + 1·fc1 equals fc1 + 1·h: both operands are read
            let swapped = edited(1.0, &|op| {
                if let Op::Add { input, skip, .. } = op {
                    std::mem::swap(input, skip);
                }
            });
            let one = logits(&tiny_with_ops(1.0), path);
            assert_eq!(one, logits(&swapped, path), "{path:?}");
            assert_ne!(one, logits(&tiny_with_ops(0.0), path), "the skip counts ({path:?})");
            assert_eq!(one, logits(&tiny_with_ops(1.0), Path::Scalar), "every path agrees");
        }
        // Without the add, the implied graph fuses ReLU into integer requantization; it agrees
        // with the float path (h + 0·fc1) to rounding.
        let (fused, float) = (logits(&tiny(), Path::Scalar), logits(&tiny_with_ops(0.0), Path::Scalar));
        for (a, b) in fused.iter().zip(&float) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{fused:?} vs {float:?}");
        }
    }

    #[test]
    fn large_ternary_layers_on_the_trit_layout_give_the_scalar_paths_logits() {
        let model = large_ternary();
        let lookups = Path::available().contains(&Path::Avx512Vnni) && crate::kernel::has_byte_permutes();
        assert_eq!(
            prefers_trits(Path::Avx512Vnni, 1100, 4096),
            lookups,
            "large layers take trits where they decode fast"
        );
        assert!(!prefers_trits(Path::Avx512Vnni, 10, 1100), "small layers keep 2-bit codes");
        let x: Vec<f32> = (0..3 * 4096).map(|i| ((i * 7919) % 255) as f32 / 64.0 - 2.0).collect();
        let reference = Runtime::new(&model, Path::Scalar, false).unwrap().logits(&x, 3);
        for path in Path::available() {
            let logits = Runtime::new(&model, path, true).unwrap().logits(&x, 3);
            assert_eq!(logits, reference, "{path:?}");
        }
        let missing = crate::kernel::ran::missing_required(&[
            crate::kernel::ran::Variant::Avx2,
            crate::kernel::ran::Variant::Avx512Vnni,
            crate::kernel::ran::Variant::Avx512Trits,
        ]);
        assert!(missing.is_empty(), "{missing:?}");
    }
}
