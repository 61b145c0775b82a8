//! The `qat` binary end to end: files written, resume, exit codes and error messages.

use std::path::Path;
use std::process::{Command, Output};

pub fn qat(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qat")).args(args).current_dir(cwd).output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The run directories of `experiment` under `dir/results`, in order of their names.
pub fn run_dirs(dir: &Path, experiment: &str) -> Vec<std::path::PathBuf> {
    let mut runs: Vec<_> = std::fs::read_dir(dir.join("results").join(experiment))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("run.json").is_file())
        .collect();
    runs.sort();
    runs
}

/// A run directory's `run.json`.
pub fn record_of(run: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap()
}

/// A temp dir inside the crate, so the data search (`shared/datasets` beside an ancestor)
/// finds the datasets as it does from the repository root.
pub fn workdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn run_writes_config_record_and_metrics_then_skips_on_rerun() {
    let dir = workdir();
    let file = dir.path().join("tiny.yaml");
    std::fs::write(&file, "name: tiny\nquantizer: ternary\nmodel: {hidden: [16]}\ntrain: {epochs: 1}\n")
        .unwrap();
    let out = qat(&["run", "tiny.yaml", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let runs = run_dirs(dir.path(), "tiny");
    assert_eq!(runs.len(), 1);
    assert!(dir.path().join("results/tiny/results.csv").is_file());
    assert!(runs[0].join("checkpoint.safetensors").is_file());
    let run = &runs[0];
    let record = record_of(run);
    assert_eq!(record["status"], "success");
    assert_eq!(record["weights"], 256 * 16 + 16 * 10);
    assert!((record["total_bits"].as_f64().unwrap() - 1.6 * 4256.0).abs() < 1e-6);
    let acc = record["final_scores"]["test_acc"].as_f64().unwrap();
    assert!(acc > 0.7, "{acc}");
    let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "header and one epoch");
    assert!(metrics.starts_with(
        "epoch,train_loss,train_acc,test_loss,test_acc,lr,positive_fraction,samples_per_s,fc1.scale"
    ));
    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        config.contains("name: ternary") && config.contains("batch_size: 128"),
        "resolved defaults: {config}"
    );
    assert!(text(&out).contains("tiny/"), "{}", text(&out));

    let again = qat(&["run", "tiny.yaml", "-q"], dir.path());
    assert!(again.status.success());
    assert!(text(&again).contains(" done "), "finished runs are skipped: {}", text(&again));
    assert!(!text(&again).contains("epoch   1"), "nothing retrained: {}", text(&again));
}

