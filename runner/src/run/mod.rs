//! Run directories: `results/<experiment>/<run id>/` and the files in it (config, record,
//! metrics, checkpoint), each written atomically. The run id is the hash of the resolved config.

pub mod dir;
pub mod record;

pub use dir::{config_yaml, metrics_csv, run_id, write_atomic, RunDir};
pub use record::{host_name, now, LmScores, Outcome, RunRecord, Scores, Status, Versions};
