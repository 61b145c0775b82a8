//! `qat export` / `qat inspect` / `qat infer`: a finished run as a packed model file, and that
//! file run on the deployment kernels against the test set.

pub mod c;

use std::path::Path;
use std::time::Instant;

use qatlab_core::config::Dataset;
use qatlab_core::Registry;
use qatlab_deploy::format::{
    ActivationKind, InputSpec, LayerData, LayerSpec, ModelFile, ModelHeader, NormKind,
};
use qatlab_deploy::graph::Op;
use qatlab_deploy::kernel::Path as KernelPath;
use qatlab_deploy::pack::Packing;
use qatlab_deploy::runtime::{argmax, IntGrid, Runtime};

use crate::data::{self, Samples, MEAN, STD};
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
    if config.data.dataset.is_text() {
        return Err(unsupported(
            "a language model: the model file and runtime do not hold transformers yet (qat sample generates \
             text from the run itself)"
                .into(),
        ));
    }
    if !matches!(config.data.dataset, Dataset::Mnist | Dataset::FashionMnist) {
        return Err(unsupported(format!(
            "data.dataset {}: the model file describes greyscale inputs with one mean and std, and \
             qat infer reads the IDX test sets; colour inputs are not deployable yet",
            config.data.dataset.dir_name()
        )));
    }
    let net = &run.trainer.net;
    let mut deployment = Deployment::default();
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
        let layer = d.layer;
        let q = &layer.quantized;
        let quantizer = qatlab_core::config::spec_label(run.trainer.quantizer_spec(i));
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
        input: InputSpec {
            dataset: config.data.dataset.dir_name().to_string(),
            image_size: config.data.image_size,
            mean: MEAN,
            std: STD,
        },
        classes: run.trainer.task().classes,
        norm: deployment.norm.unwrap_or(NormKind::None),
        activation: ActivationKind::Relu,
        layers: Vec::new(),
        // the graph as trained, op for op
        ops: deployment.ops,
        writer: env!("CARGO_PKG_VERSION").to_string(),
    };
    ModelFile::new(header, layers).map_err(|e| unsupported(e.to_string()))
}

/// Read a model file, naming it in any error.
pub fn read_model(path: &Path) -> Result<ModelFile> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    ModelFile::read(&bytes).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// `qat inspect`: the header, and per layer its shape, packing, size and real bits per weight.
pub fn describe(model: &ModelFile, file_bytes: usize) -> String {
    let h = &model.header;
    let mut out = format!(
        "{} (run {}), {} {}×{} → {} classes, norm {:?}, activation {:?}\n",
        h.name,
        h.run_id,
        h.input.dataset,
        h.input.image_size,
        h.input.image_size,
        h.classes,
        h.norm,
        h.activation
    );
    out += &format!(
        "input: antialiased resize to {0}×{0}, (p/255 − {1})/{2}\n",
        h.input.image_size, h.input.mean, h.input.std
    );
    out += &format!(
        "{:<6} {:>11} {:<28} {:>6} {:<18} {:>7} {:>8} {:>7} {:<8} {}\n",
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
            "{:<6} {:>11} {:<28} {:>6} {:<18} {:>7} {:>8} {:>7.3} {:<8} {}\n",
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
        model.weight_bytes() as f64 * 8.0 / weights as f64
    );
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
        };
    }
    out
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
    let dataset = match model.header.input.dataset.as_str() {
        "mnist" => Dataset::Mnist,
        "fashion-mnist" => Dataset::FashionMnist,
        other => {
            return Err(Error::Config(format!("the model was trained on `{other}`, which qat cannot load")))
        }
    };
    let files = data::load(dataset, &data::find_dir(dataset)?)?;
    Ok(data::preprocess(&files.test, model.header.input.image_size))
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
