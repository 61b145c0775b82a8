//! Reading an experiment file into a validated [`RunPlan`]: YAML errors with file:line:column,
//! unknown keys with a did-you-mean, `extends` bases merged key by key, the sweep expanded,
//! and every run's config range-checked and its plugins checked against the registry, all
//! before anything runs.

pub mod search;
pub mod sweep;

use std::path::{Path, PathBuf};

use qatlab_core::{
    config::{Dataset, RunConfig},
    registry::did_you_mean,
    Registry,
};
use serde_yaml::Value;

use crate::data::text::TextFiles;
use crate::error::{Error, Result};
use sweep::{get_path, inline, set_path, SweepSpec};

/// One run of a plan.
#[derive(Clone, Debug)]
pub struct PlannedRun {
    /// Position in the expansion, from 0.
    pub index: usize,
    /// The resolved config (no `sweep`, no `extends`).
    pub config: RunConfig,
    /// The sweep's overrides for this run, as (dotted path, value).
    pub overrides: Vec<(String, Value)>,
}

/// Everything a run command needs, validated.
#[derive(Clone, Debug)]
pub struct RunPlan {
    /// The experiment file.
    pub file: PathBuf,
    /// Experiment name (the results subdirectory).
    pub experiment: String,
    /// The swept paths, in column order (empty without a sweep).
    pub swept: Vec<String>,
    /// Fully resolved runs, in order.
    pub runs: Vec<PlannedRun>,
    /// Named distillation teachers (`teachers:`), trained before the runs.
    pub teachers: Vec<(String, PlannedRun)>,
    /// A `sweep.search`: its runs are proposed as it goes (`runs` then holds those of the
    /// ledger's trials, each with its trial index).
    pub search: Option<SearchPlan>,
}

/// A search's settings and how to turn a trial's values into runs.
#[derive(Clone, Debug)]
pub struct SearchPlan {
    /// The `sweep.search` section.
    pub spec: search::SearchSpec,
    /// Its parsed space.
    pub space: search::Space,
    /// The seeds each trial runs (None: the base config's seed, not swept).
    pub seeds: Option<Vec<u64>>,
    /// The resolved base config (with `--set`).
    base: Value,
    /// Whether the runs are language models.
    language_model: bool,
    /// Named teachers, for the runs' checks.
    teachers: Vec<String>,
    /// The `dataset: text` files planning read, so each trial's runs do not read them again.
    text_files: std::sync::Arc<std::sync::Mutex<TextFiles>>,
}

impl SearchPlan {
    /// The runs of trial `trial` with `values` (one per seed), checked like a grid's runs.
    pub fn runs(
        &self,
        file: &Path,
        trial: usize,
        values: &[(String, Value)],
        registry: &Registry,
    ) -> Result<Vec<PlannedRun>> {
        let seeds: Vec<Option<u64>> = match &self.seeds {
            Some(seeds) => seeds.iter().copied().map(Some).collect(),
            None => vec![None],
        };
        self.runs_of_seeds(file, trial, values, registry, &seeds)
    }

    /// [`Self::runs`] for the given seeds (None: the base config's).
    fn runs_of_seeds(
        &self,
        file: &Path,
        trial: usize,
        values: &[(String, Value)],
        registry: &Registry,
        seeds: &[Option<u64>],
    ) -> Result<Vec<PlannedRun>> {
        let mut text_files = self.text_files.lock().expect("no panics hold this lock");
        seeds
            .iter()
            .map(|seed| {
                let mut overrides = values.to_vec();
                overrides.extend(seed.map(|s| ("train.seed".to_string(), Value::from(s))));
                plan_run(&self.base, overrides, trial, file, registry, &self.teachers, &mut text_files)
            })
            .collect()
    }

    /// The seeds the search's ledger identity covers.
    pub fn seed_list(&self) -> Vec<u64> {
        self.seeds.clone().unwrap_or_default()
    }
}

