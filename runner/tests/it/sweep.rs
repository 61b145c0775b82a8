//! Sweeps end to end through the `qat` binary: expansion, parallel runs, results.csv, table,
//! kill-and-resume exactness, divergence isolation, and the errors that stop a sweep before
//! anything runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{qat, text, workdir};

const GRID: &str = "name: grid\nmodel: {hidden: [16]}\ntrain: {epochs: 3}\nsweep:\n  grid:\n    quantizer: [ternary, {name: int, bits: 2}]\n    model.hidden: [[16], [24]]\n  seeds: [0, 1]\n";

pub fn csv_rows(path: &Path) -> Vec<Vec<String>> {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let timing: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| matches!(h.as_str(), "wall_s" | "samples_per_s" | "tokens_per_s"))
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
pub fn metrics_without_timing(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let drop = text.lines().next().unwrap().split(',').position(|c| c == "samples_per_s").unwrap();
    text.lines()
        .map(|l| {
            l.split(',').enumerate().filter(|(i, _)| *i != drop).map(|(_, v)| v).collect::<Vec<_>>().join(",")
        })
        .collect()
}

pub fn run_dirs(root: &Path) -> Vec<std::path::PathBuf> {
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

    check_tensorboard(&root, 8, 4, 3, None);
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
    killed_and_resumed_matches_uninterrupted(yaml, "resume");
}

/// The same for a language model: SIGKILL between evaluations, rerun, and every metric of every
/// evaluation equals the uninterrupted run's.
#[test]
fn a_killed_language_model_sweep_resumes_to_the_same_results() {
    let yaml = "name: lmresume\ndata: {dataset: tinyshakespeare}\nquantizer: ternary\n\
        model: {kind: transformer, depth: 1, heads: 2, width: 32, context: 32, activation_bits: 8}\n\
        train: {steps: 120, batch_size: 8, optimizer: {name: adamw, lr: 3.0e-3}}\neval: {every: 10, batches: 2}\n\
        sweep: {seeds: [0, 1]}\n";
    killed_and_resumed_matches_uninterrupted(yaml, "lmresume");
}

/// Run `qat args` in `dir` and SIGKILL it as soon as `ready` holds (polled every 5 ms, for at
/// most two minutes); whether it was killed so.
pub fn kill_when(dir: &Path, args: &[&str], mut ready: impl FnMut() -> bool) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qat"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut interrupted = false;
    while Instant::now() < deadline && !interrupted {
        std::thread::sleep(Duration::from_millis(5));
        interrupted = ready() && child.try_wait().unwrap().is_none();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    interrupted
}

/// Whether some run under `root` has a checkpoint and is still running.
pub fn mid_run(root: &Path) -> bool {
    root.is_dir()
        && run_dirs(root).iter().any(|d| {
            d.join("checkpoint.safetensors").is_file()
                && std::fs::read_to_string(d.join("run.json")).is_ok_and(|s| s.contains("\"running\""))
        })
}

/// Run `yaml` (experiment `name`) once uninterrupted and once SIGKILLed mid-run and rerun;
/// results.csv and every run's metrics (timing aside) must match.
fn killed_and_resumed_matches_uninterrupted(yaml: &str, name: &str) {
    let clean = workdir();
    std::fs::write(clean.path().join("r.yaml"), yaml).unwrap();
    let out = qat(&["run", "r.yaml", "--jobs", "2", "-q"], clean.path());
    assert!(out.status.success(), "{}", text(&out));

    let killed = workdir();
    std::fs::write(killed.path().join("r.yaml"), yaml).unwrap();
    // SIGKILL once some run has checkpointed an evaluation but not finished
    let root = killed.path().join("results").join(name);
    let interrupted = kill_when(killed.path(), &["run", "r.yaml", "--jobs", "2", "-q"], || mid_run(&root));
    assert!(interrupted, "the sweep finished before it could be killed mid-run");
    let again = qat(&["run", "r.yaml", "--jobs", "2", "-q"], killed.path());
    assert!(again.status.success(), "{}", text(&again));

    assert_same_results(&root, &clean.path().join("results").join(name));
}

