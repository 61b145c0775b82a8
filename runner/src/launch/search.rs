//! Running a `sweep.search` on this machine: workers (`--jobs`) take the next job from the
//! schedule (a trial left running, an ASHA promotion, or a new proposal), train the trial's
//! runs to its budget, and record what they reached in the ledger, which is written before
//! each job starts and after it ends. A rerun replays the ledger: the same trials, resumed
//! from their checkpoints, then the search goes on. With `--jobs 1` every decision depends
//! only on the ledger, so the search is reproducible from its seed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use qatlab_core::{config::RunConfig, Registry};
use serde_yaml::{Mapping, Value};

use super::local::{
    data_key, experiment_dir, run_isolated, train_teachers, with_teacher_dir, ExecOptions, SweepProgress,
    INTERRUPTED,
};
use crate::data::RunData;
use crate::error::{Error, Result};
use crate::experiment::search::ledger::{Ledger, Report, Trial, TrialState};
use crate::experiment::search::schedule::{self, Next};
use crate::experiment::search::tpe::Observation;
use crate::experiment::search::{propose, SearchSpec, Use};
use crate::experiment::{PlannedRun, RunPlan, SearchPlan};
use crate::report::search_plots::{write_search_plots, SearchPoints};
use crate::run::{config_yaml, run_id, write_atomic, RunDir, Status};

/// The best trial's resolved config, beside the ledger.
pub const BEST_FILE: &str = "best.yaml";

/// What a job reached.
enum Reached {
    /// A run failed or diverged (its error).
    Failed(String),
    /// The metric per evaluation of each seed; `finished`: every run trained to its end.
    Evaluations { histories: Vec<Vec<f64>>, finished: bool, total: usize },
}

/// Shared state of the workers.
struct State {
    ledger: Ledger,
    /// Each trial's runs, by trial index.
    runs: Vec<Vec<PlannedRun>>,
    in_flight: Vec<usize>,
    /// `--only`: the trials still to run in this invocation (None: the whole search).
    only: Option<Vec<usize>>,
    stop: bool,
    error: Option<Error>,
    /// The rungs of the base config's runs.
    rungs: Vec<usize>,
    /// Trials and evaluations the search may spend.
    limit: schedule::Limit,
}

/// Run (or resume) the search of `plan`; `only` restricts it to trials already in the ledger.
/// Returns the ledger as it ends and the compute its trials spent; writes the search's plots.
pub fn execute_search(
    plan: &RunPlan,
    only: &[String],
    registry: &Registry,
    options: &ExecOptions,
) -> Result<(Ledger, Compute)> {
    let search = plan.search.as_ref().expect("execute_search is given a search plan");
    let root = experiment_dir(&options.results, plan);
    let mut state = open_state(plan, registry, options, &root)?;
    state.only = selection(only, &state.ledger)?;
    let teacher_dirs = train_teachers(plan, registry, options)?;
    let state = Mutex::new(state);
    let wake = Condvar::new();
    let datasets: Mutex<HashMap<String, Arc<RunData>>> = Mutex::new(HashMap::new());
    let forced: Mutex<HashSet<String>> = Mutex::new(HashSet::new());
    let progress = SweepProgress::new(search.spec.trials, options.quiet, plan.language_models());
    let worker = || loop {
        let Some((trial, budget, runs)) = take_job(plan, search, registry, &state, &wake, &root) else {
            return;
        };
        let runs: Vec<PlannedRun> = runs.iter().map(|r| with_teacher_dir(r, &teacher_dirs)).collect();
        let reached = run_trial(plan, &runs, budget, registry, options, &datasets, &forced, &progress);
        let mut st = state.lock().expect("no panics hold this lock");
        st.in_flight.retain(|&t| t != trial);
        match reached {
            Ok(reached) => record(search, &mut st.ledger, trial, reached),
            Err(e) => {
                st.stop = true;
                if !matches!(e, Error::Interrupted) {
                    st.error.get_or_insert(e);
                }
            }
        }
        // a trial run alone (`--only`, as a Slurm array task) leaves the ledger to whoever runs
        // the search: several such tasks end at once, and the next `qat run` reads their runs
        let outputs = if st.only.is_some() {
            crate::report::results::write_results_csv(&materialise(plan, &st.runs), &options.results)
        } else {
            write_outputs(plan, &st, &options.results, &root)
        };
        if let Err(e) = outputs {
            st.error.get_or_insert(e);
            st.stop = true;
        }
        wake.notify_all();
    };
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            scope.spawn(worker);
        }
    });
    progress.clear();
    let st = state.into_inner().expect("threads joined");
    if let Some(e) = st.error {
        return Err(e);
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Error::Interrupted);
    }
    let materialised = materialise(plan, &st.runs);
    crate::report::tensorboard::write_experiment(&root, &materialised).map_err(|e| Error::io(&root, e))?;
    let (compute, spent) = compute(plan, &st.ledger, &st.runs);
    let points = SearchPoints::new(search, &st.ledger, &spent, &compute);
    if let Err(e) = write_search_plots(&root.join("plots"), &points, &plan.experiment) {
        eprintln!("qat: warning: no search plots: {e}");
    }
    Ok((st.ledger, compute))
}

