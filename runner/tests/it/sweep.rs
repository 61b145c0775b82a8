//! Sweeps end to end through the `qat` binary: expansion, parallel runs, results.csv, table,
//! kill-and-resume exactness, divergence isolation, and the errors that stop a sweep before
//! anything runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{qat, text, workdir};

const GRID: &str = "name: grid\nmodel: {hidden: [16]}\ntrain: {epochs: 3}\nsweep:\n  grid:\n    quantizer: [ternary, {name: int, bits: 2}]\n    model.hidden: [[16], [24]]\n  seeds: [0, 1]\n";

fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let timing: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| *h == "wall_s" || *h == "samples_per_s")
        .map(|(i, _)| i)
        .collect();
    let mut rows: Vec<Vec<String>> = vec![header];
    for r in reader.records() {
        let r = r.unwrap();
        rows.push(
            r.iter().enumerate().filter(|(i, _)| !timing.contains(i)).map(|(_, v)| v.to_string()).collect(),
        );
    }
    rows
}

/// metrics.csv without the timing column.
fn metrics_without_timing(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let drop = text.lines().next().unwrap().split(',').position(|c| c == "samples_per_s").unwrap();
    text.lines()
        .map(|l| {
            l.split(',').enumerate().filter(|(i, _)| *i != drop).map(|(_, v)| v).collect::<Vec<_>>().join(",")
        })
        .collect()
}