/// The same results.csv and the same runs with the same metrics (timing aside) in both
/// experiment directories.
pub fn assert_same_results(root: &Path, other: &Path) {
    assert_eq!(csv_rows(&root.join("results.csv")), csv_rows(&other.join("results.csv")));
    assert_eq!(run_dirs(root).len(), run_dirs(other).len());
    for (a, b) in run_dirs(root).iter().zip(run_dirs(other)) {
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
        ("name: e\nmodel: {kind: transformer}\ntrain: {steps: 1}\n".to_string(), "a language model needs a text dataset (tinyshakespeare or text), not mnist"),
    ] {
        assert_rejected(&[("e.yaml", yaml.as_str())], &[expected]);
    }
    // checks across keys point at the key's line and column, in block and flow style
    let block = "name: e\ndata: {dataset: tinyshakespeare}\ntrain: {steps: 1}\nmodel:\n  kind: transformer\n  width: 130\n  heads: 4\n";
    assert_rejected(
        &[("e.yaml", block)],
        &["e.yaml:6:3: model.width: 130 is not a multiple of model.heads (4)"],
    );
    let flow = "name: e\ndata: {dataset: tinyshakespeare}\ntrain: {steps: 1}\nmodel: {kind: transformer, depth: 0}\n";
    assert_rejected(&[("e.yaml", flow)], &["e.yaml:4:28: model.depth: must be at least 1"]);
}