impl RunPlan {
    /// Whether the runs are language models (a text dataset), scored by validation loss.
    pub fn language_models(&self) -> bool {
        match &self.search {
            Some(search) => search.language_model,
            None => self.runs.first().is_some_and(|r| r.config.data.dataset.is_text()),
        }
    }

    /// The first run's config; a search's base config (before any searched value).
    pub fn first_config(&self) -> RunConfig {
        match (&self.search, self.runs.first()) {
            (_, Some(run)) => run.config.clone(),
            (Some(search), None) => {
                serde_yaml::from_value(search.base.clone()).expect("the base config parsed at planning")
            }
            (None, None) => unreachable!("a plan without a search has at least one run"),
        }
    }

    /// Indices of the runs named by `only` (indices or run ids, comma-separated or repeated);
    /// all runs when `only` is empty. Errors on an unknown one.
    pub fn selection(&self, only: &[String]) -> Result<Vec<usize>> {
        if only.is_empty() {
            return Ok((0..self.runs.len()).collect());
        }
        let ids: Vec<String> = self.runs.iter().map(|r| crate::run::run_id(&r.config)).collect();
        let mut keep = vec![false; self.runs.len()];
        for want in only.iter().flat_map(|o| o.split(',')).map(str::trim) {
            let hit = match want.parse::<usize>() {
                Ok(i) if i < self.runs.len() => Some(i),
                _ => ids.iter().position(|id| id == want),
            };
            match hit {
                Some(i) => keep[i] = true,
                None => {
                    return Err(Error::Config(format!(
                        "--only {want}: no such run; give an index from 0 to {} or a run id (see `qat list`)",
                        self.runs.len() - 1
                    )))
                }
            }
        }
        Ok((0..self.runs.len()).filter(|&i| keep[i]).collect())
    }
}

/// Top-level keys of an experiment file, for did-you-mean suggestions.
const TOP_KEYS: &[&str] = &[
    "name",
    "description",
    "extends",
    "plugins",
    "data",
    "model",
    "quantizer",
    "train",
    "sweep",
    "teachers",
];

/// The plugin libraries `file` and its `extends` bases list, each resolved relative to the
/// file that names it. Read before the plan, since the plan's plugin names must be registered.
pub fn plugin_paths(file: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut current = file.to_path_buf();
    for _ in 0..32 {
        let text = std::fs::read_to_string(&current)
            .map_err(|e| Error::Config(format!("cannot read experiment file {}: {e}", current.display())))?;
        let config = parse(&text, &current.display().to_string())?;
        let dir = current.parent().unwrap_or(Path::new(".")).to_path_buf();
        paths.extend(config.plugins.iter().map(|p| dir.join(p)));
        match config.extends {
            Some(base) => current = dir.join(base),
            None => break,
        }
        if !current.is_file() {
            break; // `load` reports the missing base with its context
        }
    }
    Ok(paths)
}

/// Parse, merge, expand and validate `file`.
pub fn load(file: &Path, registry: &Registry) -> Result<RunPlan> {
    load_with(file, registry, &[])
}