fn run_dirs(root: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn a_grid_with_seeds_runs_in_parallel_and_aggregates() {
    let dir = workdir();
    std::fs::write(dir.path().join("grid.yaml"), GRID).unwrap();
    let listed = qat(&["list", "grid.yaml"], dir.path());
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains("8 runs of experiment `grid`"), "{}", text(&listed));
    assert!(text(&listed).contains("quantizer={name: int, bits: 2} model.hidden=[24] train.seed=1"));

    let out = qat(&["run", "grid.yaml", "--jobs", "2", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let root = dir.path().join("results/grid");
    assert_eq!(run_dirs(&root).len(), 8);
    let rows = csv_rows(&root.join("results.csv"));
    assert_eq!(rows.len(), 9, "header and 8 runs");
    assert_eq!(rows[0][..5], ["index", "run_id", "quantizer", "model.hidden", "seed"]);
    assert!(rows[1..].iter().all(|r| r[5] == "success"));

    let table = qat(&["table", "results/grid"], dir.path());
    let t = text(&table);
    assert!(table.status.success(), "{t}");
    let body: Vec<&str> = t.lines().skip(2).collect();
    assert_eq!(body.len(), 4, "{t}");
    assert!(body.iter().all(|l| l.contains(" ± ") && l.ends_with("| 2 |")), "{t}");

    check_tensorboard(&root, 8, 4, 3);
    for plot in ["accuracy_vs_bits.svg", "accuracy_vs_bits.png", "curves.svg", "curves.png"] {
        let bytes = std::fs::read(root.join("plots").join(plot)).unwrap();
        assert!(bytes.len() > 1000, "{plot} is {} bytes", bytes.len());
    }
    let svg = std::fs::read_to_string(root.join("plots/accuracy_vs_bits.svg")).unwrap();
    assert!(svg.contains("ternary") && svg.contains("int bits=2"), "one series per quantizer");

    // the same single run selected by index and by id is skipped: it already succeeded
    let id = &rows[3][1];
    let only = qat(&["run", "grid.yaml", "--only", id, "-q"], dir.path());
    assert!(text(&only).contains(" done "), "{}", text(&only));
    assert_eq!(csv_rows(&root.join("results.csv")).len(), 9, "no duplicate rows");
}

#[test]
fn a_killed_sweep_resumes_to_the_same_results_as_an_uninterrupted_one() {
    let yaml = "name: resume\nquantizer: ternary\nmodel: {hidden: [64, 64]}\ntrain: {epochs: 3}\nsweep:\n  grid:\n    train.optimizer.lr: [0.001, 0.002]\n";
    let clean = workdir();
    std::fs::write(clean.path().join("r.yaml"), yaml).unwrap();
    let out = qat(&["run", "r.yaml", "--jobs", "2", "-q"], clean.path());
    assert!(out.status.success(), "{}", text(&out));

    let killed = workdir();
    std::fs::write(killed.path().join("r.yaml"), yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_qat"))
        .args(["run", "r.yaml", "--jobs", "2", "-q"])
        .current_dir(killed.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // wait until some run has checkpointed an epoch but not finished, then SIGKILL
    let root = killed.path().join("results/resume");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut interrupted = false;
    while Instant::now() < deadline && !interrupted {
        std::thread::sleep(Duration::from_millis(20));
        if root.is_dir() {
            interrupted = run_dirs(&root).iter().any(|d| {
                d.join("checkpoint.safetensors").is_file()
                    && std::fs::read_to_string(d.join("run.json")).is_ok_and(|s| s.contains("\"running\""))
            });
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(interrupted, "the sweep finished before it could be killed mid-run");
    let again = qat(&["run", "r.yaml", "--jobs", "2", "-q"], killed.path());
    assert!(again.status.success(), "{}", text(&again));

    assert_eq!(
        csv_rows(&root.join("results.csv")),
        csv_rows(&clean.path().join("results/resume/results.csv"))
    );
    for (a, b) in run_dirs(&root).iter().zip(run_dirs(&clean.path().join("results/resume"))) {
        assert_eq!(a.file_name(), b.file_name());
        assert_eq!(
            metrics_without_timing(&a.join("metrics.csv")),
            metrics_without_timing(&b.join("metrics.csv"))
        );
    }
}

#[test]
fn a_diverging_run_is_recorded_and_the_sweep_goes_on() {
    let dir = workdir();
    let yaml = "name: div\nmodel: {hidden: [16], activation_bits: null, norm: none}\ntrain: {epochs: 1, schedule: constant}\nsweep:\n  grid:\n    train.optimizer.lr: [0.001, 1.0e+30]\n";
    std::fs::write(dir.path().join("d.yaml"), yaml).unwrap();
    let out = qat(&["run", "d.yaml", "-q", "--jobs", "1"], dir.path());
    assert_eq!(out.status.code(), Some(1), "some run diverged: {}", text(&out));
    let rows = csv_rows(&dir.path().join("results/div/results.csv"));
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1][4], "success");
    assert_eq!(rows[2][4], "diverged");
    assert!(rows[2].last().unwrap().contains("loss is"), "{:?}", rows[2]);
}

#[test]
fn extends_merges_a_base_key_by_key() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("base.yaml"),
        "name: based\nquantizer: ternary\nmodel: {hidden: [16]}\ntrain: {epochs: 1, batch_size: 64}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("child.yaml"), "extends: base.yaml\ntrain: {epochs: 2}\n").unwrap();
    let out = qat(&["run", "child.yaml", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let run = &run_dirs(&dir.path().join("results/based"))[0];
    let config = std::fs::read_to_string(run.join("config.yaml")).unwrap();
    assert!(
        config.contains("epochs: 2") && config.contains("batch_size: 64") && config.contains("name: ternary"),
        "{config}"
    );
}

fn assert_rejected(files: &[(&str, &str)], expected: &[&str]) {
    let dir = workdir();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let out = qat(&["run", files[0].0], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    for e in expected {
        assert!(text(&out).contains(e), "expected `{e}` in: {}", text(&out));
    }
    assert!(!dir.path().join("results").exists(), "nothing may start");
}

#[test]
fn sweep_errors_stop_before_anything_runs() {
    assert_rejected(
        &[("e.yaml", "name: e\nsweep: {grid: {train.optimiser.lr: [0.1]}}\n")],
        &["sweep: `train.optimiser.lr` is not a config key"],
    );
    assert_rejected(
        &[("e.yaml", "name: e\nsweep: {grid: {train.epocs: [1]}}\n")],
        &["(did you mean `epochs`?)"],
    );
    assert_rejected(
        &[("e.yaml", "name: e\nsweep: {grid: {train.epochs: []}}\n")],
        &["sweep: `train.epochs` has an empty list"],
    );
    assert_rejected(
        &[("e.yaml", "extends: nope.yaml\nname: e\n")],
        &["extends:", "nope.yaml does not exist"],
    );
    assert_rejected(
        &[("e.yaml", "name: e\nquantizer: int\nsweep: {grid: {quantizer.bits: [2, 0]}}\n")],
        &["run 1 (quantizer.bits=0)", "bits: must be between 2 and 8, got 0"],
    );
}

/// A language model's bad input stops before any run of the sweep, naming the key and the fix.
#[test]
fn language_model_errors_stop_before_anything_runs() {
    let lm = "name: e\ndata: {dataset: tinyshakespeare}\nmodel: {kind: transformer, depth: 1, width: 16, heads: 2, context: 8}\n";
    for (yaml, expected) in [
        (format!("{lm}train: {{steps: 10, epochs: 2}}\n"), "train.steps and train.epochs: a run trains for one or the other; remove train.epochs"),
        (format!("{lm}train: {{steps: 10}}\nsweep: {{grid: {{model.width: [16, 17]}}}}\n"), "model.width: 17 is not a multiple of model.heads (2)"),
        (format!("{lm}train: {{steps: 10}}\nsweep: {{grid: {{model.kind: [transformer, rnn]}}}}\n"), "unknown variant `rnn`, expected `mlp` or `transformer`"),
        (format!("{lm}train: {{epochs: 1}}\n"), "train.steps: a language model trains for a number of optimizer steps"),
        ("name: e\ndata: {dataset: tinyshakespeare, augment: true}\nmodel: {kind: transformer}\ntrain: {steps: 1}\n".to_string(), "data.augment, data.elastic, data.crop_flip: image keys; text has none"),
        ("name: e\nmodel: {kind: transformer}\ntrain: {steps: 1}\n".to_string(), "a language model needs a text dataset (tinyshakespeare), not mnist"),
    ] {
        assert_rejected(&[("e.yaml", yaml.as_str())], &[expected]);
    }
}

/// Read the sweep's TensorBoard files with the real `tensorboard` package (EventAccumulator and
/// the hparams plugin's data provider). Skipped with a message when Python lacks the package,
/// unless QAT_REQUIRE_TENSORBOARD is set (CI sets it after installing the package).
fn check_tensorboard(root: &Path, sessions: usize, groups: usize, epochs: usize) {
    let available =
        Command::new("python3").args(["-c", "import tensorboard"]).output().is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("QAT_REQUIRE_TENSORBOARD").is_none(),
            "QAT_REQUIRE_TENSORBOARD is set but `import tensorboard` fails; pip install tensorboard"
        );
        eprintln!("skipping the TensorBoard read-back: `pip install tensorboard` to run it");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/tensorboard_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(root)
        .args([sessions, groups, epochs].map(|n| n.to_string()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("statuses=['STATUS_SUCCESS']"), "{}", text(&out));
}

#[test]
fn a_student_distils_from_a_finished_teacher_run() {
    let dir = workdir();
    std::fs::write(dir.path().join("t.yaml"), "name: teacher\nmodel: {hidden: [32]}\ntrain: {epochs: 1}\n")
        .unwrap();
    assert!(qat(&["run", "t.yaml", "-q"], dir.path()).status.success());
    let teacher = run_dirs(&dir.path().join("results/teacher")).remove(0);
    let teacher_rel = teacher.strip_prefix(dir.path()).unwrap().display().to_string();
    let student = format!(
        "name: student\nquantizer: ternary\nmodel: {{hidden: [16]}}\ntrain: {{epochs: 1}}\nsweep:\n  grid:\n    train.distill: [null, {{teacher: {teacher_rel}, loss: {{name: kd, alpha: 0.9, temperature: 4}}}}]\n"
    );
    std::fs::write(dir.path().join("s.yaml"), student).unwrap();
    let out = qat(&["run", "s.yaml", "-q", "--jobs", "2"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let rows = csv_rows(&dir.path().join("results/student/results.csv"));
    assert_eq!(rows.len(), 3);
    assert!(rows[1..].iter().all(|r| r[4] == "success"), "{rows:?}");
    assert_ne!(rows[1][5], rows[2][5], "distillation changes the run");
    // Feature distillation: the student's last hidden width must be the teacher's (32).
    let feature = format!(
        "name: featured\nquantizer: ternary\nmodel: {{hidden: [16, 32]}}\ntrain: {{epochs: 1, distill: {{teacher: {teacher_rel}, loss: feature}}}}\n"
    );
    std::fs::write(dir.path().join("f.yaml"), feature).unwrap();
    let out = qat(&["run", "f.yaml", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let rows = csv_rows(&dir.path().join("results/featured/results.csv"));
    let column = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    assert_eq!(rows[1][column("status")], "success", "{rows:?}");
    assert!(rows[1][column("final_test_acc")].parse::<f64>().unwrap() > 80.0, "{rows:?}");
    let narrow = format!(
        "name: narrow\nquantizer: ternary\nmodel: {{hidden: [16]}}\ntrain: {{epochs: 1, distill: {{teacher: {teacher_rel}, loss: feature}}}}\n"
    );
    std::fs::write(dir.path().join("n.yaml"), narrow).unwrap();
    let out = qat(&["run", "n.yaml", "-q"], dir.path());
    assert!(
        text(&out).contains("the teacher's last hidden width (32) must equal the student's (16)"),
        "{}",
        text(&out)
    );
    std::fs::write(dir.path().join("bad.yaml"), "name: bad\ntrain: {distill: {teacher: results/nope}}\n")
        .unwrap();
    let bad = qat(&["run", "bad.yaml", "-q"], dir.path());
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("train.distill.teacher: results/nope is not a finished run directory"),
        "{}",
        text(&bad)
    );
}

#[test]
fn named_teachers_are_trained_first_and_distilled_from() {
    let dir = workdir();
    let yaml = "name: named\nquantizer: ternary\nmodel: {hidden: [16]}\ntrain: {epochs: 1, distill: {teacher: wide}}\n\
                teachers:\n  wide: {quantizer: none, model: {hidden: [48]}}\n";
    std::fs::write(dir.path().join("n.yaml"), yaml).unwrap();
    let out = qat(&["run", "n.yaml", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let teachers = run_dirs(&dir.path().join("results/named-teachers"));
    assert_eq!(teachers.len(), 1);
    let teacher_config = std::fs::read_to_string(teachers[0].join("config.yaml")).unwrap();
    assert!(teacher_config.contains("- 48") && !teacher_config.contains("distill"), "{teacher_config}");
    let students = run_dirs(&dir.path().join("results/named"));
    let student_config = std::fs::read_to_string(students[0].join("config.yaml")).unwrap();
    assert!(student_config.contains("teacher: wide"), "the run keeps the name: {student_config}");
    // Rerun: both are done; a finished student analyses without its teacher.
    let again = qat(&["run", "n.yaml", "-q"], dir.path());
    assert!(again.status.success() && !text(&again).contains("epoch   1"), "{}", text(&again));
    let out = qat(&["analyze", students[0].to_str().unwrap()], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    // An unknown name says where teachers come from.
    std::fs::write(dir.path().join("u.yaml"), yaml.replace("teacher: wide", "teacher: tall")).unwrap();
    let out = qat(&["run", "u.yaml", "-q"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("tall is not a finished run directory (no config.yaml and checkpoint) nor a name under `teachers:`"), "{}", text(&out));
}

#[test]
fn a_sweep_addresses_layer_overrides_by_quoted_name_and_glob() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("g.yaml"),
        "name: g\nmodel: {hidden: [16, 16]}\ntrain: {epochs: 1}\nsweep:\n  grid:\n    \
         'model.layers.\"fc*\".quantizer': [ternary, {name: int, bits: 4}]\n    \
         'model.layers.\"fc3\".activation_bits': [4]\n",
    )
    .unwrap();
    let registry = qatlab_plugins::builtin_registry();
    let plan = qatlab_runner::experiment::load(&dir.path().join("g.yaml"), &registry).unwrap();
    assert_eq!(plan.runs.len(), 2);
    let model = &plan.runs[1].config.model;
    let quantizer = &plan.runs[1].config.quantizer;
    let (fc1, bits1) = model.layer(0, 3, quantizer);
    assert_eq!((fc1.name.as_str(), bits1), ("int", Some(8)), "the glob reaches fc1");
    assert_eq!(model.layer(2, 3, quantizer).1, Some(4), "the exact name reaches fc3");
    let out = qat(&["list", "g.yaml"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
}
