//! Executing a [`RunPlan`]: each run single-threaded (dfdx's matmul asks rayon for its thread
//! count, so a run trains inside its own one-thread pool), its directory written as it goes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use qatlab_core::{config::RunConfig, Registry};

use crate::data::RunData;
use crate::error::{Error, Result};
use crate::experiment::RunPlan;
use crate::outputs::{host_name, now, RunDir, RunRecord, Scores, Status, Versions};
use crate::train::{train, EpochMetrics, Observer};

/// How to execute a plan.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Root of the results tree (`results/`).
    pub results: PathBuf,
    /// Rerun runs that already succeeded.
    pub force: bool,
    /// Log lines instead of a progress bar.
    pub quiet: bool,
}

/// What happened to one run.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Its directory.
    pub dir: PathBuf,
    /// Its final record.
    pub record: RunRecord,
    /// True when it was skipped because it had already succeeded.
    pub skipped: bool,
}

/// Run every run of `plan` in order.
pub fn execute(plan: &RunPlan, registry: &Registry, options: &ExecOptions) -> Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let mut data: Option<RunData> = None;
    for config in &plan.runs {
        let dir = RunDir::new(&options.results, config);
        if let Some(record) = dir.read_record().filter(|r| r.status == Status::Success && !options.force) {
            outcomes.push(Outcome { dir: dir.path, record, skipped: true });
            continue;
        }
        if data.as_ref().is_none_or(|d| d.config != config.data) {
            data = Some(RunData::load(&config.data)?);
        }
        let record = run_one(config, registry, data.as_ref().expect("loaded above"), &dir, options.quiet)?;
        outcomes.push(Outcome { dir: dir.path, record, skipped: false });
    }
    Ok(outcomes)
}

/// Train one run and keep its directory current; a training error ends up in `run.json`.
pub fn run_one(
    config: &RunConfig,
    registry: &Registry,
    data: &RunData,
    dir: &RunDir,
    quiet: bool,
) -> Result<RunRecord> {
    dir.write_config(config)?;
    let mut record = RunRecord {
        run_id: crate::outputs::run_id(config),
        experiment: config.name.clone(),
        status: Status::Running,
        error: None,
        final_scores: None,
        best: None,
        weights: 0,
        total_bits: 0.0,
        samples_per_s: 0.0,
        wall_s: 0.0,
        versions: Versions::current(),
        host: host_name(),
        started: now(),
        ended: None,
    };
    dir.write_record(&record)?;
    let started = Instant::now();
    let mut observer = Progress::new(config, data, dir, quiet);
    let result = single_threaded(|| train(config, registry, data, &mut observer));
    observer.finish();
    if let Some(e) = observer.write_error.take() {
        return Err(e);
    }
    record.wall_s = started.elapsed().as_secs_f64();
    record.ended = Some(now());
    let history = &observer.history;
    record.final_scores = history.last().map(Scores::of);
    record.best = history.iter().max_by(|a, b| a.test_acc.total_cmp(&b.test_acc)).map(Scores::of);
    record.samples_per_s = history.iter().map(|m| m.samples_per_s).sum::<f64>() / history.len().max(1) as f64;
    match result {
        Ok(finished) => {
            record.status = Status::Success;
            record.total_bits = finished.total_bits;
            record.weights = finished.trainer.net.weight_count();
        }
        Err(Error::Diverged(message)) => {
            record.status = Status::Diverged;
            record.error = Some(message);
        }
        Err(e) => {
            record.status = Status::Failed;
            record.error = Some(e.to_string());
        }
    }
    dir.write_record(&record)?;
    Ok(record)
}

/// Run `f` with rayon (and so dfdx's matmul) limited to the calling thread.
pub fn single_threaded<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// Observer that writes `metrics.csv` after every epoch and shows progress.
struct Progress<'a> {
    bar: Option<ProgressBar>,
    dir: &'a RunDir,
    history: Vec<EpochMetrics>,
    write_error: Option<Error>,
    epoch_size: u64,
    label: String,
}

impl<'a> Progress<'a> {
    fn new(config: &RunConfig, data: &RunData, dir: &'a RunDir, quiet: bool) -> Self {
        let augment_factor = if config.data.augment { 2 } else { 1 };
        let epoch_size = (data.train.len() * augment_factor) as u64;
        let label = format!("{}/{}", config.name, crate::outputs::run_id(config));
        let bar = (!quiet).then(|| {
            let bar = ProgressBar::new(epoch_size * config.train.epochs as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {percent:>3}% {elapsed}<{eta} {msg}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            bar
        });
        Self { bar, dir, history: Vec::new(), write_error: None, epoch_size, label }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

impl Observer for Progress<'_> {
    fn on_step(&mut self, epoch: usize, done: usize, _total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(epoch as u64 * self.epoch_size + done as u64);
        }
    }

    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.history.push(m.clone());
        if let Err(e) = self.dir.write_metrics(&self.history) {
            self.write_error.get_or_insert(e);
        }
        let line = format!(
            "epoch {:>3}  loss {:.4}  train {:.2}%  test {:.2}%  {:.0} samples/s",
            m.epoch,
            m.train_loss,
            100.0 * m.train_acc,
            100.0 * m.test_acc,
            m.samples_per_s
        );
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None => eprintln!("{}: {line}", self.label),
        }
    }
}

/// Path relative to the current directory when possible, for short messages.
pub fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}
