//! Language models on Tiny Shakespeare (found like the CLI finds it): a short run learns,
//! resumes bit-identically from a mid-run checkpoint, and every registered quantizer runs on
//! transformer linears.

use qatlab_runner::data::RunData;
use qatlab_runner::launch::local::single_threaded;
use qatlab_runner::train::{train, Checkpoint, EpochMetrics, Observer};

/// A small model, 40 steps, evaluated every 10.
const SMALL: &str = "name: lm\ndata: {dataset: tinyshakespeare}\n\
    model: {kind: transformer, depth: 1, heads: 2, width: 32, context: 32}\n\
    train: {steps: 40, batch_size: 8, optimizer: {name: adamw, lr: 3.0e-3, weight_decay: 0.1}, \
    schedule: {name: warmup-cosine, warmup: 5, to: 0.1}, grad_clip: 1.0}\n\
    eval: {every: 10, batches: 4}";

/// Keeps the metrics (without timing) and the second checkpoint.
#[derive(Default)]
struct Keep {
    epochs: Vec<EpochMetrics>,
    second: Option<Checkpoint>,
}

impl Observer for Keep {
    fn on_epoch(&mut self, m: &EpochMetrics) {
        let mut m = m.clone();
        m.samples_per_s = 0.0;
        self.epochs.push(m);
    }
    fn on_checkpoint(&mut self, c: &Checkpoint) -> qatlab_runner::error::Result<()> {
        if c.epochs_done() == 2 {
            self.second = Some(c.clone());
        }
        Ok(())
    }
}

fn run(yaml: &str, resume: Option<&Checkpoint>) -> Keep {
    let config = crate::config(yaml);
    let data = RunData::load(&config.data).expect("tinyshakespeare (see README: data)");
    let registry = qatlab_plugins::builtin_registry();
    let mut keep = Keep::default();
    single_threaded(|| train(&config, &registry, &data, &mut keep, resume)).unwrap();
    keep
}

#[test]
fn a_small_transformer_learns_and_resumes_identically() {
    let full = run(SMALL, None);
    assert_eq!(full.epochs.len(), 4, "40 steps evaluated every 10");
    let (first, last) = (&full.epochs[0], &full.epochs[3]);
    // ln 65 = 4.17 is a uniform guess; 40 steps learn the character frequencies and more
    // (measured 3.68 after 10 steps, 3.31 after 40)
    assert!(
        first.test_loss < 4.0 && last.test_loss < first.test_loss && last.test_loss < 3.45,
        "{first:?} → {last:?}"
    );
    // training reads the windows as evaluation does: the validation loss is close to the
    // training loss of the last interval (a batch that cut windows apart would not be)
    assert!((last.train_loss - last.test_loss).abs() < 0.15, "{last:?}");
    let resumed = run(SMALL, full.second.as_ref());
    assert_eq!(resumed.epochs, full.epochs, "resumed after 20 steps: the same run");
}

#[test]
fn every_registered_quantizer_trains_transformer_linears() {
    let registry = qatlab_plugins::builtin_registry();
    let names: Vec<String> = registry.quantizers.infos().map(|i| i.name.clone()).collect();
    assert!(names.len() >= 14, "{names:?}");
    for name in names {
        let yaml = format!(
            "{}\nquantizer: {name}",
            SMALL.replace("steps: 40", "steps: 4").replace("every: 10, batches: 4", "every: 4, batches: 1")
        );
        let keep = run(&yaml, None);
        assert!(keep.epochs[0].test_loss.is_finite(), "{name}: {:?}", keep.epochs[0]);
    }
}

