//! Checkpoints of qatlab before tensors were stored by path: `checkpoint.json`, one entry per
//! layer in network order. They map mechanically onto paths (layer `i` is the `i`-th name of
//! `ModelConfig::layer_names`), so finished runs, teachers and exports made with them keep working.

use std::collections::BTreeMap;
use std::path::Path;

use qatlab_core::config::RunConfig;
use serde::Deserialize;

use super::checkpoint::{Checkpoint, CheckpointScalars, Tensor};
use super::metrics::EpochMetrics;
use super::optim::AdamState;

/// File name of a checkpoint in the earlier JSON format.
pub const LEGACY_CHECKPOINT_FILE: &str = "checkpoint.json";

/// One layer's state as the JSON format held it.
#[derive(Deserialize)]
struct LayerCheckpoint {
    weight: Vec<f32>,
    quantizer: Vec<f32>,
    adam_weight: AdamState,
    adam_params: AdamState,
    #[serde(default)]
    residual: Vec<f32>,
    #[serde(default)]
    adam_residual: AdamState,
    #[serde(default)]
    norm_affine: Vec<f32>,
    #[serde(default)]
    adam_norm_affine: AdamState,
    norm_mean: Vec<f32>,
    norm_var: Vec<f32>,
}

/// Weight averages as the JSON format held them: latent weights per layer.
#[derive(Default, Deserialize)]
struct Averages {
    #[serde(default)]
    ema: Vec<Vec<f32>>,
    #[serde(default)]
    swa: Vec<Vec<f32>>,
    #[serde(default)]
    swa_count: u64,
}

#[derive(Deserialize)]
struct JsonCheckpoint {
    epochs_done: usize,
    step: u64,
    layers: Vec<LayerCheckpoint>,
    history: Vec<EpochMetrics>,
    #[serde(default)]
    averages: Averages,
}

/// Read `checkpoint.json` from `dir`, if there is one, as a checkpoint by path.
pub fn read(dir: &Path, config: &RunConfig) -> Result<Option<Checkpoint>, String> {
    let path = dir.join(LEGACY_CHECKPOINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let json: JsonCheckpoint =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let names = config.model.layer_names();
    if json.layers.len() != names.len() {
        return Err(format!(
            "{}: {} layers, the config {}; delete the run directory or use --force",
            path.display(),
            json.layers.len(),
            names.len()
        ));
    }
    Ok(Some(convert(json, &names)))
}

/// The JSON checkpoint's layers under the paths of `names`.
fn convert(json: JsonCheckpoint, names: &[String]) -> Checkpoint {
    let mut tensors = BTreeMap::new();
    let mut steps = BTreeMap::new();
    let mut put = |path: String, values: Vec<f32>| {
        if !values.is_empty() {
            tensors.insert(path, Tensor::vector(values));
        }
    };
    let mut moments = |path: String, state: AdamState, put: &mut dyn FnMut(String, Vec<f32>)| {
        if !state.is_empty() {
            put(format!("optimizer.m.{path}"), state.m);
            put(format!("optimizer.v.{path}"), state.v);
            steps.insert(path, state.t);
        }
    };
    for (i, (name, layer)) in names.iter().zip(json.layers).enumerate() {
        put(format!("{name}.weight"), layer.weight);
        moments(format!("{name}.weight"), layer.adam_weight, &mut put);
        put(format!("{name}.quantizer.state"), layer.quantizer);
        moments(format!("{name}.quantizer.params"), layer.adam_params, &mut put);
        if !layer.residual.is_empty() {
            put(format!("{name}.residual.scale"), layer.residual);
            moments(format!("{name}.residual.scale"), layer.adam_residual, &mut put);
        }
        if !layer.norm_affine.is_empty() {
            // gain then bias, each half of the buffer; so were their moments
            let half = layer.norm_affine.len() / 2;
            let (gain, bias) = layer.norm_affine.split_at(half);
            put(format!("{name}.norm.gain"), gain.to_vec());
            put(format!("{name}.norm.bias"), bias.to_vec());
            let AdamState { m, v, t } = layer.adam_norm_affine;
            let part = |x: &[f32], second: bool| {
                if x.is_empty() {
                    Vec::new()
                } else if second {
                    x[half..].to_vec()
                } else {
                    x[..half].to_vec()
                }
            };
            for (part_name, second) in [("gain", false), ("bias", true)] {
                let state = AdamState { m: part(&m, second), v: part(&v, second), t };
                moments(format!("{name}.norm.{part_name}"), state, &mut put);
            }
        }
        put(format!("{name}.norm.running_mean"), layer.norm_mean);
        put(format!("{name}.norm.running_var"), layer.norm_var);
        for (prefix, averages) in [("ema", &json.averages.ema), ("swa", &json.averages.swa)] {
            if let Some(weights) = averages.get(i) {
                put(format!("{prefix}.{name}.weight"), weights.clone());
            }
        }
    }
    Checkpoint {
        scalars: CheckpointScalars {
            epochs_done: json.epochs_done,
            step: json.step,
            history: json.history,
            optimizer_steps: steps,
            swa_count: json.averages.swa_count,
        },
        tensors,
    }
}
