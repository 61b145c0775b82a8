//! What a run's `run.json` records: status, scores, sizes, versions and times; and what
//! happened to a run in one invocation ([`Outcome`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::train::EpochMetrics;

/// How a run ended (or that it is still going).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started, not finished.
    Running,
    /// Finished all epochs.
    Success,
    /// Stopped by an error.
    Failed,
    /// The loss became NaN or infinite.
    Diverged,
    /// Stopped at a rung by a search's pruning (its checkpoint kept: resumed if promoted).
    Pruned,
}

/// Final or best accuracy and loss figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Epoch they come from (1-based).
    pub epoch: usize,
    /// Test accuracy (0–1).
    pub test_acc: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Training accuracy over that epoch.
    pub train_acc: f64,
    /// Mean training loss over that epoch.
    pub train_loss: f64,
    /// Accuracy on the held-out validation images, when the run has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc: Option<f64>,
    /// Loss on the held-out validation images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
}

impl Scores {
    /// The scores of one epoch.
    pub fn of(m: &EpochMetrics) -> Self {
        Self {
            epoch: m.epoch,
            test_acc: m.test_acc,
            test_loss: m.test_loss,
            train_acc: m.train_acc,
            train_loss: m.train_loss,
            val_acc: m.val_acc,
            val_loss: m.val_loss,
        }
    }
}

/// `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Run id (hash of the resolved config).
    pub run_id: String,
    /// Experiment name.
    pub experiment: String,
    /// Where the run stands.
    pub status: Status,
    /// The error, when failed or diverged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Scores of the last epoch.
    pub final_scores: Option<Scores>,
    /// Scores of the epoch with the best test accuracy.
    pub best: Option<Scores>,
    /// Number of weights.
    pub weights: usize,
    /// Σ weights × bits per weight.
    pub total_bits: f64,
    /// Mean share of zero-level weights over the layers, at the last epoch.
    #[serde(default)]
    pub sparsity: f64,
    /// Test accuracy after post-training quantization, per quantizer label.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub post_quantized: std::collections::BTreeMap<String, f64>,
    /// Per-class scores, calibration, per-layer code statistics and sensitivities of the final
    /// network (see `analysis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<crate::train::analysis::Analysis>,
    /// Test accuracy of the stochastic weight average (with `train.swa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa_test_acc: Option<f64>,
    /// A language model's scores under their own names (also in `final_scores`/`best`, where
    /// `test_loss` is the validation loss).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language_model: Option<LmScores>,
    /// Mean training samples per second (training passes only).
    pub samples_per_s: f64,
    /// Wall time of the run in seconds, data loading excluded.
    pub wall_s: f64,
    /// Code versions.
    pub versions: Versions,
    /// Host name.
    pub host: String,
    /// Start time (RFC 3339, UTC).
    pub started: String,
    /// End time (RFC 3339, UTC), when ended.
    pub ended: Option<String>,
}

/// A language model's validation scores, as results.csv names them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LmScores {
    /// Validation loss of the last evaluation (nats per token).
    pub final_val_loss: f64,
    /// The lowest validation loss of any evaluation.
    pub best_val_loss: f64,
    /// The evaluation (1-based) that gave it.
    pub best_eval: usize,
    /// Bits per token of the last evaluation (loss / ln 2).
    pub final_val_bpc: f64,
    /// Perplexity of the last evaluation (e^loss).
    pub final_val_perplexity: f64,
    /// Next-token accuracy of the last evaluation (0–1).
    pub final_val_acc: f64,
}

impl LmScores {
    /// The scores of a language model's final and best evaluations.
    pub fn of(last: &Scores, best: &Scores) -> Self {
        Self {
            final_val_loss: last.test_loss,
            best_val_loss: best.test_loss,
            best_eval: best.epoch,
            final_val_bpc: last.test_loss / std::f64::consts::LN_2,
            final_val_perplexity: last.test_loss.exp(),
            final_val_acc: last.test_acc,
        }
    }
}

/// Code versions recorded with a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    /// `git describe --always --dirty` of the working directory, or `unknown`.
    pub git: String,
    /// Version of qatlab.
    pub qatlab: String,
    /// Version of the training backend.
    pub dfdx: String,
}

impl Versions {
    /// Versions of the running code.
    pub fn current() -> Self {
        let git = std::process::Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Self { git, qatlab: env!("CARGO_PKG_VERSION").into(), dfdx: "0.13".into() }
    }
}

/// Current time as RFC 3339 (seconds, UTC).
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// This machine's host name, or `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// What happened to one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Position in the plan.
    pub index: usize,
    /// Its directory.
    pub dir: PathBuf,
    /// Its final record.
    pub record: RunRecord,
    /// True when it was not run now (already finished).
    pub skipped: bool,
}
