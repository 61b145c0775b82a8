//! Executing a [`RunPlan`]: runs in parallel (`--jobs`), each single-threaded inside its own
//! one-thread rayon pool (dfdx's matmul asks rayon for its thread count); each run's directory
//! kept current as it goes (checkpoint every epoch); a failing, diverging or panicking run is
//! recorded and the sweep goes on; `results.csv` rewritten after every run.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use qatlab_core::{config::RunConfig, Registry};

use crate::data::RunData;
use crate::error::{Error, Result};
use crate::experiment::{PlannedRun, RunPlan};
use crate::report::results::write_results_csv;
use crate::report::tensorboard::{write_experiment, RunLog, HISTOGRAM_EVERY};
use crate::run::{host_name, now, run_id, Outcome, RunDir, RunRecord, Scores, Status, Versions};
use crate::train::{train, Checkpoint, EpochMetrics, Observer};

/// How to execute a plan.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Root of the results tree (`results/`).
    pub results: PathBuf,
    /// Rerun every selected run from scratch.
    pub force: bool,
    /// Rerun failed and diverged runs.
    pub retry_failed: bool,
    /// Log lines instead of progress bars.
    pub quiet: bool,
    /// Runs in parallel.
    pub jobs: usize,
}

/// Set by the Ctrl-C handler; runs stop at the next step and stay resumable.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The experiment's directory under the results root.
pub fn experiment_dir(results: &Path, plan: &RunPlan) -> PathBuf {
    results.join(&plan.experiment)
}

/// Run the runs of `plan` at `selected` indices; results.csv covers every run of the plan.
pub fn execute(
    plan: &RunPlan,
    selected: &[usize],
    registry: &Registry,
    options: &ExecOptions,
) -> Result<Vec<Outcome>> {
    let teacher_dirs = train_teachers(plan, registry, options)?;
    let resolved: Vec<PlannedRun> = plan.runs.iter().map(|r| with_teacher_dir(r, &teacher_dirs)).collect();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; plan.runs.len()];
    let mut todo = Vec::new();
    for &i in selected {
        let run = &plan.runs[i];
        let dir = RunDir::new(&options.results, &run.config);
        let previous = dir.read_record();
        let finished = match previous.as_ref().map(|r| r.status) {
            Some(Status::Success) => !options.force,
            Some(Status::Failed | Status::Diverged) => !options.force && !options.retry_failed,
            _ => false,
        };
        match (finished, previous) {
            (true, Some(record)) => {
                outcomes[i] = Some(Outcome { index: i, dir: dir.path, record, skipped: true })
            }
            _ => {
                if options.force || previous_failed(&dir) {
                    dir.remove_checkpoint();
                }
                todo.push(i);
            }
        }
    }
    let datasets = load_datasets(plan, &todo)?;
    let root = experiment_dir(&options.results, plan);
    write_experiment(&root, plan).map_err(|e| Error::io(&root, e))?;
    let progress = SweepProgress::new(todo.len(), options.quiet, plan.language_models());
    let next = AtomicUsize::new(0);
    let done = Mutex::new(outcomes);
    let csv_lock = Mutex::new(());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1).min(todo.len().max(1)) {
            scope.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = todo.get(k) else { break };
                if INTERRUPTED.load(Ordering::SeqCst) {
                    break;
                }
                let run = &resolved[i];
                let data = &datasets[&data_key(&run.config)];
                let dir = RunDir::new(&options.results, &run.config);
                match run_isolated(run, &plan.swept, registry, data, &dir, &progress, None) {
                    Ok(record) => {
                        progress.finished(&record);
                        done.lock().expect("no panics hold this lock")[i] =
                            Some(Outcome { index: i, dir: dir.path, record, skipped: false });
                        let _guard = csv_lock.lock().expect("no panics hold this lock");
                        if let Err(e) = write_results_csv(plan, &options.results) {
                            first_error.lock().expect("no panics hold this lock").get_or_insert(e);
                        }
                    }
                    Err(e) => {
                        first_error.lock().expect("no panics hold this lock").get_or_insert(e);
                    }
                }
            });
        }
    });
    progress.clear();
    write_results_csv(plan, &options.results)?;
    if let Some(e) = first_error.into_inner().expect("threads joined") {
        return Err(e);
    }
    Ok(done.into_inner().expect("threads joined").into_iter().flatten().collect())
}