impl State {
    /// The schedule's next job for this state.
    fn next(&self, spec: &SearchSpec) -> Next {
        let loss = |v: f64| spec.loss(v);
        schedule::next(
            &self.ledger.trials,
            &self.in_flight,
            self.limit,
            &self.rungs,
            spec.prune.as_ref(),
            &loss,
        )
    }
}

/// The search's state as a command starts: its ledger ([`open_ledger`]), each trial's runs, and
/// what the schedule needs of the plan (derived once, not per job).
fn open_state(plan: &RunPlan, registry: &Registry, options: &ExecOptions, root: &Path) -> Result<State> {
    let search = plan.search.as_ref().expect("a search plan");
    let spec = &search.spec;
    let (ledger, runs) = open_ledger(plan, search, registry, options, root)?;
    let total = total_evaluations(&plan.first_config());
    // whole runs → evaluations of trials (each trial's evaluation trains one run per seed)
    let seeds = search.seed_list().len().max(1) as f64;
    let evaluations = spec.budget.map(|runs| (runs * total as f64 / seeds + 1e-9) as usize);
    Ok(State {
        ledger,
        runs,
        in_flight: Vec::new(),
        only: None,
        stop: false,
        error: None,
        rungs: schedule::rungs(spec.prune.as_ref(), total),
        limit: schedule::Limit { trials: spec.trials, evaluations },
    })
}

/// The ledger to continue, with each trial's runs: the one on disk if it describes this search
/// (its trials' runs unchanged), a new one otherwise; `--force` discards it (and says so).
fn open_ledger(
    plan: &RunPlan,
    search: &SearchPlan,
    registry: &Registry,
    options: &ExecOptions,
    root: &Path,
) -> Result<(Ledger, Vec<Vec<PlannedRun>>)> {
    let identity = search.spec.identity(&search.seed_list());
    let fresh = Ledger { search: identity.clone(), ..Ledger::default() };
    let path = Ledger::path(root);
    let Some(mut ledger) = Ledger::read(root)? else { return Ok((fresh, Vec::new())) };
    if options.force {
        eprintln!(
            "qat: --force: discarding the ledger {} ({} trials) and starting the search over",
            crate::launch::local::display_path(&path),
            ledger.trials.len()
        );
        return Ok((fresh, Vec::new()));
    }
    if ledger.search != identity {
        return Err(Error::Config(format!(
            "{}: the ledger was written for another search:\n  ledger: {}\n  file:   {}\n\
             only `trials` may change to continue a search; rerun with --force to discard the ledger and start over, or rename the experiment",
            path.display(),
            ledger.search,
            identity
        )));
    }
    let mut runs = Vec::new();
    for t in &ledger.trials {
        search.space.coordinates(&t.pairs()).map_err(|e| {
            Error::Config(format!(
                "{}: trial {}: {e}; rerun with --force to start over",
                path.display(),
                t.trial
            ))
        })?;
        let trial_runs = search.runs(&plan.file, t.trial, &t.pairs(), registry)?;
        let ids: Vec<String> = trial_runs.iter().map(|r| run_id(&r.config)).collect();
        if ids != t.runs {
            return Err(Error::Config(format!(
                "{}: trial {} now gives runs {} where the ledger has {}: the base config changed since the search began; restore it, rename the experiment, or rerun with --force to start over",
                path.display(),
                t.trial,
                ids.join(","),
                t.runs.join(",")
            )));
        }
        runs.push(trial_runs);
    }
    if options.retry_failed {
        ledger
            .trials
            .iter_mut()
            .filter(|t| t.state == TrialState::Failed)
            .for_each(|t| t.state = TrialState::Running);
    }
    Ok((ledger, runs))
}