/// Read the sweep's TensorBoard files with the real `tensorboard` package (EventAccumulator and
/// the hparams plugin's data provider). Skipped with a message when Python lacks the package,
/// unless QAT_REQUIRE_TENSORBOARD is set (CI sets it after installing the package).
pub fn check_tensorboard(root: &Path, sessions: usize, groups: usize, epochs: usize, every: Option<usize>) {
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
        .args(every.map(|n| n.to_string()))
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

/// `dataset: text` with a file the user brings: the path is relative to the experiment file,
/// planning fills in its SHA-256 and vocabulary, the byte tokenizer trains on any bytes, and a
/// moved copy of the same file keeps the run id.
#[test]
fn a_text_file_trains_by_byte_and_its_run_id_follows_its_contents() {
    let body =
        "name: own\ndata: {dataset: text, path: corpus/notes.txt, tokenizer: byte, val_fraction: 0.2}\n\
        model: {kind: transformer, depth: 1, heads: 2, width: 16, context: 16}\n\
        train: {steps: 20, batch_size: 4}\neval: {every: 10, batches: 2}\n";
    let corpus: String = (0..40).map(|i| format!("line {i}: ünïcödé and bytes\n")).collect();
    let (a, b) = (workdir(), workdir());
    for dir in [&a, &b] {
        std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
        std::fs::write(dir.path().join("corpus/notes.txt"), &corpus).unwrap();
        std::fs::write(dir.path().join("e.yaml"), body).unwrap();
    }
    let (list_a, list_b) = (qat(&["list", "e.yaml"], a.path()), qat(&["list", "e.yaml"], b.path()));
    assert!(list_a.status.success(), "{}", text(&list_a));
    assert_eq!(text(&list_a), text(&list_b), "the same file in another folder: the same run id");
    let out = qat(&["run", "e.yaml", "-q"], a.path());
    assert!(out.status.success(), "{}", text(&out));
    let runs = run_dirs(&a.path().join("results/own"));
    assert_eq!(runs.len(), 1);
    let config = std::fs::read_to_string(runs[0].join("config.yaml")).unwrap();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(corpus.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert!(config.contains(&format!("sha256: {sha}")) && config.contains("vocab: 256"), "{config}");
    let rows = csv_rows(&a.path().join("results/own/results.csv"));
    let loss = rows[0].iter().position(|h| h == "final_val_loss").unwrap();
    let value: f64 = rows[1][loss].parse().unwrap();
    assert!(value.is_finite() && value < (256f64).ln(), "below a uniform guess over bytes: {value}");
    // a different file at the same path is a different run
    std::fs::write(b.path().join("corpus/notes.txt"), corpus.replace("line", "row")).unwrap();
    assert_ne!(text(&list_a), text(&qat(&["list", "e.yaml"], b.path())));
}

/// Every problem with a `dataset: text` file stops the sweep before a run starts, naming the key.
#[test]
fn text_file_errors_stop_before_anything_runs() {
    let lm = "model: {kind: transformer, depth: 1, width: 16, heads: 2, context: 8}\ntrain: {steps: 2}\n";
    let with = |data: &str| format!("name: e\ndata: {data}\n{lm}");
    let long: String = "to be or not to be ".repeat(20);
    for (data, files, expected) in [
        ("{dataset: text, path: missing.txt}", vec![], "data.path: cannot read missing.txt (relative to the experiment file's folder)"),
        ("{dataset: text, path: empty.txt}", vec![("empty.txt", Vec::new())], "data.path: empty.txt is empty"),
        ("{dataset: text, path: bin.dat}", vec![("bin.dat", vec![0xff, 0xfe, 0x00, 0x41])], "data.tokenizer: bin.dat: not UTF-8"),
        ("{dataset: text, path: short.txt}", vec![("short.txt", b"0123456789012345678901234567890123456789".to_vec())], "data.val_fraction: the validation split of short.txt has 4 tokens, not more than one context window (8)"),
        ("{dataset: text, path: t.txt, augment: true}", vec![("t.txt", long.clone().into_bytes())], "data.augment, data.elastic, data.crop_flip: image keys"),
        ("{dataset: text}", vec![], "data.path: dataset text reads a file; set data.path"),
        ("{dataset: text, path: t.txt, val_fraction: 1.5}", vec![("t.txt", long.clone().into_bytes())], "data.val_fraction: must be between 0 and 1"),
        ("{dataset: tinyshakespeare, tokenizer: byte}", vec![], "data.tokenizer: a key of dataset text; tinyshakespeare has its own file and split"),
        ("{dataset: text, path: t.txt, sha256: abc}", vec![("t.txt", long.clone().into_bytes())], "data.sha256: t.txt has SHA-256"),
    ] {
        let mut all: Vec<(&str, Vec<u8>)> = vec![("e.yaml", with(data).into_bytes())];
        all.extend(files);
        let dir = workdir();
        for (name, bytes) in &all {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        let out = qat(&["run", "e.yaml"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{data}: {}", text(&out));
        assert!(text(&out).contains(expected), "{data}: expected `{expected}` in: {}", text(&out));
        assert!(!dir.path().join("results").exists(), "nothing may start");
    }
    assert_rejected(
        &[("e.yaml", "name: e\ndata: {dataset: tinyshakespeare}\nmodel: {kind: transformer, context: 200000}\ntrain: {steps: 1}\n")],
        &["model.context: 200000 tokens; tinyshakespeare's validation split has 111540"],
    );
}

/// `--set key=value` overrides the file's base config for every run: the value is in each run's
/// config and run id, the sweep still expands over it, and a bad key, a missing `=`, or a key
/// the file sweeps stop everything with exit 2.
#[test]
fn set_overrides_a_key_for_every_run_and_is_checked_like_a_grid_path() {
    let dir = workdir();
    let body = "name: s\nmodel: {hidden: [16]}\ntrain: {epochs: 1}\nsweep: {seeds: [0, 1]}\n";
    std::fs::write(dir.path().join("s.yaml"), body).unwrap();
    let ids = |extra: &[&str]| {
        let mut args = vec!["list", "s.yaml"];
        args.extend_from_slice(extra);
        let out = qat(&args, dir.path());
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let plain = ids(&[]);
    let set = ["--set", "train.optimizer.lr=0.002", "--set", "model.hidden=[24]"];
    assert_ne!(plain, ids(&set), "overrides change the run ids");
    assert_eq!(ids(&set), ids(&set));
    let mut run = vec!["run", "s.yaml", "-q"];
    run.extend_from_slice(&set);
    let out = qat(&run, dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let runs = run_dirs(&dir.path().join("results/s"));
    assert_eq!(runs.len(), 2, "both seeds ran");
    for r in &runs {
        let config = std::fs::read_to_string(r.join("config.yaml")).unwrap();
        assert!(config.contains("lr: 0.002") && config.contains("- 24"), "{config}");
        assert!(plain.contains("2 runs") && !plain.contains(r.file_name().unwrap().to_str().unwrap()));
    }
    for (args, expected) in [
        (
            vec!["--set", "train.optimiser.lr=1"],
            "--set train.optimiser.lr: `train.optimiser.lr` is not a config key",
        ),
        (vec!["--set", "train.epochs"], "--set train.epochs: expected key=value"),
        (vec!["--set", "train.seed=3"], "--set train.seed: s.yaml sweeps this key"),
        (vec!["--set", "quantizer=int", "--set", "quantizer.bits=0"], "bits: must be between 2 and 8, got 0"),
    ] {
        let mut all = vec!["run", "s.yaml"];
        all.extend_from_slice(&args);
        let d = workdir();
        std::fs::write(d.path().join("s.yaml"), body).unwrap();
        let out = qat(&all, d.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{args:?}: expected `{expected}` in {}", text(&out));
        assert!(!d.path().join("results").exists(), "nothing may start");
    }
}