/// Train the plan's named teachers (resuming like any sweep) and return where each lives.
pub(crate) fn train_teachers(
    plan: &RunPlan,
    registry: &Registry,
    options: &ExecOptions,
) -> Result<HashMap<String, String>> {
    if plan.teachers.is_empty() {
        return Ok(HashMap::new());
    }
    let runs: Vec<PlannedRun> = plan.teachers.iter().map(|(_, r)| r.clone()).collect();
    let teacher_plan = RunPlan {
        file: plan.file.clone(),
        experiment: runs[0].config.name.clone(),
        swept: vec!["teacher".into()],
        runs,
        teachers: Vec::new(),
        search: None,
    };
    let all: Vec<usize> = (0..teacher_plan.runs.len()).collect();
    let outcomes = execute(&teacher_plan, &all, registry, options)?;
    let mut dirs = HashMap::new();
    for ((name, _), outcome) in plan.teachers.iter().zip(&outcomes) {
        if outcome.record.status != Status::Success {
            return Err(Error::Config(format!(
                "teacher `{name}` did not finish ({:?}: {}); see {}",
                outcome.record.status,
                outcome.record.error.as_deref().unwrap_or("no error recorded"),
                outcome.dir.display()
            )));
        }
        dirs.insert(name.clone(), outcome.dir.display().to_string());
    }
    Ok(dirs)
}

/// `run` with its named teacher pointed at the directory it was trained in (the config's
/// identity, and so its run id, keeps the name).
pub(crate) fn with_teacher_dir(run: &PlannedRun, teacher_dirs: &HashMap<String, String>) -> PlannedRun {
    let mut run = run.clone();
    if let Some(distill) = run.config.train.distill.as_mut() {
        distill.resolved_dir = teacher_dirs.get(&distill.teacher).cloned();
    }
    run
}

fn previous_failed(dir: &RunDir) -> bool {
    dir.read_record().is_some_and(|r| matches!(r.status, Status::Failed | Status::Diverged))
}

pub(crate) fn data_key(config: &RunConfig) -> String {
    serde_yaml::to_string(&config.data).unwrap_or_default()
}

/// Load each distinct dataset configuration the runs need, once.
fn load_datasets(plan: &RunPlan, todo: &[usize]) -> Result<HashMap<String, Arc<RunData>>> {
    let mut map = HashMap::new();
    for &i in todo {
        let config = &plan.runs[i].config;
        let key = data_key(config);
        if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(key) {
            slot.insert(Arc::new(RunData::load(&config.data)?));
        }
    }
    Ok(map)
}

/// Run one planned run; a panic inside it becomes a failed run. With a `budget`, the run stops
/// (status `pruned`, resumable) once it has that many evaluations.
pub(crate) fn run_isolated(
    run: &PlannedRun,
    swept: &[String],
    registry: &Registry,
    data: &RunData,
    dir: &RunDir,
    progress: &SweepProgress,
    budget: Option<usize>,
) -> Result<RunRecord> {
    dir.write_config(&run.config)?;
    let mut log = RunLog::start(&dir.path, run, swept);
    let result =
        catch_unwind(AssertUnwindSafe(|| run_one(run, registry, data, dir, progress, &mut log, budget)));
    match result {
        Ok(r) => r,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let mut record = dir.read_record().unwrap_or_else(|| new_record(&run.config));
            record.status = Status::Failed;
            record.error = Some(format!("panicked: {message}"));
            record.ended = Some(now());
            dir.write_record(&record)?;
            log.end(Status::Failed);
            Ok(record)
        }
    }
}

fn new_record(config: &RunConfig) -> RunRecord {
    RunRecord {
        run_id: run_id(config),
        experiment: config.name.clone(),
        status: Status::Running,
        error: None,
        final_scores: None,
        best: None,
        weights: 0,
        total_bits: 0.0,
        sparsity: 0.0,
        post_quantized: Default::default(),
        analysis: None,
        swa_test_acc: None,
        language_model: None,
        samples_per_s: 0.0,
        wall_s: 0.0,
        versions: Versions::current(),
        host: host_name(),
        started: now(),
        ended: None,
    }
}

