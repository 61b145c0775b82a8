//! Running a sweep as a Slurm job array. Submission writes everything to files and returns:
//! a manifest (run index → run id, overrides and resolved config), an sbatch script whose task
//! i runs `qat run <file> --only i` (the local code path, so resume, atomic writes and status
//! files behave identically), and the job ids. `qat status` reads it all back.

use std::path::{Path, PathBuf};
use std::process::Command;

use qatlab_core::config::RunConfig;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::error::{Error, Result};
use crate::experiment::{PlannedRun, RunPlan};
use crate::run::{now, run_id, write_atomic, RunDir, Status};

/// Options of `--launcher slurm`.
#[derive(Clone, Debug, Default)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`.
    pub time: Option<String>,
    /// `--cpus-per-task` (each run is single-threaded; 1 by default).
    pub cpus_per_task: usize,
    /// `--mem`.
    pub mem: Option<String>,
    /// At most this many array tasks at once (`%K`).
    pub array_parallelism: Option<usize>,
    /// Extra `#SBATCH` arguments, verbatim.
    pub sbatch_args: Vec<String>,
    /// Write the script, do not submit.
    pub dry_run: bool,
    /// Plugin libraries to pass on to every task.
    pub plugins: Vec<PathBuf>,
    /// `--set` overrides to pass on to every task (they are part of the run ids).
    pub sets: Vec<String>,
}

/// One planned run, as written to the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManifestRun {
    /// Index in the plan (the array task id).
    pub index: usize,
    /// Run id.
    pub run_id: String,
    /// Sweep overrides as (path, value).
    pub overrides: Vec<(String, Value)>,
    /// Resolved config.
    pub config: RunConfig,
}

/// A submitted array.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Submission {
    /// Slurm job id.
    pub job_id: String,
    /// Array task ids (plan indices).
    pub indices: Vec<usize>,
    /// The sbatch script.
    pub script: PathBuf,
    /// When (RFC 3339).
    pub submitted: String,
}

/// `results/<experiment>/slurm/manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// The experiment file.
    pub file: PathBuf,
    /// Experiment name.
    pub experiment: String,
    /// Swept keys.
    pub swept: Vec<String>,
    /// Every run of the plan.
    pub runs: Vec<ManifestRun>,
    /// Arrays submitted so far.
    #[serde(default)]
    pub submissions: Vec<Submission>,
}

impl Manifest {
    /// The plan the manifest describes (for results.csv and plots).
    pub fn plan(&self) -> RunPlan {
        RunPlan {
            file: self.file.clone(),
            experiment: self.experiment.clone(),
            swept: self.swept.clone(),
            runs: self
                .runs
                .iter()
                .map(|r| PlannedRun {
                    index: r.index,
                    config: r.config.clone(),
                    overrides: r.overrides.clone(),
                })
                .collect(),
            teachers: Vec::new(),
            search: None,
        }
    }

