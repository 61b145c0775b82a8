//! TensorBoard logging: per-run scalars and weight histograms through tensorboard-rs, and the
//! HParams plugin data (experiment summary at the sweep root, session start/end in each run's
//! own directory) built from tensorboard-proto's generated messages.

use std::path::Path;

use protobuf::well_known_types::{ListValue, Value as PbValue};
use protobuf::{Message, RepeatedField};
use serde_yaml::Value;
use tensorboard_proto::api::{DataType, Experiment, HParamInfo, MetricInfo, MetricName, Status as PbStatus};
use tensorboard_proto::plugin_hparams::{HParamsPluginData, SessionEndInfo, SessionStartInfo};
use tensorboard_proto::summary::{Summary, SummaryMetadata, SummaryMetadata_PluginData, Summary_Value};
use tensorboard_rs::summary::{histogram_raw, scalar};
use tensorboard_rs::summary_writer::FileWriter;

use crate::experiment::sweep::inline;
use crate::experiment::{describe, PlannedRun, RunPlan};
use crate::run::Status;
use crate::train::EpochMetrics;

/// The scalar tags the HParams view shows as metrics.
pub const METRIC_TAGS: [&str; 4] = ["test/accuracy", "test/loss", "train/accuracy", "train/loss"];
/// The same for language models.
pub const LM_METRIC_TAGS: [&str; 4] = ["val/loss", "val/bpc", "val/perplexity", "train/loss"];

/// Weight histograms are written every this many epochs (and at the last).
pub const HISTOGRAM_EVERY: usize = 5;

const EVENTS_PREFIX: &str = "events.out.tfevents.";

fn seconds_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// A summary carrying HParams plugin data under `tag`.
fn hparams_summary(tag: &str, data: &HParamsPluginData) -> Summary {
    let mut plugin = SummaryMetadata_PluginData::new();
    plugin.set_plugin_name("hparams".into());
    plugin.set_content(data.write_to_bytes().expect("hparams messages serialise"));
    let mut metadata = SummaryMetadata::new();
    metadata.set_plugin_data(plugin);
    let mut value = Summary_Value::new();
    value.set_tag(tag.into());
    value.set_metadata(metadata);
    let mut summary = Summary::new();
    summary.set_value(RepeatedField::from_vec(vec![value]));
    summary
}

/// A YAML value as an HParams value: numbers stay numbers, everything else a string.
fn hparam_value(v: &Value) -> PbValue {
    let mut out = PbValue::new();
    match v.as_f64() {
        Some(n) => out.set_number_value(n),
        None => out.set_string_value(inline(v)),
    }
    out
}

/// Session group: the run's overrides without the seed, so replicates group together.
pub fn group_name(run: &PlannedRun) -> String {
    let without_seed: Vec<(String, Value)> =
        run.overrides.iter().filter(|(k, _)| k != "train.seed").cloned().collect();
    describe(&without_seed)
}

/// Write the experiment summary (every swept key with its discrete domain, and the metrics) at
/// the sweep root, replacing an earlier one.
pub fn write_experiment(root: &Path, plan: &RunPlan) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path.is_file() && path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(EVENTS_PREFIX))
        {
            std::fs::remove_file(path)?;
        }
    }
    let mut keys: Vec<String> = plan.swept.clone();
    if !keys.iter().any(|k| k == "train.seed") {
        keys.push("train.seed".into());
    }
    let infos: Vec<HParamInfo> = keys
        .iter()
        .map(|key| {
            let mut values: Vec<Value> = Vec::new();
            for run in &plan.runs {
                let v = value_of(run, key);
                if !values.contains(&v) {
                    values.push(v);
                }
            }
            let numeric = values.iter().all(|v| v.as_f64().is_some());
            let mut info = HParamInfo::new();
            info.set_name(key.clone());
            info.set_field_type(if numeric {
                DataType::DATA_TYPE_FLOAT64
            } else {
                DataType::DATA_TYPE_STRING
            });
            let mut domain = ListValue::new();
            domain.set_values(RepeatedField::from_vec(values.iter().map(hparam_value).collect()));
            info.set_domain_discrete(domain);
            info
        })
        .collect();
    let metrics: Vec<MetricInfo> = (if plan.language_models() { LM_METRIC_TAGS } else { METRIC_TAGS })
        .iter()
        .map(|tag| {
            let mut name = MetricName::new();
            name.set_tag(tag.to_string());
            let mut info = MetricInfo::new();
            info.set_name(name);
            info
        })
        .collect();
    let mut experiment = Experiment::new();
    experiment.set_name(plan.experiment.clone());
    experiment.set_time_created_secs(seconds_now());
    experiment.set_hparam_infos(RepeatedField::from_vec(infos));
    experiment.set_metric_infos(RepeatedField::from_vec(metrics));
    let mut data = HParamsPluginData::new();
    data.set_version(0);
    data.set_experiment(experiment);
    let mut writer = FileWriter::new(root);
    writer.add_summary(hparams_summary("_hparams_/experiment", &data), 0);
    writer.flush();
    Ok(())
}

/// A swept key's value for a run (the override, or the resolved config's value).
fn value_of(run: &PlannedRun, key: &str) -> Value {
    if let Some((_, v)) = run.overrides.iter().find(|(k, _)| k == key) {
        return v.clone();
    }
    let resolved = serde_yaml::to_value(&run.config).unwrap_or_default();
    crate::experiment::sweep::get_path(&resolved, key).cloned().unwrap_or(Value::Null)
}