#[test]
fn a_finished_run_writes_a_sample_and_qat_sample_repeats_with_its_seed() {
    use super::cli::{qat, run_dirs, text, workdir};
    let dir = workdir();
    let yaml =
        SMALL.replace("steps: 40", "steps: 10").replace("every: 10, batches: 4", "every: 10, batches: 1");
    std::fs::write(dir.path().join("lm.yaml"), yaml).unwrap();
    let out = qat(&["run", "lm.yaml", "-q"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let run = run_dirs(dir.path(), "lm").remove(0);
    let written = std::fs::read_to_string(run.join("sample.txt")).unwrap();
    assert_eq!(written.chars().count(), 1 + 500, "the newline prompt and 500 characters");
    let sample = |args: &[&str]| {
        let mut all = vec!["sample", run.to_str().unwrap(), "--tokens", "30"];
        all.extend_from_slice(args);
        qat(&all, dir.path())
    };
    let greedy = text(&sample(&["--prompt", "ROMEO:", "--temperature", "0"]));
    assert!(greedy.starts_with("ROMEO:") && greedy.trim_end().chars().count() >= 6, "{greedy}");
    assert_eq!(greedy, text(&sample(&["--prompt", "ROMEO:", "--temperature", "0"])));
    let seeded = |seed: &str| text(&sample(&["--prompt", "ROMEO:", "--seed", seed]));
    assert_eq!(seeded("3"), seeded("3"));
    assert_ne!(seeded("3"), seeded("4"));
    // the whole split and the spread of estimates from random windows (1 batch of 8 each here)
    let analysis = text(&qat(&["analyze", run.to_str().unwrap(), "--draws", "3"], dir.path()));
    let number = |after: &str| -> f64 {
        let rest = &analysis
            [analysis.find(after).unwrap_or_else(|| panic!("{after} in {analysis}")) + after.len()..];
        rest.split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
    };
    let (split, mean, std) = (number("loss "), number("mean "), number("std "));
    assert!(analysis.contains("3 estimates from 1 random batches of 8 windows"), "{analysis}");
    assert!(std > 0.0 && (mean - split).abs() < 0.5 && split < (65f64).ln(), "{analysis}");
    let out = sample(&["--prompt", "ROMEO: é"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("characters outside the model's vocabulary: ['é']"), "{}", text(&out));
}

#[test]
fn a_language_model_sweep_reports_validation_loss_columns_and_table() {
    use super::cli::{qat, text, workdir};
    let dir = workdir();
    let yaml =
        SMALL.replace("steps: 40", "steps: 4").replace("every: 10, batches: 4", "every: 2, batches: 1");
    std::fs::write(dir.path().join("lm.yaml"), format!("{yaml}\nsweep: {{seeds: [0, 1]}}\n")).unwrap();
    let out = qat(&["run", "lm.yaml", "-q", "--jobs", "2"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("step      4  train loss"), "{}", text(&out));
    let csv = std::fs::read_to_string(dir.path().join("results/lm/results.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    assert!(
        header.contains("final_val_loss,best_val_loss,best_eval,final_val_bpc,final_val_acc"),
        "{header}"
    );
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    let column = |name: &str| header.split(',').position(|h| h == name).unwrap();
    let (loss, bpc): (f64, f64) =
        (row[column("final_val_loss")].parse().unwrap(), row[column("final_val_bpc")].parse().unwrap());
    assert!((bpc - loss / std::f64::consts::LN_2).abs() < 1e-5, "{loss} nats = {bpc} bits");
    let table = text(&qat(&["table", "results/lm"], dir.path()));
    assert!(table.contains("final_val_loss") && table.contains("| 2 |"), "{table}");
    // run.json names the same scores
    let run = super::cli::run_dirs(dir.path(), "lm").remove(0);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let lm = &record["language_model"];
    let final_loss = lm["final_val_loss"].as_f64().unwrap();
    assert_eq!(final_loss, record["final_scores"]["test_loss"].as_f64().unwrap());
    assert!((lm["final_val_perplexity"].as_f64().unwrap() - final_loss.exp()).abs() < 1e-9, "{lm}");
    assert!(
        lm["best_val_loss"].as_f64().unwrap() <= final_loss && lm["best_eval"].as_u64().unwrap() >= 1,
        "{lm}"
    );
    // TensorBoard: val/loss, val/bpc and val/perplexity at steps 2 and 4; plots of loss
    let root = dir.path().join("results/lm");
    super::sweep::check_tensorboard(&root, 2, 1, 2, Some(2));
    for plot in ["loss_vs_memory.svg", "loss_vs_memory.png", "curves.svg", "curves.png"] {
        let bytes = std::fs::read(root.join("plots").join(plot)).unwrap();
        assert!(bytes.len() > 1000, "{plot} is {} bytes", bytes.len());
    }
    let svg = std::fs::read_to_string(root.join("plots/curves.svg")).unwrap();
    assert!(svg.contains("validation loss"), "the curves plot validation loss");
    assert!(text(&out).contains("perplexity"), "{}", text(&out));
    assert!(
        text(&out).contains("val loss    best (eval)   val bpc"),
        "the summary speaks of loss: {}",
        text(&out)
    );
}

/// Distillation of a ternary student from a float teacher language model on per-token logits:
/// the named teacher trains first, `kd` with alpha 0 is the plain cross-entropy run to the last
/// bit, and alpha 0.5 trains differently.
#[test]
fn a_ternary_language_model_distils_from_a_float_teacher() {
    use super::cli::{qat, run_dirs, text, workdir};
    let dir = workdir();
    let student = format!(
        "{}\nquantizer: ternary\n",
        SMALL.replace("steps: 40", "steps: 12").replace("every: 10, batches: 4", "every: 4, batches: 2")
    );
    let kd = student.replace("name: lm", "name: kd").replace(
        "grad_clip: 1.0}",
        "grad_clip: 1.0, distill: {teacher: float, loss: {name: kd, temperature: 2}}}",
    )
        + "teachers: {float: {quantizer: none}}\nsweep: {grid: {train.distill.loss.alpha: [0.0, 0.5]}}\n";
    std::fs::write(dir.path().join("plain.yaml"), &student).unwrap();
    std::fs::write(dir.path().join("kd.yaml"), &kd).unwrap();
    for file in ["plain.yaml", "kd.yaml"] {
        let out = qat(&["run", file, "-q", "--jobs", "1"], dir.path());
        assert!(out.status.success(), "{file}: {}", text(&out));
    }
    assert_eq!(run_dirs(dir.path(), "kd-teachers").len(), 1, "the float teacher trained first");
    let metrics = |run: &std::path::Path| super::sweep::metrics_without_timing(&run.join("metrics.csv"));
    let plain = metrics(&run_dirs(dir.path(), "lm")[0]);
    let kd_runs: Vec<Vec<String>> = run_dirs(dir.path(), "kd").iter().map(|d| metrics(d)).collect();
    assert_eq!(plain.len(), 4, "header and 3 evaluations");
    let alpha_zero = kd_runs.iter().filter(|m| **m == plain).count();
    assert_eq!(alpha_zero, 1, "alpha 0 is cross-entropy alone: the plain run, bit for bit");
    assert!(kd_runs.iter().any(|m| m[1..] != plain[1..]), "alpha 0.5 learns from the teacher");
}