/// [`load`] with command-line overrides (`--set key=value`: a dotted config path and a YAML
/// value), applied to the file's base config before its sweep expands; they are part of every
/// run's resolved config, and so of its run id.
pub fn load_with(file: &Path, registry: &Registry, sets: &[String]) -> Result<RunPlan> {
    let shown = file.display().to_string();
    let merged = read_merged(file, &mut Vec::new())?;
    let mut base = merged.clone();
    let sweep_value = base.as_mapping_mut().and_then(|m| m.remove("sweep"));
    let teachers_value = base.as_mapping_mut().and_then(|m| m.remove("teachers"));
    if let Some(m) = base.as_mapping_mut() {
        m.remove("extends");
    }
    let sets = sets.iter().map(|s| parse_set(s)).collect::<Result<Vec<_>>>()?;
    let mut written = base.clone();
    sets.iter().for_each(|(path, value)| set_path(&mut written, path, value.clone()));
    check_steps_or_epochs(&written, &shown)?;
    let mut config = from_value(&base, &shown)?;
    let mut resolved = serde_yaml::to_value(&config).expect("a config serialises");
    if !sets.is_empty() {
        // on the resolved config, as a sweep's values are (`quantizer.bits` of `quantizer: int`)
        // each resolved in turn, so a later one can set a parameter of an earlier strategy
        for (path, value) in &sets {
            check_path(&resolved, path, value).map_err(|e| Error::Config(format!("--set {path}: {e}")))?;
            set_path(&mut resolved, path, value.clone());
            config = from_value(&resolved, &format!("{shown} with --set {path}"))?;
            resolved = serde_yaml::to_value(&config).expect("a config serialises");
        }
    }
    let spec: Option<SweepSpec> = match sweep_value {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(serde_yaml::from_value(v).map_err(|e| Error::Config(format!("{shown}: sweep: {e}")))?)
        }
    };
    let mut text_files = TextFiles::default();
    let teachers = teacher_runs(teachers_value, &resolved, &config.name, file, registry, &mut text_files)?;
    let names: Vec<String> = teachers.iter().map(|(n, _)| n.clone()).collect();
    if let Some(search) = spec.as_ref().and_then(|s| s.search.clone()) {
        let spec = spec.unwrap_or_default();
        if !(spec.grid.is_empty() && spec.zip.is_empty() && spec.exclude.is_empty()) {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let at = locate_segments(&text, &["sweep", "search"])
                .map_or(String::new(), |(l, c)| format!(":{l}:{c}"));
            sweep::expand(&spec, 0).map_err(|e| Error::Config(format!("{shown}{at}: {e}")))?;
        }
        let seeds =
            sweep::seeds(&spec, config.train.seed).map_err(|e| Error::Config(format!("{shown}: {e}")))?;
        let plan = plan_search(search, seeds, resolved, &config, file, registry, names, &sets, text_files)?;
        let mut swept: Vec<String> = plan.space.dims.iter().map(|d| d.path.clone()).collect();
        swept.extend(plan.seeds.is_some().then(|| "train.seed".to_string()));
        let experiment = config.name.clone();
        return Ok(RunPlan {
            file: file.to_path_buf(),
            experiment,
            swept,
            runs: Vec::new(),
            teachers,
            search: Some(plan),
        });
    }
    let (points, swept) = match spec {
        None => (vec![sweep::Point { overrides: Vec::new() }], Vec::new()),
        Some(spec) => {
            let points = sweep::expand(&spec, config.train.seed)
                .map_err(|e| Error::Config(format!("{shown}: {e}")))?;
            let mut swept: Vec<String> = Vec::new();
            for (path, sample) in points.iter().flat_map(|p| &p.overrides) {
                if !swept.contains(path) {
                    check_path(&resolved, path, sample)
                        .map_err(|e| Error::Config(format!("{shown}: sweep: {e}")))?;
                    if sets.iter().any(|(set, _)| set == path) {
                        return Err(Error::Config(format!(
                            "--set {path}: {shown} sweeps this key; remove it from the sweep or from --set"
                        )));
                    }
                    swept.push(path.clone());
                }
            }
            (points, swept)
        }
    };
    let mut runs = Vec::new();
    for (index, point) in points.into_iter().enumerate() {
        runs.push(plan_run(&resolved, point.overrides, index, file, registry, &names, &mut text_files)?);
    }
    let experiment = runs[0].config.name.clone();
    Ok(RunPlan { file: file.to_path_buf(), experiment, swept, runs, teachers, search: None })
}