/// What [`submit_search`] did.
pub struct SearchSubmission {
    /// The trials the array runs (empty: nothing to submit now).
    pub trials: Vec<usize>,
    /// Trials still queued or training from earlier arrays.
    pub in_flight: usize,
    /// The array.
    pub submitted: super::slurm::Submitted,
    /// The ledger after this call.
    pub ledger: Ledger,
}

/// `qat run --launcher slurm` of a search: enter what the trials of earlier arrays reached (read
/// from their run directories), then propose or promote up to `per_submit` trials, write them
/// to the ledger and submit them as one job array (task = trial index, `qat run --only`). Each
/// later call proposes the next batch from what has finished; nothing watches the queue.
pub fn submit_search(
    plan: &RunPlan,
    registry: &Registry,
    options: &ExecOptions,
    per_submit: usize,
    slurm: &super::slurm::SlurmOptions,
) -> Result<SearchSubmission> {
    let search = plan.search.as_ref().expect("submit_search is given a search plan");
    let root = experiment_dir(&options.results, plan);
    let mut st = open_state(plan, registry, options, &root)?;
    for trial in 0..st.ledger.trials.len() {
        if st.ledger.trials[trial].state != TrialState::Running {
            continue;
        }
        let budget = st.ledger.trials[trial].budget;
        match observe(plan, &st.runs[trial], budget, &options.results)? {
            Some(reached) => record(search, &mut st.ledger, trial, reached),
            None => st.in_flight.push(trial),
        }
    }
    let in_flight = st.in_flight.len();
    let mut batch = Vec::new();
    while batch.len() < per_submit {
        let trial = match st.next(&search.spec) {
            Next::Resume { trial, budget } => {
                let t = &mut st.ledger.trials[trial];
                t.state = TrialState::Running;
                t.budget = budget;
                trial
            }
            Next::Propose => propose_trial(plan, search, registry, &mut st)?,
            Next::Wait | Next::Done => break,
        };
        st.in_flight.push(trial);
        batch.push(trial);
    }
    if options.force {
        // --force trains the submitted trials afresh (the tasks themselves keep the ledger)
        for run in batch.iter().flat_map(|&t| &st.runs[t]) {
            let dir = RunDir::new(&options.results, &run.config);
            dir.remove_checkpoint();
            let _ = std::fs::remove_file(dir.path.join("run.json"));
        }
    }
    write_outputs(plan, &st, &options.results, &root)?;
    let submitted =
        super::slurm::submit_array(&materialise(plan, &st.runs), &batch, &options.results, false, slurm)?;
    Ok(SearchSubmission { trials: batch, in_flight, submitted, ledger: st.ledger })
}

/// `--only` for a search: trial indices (or run ids) of trials already in the ledger.
fn selection(only: &[String], ledger: &Ledger) -> Result<Option<Vec<usize>>> {
    if only.is_empty() {
        return Ok(None);
    }
    let mut picked = Vec::new();
    for want in only.iter().flat_map(|o| o.split(',')).map(str::trim) {
        let hit = match want.parse::<usize>() {
            Ok(i) => ledger.trials.get(i).map(|t| t.trial),
            Err(_) => ledger.trials.iter().find(|t| t.runs.iter().any(|r| r == want)).map(|t| t.trial),
        };
        match hit {
            Some(i) if !picked.contains(&i) => picked.push(i),
            Some(_) => {}
            None => {
                return Err(Error::Config(format!(
                    "--only {want}: the ledger holds trials 0 to {} and no such run id; run the search without --only to propose more (see `qat list`)",
                    ledger.trials.len() as i64 - 1
                )))
            }
        }
    }
    Ok(Some(picked))
}

