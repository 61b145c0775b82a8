//! `qat export` / `qat inspect` / `qat infer`: a finished run as a packed model file, and that
//! file run on the deployment kernels against the test set.

pub mod c;
pub mod text;

use std::path::Path;
use std::time::Instant;

use qatlab_core::config::{Dataset, RunConfig};
use qatlab_core::Registry;
use qatlab_deploy::format::{
    ActivationKind, InputSpec, LayerData, LayerSpec, ModelFile, ModelHeader, NormKind, TensorType,
    TextEvaluation, TextSpec,
};
use qatlab_deploy::graph::Op;
use qatlab_deploy::kernel::Path as KernelPath;
use qatlab_deploy::pack::Packing;
use qatlab_deploy::runtime::{argmax, IntGrid, Runtime};

use crate::data::{self, RunData, Samples, MEAN, STD};
use crate::error::{Error, Result};
use crate::nn::deploy::{Deployment, Node as DeployNode, NETWORK_INPUT};
use crate::nn::engine::{Engine, Pass};
use crate::nn::model::INPUT_NODE;
use crate::train::load_finished;

/// How `qat export` stores ternary and pentary codes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PackingChoice {
    /// The fewest whole bits per code (2 for ternary: fastest to decode).
    #[default]
    Bits,
    /// Ternary: five trits per byte (1.6 bits per weight).
    Base3,
    /// Ternary: twenty trits per 32-bit word (1.6 bits per weight).
    Base3Words,
    /// Pentary: three digits per 7 bits (2.33 bits per weight).
    Base5,
}

impl PackingChoice {
    fn packing(self, levels: usize, layer: &str) -> Result<Packing> {
        let packing = match self {
            PackingChoice::Bits => return Ok(Packing::bits_for(levels)),
            PackingChoice::Base3 => Packing::Base3Bytes,
            PackingChoice::Base3Words => Packing::Base3Words,
            PackingChoice::Base5 => Packing::Base5Groups,
        };
        if levels > packing.max_levels() {
            return Err(Error::Config(format!(
                "--packing {self:?}: layer {layer} has {levels} levels, the packing holds {}; use --packing bits",
                packing.max_levels()
            )));
        }
        Ok(packing)
    }
}

/// Export the finished run in `dir` as a model file.
pub fn export_run(dir: &Path, registry: &Registry, packing: PackingChoice) -> Result<ModelFile> {
    let run = load_finished(dir, registry)?;
    let config = &run.config;
    let unsupported = |what: String| Error::Config(format!("{}: cannot deploy: {what}", dir.display()));
    let text = match config.data.dataset {
        Dataset::Mnist | Dataset::FashionMnist => None,
        d if d.is_text() => Some(text_spec(config)?),
        other => {
            return Err(unsupported(format!(
                "data.dataset {}: the model file describes greyscale inputs with one mean and std, and \
                 qat infer reads the IDX test sets; colour inputs are not deployable yet",
                other.dir_name()
            )))
        }
    };
    let net = &run.trainer.net;
    let mut deployment = Deployment::default();
    deployment.text = text.is_some();
    for node in &net.nodes {
        let inputs =
            node.inputs.iter().map(|&i| if i == INPUT_NODE { NETWORK_INPUT } else { &net.nodes[i].name[..] });
        let view = DeployNode { name: &node.name, inputs: inputs.collect() };
        node.op
            .deploy(&view, &mut deployment)
            .map_err(|e| unsupported(format!("{} ({}): {e}", node.name, node.op.tag())))?;
    }
    let mut layers = Vec::new();
    for (i, d) in deployment.layers.iter().enumerate() {
        let layer: &crate::nn::model::Layer = d.layer;
        let q = &layer.quantized;
        // the quantizer of this layer's place among all the network's layers (a language
        // model's embedding table comes first and does not deploy as a layer)
        let index = net.layers().position(|l| std::ptr::eq(l, layer)).unwrap_or(i);
        let quantizer = qatlab_core::config::spec_label(run.trainer.quantizer_spec(index));
        if q.codes.is_empty() || q.levels.is_empty() {
            return Err(unsupported(format!("{} is not quantized (quantizer `{quantizer}`)", layer.name)));
        }
        layers.push(LayerData {
            spec: LayerSpec {
                name: layer.name.clone(),
                rows: layer.shape.rows,
                cols: layer.shape.cols,
                quantizer,
                levels: q.levels.clone(),
                packing: packing.packing(q.levels.len(), &layer.name)?,
                scales: q.scales.clone(),
                activation_bits: d.activation_bits,
                offset: 0,
                bytes: 0,
                conv: d.conv,
            },
            codes: q.codes.clone(),
        });
    }
    let header = ModelHeader {
        name: config.name.clone(),
        // The id the run is stored under (its record), which a re-serialised config need not
        // reproduce byte for byte.
        run_id: crate::run::RunDir { path: dir.to_path_buf() }
            .read_record()
            .map_or_else(|| crate::run::run_id(config), |r| r.run_id),
        input: text.is_none().then(|| InputSpec {
            dataset: config.data.dataset.dir_name().to_string(),
            image_size: config.data.image_size,
            mean: MEAN,
            std: STD,
        }),
        text,
        classes: run.trainer.task().classes,
        norm: deployment.norm.unwrap_or(NormKind::None),
        activation: ActivationKind::Relu,
        layers: Vec::new(),
        // the graph as trained, op for op
        ops: deployment.ops,
        writer: env!("CARGO_PKG_VERSION").to_string(),
        tensors: Vec::new(),
    };
    ModelFile::with_tensors(header, layers, deployment.tensors).map_err(|e| unsupported(e.to_string()))
}