/// One run: the resolved base config with `overrides` set, parsed and checked; errors name the
/// run and its overrides.
fn plan_run(
    resolved: &Value,
    overrides: Vec<(String, Value)>,
    index: usize,
    file: &Path,
    registry: &Registry,
    teachers: &[String],
    text_files: &mut TextFiles,
) -> Result<PlannedRun> {
    let shown = file.display().to_string();
    let mut value = resolved.clone();
    for (path, v) in &overrides {
        set_path(&mut value, path, v.clone());
    }
    let mut config = from_value(&value, &format!("{shown}: run {index} ({})", describe(&overrides)))?;
    check_with_teachers(&config, registry, teachers)
        .and_then(|()| resolve_text(&mut config, file, text_files))
        .map_err(|e| Error::Config(format!("{shown}: run {index} ({}): {e}", describe(&overrides))))?;
    Ok(PlannedRun { index, config, overrides })
}

/// Check a `sweep.search` before anything runs: its settings and space (errors at the key's
/// line in the file), every searched path a config key not also given by `--set`, and a run at
/// each end of every dimension (each choice) a valid config.
#[allow(clippy::too_many_arguments)]
fn plan_search(
    spec: search::SearchSpec,
    seeds: Option<Vec<u64>>,
    resolved: Value,
    config: &RunConfig,
    file: &Path,
    registry: &Registry,
    teachers: Vec<String>,
    sets: &[(String, Value)],
    text_files: TextFiles,
) -> Result<SearchPlan> {
    let shown = file.display().to_string();
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let at = |message: String| {
        let key = message.split(": ").next().unwrap_or_default();
        let segments: Vec<&str> = match key.strip_prefix("space.") {
            Some(path) => vec!["search", "space", path],
            None => std::iter::once("search").chain(key.split('.')).collect(),
        };
        let location = locate_segments(&text, &segments).map_or(String::new(), |(l, c)| format!(":{l}:{c}"));
        Error::Config(format!("{shown}{location}: sweep.search.{message}"))
    };
    let language_model = config.data.dataset.is_text();
    let space = spec.space(language_model || config.data.validation.is_some()).map_err(at)?;
    let text_files = std::sync::Arc::new(std::sync::Mutex::new(text_files));
    let plan = SearchPlan { spec, space, seeds, base: resolved, language_model, teachers, text_files };
    for dim in &plan.space.dims {
        let extremes = dim.distribution.extremes();
        check_path(&plan.base, &dim.path, &extremes[0])
            .map_err(|e| at(format!("space.{}: {e}", dim.path)))?;
        if sets.iter().any(|(set, _)| *set == dim.path) {
            return Err(Error::Config(format!(
                "--set {}: {shown} searches this key; remove it from the search space or from --set",
                dim.path
            )));
        }
    }
    let corner: Vec<(String, Value)> =
        plan.space.dims.iter().map(|d| (d.path.clone(), d.distribution.extremes()[0].clone())).collect();
    for (i, dim) in plan.space.dims.iter().enumerate() {
        for value in dim.distribution.extremes() {
            let mut values = corner.clone();
            values[i].1 = value.clone();
            plan.runs_of_seeds(file, 0, &values, registry, &[None]).map_err(|e| {
                let reason = e.to_string();
                let reason = reason.rsplit_once("): ").map_or(reason.as_str(), |(_, r)| r).to_string();
                at(format!("space.{}: the value {} gives an invalid run: {reason}", dim.path, inline(&value)))
            })?;
        }
    }
    Ok(plan)
}

/// Line and column of the last of `segments` (each a key found after the one before), where a
/// segment may hold dots (`train.optimizer.lr` under `space:`).
fn locate_segments(text: &str, segments: &[&str]) -> Option<(usize, usize)> {
    let mut from = 0;
    let mut at = None;
    for segment in segments {
        let found = [format!("{segment}:"), format!("\"{segment}\":"), format!("'{segment}':")]
            .iter()
            .filter_map(|pattern| {
                text[from..].match_indices(pattern.as_str()).map(|(i, _)| from + i).find(|&i| {
                    i == 0 || text[..i].ends_with(|c: char| c.is_whitespace() || c == '{' || c == ',')
                })
            })
            .min()?;
        at = Some(found);
        from = found + segment.len() + 1;
    }
    let at = at?;
    let line = text[..at].matches('\n').count() + 1;
    let column = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    Some((line, column))
}

