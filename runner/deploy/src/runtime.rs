//! Runs a [`ModelFile`] on the integer kernels, reproducing training's evaluation pass:
//! norm → absmax activation quantization → matmul with the quantized weights → ReLU, per layer.
//!
//! Layers whose levels are a uniform grid (ternary, binary, pentary, k-bit) run on the integer
//! kernels, repacked once at load; the rest (NF4, FP130) multiply dequantized f32 weights by
//! the int8 activations. Between two integer layers with one positive scale per tensor, the
//! requantization is done in integers (norm and scales cancel in absmax quantization).

use crate::act::{qmax, quantize_row, requantize_relu, rms_norm_rows};
use crate::error::{DeployError, Result};
use crate::format::{LayerSpec, ModelFile, ModelHeader, NormKind};
use crate::kernel::{CodeMatrix, IntLinear, Path};

/// Index of the largest value (the first of ties).
pub fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
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
enum Weights {
    /// Integer kernel over codes.
    Int(IntLinear, IntGrid),
    /// Dequantized f32 weights (levels[code] · scale), row-major.
    Float(Vec<f32>),
}

struct Layer {
    spec: LayerSpec,
    weights: Weights,
}

impl Layer {
    fn stride(&self) -> usize {
        match &self.weights {
            Weights::Int(l, _) => l.codes.padded_cols(),
            Weights::Float(_) => self.spec.cols,
        }
    }

    fn scale(&self, row: usize) -> f32 {
        self.spec.scales[if self.spec.scales.len() == 1 { 0 } else { row }]
    }

    /// Whether the next layer's input can be requantized in integers from this layer's sums.
    fn integer_requant(&self) -> bool {
        matches!(self.weights, Weights::Int(..)) && self.spec.scales.len() == 1 && self.spec.scales[0] > 0.0
    }
}

/// A loaded model bound to one kernel path.
pub struct Runtime {
    header: ModelHeader,
    layers: Vec<Layer>,
    path: Path,
    parallel: bool,
}

/// Activations entering a layer: `n` rows of int8 codes at the layer's stride, and each row's
/// scale (real value = code / scale).
struct Codes {
    q: Vec<i8>,
    scales: Vec<f32>,
}

impl Runtime {
    /// Repack `model` for `path` (see [`Path::best`]); `parallel` splits large layers' rows
    /// over the current rayon pool.
    pub fn new(model: &ModelFile, path: Path, parallel: bool) -> Result<Self> {
        if !Path::available().contains(&path) {
            return Err(DeployError::Unsupported(format!(
                "the {} kernels need a CPU feature this one lacks",
                path.name()
            )));
        }
        let layers = model
            .header
            .layers
            .iter()
            .zip(&model.codes)
            .map(|(spec, codes)| {
                let weights = match IntGrid::of(&spec.levels) {
                    Some(grid) => {
                        let bits = [2, 4, 8].into_iter().find(|&b| spec.levels.len() <= 1 << b).unwrap_or(8);
                        let codes = CodeMatrix::from_codes(codes, spec.rows, spec.cols, bits);
                        Weights::Int(IntLinear { codes, offset: grid.offset, step: grid.step }, grid)
                    }
                    None => Weights::Float(
                        codes
                            .chunks_exact(spec.cols)
                            .enumerate()
                            .flat_map(|(r, row)| {
                                let s = spec.scales[if spec.scales.len() == 1 { 0 } else { r }];
                                row.iter().map(move |&c| spec.levels[c as usize] * s)
                            })
                            .collect(),
                    ),
                };
                Layer { spec: spec.clone(), weights }
            })
            .collect();
        Ok(Self { header: model.header.clone(), layers, path, parallel })
    }

    /// The model's description.
    pub fn header(&self) -> &ModelHeader {
        &self.header
    }

    /// Logits (`n × classes`, row-major) of `n` preprocessed inputs (`n × image_size²`).
    pub fn logits(&self, x: &[f32], n: usize) -> Vec<f32> {
        let first = &self.layers[0];
        let mut input = x[..n * first.spec.cols].to_vec();
        let mut codes = self.quantize_float(&mut input, n, first);
        for (l, layer) in self.layers.iter().enumerate() {
            let sums = self.multiply(layer, &codes.q, n);
            let Some(next) = self.layers.get(l + 1) else {
                return self.real_outputs(layer, &sums, &codes.scales, n);
            };
            codes = if layer.integer_requant() {
                self.requantize_integers(layer, &sums, &codes.scales, n, next)
            } else {
                let mut y = self.real_outputs(layer, &sums, &codes.scales, n);
                y.iter_mut().for_each(|v| *v = v.max(0.0));
                self.quantize_float(&mut y, n, next)
            };
        }
        unreachable!("the last layer returns")
    }