/// A language-model run's text side: its tokenizer and vocabulary (read from the text, whose
/// SHA-256 must still be the run's), context, and evaluation windows.
fn text_spec(config: &RunConfig) -> Result<TextSpec> {
    let text = RunData::load(&config.data)?.text.expect("a text dataset loads text");
    let context = config.model.transformer.as_ref().map_or(0, |t| t.context);
    Ok(TextSpec {
        tokenizer: text.tokenizer_kind(),
        vocab: text.vocab.iter().collect(),
        context,
        evaluation: TextEvaluation {
            dataset: config.data.dataset.dir_name().to_string(),
            sha256: text.sha256.clone(),
            val_fraction: config.data.val_fraction(),
            seed: crate::data::text::EVAL_SEED,
            batches: config.eval.batches.unwrap_or(crate::train::steps::DEFAULT_EVAL_BATCHES),
            batch: config.train.batch_size,
        },
    })
}

/// Read a model file, naming it in any error.
pub fn read_model(path: &Path) -> Result<ModelFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    ModelFile::read(&bytes).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// `qat inspect`: the header, and per layer its shape, packing, size and real bits per weight.
pub fn describe(model: &ModelFile, file_bytes: usize) -> String {
    let h = &model.header;
    let mut out = match (&h.input, &h.text) {
        (Some(input), _) => format!(
            "{} (run {}), {} {size}×{size} → {} classes, norm {:?}, activation {:?}\n\
             input: antialiased resize to {size}×{size}, (p/255 − {})/{}\n",
            h.name,
            h.run_id,
            input.dataset,
            h.classes,
            h.norm,
            h.activation,
            input.mean,
            input.std,
            size = input.image_size
        ),
        (None, Some(text)) => format!(
            "{} (run {}), language model: {:?} tokenizer, {} tokens, context {}\n\
             evaluation: {} (SHA-256 {}…), last {} of the text, {} batches of {} windows, seed {:#x}\n",
            h.name,
            h.run_id,
            text.tokenizer,
            h.classes,
            text.context,
            text.evaluation.dataset,
            &text.evaluation.sha256[..text.evaluation.sha256.len().min(12)],
            text.evaluation.val_fraction,
            text.evaluation.batches,
            text.evaluation.batch,
            text.evaluation.seed
        ),
        (None, None) => unreachable!("a validated header has an input or text"),
    };
    let name_width = h.layers.iter().map(|l| l.name.chars().count()).max().unwrap_or(0).max(6);
    out += &format!(
        "{:<name_width$} {:>11} {:<28} {:>6} {:<18} {:>7} {:>8} {:>7} {:<8} {}\n",
        "layer",
        "shape",
        "quantizer",
        "levels",
        "packing",
        "scales",
        "bytes",
        "bits/w",
        "kernel",
        "operation"
    );
    let ops = h.graph();
    let mut weights = 0;
    for spec in &h.layers {
        let kernel = match IntGrid::of(&spec.levels) {
            Some(g) => format!("int ×{}", g.multiplier),
            None => "f32".into(),
        };
        out += &format!(
            "{:<name_width$} {:>11} {:<28} {:>6} {:<18} {:>7} {:>8} {:>7.3} {:<8} {}\n",
            spec.name,
            format!("{}×{}", spec.rows, spec.cols),
            spec.quantizer,
            spec.levels.len(),
            packing_name(spec.packing),
            spec.scales.len(),
            spec.bytes + 4 * spec.scales.len(),
            spec.bits_per_weight(),
            kernel,
            operation(spec, pooled(&ops, &spec.name))
        );
        weights += spec.rows * spec.cols;
    }
    out += &format!(
        "total: {weights} weights, {} bytes of codes and scales ({:.3} bits/weight), file {file_bytes} bytes\n",
        model.weight_bytes(),
        model.weight_bytes() as f64 * 8.0 / weights.max(1) as f64
    );
    if !h.tensors.is_empty() {
        out += "tensors (as stored; the runtime holds them as f32):\n";
        for t in &h.tensors {
            let dtype = match t.dtype {
                TensorType::F32 => "f32",
                TensorType::Int8 => "int8, a scale per row",
            };
            out += &format!(
                "  {:<24} {:>11} {:<21} {:>9} bytes\n",
                t.name,
                format!("{}×{}", t.rows, t.cols),
                dtype,
                t.bytes
            );
        }
    }
    if let Some(text) = &h.text {
        let cache: usize = ops.iter().filter_map(|op| attention_width(h, &ops, op)).map(|w| 2 * 4 * w).sum();
        let tensors: usize = h.tensors.iter().map(|t| 4 * t.rows * t.cols).sum();
        out += &format!(
            "resident: {} bytes of weights ({} packed codes and scales, {} f32 tensors); KV cache {} bytes per position ({} for the context of {})\n",
            model.weight_bytes() + tensors,
            model.weight_bytes(),
            tensors,
            cache,
            cache * text.context,
            text.context
        );
    }
    out += "graph:\n";
    for op in &ops {
        let reads = op.inputs().join(", ");
        out += &match op {
            Op::Layer { name, layer, .. } => format!("  {name} = layer {layer}({reads})\n"),
            Op::Relu { name, .. } => format!("  {name} = relu({reads})\n"),
            Op::MaxPool { name, side, channels, .. } => {
                format!("  {name} = max-pool 2×2({reads}: {side}×{side}×{channels})\n")
            }
            Op::Add { name, input, skip, scale } => format!("  {name} = {input} + {scale}·{skip}\n"),
            Op::Embed { name, table, .. } => format!("  {name} = embed {table}[{reads}]\n"),
            Op::Positions { name, table, .. } => format!("  {name} = {reads} + positions {table}\n"),
            Op::Norm { name, kind, gain, .. } => {
                let gain = gain.as_ref().map_or(String::new(), |g| format!(" · {g}"));
                format!("  {name} = {kind:?} norm({reads}){gain}\n")
            }
            Op::Matmul { name, weight, .. } => format!("  {name} = {reads} · {weight}ᵀ (f32)\n"),
            Op::Rope { name, heads, .. } => format!("  {name} = rope({reads}, {heads} heads)\n"),
            Op::Attention { name, heads, .. } => {
                format!("  {name} = causal attention({reads}, {heads} heads)\n")
            }
            Op::Activation { name, function, .. } => format!("  {name} = {function:?}({reads})\n"),
            Op::Mul { name, .. } => format!("  {name} = {}\n", op.inputs().join(" ⊙ ")),
        };
    }
    out
}

