//! Checkpoints by path: the safetensors round trip, every parameter in the averages, and
//! checkpoints of earlier versions (`checkpoint.json`) still restoring and resuming exactly.

use std::path::{Path, PathBuf};

use qatlab_runner::data::RunData;
use qatlab_runner::launch::local::single_threaded;
use qatlab_runner::train::{load_finished, train, Checkpoint, EpochMetrics, Observer};

/// Keeps every epoch's metrics and the checkpoints.
#[derive(Default)]
struct Keep {
    epochs: Vec<EpochMetrics>,
    checkpoints: Vec<Checkpoint>,
}
impl Observer for Keep {
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.epochs.push(m.clone());
    }
    fn on_checkpoint(&mut self, c: &Checkpoint) -> qatlab_runner::error::Result<()> {
        self.checkpoints.push(c.clone());
        Ok(())
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn config_of(dir: &Path) -> qatlab_core::config::RunConfig {
    serde_yaml::from_str(&std::fs::read_to_string(dir.join("config.yaml")).unwrap()).unwrap()
}

/// A run with a parameter of every kind: weights, quantizer parameters (`lsq`), learned
/// residual scales and layer-norm gains and biases; EMA and SWA on.
const EVERY_KIND: &str = "name: kinds\ndata: {image_size: 8}\n\
     model: {hidden: [8, 8], norm: layer, norm_affine: true, residual: scaled-sum-relu}\n\
     quantizer: {name: lsq, bits: 2}\ntrain: {epochs: 2, ema: 0.9, swa: {start_epoch: 1}}";

#[test]
fn a_checkpoint_stores_every_parameter_by_path_and_round_trips_through_safetensors() {
    let config = crate::config(EVERY_KIND);
    let data = RunData::load(&config.data).unwrap();
    let registry = qatlab_plugins::builtin_registry();
    let mut keep = Keep::default();
    single_threaded(|| train(&config, &registry, &data, &mut keep, None)).unwrap();
    let checkpoint = keep.checkpoints.pop().unwrap();
    let paths: Vec<&str> = checkpoint.tensors.keys().map(String::as_str).collect();
    for expected in [
        "fc1.weight",
        "fc1.quantizer.state",
        "fc1.norm.gain",
        "fc1.norm.bias",
        "fc2.residual.scale",
        "optimizer.m.fc1.weight",
        "optimizer.v.fc1.quantizer.params",
        "optimizer.m.fc2.residual.scale",
        "optimizer.v.fc3.norm.bias",
        // the averages cover every parameter, not only the weights
        "ema.fc1.weight",
        "ema.fc1.quantizer.params",
        "ema.fc2.residual.scale",
        "ema.fc2.norm.gain",
        "swa.fc3.norm.bias",
        "swa.fc1.quantizer.params",
    ] {
        assert!(paths.contains(&expected), "{expected} in {paths:?}");
    }
    assert!(!paths.contains(&"fc1.norm.running_mean"), "only batch norms keep running statistics");
    assert_eq!(checkpoint.tensors["fc1.weight"].shape, [8, 64], "weights keep their matrix shape");
    assert_eq!(checkpoint.scalars.optimizer_steps["fc1.weight"], 2 * 469, "one step per batch");
    let bytes = checkpoint.to_bytes();
    assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), checkpoint, "exact round trip");
    // A checkpoint that does not fit the network is refused, not half restored.
    let registry = qatlab_plugins::builtin_registry();
    let mut trainer = qatlab_runner::train::Trainer::new(&config, &registry, data.task).unwrap();
    let mut broken = checkpoint.clone();
    broken.tensors.remove("optimizer.m.fc2.residual.scale");
    let err = trainer.restore(&broken, &registry).unwrap_err().to_string();
    assert!(err.contains("the optimizer moments of fc2.residual.scale do not fit its 1 values"), "{err}");
    let mut broken = checkpoint.clone();
    broken.tensors.get_mut("fc1.weight").unwrap().values.pop();
    let err = trainer.restore(&broken, &registry).unwrap_err().to_string();
    assert!(err.contains("fc1.weight holds 511 values, the config 512"), "{err}");
    let mut broken = checkpoint.clone();
    broken.tensors.get_mut("ema.fc2.norm.gain").unwrap().values.push(1.0);
    let err = trainer.restore(&broken, &registry).unwrap_err().to_string();
    assert!(err.contains("ema.fc2.norm.gain does not fit a parameter of the config"), "{err}");
    trainer.restore(&checkpoint, &registry).unwrap();
    // Not a checkpoint: clear errors.
    assert!(Checkpoint::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let plain = safetensors::serialize(Vec::<(&str, safetensors::tensor::TensorView)>::new(), None).unwrap();
    let err = Checkpoint::from_bytes(&plain).unwrap_err();
    assert!(err.contains("not a qatlab checkpoint"), "{err}");
}

#[test]
fn a_finished_run_with_a_json_checkpoint_restores_to_its_recorded_accuracy() {
    let dir = fixture("legacy-finished");
    let registry = qatlab_plugins::builtin_registry();
    let mut run = load_finished(&dir, &registry).unwrap();
    let data = RunData::load(&run.config.data).unwrap();
    let (_, accuracy, _) = run.trainer.evaluate(&data.test).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(accuracy, record["final_scores"]["test_acc"].as_f64().unwrap(), "83.24 % (EMA weights)");
    assert_eq!(run.epochs_done, 2);
}

#[test]
fn a_run_resumed_from_a_json_checkpoint_ends_as_the_uninterrupted_run_did() {
    let dir = fixture("legacy-resume");
    let config = config_of(&dir);
    let checkpoint = Checkpoint::read(&dir, &config).unwrap().expect("checkpoint.json");
    assert_eq!(checkpoint.epochs_done(), 1);
    assert_eq!(checkpoint.tensors["fc1.norm.gain"].values.len(), 64, "gain and bias split by path");
    let data = RunData::load(&config.data).unwrap();
    let registry = qatlab_plugins::builtin_registry();
    let mut keep = Keep::default();
    single_threaded(|| train(&config, &registry, &data, &mut keep, Some(&checkpoint))).unwrap();
    let csv = String::from_utf8(qatlab_runner::run::metrics_csv(&keep.epochs)).unwrap();
    let expected = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    // every column but samples/s (column 8), epoch by epoch
    let without_speed = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != 7).map(|(_, v)| v.to_string()).collect())
            .collect()
    };
    assert_eq!(without_speed(&csv), without_speed(&expected));
}