/// Check a text dataset against the model before any run starts: a `dataset: text` file is
/// read relative to the experiment `file`'s folder and resolved ([`TextFiles::resolve`], once per
/// file); Tiny Shakespeare's validation split must hold more than one context window.
fn resolve_text(
    config: &mut RunConfig,
    file: &Path,
    files: &mut TextFiles,
) -> std::result::Result<(), String> {
    let context = config.model.transformer.as_ref().map_or(0, |t| t.context);
    match config.data.dataset {
        Dataset::Text => {
            files.resolve(&mut config.data, file.parent().unwrap_or(Path::new(".")), context)
        }
        Dataset::Tinyshakespeare if context >= crate::data::text::SHAKESPEARE_VAL_TOKENS => Err(format!(
            "model.context: {context} tokens; tinyshakespeare's validation split has {}, so no window fits; use a shorter model.context",
            crate::data::text::SHAKESPEARE_VAL_TOKENS
        )),
        _ => Ok(()),
    }
}

/// The runs of `teachers:`: each the base config with its overrides, named
/// `<experiment>-teachers`, without distillation of its own.
fn teacher_runs(
    teachers: Option<Value>,
    resolved: &Value,
    experiment: &str,
    file: &Path,
    registry: &Registry,
    text_files: &mut TextFiles,
) -> Result<Vec<(String, PlannedRun)>> {
    let shown = &file.display().to_string();
    let Some(Value::Mapping(map)) = teachers else {
        return match teachers {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(_) => Err(Error::Config(format!(
                "{shown}: teachers: expected a mapping of names to overrides, e.g. `teachers: {{float: {{quantizer: none}}}}`"
            ))),
        };
    };
    let mut out = Vec::new();
    for (index, (name, overrides)) in map.into_iter().enumerate() {
        let Some(name) = name.as_str().map(str::to_string) else {
            return Err(Error::Config(format!("{shown}: teachers: names must be strings")));
        };
        let origin = format!("{shown}: teachers.{name}");
        let mut value = resolved.clone();
        sweep::merge(&mut value, overrides.clone());
        set_path(&mut value, "name", Value::String(format!("{experiment}-teachers")));
        if let Some(train) = value.get_mut("train").and_then(Value::as_mapping_mut) {
            train.remove("distill");
        }
        let mut config = from_value(&value, &origin)?;
        check(&config, registry)
            .and_then(|()| resolve_text(&mut config, file, text_files))
            .map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        let overrides = vec![("teacher".to_string(), Value::String(name.clone()))];
        out.push((name, PlannedRun { index, config, overrides }));
    }
    Ok(out)
}

/// `path=value` pairs on one line.
pub fn describe(overrides: &[(String, Value)]) -> String {
    if overrides.is_empty() {
        return "base config".into();
    }
    overrides.iter().map(|(k, v)| format!("{k}={}", inline(v))).collect::<Vec<_>>().join(" ")
}

/// The file's YAML merged over its `extends` chain. Each file is first parsed strictly as a
/// config, so syntax errors and unknown keys carry that file's line and column.
fn read_merged(file: &Path, chain: &mut Vec<PathBuf>) -> Result<Value> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Config(format!("cannot read experiment file {}: {e}", file.display())))?;
    let shown = file.display().to_string();
    let config = parse(&text, &shown)?;
    let own: Value = serde_yaml::from_str(&text).map_err(|e| Error::Config(format!("{shown}: {e}")))?;
    let Some(base) = &config.extends else { return Ok(own) };
    let base_path = file.parent().unwrap_or(Path::new(".")).join(base);
    if !base_path.is_file() {
        return Err(Error::Config(format!(
            "{shown}: extends: {} does not exist (the path is relative to this file)",
            base_path.display()
        )));
    }
    let canonical = base_path.canonicalize().unwrap_or(base_path.clone());
    if chain.contains(&canonical) {
        return Err(Error::Config(format!(
            "{shown}: extends: {} is already in the chain (a cycle)",
            base_path.display()
        )));
    }
    chain.push(canonical);
    let mut merged = read_merged(&base_path, chain)?;
    sweep::merge(&mut merged, own);
    Ok(merged)
}

