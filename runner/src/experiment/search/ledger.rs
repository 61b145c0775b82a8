//! The ledger: `<results>/<experiment>/ledger.json`, the record of a search. Each proposal is
//! written (atomically) before its trial starts, with its 0-based index (the `--only` index,
//! fixed for good), its values and its run ids; then how far each trial may train, the value
//! at every rung it reached, and how it ended. Rerunning a search replays it from here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::error::{Error, Result};
use crate::run::write_atomic;

/// The ledger's file name in the experiment's results directory.
pub const LEDGER_FILE: &str = "ledger.json";

/// Where a trial stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    /// Proposed or promoted, training towards its budget (or interrupted while it did).
    Running,
    /// Stopped at a rung (ASHA may still promote it if it climbs into the top 1/η).
    Pruned,
    /// Trained its whole budget.
    Finished,
    /// A run of it failed or diverged.
    Failed,
}

/// One trial.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Index from 0, in proposal order.
    pub trial: usize,
    /// The values it sets, path → value, in the space's order.
    pub values: Mapping,
    /// The run ids of its seeds.
    pub runs: Vec<String>,
    /// Where it stands.
    pub state: TrialState,
    /// Evaluations it may train (None: all of them).
    pub budget: Option<usize>,
    /// The metric at each rung it reached (mean over its seeds).
    #[serde(default)]
    pub rungs: Vec<f64>,
    /// The metric of its last evaluation so far (`use: best`: its best), mean over its seeds.
    pub value: Option<f64>,
    /// Evaluations done (the fewest of its seeds).
    #[serde(default)]
    pub evaluations: usize,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Trial {
    /// The values as (path, value) pairs.
    pub fn pairs(&self) -> Vec<(String, Value)> {
        self.values.iter().map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v.clone())).collect()
    }
}

/// A job's end: which trial, how many evaluations it then had, and its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The trial.
    pub trial: usize,
    /// Its evaluations after the job.
    pub evaluations: usize,
    /// Its state after the job.
    pub state: TrialState,
}

/// The whole ledger.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The search's settings but `trials` ([`super::SearchSpec::identity`]).
    pub search: String,
    /// Trials in index order.
    pub trials: Vec<Trial>,
    /// Jobs in the order they ended (so the compute spent can be replayed in order).
    #[serde(default)]
    pub reports: Vec<Report>,
}

impl Ledger {
    /// The ledger file of an experiment directory.
    pub fn path(experiment_dir: &Path) -> PathBuf {
        experiment_dir.join(LEDGER_FILE)
    }

    /// Read the ledger in `experiment_dir`, if there is one.
    pub fn read(experiment_dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(experiment_dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Config(format!(
                "{}: not a readable ledger ({e}); move it away or rerun with --force to start the search over",
                path.display()
            ))
        })
    }

    /// Write it atomically.
    pub fn write(&self, experiment_dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a ledger serialises");
        write_atomic(&Self::path(experiment_dir), &json)
    }
}
