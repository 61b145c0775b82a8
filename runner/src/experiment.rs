//! Reading an experiment file into a validated [`RunPlan`]: YAML errors with file:line:column,
//! unknown keys with a did-you-mean, range checks, and every plugin name and parameter checked
//! against the registry before anything runs.

use std::path::{Path, PathBuf};

use qatlab_core::{config::RunConfig, registry::did_you_mean, Registry};

use crate::error::{Error, Result};

/// Everything a run command needs, validated.
#[derive(Clone, Debug)]
pub struct RunPlan {
    /// The experiment file.
    pub file: PathBuf,
    /// Experiment name (the results subdirectory).
    pub experiment: String,
    /// Fully resolved runs, in order.
    pub runs: Vec<RunConfig>,
}

/// Top-level keys of an experiment file, for did-you-mean suggestions.
const TOP_KEYS: &[&str] = &["name", "description", "data", "model", "quantizer", "train", "sweep"];

/// Parse and validate `file`.
pub fn load(file: &Path, registry: &Registry) -> Result<RunPlan> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::Config(format!("cannot read experiment file {}: {e}", file.display())))?;
    let config = parse(&text, &file.display().to_string())?;
    if config.sweep.is_some() {
        return Err(Error::Config(format!(
            "{}: `sweep:` is not supported by this version of qat; remove it and run one config",
            file.display()
        )));
    }
    check(&config, registry).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
    Ok(RunPlan { file: file.to_path_buf(), experiment: config.name.clone(), runs: vec![config] })
}

/// Parse YAML text into a config; `origin` names the source in messages.
pub fn parse(text: &str, origin: &str) -> Result<RunConfig> {
    serde_yaml::from_str::<RunConfig>(text).map_err(|e| {
        let location = e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default();
        let mut message = e.to_string();
        if let Some(hint) = unknown_field_hint(&message) {
            message.push_str(&hint);
        }
        Error::Config(format!("{origin}{location}: {message}"))
    })
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" add a did-you-mean.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `").or_else(|| message.split("unknown field `").nth(1))?;
    let wrong = rest.split('`').next()?;
    let expected: Vec<&str> = match rest.split_once("expected") {
        Some((_, list)) => list.split('`').skip(1).step_by(2).collect(),
        None => TOP_KEYS.to_vec(),
    };
    let suggestion = did_you_mean(wrong, &expected);
    (!suggestion.is_empty()).then(|| format!(";{suggestion}"))
}

/// Range checks and registry checks of a parsed config.
pub fn check(config: &RunConfig, registry: &Registry) -> Result<(), String> {
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
    let a = &config.model.activation;
    registry.activations.validate(&a.name, &a.params).map_err(|e| format!("model.activation: {e}"))?;
    let s = &config.train.schedule;
    registry.schedules.validate(&s.name, &s.params).map_err(|e| format!("train.schedule: {e}"))?;
    Ok(())
}
