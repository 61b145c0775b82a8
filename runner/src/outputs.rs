//! A run's directory: `config.yaml`, `run.json` and `metrics.csv`, each written atomically
//! (temporary file in the same directory, then rename), so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use qatlab_core::config::RunConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::train::EpochMetrics;

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The resolved config as YAML (the form that is hashed and written).
pub fn config_yaml(config: &RunConfig) -> String {
    serde_yaml::to_string(config).expect("a config always serialises")
}

/// Run id: the first 10 hex digits of the SHA-256 of the resolved config (seed included).
pub fn run_id(config: &RunConfig) -> String {
    let digest = Sha256::digest(config_yaml(config).as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

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
    pub analysis: Option<crate::analysis::Analysis>,
    /// Test accuracy of the stochastic weight average (with `train.swa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swa_test_acc: Option<f64>,
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

/// File name of a run's checkpoint (JSON: f32 values round-trip exactly).
pub const CHECKPOINT: &str = "checkpoint.json";

/// One run's directory under `results/<experiment>/<run id>/`.
pub struct RunDir {
    /// The directory.
    pub path: PathBuf,
}

impl RunDir {
    /// The directory of `config` under `results`.
    pub fn new(results: &Path, config: &RunConfig) -> Self {
        Self { path: results.join(&config.name).join(run_id(config)) }
    }

    /// Write the resolved config.
    pub fn write_config(&self, config: &RunConfig) -> Result<()> {
        write_atomic(&self.path.join("config.yaml"), config_yaml(config).as_bytes())
    }

    /// Write `run.json`.
    pub fn write_record(&self, record: &RunRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).expect("a record always serialises");
        write_atomic(&self.path.join("run.json"), &json)
    }

    /// Read `run.json`, if there is one.
    pub fn read_record(&self) -> Option<RunRecord> {
        let bytes = std::fs::read(self.path.join("run.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Write the resumable state.
    pub fn write_checkpoint(&self, checkpoint: &crate::train::Checkpoint) -> Result<()> {
        let json = serde_json::to_vec(checkpoint).expect("a checkpoint always serialises");
        write_atomic(&self.path.join(CHECKPOINT), &json)
    }

    /// The saved state, if there is a readable one.
    pub fn read_checkpoint(&self) -> Option<crate::train::Checkpoint> {
        let bytes = std::fs::read(self.path.join(CHECKPOINT)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Remove the saved state (for `--force`).
    pub fn remove_checkpoint(&self) {
        let _ = std::fs::remove_file(self.path.join(CHECKPOINT));
    }

    /// Write `metrics.csv`, one row per epoch.
    pub fn write_metrics(&self, epochs: &[EpochMetrics]) -> Result<()> {
        write_atomic(&self.path.join("metrics.csv"), &metrics_csv(epochs))
    }
}

/// The per-epoch metrics as CSV: fixed columns, then `<layer>.scale/sparsity/entropy`.
pub fn metrics_csv(epochs: &[EpochMetrics]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "epoch",
        "train_loss",
        "train_acc",
        "test_loss",
        "test_acc",
        "lr",
        "positive_fraction",
        "samples_per_s",
    ]
    .map(String::from)
    .to_vec();
    if let Some(first) = epochs.first() {
        for layer in &first.layers {
            header.extend(["scale", "sparsity", "entropy", "pruned"].map(|k| format!("{}.{k}", layer.name)));
        }
    }
    w.write_record(&header).expect("in-memory CSV");
    for m in epochs {
        let mut row = vec![
            m.epoch.to_string(),
            format!("{:.6}", m.train_loss),
            format!("{:.6}", m.train_acc),
            format!("{:.6}", m.test_loss),
            format!("{:.6}", m.test_acc),
            format!("{:.8}", m.lr),
            format!("{:.6}", m.positive_fraction),
            format!("{:.0}", m.samples_per_s),
        ];
        for l in &m.layers {
            row.extend([
                format!("{:.6}", l.scale),
                format!("{:.6}", l.sparsity),
                format!("{:.6}", l.entropy),
                l.pruned.to_string(),
            ]);
        }
        w.write_record(&row).expect("in-memory CSV");
    }
    w.into_inner().expect("in-memory CSV")
}
