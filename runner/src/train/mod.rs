//! Training: the [`Trainer`] (a network with its optimizer state) and everything done to it,
//! one job per module: the epoch loop ([`epochs`]), the step loop of language models ([`steps`]), one training step ([`trainer`]), the
//! optimizer step ([`step`]), evaluation ([`evaluate`]), post-training calibration
//! ([`calibrate`]), checkpoints ([`checkpoint`]; [`legacy`] reads the JSON ones of earlier
//! versions), distillation teachers ([`teacher`]), metrics ([`metrics`]) and analysis
//! ([`analysis`]). Nothing here touches terminals; files only to read and write checkpoints.

pub mod analysis;
pub mod calibrate;
pub mod checkpoint;
pub mod epochs;
pub mod evaluate;
pub mod legacy;
pub mod metrics;
pub mod optim;
pub mod recipe;
pub mod sample;
pub mod step;
pub mod steps;
pub mod teacher;
pub mod trainer;

pub use checkpoint::{load_finished, Checkpoint, CheckpointScalars, FinishedRun, Tensor, CHECKPOINT_FILE};
pub use epochs::{epoch_order, train, Finished};
pub use metrics::{layer_stats, EpochMetrics, LayerStats, Observer, Silent};
pub use step::clip_global_norm;
pub use trainer::Trainer;

/// Test-set evaluation batch size (any size gives the same numbers).
pub(crate) const EVAL_BATCH: usize = 1000;
/// Training images whose mean layer inputs calibrate bias correction.
pub const CALIBRATION_SAMPLES: usize = 4096;