fn assert_config_error(yaml: &str, expected: &[&str]) {
    let dir = workdir();
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let out = qat(&["run", "bad.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    for e in expected {
        assert!(message.contains(e), "expected `{e}` in: {message}");
    }
    assert!(!dir.path().join("results").exists(), "nothing may start on a config error");
}

#[test]
fn yaml_syntax_error_gives_file_line_and_column() {
    assert_config_error("name: x\nmodel: {hidden: [64, 64\n", &["qat: bad.yaml:"]);
}

#[test]
fn unknown_key_gives_line_and_suggestion() {
    assert_config_error(
        "name: x\ntrain:\n  epocs: 3\n",
        &["bad.yaml:3:3", "unknown field `epocs`", "did you mean `epochs`?"],
    );
}

#[test]
fn unknown_quantizer_lists_the_registered_ones() {
    assert_config_error(
        "name: x\nquantizer: ternry\n",
        &[
            "quantizer: unknown quantizer `ternry` (did you mean `ternary`?)",
            "registered quantizers: binary, fp130, int, lsq, nf4, none, pentary, self-compress, soft, ternary, ternary-ramp, ternary-stochastic, ternary-ttq, ternary-twn",
        ],
    );
}

#[test]
fn unknown_quantizer_parameter_is_an_error() {
    assert_config_error(
        "name: x\nquantizer: {name: ternary, bitz: 2}\n",
        &["quantizer `ternary`: unknown field `bitz`"],
    );
}

#[test]
fn wrong_types_are_errors_with_their_line() {
    assert_config_error(
        "name: x\ntrain:\n  epochs: many\n",
        &["bad.yaml:3:11", "train.epochs: invalid type: string \"many\""],
    );
}

#[test]
fn out_of_range_values_are_errors() {
    assert_config_error(
        "name: x\ntrain: {optimizer: {lr: -0.1}}\n",
        &["train.optimizer.lr: must be > 0, got -0.1"],
    );
}

#[test]
fn a_missing_file_is_an_error() {
    let dir = workdir();
    let out = qat(&["run", "nope.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot read experiment file nope.yaml"), "{}", text(&out));
}

#[test]
fn plugins_lists_every_kind_with_defaults() {
    let out = qat(&["plugins"], Path::new("."));
    assert!(out.status.success());
    let t = text(&out);
    for want in [
        "quantizers:",
        "ternary",
        "granularity: tensor",
        "learn_scale: false",
        "activations:",
        "relu",
        "schedules:",
        "cosine",
        "from: 1.0",
    ] {
        assert!(t.contains(want), "`{want}` missing from:\n{t}");
    }
}

#[test]
fn every_run_records_its_analysis_and_qat_analyze_prints_it() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("an.yaml"),
        "name: an\nquantizer: ternary\nmodel: {hidden: [24, 24]}\ntrain: {epochs: 1}\n",
    )
    .unwrap();
    assert!(qat(&["run", "an.yaml", "-q"], dir.path()).status.success());
    let run = run_dirs(dir.path(), "an").remove(0);
    let record = record_of(&run);
    let analysis = &record["analysis"];
    let confusion: u64 = analysis["test"]["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(confusion, 10_000, "every test image is in the confusion matrix");
    let accuracy = analysis["test"]["accuracy"].as_f64().unwrap();
    assert!((accuracy - record["final_scores"]["test_acc"].as_f64().unwrap()).abs() < 1e-12);
    let layers = analysis["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for layer in layers {
        let histogram: u64 = layer["histogram"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
        assert!(histogram == 24 * 256 || histogram == 24 * 24 || histogram == 10 * 24, "{layer}");
        assert!(
            layer["cosine"].as_f64().unwrap() > 0.5 && layer["sqnr_db"].as_f64().unwrap() > 0.0,
            "{layer}"
        );
        assert!(layer["capacity_used"].as_f64().unwrap() <= 1.0);
    }
    let out = qat(&["analyze", run.to_str().unwrap()], dir.path());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("macro F1") && report.contains("ECE (15 bins)"), "{report}");
    assert!(report.contains("confusion (rows: true class, columns: predicted)"), "{report}");
    assert!(report.contains("fc3         3"), "{report}");
    let out = qat(&["analyze", run.to_str().unwrap(), "--post-quantize", "{name: int, bits: 4}"], dir.path());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let line =
        report.lines().find(|l| l.starts_with("post-quantized by {name: int, bits: 4}: ")).expect(&report);
    let accuracy: f64 = line.rsplit(' ').next().unwrap().trim_end_matches('%').parse().unwrap();
    assert!(accuracy > 50.0, "{line}");
    let out = qat(&["analyze", run.to_str().unwrap(), "--post-quantize", "{name: int, bitz: 4}"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("--post-quantize {name: int, bitz: 4}: "), "{}", text(&out));
}

/// Regression: `eval.post_quantize: [ternry]` passed `qat list` and `qat run` trained the whole
/// run before failing it; every plugin name is now checked before anything runs.
#[test]
fn a_misspelt_post_quantize_quantizer_fails_before_any_run() {
    let yaml =
        "name: x\nmodel: {hidden: [16]}\ntrain: {epochs: 1}\neval: {post_quantize: [ternary, ternry]}\n";
    let expected = ["eval.post_quantize[1]: unknown quantizer `ternry` (did you mean `ternary`?)"];
    assert_config_error(yaml, &expected);
    let dir = workdir();
    std::fs::write(dir.path().join("bad.yaml"), yaml).unwrap();
    let out = qat(&["list", "bad.yaml"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains(expected[0]), "{}", text(&out));
}