/// The next job for a worker (trial, budget, its runs), marking it in flight and writing the
/// ledger before it starts; None when the worker should stop.
fn take_job(
    plan: &RunPlan,
    search: &SearchPlan,
    registry: &Registry,
    state: &Mutex<State>,
    wake: &Condvar,
    root: &Path,
) -> Option<(usize, Option<usize>, Vec<PlannedRun>)> {
    let mut st = state.lock().expect("no panics hold this lock");
    loop {
        if st.stop || INTERRUPTED.load(Ordering::SeqCst) {
            return None;
        }
        let next = match &st.only {
            Some(only) => match only.iter().find(|t| !st.in_flight.contains(t)) {
                Some(&trial) => Next::Resume { trial, budget: st.ledger.trials[trial].budget },
                None if st.in_flight.is_empty() => Next::Done,
                None => Next::Wait,
            },
            None => st.next(&search.spec),
        };
        let trial = match next {
            Next::Resume { trial, budget } => {
                if let Some(only) = st.only.as_mut() {
                    only.retain(|&t| t != trial);
                }
                let t = &mut st.ledger.trials[trial];
                t.state = TrialState::Running;
                t.budget = budget;
                trial
            }
            Next::Propose => match propose_trial(plan, search, registry, &mut st) {
                Ok(trial) => trial,
                Err(e) => {
                    st.error.get_or_insert(e);
                    st.stop = true;
                    wake.notify_all();
                    return None;
                }
            },
            Next::Wait => {
                st = wake.wait(st).expect("no panics hold this lock");
                continue;
            }
            Next::Done => {
                wake.notify_all();
                return None;
            }
        };
        st.in_flight.push(trial);
        // `--only` leaves the ledger to whoever runs the search (see `execute_search`)
        if st.only.is_none() {
            if let Err(e) = st.ledger.write(root) {
                st.error.get_or_insert(e);
                st.stop = true;
                return None;
            }
        }
        return Some((trial, st.ledger.trials[trial].budget, st.runs[trial].clone()));
    }
}

/// Propose the next trial from the trials that have reported, and add it to the ledger.
fn propose_trial(plan: &RunPlan, search: &SearchPlan, registry: &Registry, st: &mut State) -> Result<usize> {
    let spec = &search.spec;
    let space = &search.space;
    let index = st.ledger.trials.len();
    let history: Vec<Observation> = st
        .ledger
        .trials
        .iter()
        .filter_map(|t| {
            let point = space.coordinates(&t.pairs()).ok()?;
            match (t.state, t.value) {
                (TrialState::Failed, _) => Some(Observation { point, value: f64::INFINITY, level: 0 }),
                (TrialState::Finished, Some(v)) => {
                    Some(Observation { point, value: spec.loss(v), level: usize::MAX })
                }
                (TrialState::Pruned, Some(v)) => {
                    Some(Observation { point, value: spec.loss(v), level: t.rungs.len() })
                }
                _ => None,
            }
        })
        .collect();
    let taken: Vec<Vec<f64>> =
        st.ledger.trials.iter().filter_map(|t| space.coordinates(&t.pairs()).ok()).collect();
    let point = propose(spec, space, index, &history, &taken);
    let (values, _) = space.values(&point);
    let runs = search.runs(&plan.file, index, &values, registry)?;
    let rungs = schedule::rungs(spec.prune.as_ref(), total_evaluations(&runs[0].config));
    st.ledger.trials.push(Trial {
        trial: index,
        values: values.iter().map(|(k, v)| (Value::from(k.as_str()), v.clone())).collect::<Mapping>(),
        runs: runs.iter().map(|r| run_id(&r.config)).collect(),
        state: TrialState::Running,
        budget: (rungs.len() > 1).then(|| rungs[0]),
        rungs: Vec::new(),
        value: None,
        evaluations: 0,
        error: None,
    });
    st.runs.push(runs);
    Ok(index)
}

/// What the search trained: the sum over its runs of what each trained, and what one whole run
/// trains, in `unit` (tokens for language models, epochs for classifiers).
#[derive(Clone, Debug, PartialEq)]
pub struct Compute {
    /// Trained by all runs of all trials so far.
    pub trained: f64,
    /// Trained by one run from start to end.
    pub whole_run: f64,
    /// `tokens` or `epochs`.
    pub unit: &'static str,
}

/// The compute the ledger's trials spent (each run's evaluations, in tokens: steps × batch ×
/// accumulation × context, or epochs), and what each of its reports added, in order.
pub fn compute(plan: &RunPlan, ledger: &Ledger, runs: &[Vec<PlannedRun>]) -> (Compute, Vec<f64>) {
    let base = plan.first_config();
    let (whole_run, unit) = trained(&base, total_evaluations(&base));
    let of = |trial: usize, evaluations: usize| -> f64 {
        runs[trial].iter().map(|r| trained(&r.config, evaluations).0).sum()
    };
    let mut before = vec![0usize; ledger.trials.len()];
    let spent: Vec<f64> = ledger
        .reports
        .iter()
        .map(|r| {
            let added = of(r.trial, r.evaluations) - of(r.trial, before[r.trial]);
            before[r.trial] = r.evaluations;
            added
        })
        .collect();
    let trained = ledger.trials.iter().map(|t| of(t.trial, t.evaluations)).sum();
    (Compute { trained, whole_run, unit }, spent)
}

