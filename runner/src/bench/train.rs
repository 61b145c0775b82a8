//! `qat bench train`: training throughput of one run's recipe on one thread.

use qatlab_core::{config::RunConfig, Registry};

use crate::data::RunData;
use crate::error::Result;
use crate::launch::local::single_threaded;
use crate::train::{train, EpochMetrics, Observer};

/// The quickstart recipe used by `qat bench train` when no file is given.
pub const QUICKSTART_BENCH_YAML: &str =
    "name: bench-quickstart\nquantizer: ternary\nmodel: {hidden: [64, 64, 64]}\n";

/// Optimizer steps per timed interval of a language model.
pub const LM_BENCH_STEPS: usize = 50;

/// PyTorch's float throughput at nanoGPT's CPU shape (4 blocks, width 128, context 64, batch
/// 12) on one thread of this project's machine class, nanoGPT's code (tokens/s;
/// ../shared/reference/lm-anchors.md). An anchor for the ratio, not re-measured here.
pub const PYTORCH_NANOGPT_TOKENS_PER_S: f64 = 14_560.0;

/// The same with BitNet b1.58's BitLinear in every block linear (written from its formulas on
/// PyTorch; the same source).
pub const PYTORCH_BITNET_TOKENS_PER_S: f64 = 8_300.0;

/// PyTorch's throughput for the quickstart recipe (RMSNorm, 8-bit activations, ternary STE,
/// Adam, batch 128) on one thread of this project's machine class, as measured by the project
/// (issue "Foundation", samples/s). It is an anchor for the ratio, not re-measured here.
pub const PYTORCH_TERNARY_SAMPLES_PER_S: f64 = 72_000.0;

/// Throughput of each timed epoch.
pub struct TrainBench {
    /// Samples per second of each epoch (training passes only).
    pub per_epoch: Vec<f64>,
}

impl TrainBench {
    /// The median epoch's samples per second.
    pub fn median(&self) -> f64 {
        let mut v = self.per_epoch.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

struct Collect(Vec<f64>);
impl Observer for Collect {
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.0.push(m.samples_per_s);
    }
}

/// Train `config` for `epochs` epochs on one thread and collect the per-epoch throughput
/// (samples/s; for a language model, `epochs` intervals of [`LM_BENCH_STEPS`] steps, each
/// evaluated on one batch, in tokens/s).
pub fn bench_train(
    config: &RunConfig,
    registry: &Registry,
    data: &RunData,
    epochs: usize,
) -> Result<TrainBench> {
    let mut config = config.clone();
    config.train.epochs = epochs.max(1);
    if config.train.steps.is_some() {
        config.train.steps = Some(epochs.max(1) * LM_BENCH_STEPS);
        config.eval.every = Some(LM_BENCH_STEPS);
        config.eval.batches = Some(1);
    }
    let mut collect = Collect(Vec::new());
    single_threaded(|| train(&config, registry, data, &mut collect, None))?;
    Ok(TrainBench { per_epoch: collect.0 })
}