/// Train one run (resuming from its checkpoint when there is one) and keep its directory
/// current; a training error ends up in `run.json`. Ctrl-C leaves it `running` and resumable;
/// reaching `budget` evaluations leaves it `pruned` and resumable.
pub fn run_one(
    run: &PlannedRun,
    registry: &Registry,
    data: &RunData,
    dir: &RunDir,
    progress: &SweepProgress,
    log: &mut RunLog,
    budget: Option<usize>,
) -> Result<RunRecord> {
    let config = &run.config;
    let resume = dir.read_checkpoint(config)?;
    let mut record = new_record(config);
    let earlier_wall = dir.read_record().filter(|_| resume.is_some()).map_or(0.0, |r| r.wall_s);
    dir.write_record(&record)?;
    let started = Instant::now();
    let mut observer = RunObserver::new(config, data, dir, progress, log);
    observer.stop_after = budget;
    let result = single_threaded(|| train(config, registry, data, &mut observer, resume.as_ref()));
    observer.finish();
    if let Some(e) = observer.write_error.take() {
        return Err(e);
    }
    record.wall_s = earlier_wall + started.elapsed().as_secs_f64();
    let history = &observer.history;
    record.final_scores = history.last().map(Scores::of);
    // the best evaluation: the highest validation accuracy (test accuracy without a validation
    // split), or a language model's lowest validation loss
    record.best = if data.text.is_some() {
        history.iter().min_by(|a, b| a.test_loss.total_cmp(&b.test_loss)).map(Scores::of)
    } else {
        let selected = |m: &EpochMetrics| m.val_acc.unwrap_or(m.test_acc);
        history.iter().max_by(|a, b| selected(a).total_cmp(&selected(b))).map(Scores::of)
    };
    if let (Some(last), Some(best), true) = (&record.final_scores, &record.best, data.text.is_some()) {
        record.language_model = Some(crate::run::LmScores::of(last, best));
    }
    record.samples_per_s = history.iter().map(|m| m.samples_per_s).sum::<f64>() / history.len().max(1) as f64;
    record.sparsity = history.last().map_or(0.0, |m| {
        m.layers.iter().map(|l| l.sparsity as f64).sum::<f64>() / m.layers.len().max(1) as f64
    });
    match result {
        Ok(mut finished) => {
            // classifier analysis (confusion, calibration, per-layer sensitivity on the test set);
            // a language model writes a sample of its text instead
            match &data.text {
                None => {
                    record.analysis =
                        Some(crate::train::analysis::analyze(&mut finished.trainer, &data.test)?)
                }
                Some(text) => write_sample(&mut finished.trainer, text, dir)?,
            }
            record.swa_test_acc = finished.swa_test_acc;
            record.status = Status::Success;
            record.total_bits = finished.total_bits;
            record.weights = finished.trainer.net.weight_count();
            record.post_quantized = finished.post_quantized.into_iter().collect();
        }
        Err(Error::Interrupted) if !INTERRUPTED.load(Ordering::SeqCst) && observer.budget_reached() => {
            record.status = Status::Pruned;
        }
        Err(Error::Interrupted) => {
            dir.write_record(&record)?;
            return Err(Error::Interrupted);
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
    record.ended = Some(now());
    dir.write_record(&record)?;
    observer.log.end(record.status);
    Ok(record)
}

/// Run `f` with rayon (and so dfdx's matmul) limited to the calling thread.
pub fn single_threaded<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

/// The sweep's terminal output: an overall bar (runs done, ETA, best accuracy) and a line per
/// active run; or, with `--quiet`, plain log lines.
pub struct SweepProgress {
    multi: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    /// The best final score so far: test accuracy, or the lowest validation loss.
    best: Mutex<Option<f64>>,
    /// Whether the runs are language models (scored by validation loss).
    language_models: bool,
}

impl SweepProgress {
    /// Progress for `runs` runs (of language models: scored by validation loss).
    pub fn new(runs: usize, quiet: bool, language_models: bool) -> Self {
        if quiet || runs == 0 {
            return Self { multi: None, overall: None, best: Mutex::new(None), language_models };
        }
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(runs as u64));
        overall.set_style(
            ProgressStyle::with_template("runs {pos}/{len} [{bar:30}] {elapsed}<{eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        overall.enable_steady_tick(std::time::Duration::from_millis(500));
        Self { multi: Some(multi), overall: Some(overall), best: Mutex::new(None), language_models }
    }

    /// Progress that prints nothing but log lines (one run outside a sweep).
    pub fn quiet() -> Self {
        Self::new(0, true, false)
    }

    fn run_bar(&self, label: &str, len: u64) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let bar = multi.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("  {prefix} [{bar:25}] {percent:>3}% {elapsed}<{eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Some(bar)
    }

    /// Count a finished run and show the best score so far.
    pub(crate) fn finished(&self, record: &RunRecord) {
        let scores = record.final_scores.as_ref();
        let (score, better): (f64, fn(f64, f64) -> bool) = if self.language_models {
            (scores.map_or(f64::NAN, |s| s.test_loss), |new, old| new < old)
        } else {
            (scores.map_or(0.0, |s| s.test_acc), |new, old| new > old)
        };
        let shown = |v: f64| {
            if self.language_models {
                format!("val loss {v:.4}")
            } else {
                format!("test {:.2}%", 100.0 * v)
            }
        };
        let mut best = self.best.lock().expect("no panics hold this lock");
        if score.is_finite() && best.is_none_or(|b| better(score, b)) {
            *best = Some(score);
        }
        match &self.overall {
            Some(bar) => {
                bar.inc(1);
                if let Some(b) = *best {
                    bar.set_message(format!("best {}", shown(b)));
                }
            }
            None => {
                eprintln!("{}/{}: {:?}, {}", record.experiment, record.run_id, record.status, shown(score))
            }
        }
    }

    /// Remove the bars.
    pub(crate) fn clear(&self) {
        if let Some(bar) = &self.overall {
            bar.finish_and_clear();
        }
    }
}

/// Observer of one run: checkpoints and `metrics.csv` every epoch, progress, Ctrl-C.
struct RunObserver<'a> {
    log: &'a mut RunLog,
    bar: Option<ProgressBar>,
    dir: &'a RunDir,
    history: Vec<EpochMetrics>,
    write_error: Option<Error>,
    epoch_size: u64,
    label: String,
    epochs: usize,
    /// Steps per evaluation and total steps of a language model (None: a classifier's epochs).
    steps_per_eval: Option<(usize, usize)>,
    /// Stop once this many evaluations are done (a search's rung).
    stop_after: Option<usize>,
}

impl<'a> RunObserver<'a> {
    fn new(
        config: &RunConfig,
        data: &RunData,
        dir: &'a RunDir,
        progress: &SweepProgress,
        log: &'a mut RunLog,
    ) -> Self {
        let augment_factor = if config.data.augment { 2 } else { 1 };
        // a run by steps: an epoch is an evaluation interval, its progress counted in steps
        let (epoch_size, epochs) = match config.steps_per_eval() {
            Some((every, steps)) => (every as u64, steps.div_ceil(every)),
            None => ((data.train.len() * augment_factor) as u64, config.train.epochs),
        };
        let label = format!("{}/{}", config.name, run_id(config));
        let bar = progress.run_bar(&label, epoch_size * epochs as u64);
        let steps_per_eval = config.train.steps.map(|steps| (epoch_size as usize, steps));
        Self {
            bar,
            dir,
            history: Vec::new(),
            write_error: None,
            epoch_size,
            label,
            log,
            epochs,
            steps_per_eval,
            stop_after: None,
        }
    }

    /// Whether the run has the evaluations its budget allows.
    fn budget_reached(&self) -> bool {
        self.stop_after.is_some_and(|n| self.history.len() >= n)
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for RunObserver<'_> {
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
        let line = match self.steps_per_eval {
            Some((every, steps)) => format!(
                "step {:>6}  train loss {:.4}  val loss {:.4} ({:.3} bits/token, perplexity {:.2})  {:.0} tokens/s",
                (m.epoch * every).min(steps),
                m.train_loss,
                m.test_loss,
                m.test_loss / std::f64::consts::LN_2,
                m.test_loss.exp(),
                m.samples_per_s
            ),
            None => format!(
                "epoch {:>3}  loss {:.4}  train {:.2}%  {}test {:.2}%  {:.0} samples/s",
                m.epoch,
                m.train_loss,
                100.0 * m.train_acc,
                m.val_acc.map_or(String::new(), |v| format!("val {:.2}%  ", 100.0 * v)),
                100.0 * m.test_acc,
                m.samples_per_s
            ),
        };
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None => eprintln!("{}: {line}", self.label),
        }
    }

    /// Checkpoint first, then log the epoch to TensorBoard, so a resumed run never logs an
    /// epoch twice.
    fn on_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.dir.write_checkpoint(checkpoint)?;
        if let Some(m) = checkpoint.history().last() {
            let with_histograms = m.epoch % HISTOGRAM_EVERY == 0 || m.epoch == self.epochs || m.epoch == 1;
            let weights: Vec<(String, &[f32])> = if with_histograms {
                checkpoint.layer_weights().map(|(path, w)| (path.to_string(), w)).collect()
            } else {
                Vec::new()
            };
            self.log.epoch(m, &weights);
        }
        Ok(())
    }

    fn interrupted(&self) -> bool {
        INTERRUPTED.load(Ordering::Relaxed) || self.budget_reached()
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

/// A finished language model's `sample.txt`: [`DEFAULT_TOKENS`](crate::train::sample) tokens
/// after a newline, with `qat sample`'s defaults.
fn write_sample(
    trainer: &mut crate::train::Trainer,
    text: &crate::data::text::Text,
    dir: &RunDir,
) -> Result<()> {
    use crate::train::sample::{
        DEFAULT_PROMPT, DEFAULT_SEED, DEFAULT_TEMPERATURE, DEFAULT_TOKENS, DEFAULT_TOP_K,
    };
    let mut sampler =
        qatlab_deploy::sample::Sampler::new(DEFAULT_TEMPERATURE, Some(DEFAULT_TOP_K), DEFAULT_SEED);
    let sample = trainer.sample(text, DEFAULT_PROMPT, DEFAULT_TOKENS, &mut sampler)?;
    crate::run::write_atomic(&dir.path.join("sample.txt"), sample.as_bytes())
}