/// What a run of `config` trains in its first `evaluations` evaluations, and the unit.
fn trained(config: &RunConfig, evaluations: usize) -> (f64, &'static str) {
    match (config.steps_per_eval(), &config.model.transformer) {
        (Some((every, steps)), Some(t)) => {
            let per_step = config.train.batch_size * config.train.grad_accumulation.max(1) * t.context;
            (((evaluations * every).min(steps) * per_step) as f64, "tokens")
        }
        _ => (evaluations as f64, "epochs"),
    }
}

/// Evaluations of a whole run: its evaluation intervals (a language model) or epochs.
fn total_evaluations(config: &RunConfig) -> usize {
    match config.steps_per_eval() {
        Some((every, steps)) => steps.div_ceil(every),
        None => config.train.epochs,
    }
}

/// Train a trial's runs (one per seed) to `budget` evaluations and read what they reached.
#[allow(clippy::too_many_arguments)]
fn run_trial(
    plan: &RunPlan,
    runs: &[PlannedRun],
    budget: Option<usize>,
    registry: &Registry,
    options: &ExecOptions,
    datasets: &Mutex<HashMap<String, Arc<RunData>>>,
    forced: &Mutex<HashSet<String>>,
    progress: &SweepProgress,
) -> Result<Reached> {
    for run in runs {
        let dir = RunDir::new(&options.results, &run.config);
        let fresh =
            options.force && forced.lock().expect("no panics hold this lock").insert(run_id(&run.config));
        if fresh {
            dir.remove_checkpoint();
        }
        let previous = dir.read_record().filter(|_| !fresh);
        if previous.as_ref().is_some_and(|r| r.status == Status::Success) {
            continue;
        }
        if previous.is_some_and(|r| matches!(r.status, Status::Failed | Status::Diverged)) {
            dir.remove_checkpoint();
        }
        let data = dataset(datasets, &run.config)?;
        let record = run_isolated(run, &plan.swept, registry, &data, &dir, progress, budget)?;
        progress.finished(&record);
        if matches!(record.status, Status::Failed | Status::Diverged) {
            break;
        }
    }
    observe(plan, runs, budget, &options.results)?
        .ok_or_else(|| Error::Config("a trial's runs stopped short of their budget".into()))
}

/// What a trial's runs have reached on disk; None while one of them has still to train to
/// `budget` (not started, training, or stopped at an earlier rung).
fn observe(
    plan: &RunPlan,
    runs: &[PlannedRun],
    budget: Option<usize>,
    results: &Path,
) -> Result<Option<Reached>> {
    let column =
        metric_column(&plan.search.as_ref().expect("a search plan").spec.metric, plan.language_models());
    let mut histories = Vec::new();
    let mut finished = true;
    for run in runs {
        let dir = RunDir::new(results, &run.config);
        let Some(record) = dir.read_record() else { return Ok(None) };
        match record.status {
            Status::Failed | Status::Diverged => {
                return Ok(Some(Reached::Failed(
                    record.error.unwrap_or_else(|| format!("{:?}", record.status)),
                )))
            }
            Status::Running => return Ok(None),
            Status::Success => {}
            Status::Pruned => finished = false,
        }
        let history = dir.read_metric(column)?;
        if record.status == Status::Pruned && history.len() < budget.unwrap_or(usize::MAX) {
            return Ok(None);
        }
        histories.push(history);
    }
    Ok(Some(Reached::Evaluations { histories, finished, total: total_evaluations(&runs[0].config) }))
}

/// The dataset a run needs, loaded once per distinct data config.
fn dataset(datasets: &Mutex<HashMap<String, Arc<RunData>>>, config: &RunConfig) -> Result<Arc<RunData>> {
    let key = data_key(config);
    if let Some(d) = datasets.lock().expect("no panics hold this lock").get(&key) {
        return Ok(d.clone());
    }
    let data = Arc::new(RunData::load(&config.data)?);
    datasets.lock().expect("no panics hold this lock").insert(key, data.clone());
    Ok(data)
}