/// One run's event file in its own directory.
pub struct RunLog {
    writer: FileWriter,
    /// (evaluation interval, total steps) for a language model, whose scalars are logged at
    /// optimizer steps under `val/…` tags.
    steps: Option<(usize, usize)>,
}

impl RunLog {
    /// Open the run's log and write its session start (hparams and group).
    pub fn start(dir: &Path, run: &PlannedRun, swept: &[String]) -> Self {
        let mut writer = FileWriter::new(dir);
        let mut hparams = std::collections::HashMap::new();
        for key in swept.iter().map(String::as_str).chain(["train.seed"]) {
            hparams.insert(key.to_string(), hparam_value(&value_of(run, key)));
        }
        let mut start = SessionStartInfo::new();
        start.set_hparams(hparams);
        start.set_group_name(group_name(run));
        start.set_start_time_secs(seconds_now());
        let mut data = HParamsPluginData::new();
        data.set_version(0);
        data.set_session_start_info(start);
        writer.add_summary(hparams_summary("_hparams_/session_start_info", &data), 0);
        writer.flush();
        Self { writer, steps: run.config.steps_per_eval() }
    }

    /// Scalars of one epoch, and weight histograms of `layers` (parameter path, latent weights)
    /// when given, tagged by path.
    pub fn epoch(&mut self, m: &EpochMetrics, layers: &[(String, &[f32])]) {
        let (step, mut scalars) = match self.steps {
            // a language model: per evaluation, at its optimizer step
            Some((every, steps)) => (
                (m.epoch * every).min(steps),
                vec![
                    ("train/loss", m.train_loss),
                    ("val/loss", m.test_loss),
                    ("val/bpc", m.test_loss / std::f64::consts::LN_2),
                    ("val/perplexity", m.test_loss.exp()),
                    ("val/accuracy", m.test_acc),
                    ("lr", m.lr),
                    ("tokens_per_s", m.samples_per_s),
                ],
            ),
            None => (
                m.epoch,
                vec![
                    ("train/loss", m.train_loss),
                    ("train/accuracy", m.train_acc),
                    ("test/loss", m.test_loss),
                    ("test/accuracy", m.test_acc),
                    ("lr", m.lr),
                    ("activations/positive_fraction", m.positive_fraction),
                ],
            ),
        };
        if let (Some(loss), Some(acc)) = (m.val_loss, m.val_acc) {
            scalars.extend([("val/loss", loss), ("val/accuracy", acc)]);
        }
        for (tag, v) in scalars {
            self.writer.add_summary(scalar(tag, v as f32), step);
        }
        for l in &m.layers {
            self.writer.add_summary(scalar(&format!("{}/scale", l.name), l.scale), step);
            self.writer.add_summary(scalar(&format!("{}/sparsity", l.name), l.sparsity), step);
            self.writer.add_summary(scalar(&format!("{}/entropy", l.name), l.entropy), step);
        }
        for (name, weight) in layers {
            let h = Histogram::of(weight, 30);
            let tag = name.clone();
            let summary =
                histogram_raw(&tag, h.min, h.max, h.count, h.sum, h.sum_squares, &h.limits, &h.counts);
            self.writer.add_summary(summary, step);
        }
        self.writer.flush();
    }

    /// Write the session end with the run's status.
    pub fn end(&mut self, status: Status) {
        let mut end = SessionEndInfo::new();
        // TensorBoard's session states have no "stopped early": a pruned trial ends `unknown`,
        // apart from both the finished and the failed ones
        end.set_status(match status {
            Status::Success => PbStatus::STATUS_SUCCESS,
            Status::Pruned => PbStatus::STATUS_UNKNOWN,
            _ => PbStatus::STATUS_FAILURE,
        });
        end.set_end_time_secs(seconds_now());
        let mut data = HParamsPluginData::new();
        data.set_version(0);
        data.set_session_end_info(end);
        self.writer.add_summary(hparams_summary("_hparams_/session_end_info", &data), 0);
        self.writer.flush();
    }
}

/// A histogram in TensorBoard's raw form: bucket right edges and counts.
pub struct Histogram {
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub count: f64,
    /// Σ v.
    pub sum: f64,
    /// Σ v².
    pub sum_squares: f64,
    /// Right edge of each bucket.
    pub limits: Vec<f64>,
    /// Values per bucket.
    pub counts: Vec<f64>,
}

impl Histogram {
    /// `buckets` equal-width buckets over [min, max].
    pub fn of(values: &[f32], buckets: usize) -> Self {
        let min = values.iter().fold(f64::INFINITY, |m, v| m.min(*v as f64));
        let max = values.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
        let width = ((max - min) / buckets as f64).max(1e-12);
        let mut counts = vec![0.0; buckets];
        for v in values {
            let b = (((*v as f64 - min) / width) as usize).min(buckets - 1);
            counts[b] += 1.0;
        }
        let limits = (1..=buckets).map(|b| min + width * b as f64).collect();
        let sum = values.iter().map(|v| *v as f64).sum();
        let sum_squares = values.iter().map(|v| (*v as f64).powi(2)).sum();
        Self { min, max, count: values.len() as f64, sum, sum_squares, limits, counts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_every_value_once() {
        let h = Histogram::of(&[0.0, 0.5, 1.0, 1.0], 2);
        assert_eq!(h.counts, vec![1.0, 3.0]);
        assert_eq!(h.limits, vec![0.5, 1.0]);
        assert_eq!((h.min, h.max, h.count, h.sum, h.sum_squares), (0.0, 1.0, 4.0, 2.5, 2.25));
    }
}