/// `train.epochs` has a default, so only the file as written can tell that both it and
/// `train.steps` were given.
fn check_steps_or_epochs(written: &Value, origin: &str) -> Result<()> {
    let train = written.get("train");
    if train.is_some_and(|t| t.get("steps").is_some() && t.get("epochs").is_some()) {
        return Err(Error::Config(format!(
            "{origin}: train.steps and train.epochs: a run trains for one or the other; remove train.epochs"
        )));
    }
    Ok(())
}

fn from_value(value: &Value, origin: &str) -> Result<RunConfig> {
    serde_yaml::from_value::<RunConfig>(value.clone())
        .map_err(|e| Error::Config(with_hint(format!("{origin}: {e}"))))
}

/// A swept path must name a config key: it exists in the resolved config, or is a parameter of
/// a strategy (a mapping with `name`), a per-layer override, or an optional key the config
/// accepts (checked by setting it to the run's value).
fn check_path(resolved: &Value, path: &str, sample: &Value) -> Result<(), String> {
    if get_path(resolved, path).is_some() || path.starts_with("model.layers.") {
        return Ok(());
    }
    let parent = path.rsplit_once('.').map(|(p, _)| p);
    if parent
        .and_then(|p| get_path(resolved, p))
        .and_then(Value::as_mapping)
        .is_some_and(|m| m.contains_key("name"))
    {
        return Ok(());
    }
    let mut trial = resolved.clone();
    set_path(&mut trial, path, sample.clone());
    match serde_yaml::from_value::<RunConfig>(trial) {
        Err(e) if e.to_string().contains("unknown field") => {}
        _ => return Ok(()),
    }
    // suggest at the first segment that is not there (`train.optimiser.lr` → `optimizer`)
    let segments = sweep::path_segments(path);
    let mut node = resolved;
    let mut depth = 0;
    while let Some(child) = node.as_mapping().and_then(|m| m.get(segments[depth].as_str())) {
        node = child;
        depth += 1;
        if depth == segments.len() {
            break;
        }
    }
    let last = &segments[depth.min(segments.len() - 1)];
    let siblings: Vec<String> = match node.as_mapping() {
        _ if depth == 0 => TOP_KEYS.iter().map(|s| s.to_string()).collect(),
        Some(m) => m.keys().filter_map(|k| k.as_str().map(String::from)).collect(),
        None => Vec::new(),
    };
    let names: Vec<&str> = siblings.iter().map(String::as_str).collect();
    Err(format!("`{path}` is not a config key{}", did_you_mean(last, &names)))
}

/// `key=value` of `--set`: a dotted path and a YAML value.
fn parse_set(text: &str) -> Result<(String, Value)> {
    let Some((path, value)) = text.split_once('=').filter(|(p, _)| !p.trim().is_empty()) else {
        return Err(Error::Config(format!(
            "--set {text}: expected key=value, a dotted config path and a YAML value (train.optimizer.lr=3e-3)"
        )));
    };
    let value = serde_yaml::from_str(value)
        .map_err(|e| Error::Config(format!("--set {path}: the value `{value}` is not YAML: {e}")))?;
    Ok((path.trim().to_string(), value))
}

/// Parse YAML text into a config; `origin` names the source in messages.
pub fn parse(text: &str, origin: &str) -> Result<RunConfig> {
    serde_yaml::from_str::<RunConfig>(text).map_err(|e| {
        let message = e.to_string();
        // a check across keys (model.width against model.heads) fails where serde has no
        // position (it says 1:1); such messages start with the key, so point at the key instead
        let key = message.split_once(": ").map(|(k, _)| k).filter(|k| k.contains('.') && !k.contains(' '));
        let location = match (e.location(), key.and_then(|k| locate_key(text, k))) {
            (Some(l), _) if (l.line(), l.column()) != (1, 1) => format!(":{}:{}", l.line(), l.column()),
            (_, Some((line, column))) => format!(":{line}:{column}"),
            _ => String::new(),
        };
        Error::Config(with_hint(format!("{origin}{location}: {message}")))
    })
}