/// The `metrics.csv` column of a search metric (a language model's validation windows are its
/// test columns; held-out images have their own).
fn metric_column(metric: &str, language_model: bool) -> &str {
    match (metric, language_model) {
        ("val_loss", true) => "test_loss",
        ("val_acc", true) => "test_acc",
        (other, _) => other,
    }
}

/// Enter what a job reached into the ledger (see [`update`]) and report the job's end; a job
/// that changed nothing (`--only` of a finished trial) reports nothing.
fn record(search: &SearchPlan, ledger: &mut Ledger, trial: usize, reached: Reached) {
    let before = ledger.trials[trial].evaluations;
    update(search, ledger, trial, reached);
    let t = &ledger.trials[trial];
    let last = ledger.reports.iter().rev().find(|r| r.trial == trial).map(|r| (r.evaluations, r.state));
    if t.evaluations != before || last != Some((t.evaluations, t.state)) {
        ledger.reports.push(Report { trial, evaluations: t.evaluations, state: t.state });
    }
}

/// The rungs a trial passed, its value, and what becomes of it (finished, failed, stopped at a
/// rung, or on to the next rung).
fn update(search: &SearchPlan, ledger: &mut Ledger, trial: usize, reached: Reached) {
    let spec = &search.spec;
    let loss = |v: f64| spec.loss(v);
    let (histories, finished, total) = match reached {
        Reached::Failed(error) => {
            ledger.trials[trial].state = TrialState::Failed;
            ledger.trials[trial].error = Some(error);
            return;
        }
        Reached::Evaluations { histories, finished, total } => (histories, finished, total),
    };
    let evaluations = histories.iter().map(Vec::len).min().unwrap_or(0);
    // the metric after n evaluations, mean over seeds: the n-th, or the best of the first n
    let value_at = |n: usize| -> f64 {
        let per_seed = histories.iter().map(|h| match spec.use_ {
            Use::Last => h[n - 1],
            Use::Best => {
                h[..n].iter().copied().min_by(|a, b| loss(*a).total_cmp(&loss(*b))).unwrap_or(f64::NAN)
            }
        });
        per_seed.sum::<f64>() / histories.len() as f64
    };
    let rungs = schedule::rungs(spec.prune.as_ref(), total);
    let t = &mut ledger.trials[trial];
    t.evaluations = evaluations;
    t.value = (evaluations > 0).then(|| value_at(evaluations));
    while t.rungs.len() < rungs.len() && rungs[t.rungs.len()] <= evaluations {
        t.rungs.push(value_at(rungs[t.rungs.len()]));
    }
    t.error = None;
    if finished {
        t.state = TrialState::Finished;
        t.budget = None;
        return;
    }
    let (Some(prune), Some(k), Some(value)) = (spec.prune.as_ref(), t.rungs.len().checked_sub(1), t.value)
    else {
        t.state = TrialState::Failed;
        t.error =
            Some(format!("its runs stopped after {evaluations} evaluations, before a rung or their end"));
        return;
    };
    let (state, budget) = schedule::at_rung(&ledger.trials, trial, k, value, &rungs, prune, &loss);
    let t = &mut ledger.trials[trial];
    t.state = state;
    t.budget = budget;
}

/// The plan with every trial's runs, for results.csv, TensorBoard and the listings.
pub fn materialise(plan: &RunPlan, runs: &[Vec<PlannedRun>]) -> RunPlan {
    RunPlan { runs: runs.iter().flatten().cloned().collect(), ..plan.clone() }
}

/// The ledger, results.csv and best.yaml after a job.
fn write_outputs(plan: &RunPlan, st: &State, results: &Path, root: &Path) -> Result<()> {
    st.ledger.write(root)?;
    crate::report::results::write_results_csv(&materialise(plan, &st.runs), results)?;
    let spec = &plan.search.as_ref().expect("a search plan").spec;
    if let Some(best) = best_trial(&st.ledger, &|v| spec.loss(v)) {
        write_atomic(
            &root.join(BEST_FILE),
            config_yaml(&st.runs[best].first().expect("a run per seed").config).as_bytes(),
        )?;
    }
    Ok(())
}

/// The finished trial with the best value (the lower index on a tie).
pub fn best_trial(ledger: &Ledger, loss: &dyn Fn(f64) -> f64) -> Option<usize> {
    ledger
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Finished)
        .filter_map(|t| t.value.map(|v| (t.trial, loss(v))))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)))
        .map(|(t, _)| t)
}