/// The key width of an attention op (a third of its q|k|v input), None for other ops.
fn attention_width(h: &ModelHeader, ops: &[Op], op: &Op) -> Option<usize> {
    let Op::Attention { input, .. } = op else { return None };
    let widths = qatlab_deploy::graph::check(h, ops).ok()?;
    let at = ops.iter().position(|o| o.name() == input)?;
    Some(widths[at] / 3)
}

/// Whether the layer's output is max-pooled after its ReLU (a version 3 graph), or by its
/// convolution's own flag (versions 1 and 2, whose implied graph says the same).
fn pooled(ops: &[Op], layer: &str) -> bool {
    let writer = |value: &str| ops.iter().find(|o| o.name() == value);
    ops.iter().any(|op| {
        let Op::MaxPool { input, .. } = op else { return false };
        let Some(Op::Relu { input: relu_input, .. }) = writer(input) else { return false };
        matches!(writer(relu_input), Some(Op::Layer { layer: l, .. }) if l == layer)
    })
}

/// What a layer computes, e.g. `fc 256→96` or `dw3×3 16×16×4→4, pool`.
fn operation(spec: &LayerSpec, pooled: bool) -> String {
    match spec.conv {
        None => format!("fc {}→{}", spec.cols, spec.rows),
        Some(c) => format!(
            "{}3×3 {1}×{1}×{2}→{3}{4}",
            if c.depthwise { "dw" } else { "conv" },
            c.side,
            c.in_channels,
            spec.rows,
            if pooled { ", pool" } else { "" }
        ),
    }
}