    /// Index of the largest logit per input.
    pub fn predict(&self, x: &[f32], n: usize) -> Vec<usize> {
        let classes = self.header.classes;
        self.logits(x, n).chunks_exact(classes).map(argmax).collect()
    }

    /// Norm and absmax quantization of float rows for `layer`.
    fn quantize_float(&self, x: &mut [f32], n: usize, layer: &Layer) -> Codes {
        let cols = layer.spec.cols;
        if self.header.norm == NormKind::Rms {
            rms_norm_rows(x, cols);
        }
        let stride = layer.stride();
        let mut q = vec![0i8; n * stride];
        let scales = x
            .chunks_exact(cols)
            .zip(q.chunks_exact_mut(stride))
            .map(|(row, out)| quantize_row(row, layer.spec.activation_bits, &mut out[..cols]))
            .collect();
        Codes { q, scales }
    }

    /// Raw products in `rows × n` layout: integer level sums, or float sums of dequantized
    /// weights times codes.
    fn multiply(&self, layer: &Layer, q: &[i8], n: usize) -> Sums {
        let rows = layer.spec.rows;
        match &layer.weights {
            Weights::Int(linear, _) => {
                let mut out = vec![0i32; rows * n];
                linear.forward(q, n, &mut out, self.path, self.parallel);
                Sums::Int(out)
            }
            Weights::Float(w) => {
                let cols = layer.spec.cols;
                let mut out = vec![0f32; rows * n];
                for (r, wr) in w.chunks_exact(cols).enumerate() {
                    for i in 0..n {
                        let x = &q[i * cols..(i + 1) * cols];
                        out[r * n + i] = wr.iter().zip(x).map(|(w, &x)| w * x as f32).sum();
                    }
                }
                Sums::Float(out)
            }
        }
    }

    /// Real-valued outputs (`n × rows`): sums × row scale / (multiplier × input scale).
    fn real_outputs(&self, layer: &Layer, sums: &Sums, input_scales: &[f32], n: usize) -> Vec<f32> {
        let rows = layer.spec.rows;
        let mut y = vec![0f32; n * rows];
        for i in 0..n {
            for r in 0..rows {
                y[i * rows + r] = match (sums, &layer.weights) {
                    (Sums::Int(s), Weights::Int(_, grid)) => {
                        s[r * n + i] as f32 * layer.scale(r) / (grid.multiplier as f32 * input_scales[i])
                    }
                    (Sums::Float(s), _) => s[r * n + i] / input_scales[i],
                    _ => unreachable!("sums match their layer"),
                };
            }
        }
        y
    }

    /// ReLU and absmax requantization straight from the integer sums. The next layer's input
    /// scale (needed only for real-valued logits) follows from the sums as well.
    fn requantize_integers(
        &self,
        layer: &Layer,
        sums: &Sums,
        input_scales: &[f32],
        n: usize,
        next: &Layer,
    ) -> Codes {
        let Sums::Int(sums) = sums else { unreachable!("integer layers give integer sums") };
        let (rows, stride, bits) = (layer.spec.rows, next.stride(), next.spec.activation_bits);
        let Weights::Int(_, grid) = &layer.weights else { unreachable!("checked by integer_requant") };
        let mut q = vec![0i8; n * stride];
        let mut scales = Vec::with_capacity(n);
        let mut column = vec![0i32; rows];
        for i in 0..n {
            column.iter_mut().enumerate().for_each(|(r, a)| *a = sums[r * n + i].max(0));
            requantize_relu(&column, bits, &mut q[i * stride..i * stride + rows]);
            let max = column.iter().copied().max().unwrap_or(0).max(1) as f64;
            let real_per_unit = layer.scale(0) as f64 / (grid.multiplier as f64 * input_scales[i] as f64);
            let divisor = match self.header.norm {
                NormKind::Rms => {
                    let ms = column.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>() / rows as f64;
                    ms.sqrt()
                }
                NormKind::None => 1.0 / real_per_unit,
            };
            scales.push((qmax(bits) as f64 * divisor / max) as f32);
        }
        Codes { q, scales }
    }
}

enum Sums {
    Int(Vec<i32>),
    Float(Vec<f32>),
}