    /// Read `dir/slurm/manifest.json`, if any.
    pub fn read(experiment_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(experiment_dir.join("slurm").join("manifest.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write(&self, experiment_dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        write_atomic(&experiment_dir.join("slurm").join("manifest.json"), &json)
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// Quote a word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-=:,%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What `submit` did.
pub struct Submitted {
    /// The script written.
    pub script: PathBuf,
    /// Runs in the array (empty: nothing left to run).
    pub indices: Vec<usize>,
    /// Job id, unless a dry run.
    pub job_id: Option<String>,
    /// Warnings to show the user.
    pub warnings: Vec<String>,
}

/// Write the manifest and the sbatch script for the runs of `selected` that have not succeeded
/// (all of them with `force`), and submit it unless `dry_run`.
pub fn submit(
    plan: &RunPlan,
    selected: &[usize],
    results: &Path,
    force: bool,
    options: &SlurmOptions,
) -> Result<Submitted> {
    let absolute_results = absolute(results)?;
    let indices: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| {
            force
                || RunDir::new(&absolute_results, &plan.runs[i].config)
                    .read_record()
                    .is_none_or(|r| r.status != Status::Success)
        })
        .collect();
    submit_array(plan, &indices, results, force, options)
}

/// Write the manifest (every run of `plan`) and an sbatch script whose array tasks are `indices`
/// (each runs `qat run <file> --only <index>`: a run index, or a search's trial index), and
/// submit it unless `dry_run` or there is nothing to run.
pub fn submit_array(
    plan: &RunPlan,
    indices: &[usize],
    results: &Path,
    force: bool,
    options: &SlurmOptions,
) -> Result<Submitted> {
    // Fetch missing datasets here, once, never inside array tasks.
    for run in plan.runs.iter().filter(|r| indices.contains(&r.index)) {
        let dataset = run.config.data.dataset;
        // a `dataset: text` file was read when the experiment was planned
        if dataset != qatlab_core::config::Dataset::Text {
            crate::data::find_dir(dataset)?;
        }
    }
    let results = absolute(results)?;
    let experiment_dir = results.join(&plan.experiment);
    let slurm_dir = experiment_dir.join("slurm");
    std::fs::create_dir_all(&slurm_dir).map_err(|e| Error::io(&slurm_dir, e))?;
    let mut warnings = Vec::new();
    if results.starts_with(std::env::temp_dir()) {
        warnings.push(format!(
            "{} is under the temporary directory, which compute nodes usually do not share; use --results on a shared filesystem",
            results.display()
        ));
    }
    let previous = Manifest::read(&experiment_dir).map(|m| m.submissions).unwrap_or_default();
    let mut manifest = Manifest {
        file: absolute(&plan.file)?,
        experiment: plan.experiment.clone(),
        swept: plan.swept.clone(),
        runs: plan
            .runs
            .iter()
            .map(|r| ManifestRun {
                index: r.index,
                run_id: run_id(&r.config),
                overrides: r.overrides.clone(),
                config: r.config.clone(),
            })
            .collect(),
        submissions: previous,
    };
    let indices = indices.to_vec();
    let stamp = now().replace([':', '-'], "");
    let script = slurm_dir.join(format!("submit-{stamp}.sh"));
    write_atomic(&script, script_text(plan, &indices, &results, &manifest.file, force, options)?.as_bytes())?;
    manifest.write(&experiment_dir)?;
    if indices.is_empty() || options.dry_run {
        return Ok(Submitted { script, indices, job_id: None, warnings });
    }
    let output = Command::new("sbatch").arg("--parsable").arg(&script).output().map_err(|e| {
        Error::Config(format!("cannot run sbatch ({e}): is Slurm installed on this machine? `--dry-run` writes the script without submitting"))
    })?;
    if !output.status.success() {
        return Err(Error::Config(format!(
            "sbatch rejected {}: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let job_id =
        String::from_utf8_lossy(&output.stdout).trim().split(';').next().unwrap_or_default().to_string();
    manifest.submissions.push(Submission {
        job_id: job_id.clone(),
        indices: indices.clone(),
        script: script.clone(),
        submitted: now(),
    });
    manifest.write(&experiment_dir)?;
    Ok(Submitted { script, indices, job_id: Some(job_id), warnings })
}

fn script_text(
    plan: &RunPlan,
    indices: &[usize],
    results: &Path,
    file: &Path,
    force: bool,
    o: &SlurmOptions,
) -> Result<String> {
    let qat = std::env::current_exe()
        .map_err(|e| Error::Config(format!("cannot locate the qat executable: {e}")))?;
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let slurm_dir = results.join(&plan.experiment).join("slurm");
    let list: Vec<String> = indices.iter().map(usize::to_string).collect();
    let mut array = list.join(",");
    if let Some(k) = o.array_parallelism {
        array.push_str(&format!("%{k}"));
    }
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!(
            "# qat sweep `{}`: one array task per run index (written by qat {})",
            plan.experiment,
            env!("CARGO_PKG_VERSION")
        ),
        format!("#SBATCH --job-name={}", shell_quote(&format!("qat-{}", plan.experiment))),
        format!("#SBATCH --array={array}"),
        format!("#SBATCH --output={}", shell_quote(&slurm_dir.join("%A_%a.out").display().to_string())),
        format!("#SBATCH --cpus-per-task={}", o.cpus_per_task.max(1)),
    ];
    let optional = [("partition", &o.partition), ("time", &o.time), ("mem", &o.mem)];
    for (key, value) in optional {
        if let Some(v) = value {
            lines.push(format!("#SBATCH --{key}={}", shell_quote(v)));
        }
    }
    lines.extend(o.sbatch_args.iter().map(|a| format!("#SBATCH {a}")));
    lines.push("set -euo pipefail".into());
    // qat submit fetched every dataset first; array tasks must never download
    lines.push("export QAT_OFFLINE=1".into());
    lines.push(format!("cd {}", shell_quote(&cwd.display().to_string())));
    let mut command = vec![
        shell_quote(&qat.display().to_string()),
        "run".into(),
        shell_quote(&file.display().to_string()),
        "--only".into(),
        "\"$SLURM_ARRAY_TASK_ID\"".into(),
        "--results".into(),
        shell_quote(&results.display().to_string()),
        "--jobs".into(),
        "1".into(),
        "--quiet".into(),
    ];
    if force {
        command.push("--force".into());
    }
    for p in &o.plugins {
        command.push("--plugin".into());
        command.push(shell_quote(&absolute(p)?.display().to_string()));
    }
    for set in &o.sets {
        command.push("--set".into());
        command.push(shell_quote(set));
    }
    lines.push(format!("exec {}", command.join(" ")));
    Ok(lines.join("\n") + "\n")
}

/// Status of one run for `qat status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Queued in Slurm, or not started.
    Pending,
    /// Training.
    Running,
    /// Finished.
    Success,
    /// Stopped by an error.
    Failed,
    /// NaN or infinite loss.
    Diverged,
}

/// Array task states from `squeue` for the recorded jobs: plan index → state name.
fn queue_states(manifest: &Manifest) -> std::collections::HashMap<usize, String> {
    let ids: Vec<&str> = manifest.submissions.iter().map(|s| s.job_id.as_str()).collect();
    let mut states = std::collections::HashMap::new();
    if ids.is_empty() {
        return states;
    }
    let Ok(out) = Command::new("squeue").args(["-h", "-r", "-o", "%i %T", "-j", &ids.join(",")]).output()
    else {
        return states;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.split_whitespace();
        let (Some(id), Some(state)) = (parts.next(), parts.next()) else { continue };
        if let Some(index) = id.rsplit_once('_').and_then(|(_, i)| i.parse::<usize>().ok()) {
            states.insert(index, state.to_string());
        }
    }
    states
}

/// `qat status`: per-run state from the run directories (and `squeue` for submitted arrays),
/// counts and an ETA; also refreshes results.csv from the manifest.
pub fn status(experiment_dir: &Path) -> Result<String> {
    use std::fmt::Write;
    let results = experiment_dir.parent().unwrap_or(Path::new("."));
    let manifest = Manifest::read(experiment_dir);
    let runs: Vec<(usize, String, RunConfig)> = match &manifest {
        Some(m) => m.runs.iter().map(|r| (r.index, r.run_id.clone(), r.config.clone())).collect(),
        None => local_runs(experiment_dir)?,
    };
    let queued = manifest.as_ref().map(queue_states).unwrap_or_default();
    let mut out = String::new();
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut walls = Vec::new();
    let _ = writeln!(out, "{:>5}  {:<10}  {:<9}  {:>9}  queue", "index", "run id", "status", "test acc");
    for (index, id, config) in &runs {
        let record = RunDir::new(results, config).read_record();
        let state = match record.as_ref().map(|r| r.status) {
            Some(Status::Success) => "success",
            Some(Status::Failed) => "failed",
            Some(Status::Diverged) => "diverged",
            Some(Status::Pruned) => "pruned",
            Some(Status::Running)
                if queued.get(index).is_some_and(|s| s == "RUNNING") || manifest.is_none() =>
            {
                "running"
            }
            Some(Status::Running) => "stopped",
            None => "pending",
        };
        if let Some(r) = record.as_ref().filter(|r| r.status == Status::Success) {
            walls.push(r.wall_s);
        }
        *counts.entry(state).or_default() += 1;
        let acc = record
            .and_then(|r| r.final_scores)
            .map_or("-".to_string(), |s| format!("{:.2}%", 100.0 * s.test_acc));
        let q = queued.get(index).cloned().unwrap_or_default();
        let _ = writeln!(out, "{index:>5}  {id:<10}  {state:<9}  {acc:>9}  {q}");
    }
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let _ = writeln!(out, "{} runs: {}", runs.len(), summary.join(", "));
    let left = runs.len()
        - counts.get("success").copied().unwrap_or(0)
        - counts.get("failed").copied().unwrap_or(0)
        - counts.get("diverged").copied().unwrap_or(0)
        - counts.get("pruned").copied().unwrap_or(0);
    if left > 0 && !walls.is_empty() {
        let mean = walls.iter().sum::<f64>() / walls.len() as f64;
        let parallel = counts.get("running").copied().unwrap_or(1).max(1);
        let _ = writeln!(
            out,
            "ETA: about {:.0} s ({left} runs left, {mean:.0} s each, {parallel} at a time)",
            mean * left as f64 / parallel as f64
        );
    }
    if let Some(m) = &manifest {
        let plan = m.plan();
        crate::report::results::write_results_csv(&plan, results)?;
        if let Some(last) = m.submissions.last() {
            let _ = writeln!(
                out,
                "last array: job {} ({} tasks), script {}",
                last.job_id,
                last.indices.len(),
                last.script.display()
            );
        }
    }
    Ok(out)
}

/// Runs of a locally run experiment (no manifest): every subdirectory with a config.
fn local_runs(experiment_dir: &Path) -> Result<Vec<(usize, String, RunConfig)>> {
    let entries = std::fs::read_dir(experiment_dir).map_err(|e| {
        Error::Config(format!("{}: {e}; give an experiment's results directory", experiment_dir.display()))
    })?;
    let mut runs = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("config.yaml");
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        if let Ok(config) = serde_yaml::from_str::<RunConfig>(&text) {
            runs.push((runs.len(), run_id(&config), config));
        }
    }
    runs.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(runs.into_iter().enumerate().map(|(i, (_, id, c))| (i, id, c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("results/a_b-1.yaml"), "results/a_b-1.yaml");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
    }
}