fn packing_name(p: Packing) -> String {
    match p {
        Packing::Bits { bits } => format!("{bits}-bit"),
        Packing::Base3Bytes => "base3 5/byte".into(),
        Packing::Base3Words => "base3 20/word".into(),
        Packing::Base5Groups => "base5 3/7 bits".into(),
    }
}

/// The test split of the model's dataset, preprocessed as its header says.
pub fn test_samples(model: &ModelFile) -> Result<Samples> {
    let input = model.header.image().map_err(|e| Error::Config(e.to_string()))?;
    let dataset = match input.dataset.as_str() {
        "mnist" => Dataset::Mnist,
        "fashion-mnist" => Dataset::FashionMnist,
        other => {
            return Err(Error::Config(format!("the model was trained on `{other}`, which qat cannot load")))
        }
    };
    let files = data::load(dataset, &data::find_dir(dataset)?)?;
    Ok(data::preprocess(&files.test, input.image_size))
}

/// What `qat infer` measured.
pub struct Inference {
    /// Predicted class per test image.
    pub predictions: Vec<usize>,
    /// Share of correct predictions.
    pub accuracy: f64,
    /// Mean wall time per sample, seconds.
    pub seconds_per_sample: f64,
}

/// Run the model over `samples` in batches of `batch`.
pub fn infer(runtime: &Runtime, samples: &Samples, batch: usize) -> Inference {
    let f = samples.features;
    let start = Instant::now();
    let mut predictions = Vec::with_capacity(samples.len());
    for first in (0..samples.len()).step_by(batch.max(1)) {
        let n = batch.max(1).min(samples.len() - first);
        predictions.extend(runtime.predict(&samples.x[first * f..(first + n) * f], n));
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = samples.len().max(1) as f64;
    Inference {
        accuracy: accuracy(&predictions, &samples.labels),
        predictions,
        seconds_per_sample: seconds / n,
    }
}

/// The training-time evaluation's prediction for each sample (the run's own forward pass).
pub fn training_predictions(dir: &Path, registry: &Registry, samples: &Samples) -> Result<Vec<usize>> {
    let run = load_finished(dir, registry)?;
    let engine = Engine::new();
    let f = samples.features;
    let mut predictions = Vec::with_capacity(samples.len());
    for first in (0..samples.len()).step_by(1000) {
        let n = 1000.min(samples.len() - first);
        let (logits, _) =
            engine.logits(&run.trainer.net, &samples.x[first * f..(first + n) * f], n, Pass::Eval);
        predictions.extend(logits.chunks_exact(run.trainer.task().classes).map(argmax));
    }
    Ok(predictions)
}

/// Share of `predictions` equal to their `labels`.
pub fn accuracy(predictions: &[usize], labels: &[u8]) -> f64 {
    let correct = predictions.iter().zip(labels).filter(|(p, l)| **p == **l as usize).count();
    correct as f64 / predictions.len().max(1) as f64
}

/// Parse a kernel path name (`auto` picks the fastest this CPU has).
pub fn kernel_path(name: &str) -> Result<KernelPath> {
    let path = match name {
        "auto" => return Ok(KernelPath::best()),
        "scalar" => KernelPath::Scalar,
        "avx2" => KernelPath::Avx2,
        "avx512" | "avx512-vnni" => KernelPath::Avx512Vnni,
        other => {
            return Err(Error::Config(format!("--kernel {other}: expected auto, scalar, avx2 or avx512")))
        }
    };
    if !KernelPath::available().contains(&path) {
        return Err(Error::Config(format!("--kernel {name}: this CPU lacks the instructions; use auto")));
    }
    Ok(path)
}