/// Line and column (1-based) of the dotted key `path` (`model.width`) in YAML `text`, block or
/// flow style: each segment is searched for as `segment:` after the previous one.
fn locate_key(text: &str, path: &str) -> Option<(usize, usize)> {
    locate_segments(text, &path.split('.').collect::<Vec<_>>())
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" add a did-you-mean.
fn with_hint(mut message: String) -> String {
    let Some(rest) = message.split("unknown field `").nth(1) else { return message };
    let wrong = rest.split('`').next().unwrap_or_default().to_string();
    let expected: Vec<String> = match rest.split_once("expected") {
        Some((_, list)) => list.split('`').skip(1).step_by(2).map(String::from).collect(),
        None => TOP_KEYS.iter().map(|s| s.to_string()).collect(),
    };
    let names: Vec<&str> = expected.iter().map(String::as_str).collect();
    let suggestion = did_you_mean(&wrong, &names);
    if !suggestion.is_empty() {
        message.push(';');
        message.push_str(&suggestion);
    }
    message
}

/// Range checks and registry checks of a parsed config.
pub fn check(config: &RunConfig, registry: &Registry) -> Result<(), String> {
    check_with_teachers(config, registry, &[])
}

/// [`check`], where `train.distill.teacher` may also name one of `teachers`.
pub fn check_with_teachers(
    config: &RunConfig,
    registry: &Registry,
    teachers: &[String],
) -> Result<(), String> {
    config.validate()?;
    let q = &config.quantizer;
    registry.quantizers.validate(&q.name, &q.params).map_err(|e| format!("quantizer: {e}"))?;
    for (key, o) in &config.model.layers {
        if let Some(q) = &o.quantizer {
            registry
                .quantizers
                .validate(&q.name, &q.params)
                .map_err(|e| format!("model.layers.{key}.quantizer: {e}"))?;
        }
    }
    for (i, switch) in config.train.quantizer_schedule.iter().enumerate() {
        let q = &switch.quantizer;
        registry
            .quantizers
            .validate(&q.name, &q.params)
            .map_err(|e| format!("train.quantizer_schedule[{i}].quantizer: {e}"))?;
    }
    for (i, q) in config.eval.post_quantize.iter().enumerate() {
        registry
            .quantizers
            .validate(&q.name, &q.params)
            .map_err(|e| format!("eval.post_quantize[{i}]: {e}"))?;
    }
    let a = &config.model.activation;
    registry.activations.validate(&a.name, &a.params).map_err(|e| format!("model.activation: {e}"))?;
    let s = &config.train.schedule;
    registry.schedules.validate(&s.name, &s.params).map_err(|e| format!("train.schedule: {e}"))?;
    if let Some(s) = &config.train.weight_decay_schedule {
        registry
            .schedules
            .validate(&s.name, &s.params)
            .map_err(|e| format!("train.weight_decay_schedule: {e}"))?;
    }
    if let Some(d) = &config.train.distill {
        registry
            .distillers
            .validate(&d.loss.name, &d.loss.params)
            .map_err(|e| format!("train.distill.loss: {e}"))?;
        let teacher = Path::new(&d.teacher);
        if teachers.contains(&d.teacher) {
            return Ok(());
        }
        if !teacher.join("config.yaml").is_file() || !crate::train::Checkpoint::exists_in(teacher) {
            return Err(format!(
                "train.distill.teacher: {} is not a finished run directory (no config.yaml and checkpoint) nor a name under `teachers:`; train the teacher first, or define it under `teachers:`",
                d.teacher
            ));
        }
    }
    Ok(())
}
