//! A run's directory: `config.yaml`, `run.json` and `metrics.csv`, each written atomically
//! (temporary file in the same directory, then rename), so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use qatlab_core::config::RunConfig;
use sha2::{Digest, Sha256};

use super::record::RunRecord;
use crate::error::{Error, Result};
use crate::train::{Checkpoint, EpochMetrics, CHECKPOINT_FILE};

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

/// Run id: the first 10 hex digits of the SHA-256 of the resolved config (seed included). A
/// `dataset: text` file counts by its SHA-256, not its path, so a moved file keeps its runs.
pub fn run_id(config: &RunConfig) -> String {
    let mut hashed = std::borrow::Cow::Borrowed(config);
    if config.data.sha256.is_some() {
        hashed.to_mut().data.path = None;
    }
    let digest = Sha256::digest(config_yaml(&hashed).as_bytes());
    digest.iter().take(5).map(|b| format!("{b:02x}")).collect()
}

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

    /// Write the resumable state (safetensors, one atomic write).
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        write_atomic(&self.path.join(CHECKPOINT_FILE), &checkpoint.to_bytes())
    }

    /// The saved state of the run `config` describes, if there is one (in either format).
    pub fn read_checkpoint(&self, config: &RunConfig) -> Result<Option<Checkpoint>> {
        Checkpoint::read(&self.path, config)
            .map_err(|e| Error::Config(format!("{e}; rerun with --force to start this run over")))
    }

    /// Remove the saved state (for `--force`).
    pub fn remove_checkpoint(&self) {
        Checkpoint::remove_from(&self.path);
    }

    /// One column of `metrics.csv` (`test_loss`, `val_acc`, …), one value per evaluation.
    pub fn read_metric(&self, column: &str) -> Result<Vec<f64>> {
        let path = self.path.join("metrics.csv");
        let error = |e: &dyn std::fmt::Display| Error::Config(format!("{}: {e}", path.display()));
        let mut reader = csv::Reader::from_path(&path).map_err(|e| error(&e))?;
        let c = reader
            .headers()
            .map_err(|e| error(&e))?
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| error(&format!("no column `{column}`")))?;
        reader
            .records()
            .map(|r| {
                let r = r.map_err(|e| error(&e))?;
                r[c].parse::<f64>().map_err(|e| error(&format!("`{}`: {e}", &r[c])))
            })
            .collect()
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
    // the validation columns only where there is a validation split, so other runs' files keep
    // their columns
    let validated = epochs.first().is_some_and(|m| m.val_acc.is_some());
    if validated {
        header.extend(["val_loss", "val_acc"].map(String::from));
    }
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
        if validated {
            row.push(format!("{:.6}", m.val_loss.unwrap_or(f64::NAN)));
            row.push(format!("{:.6}", m.val_acc.unwrap_or(f64::NAN)));
        }
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
