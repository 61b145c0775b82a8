//! Searches end to end through the `qat` binary: the ledger, ASHA and median pruning, exact
//! replay after SIGKILL, continuing a search, `--only`, best.yaml, listings, and the errors
//! that stop a search before anything runs.

use std::path::Path;

use crate::cli::{qat, text, workdir};
use crate::sweep::{assert_same_results, csv_rows, kill_when, mid_run, run_dirs};

/// A small ternary language model searched over learning rate and weight decay with ASHA.
fn lm_search(trials: usize, steps: usize) -> String {
    format!(
        "name: lmsearch\ndata: {{dataset: tinyshakespeare}}\nquantizer: ternary\n\
         model: {{kind: transformer, depth: 2, heads: 2, width: 64, context: 32, activation_bits: 8}}\n\
         train: {{steps: {steps}, batch_size: 8, optimizer: {{name: adamw, lr: 3.0e-3}}}}\neval: {{every: 20, batches: 2}}\n\
         sweep:\n  search:\n    method: tpe\n    trials: {trials}\n    seed: 1\n    metric: val_loss\n    space:\n\
         \x20     train.optimizer.lr: {{log_uniform: [1.0e-3, 3.0e-2]}}\n\
         \x20     train.optimizer.weight_decay: {{uniform: [0.0, 0.2]}}\n\
         \x20   prune: {{method: asha, min_resource: 1, reduction: 3}}\n"
    )
}

fn ledger(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("ledger.json")).unwrap()).unwrap()
}

#[test]
fn a_killed_search_replays_to_the_same_ledger_and_results() {
    let yaml = lm_search(9, 120);
    let clean = workdir();
    std::fs::write(clean.path().join("s.yaml"), &yaml).unwrap();
    let out = qat(&["run", "s.yaml", "--jobs", "1", "-q"], clean.path());
    assert!(out.status.success(), "{}", text(&out));
    let clean_root = clean.path().join("results/lmsearch");

    // ASHA with η 3 over rungs of 1, 3 and 6 evaluations: every trial reaches rung 0, fewer
    // each later rung; those that trained all 6 are finished, the rest pruned
    let l = ledger(&clean_root);
    let trials = l["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 9);
    let reached = |k: usize| trials.iter().filter(|t| t["rungs"].as_array().unwrap().len() > k).count();
    assert_eq!(reached(0), 9);
    assert!(reached(1) < 9 && reached(1) >= 3, "{l}");
    assert!(reached(2) < reached(1) && reached(2) >= 1, "{l}");
    for t in trials {
        let state = if t["rungs"].as_array().unwrap().len() == 3 { "finished" } else { "pruned" };
        assert_eq!(t["state"], state, "{t}");
    }
    let rows = csv_rows(&clean_root.join("results.csv"));
    assert_eq!(
        rows[0][..5],
        ["index", "run_id", "train.optimizer.lr", "train.optimizer.weight_decay", "seed"]
    );
    assert_eq!(rows.len(), 10);
    assert!(rows[1..].iter().any(|r| r[5] == "pruned"), "{rows:?}");

    // the same search, SIGKILLed while a trial trains after a few were proposed, then rerun
    let killed = workdir();
    std::fs::write(killed.path().join("s.yaml"), &yaml).unwrap();
    let root = killed.path().join("results/lmsearch");
    let proposed = |root: &Path| {
        std::fs::read(root.join("ledger.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map_or(0, |l| l["trials"].as_array().map_or(0, Vec::len))
    };
    let interrupted = kill_when(killed.path(), &["run", "s.yaml", "--jobs", "1", "-q"], || {
        proposed(&root) >= 3 && mid_run(&root)
    });
    assert!(interrupted, "the search finished before it could be killed mid-run");
    assert_ne!(ledger(&root), ledger(&clean_root), "killed before the end");
    let again = qat(&["run", "s.yaml", "--jobs", "1", "-q"], killed.path());
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(ledger(&root), ledger(&clean_root));
    assert_same_results(&root, &clean_root);
    assert_eq!(
        std::fs::read_to_string(root.join("best.yaml")).unwrap(),
        std::fs::read_to_string(clean_root.join("best.yaml")).unwrap()
    );
    for plot in ["search_progress.svg", "search_progress.png", "search_space.svg", "search_space.png"] {
        let bytes = std::fs::read(root.join("plots").join(plot)).unwrap();
        assert!(bytes.len() > 1000, "{plot}: {} bytes", bytes.len());
    }
    let printed = text(&again);
    assert!(printed.contains("compute: ") && printed.contains(" tokens trained, "), "{printed}");
}

#[test]
fn a_search_continues_when_trials_grow_and_lists_and_ranks_its_trials() {
    let dir = workdir();
    let search = |trials: usize| {
        format!(
            "name: mlp\nmodel: {{hidden: [16]}}\ntrain: {{epochs: 2}}\nsweep:\n  seeds: [0, 1]\n  search:\n    method: sobol\n    trials: {trials}\n    metric: test_acc\n    use: best\n    space:\n      train.optimizer.lr: {{log_uniform: [1.0e-4, 1.0e-1]}}\n      quantizer: {{choice: [ternary, {{name: int, bits: 2}}]}}\n"
        )
    };
    std::fs::write(dir.path().join("m.yaml"), search(3)).unwrap();
    let out = qat(&["run", "m.yaml", "-q", "--jobs", "2"], dir.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("search: 3 of 3 trials (3 finished)"), "{t}");
    let root = dir.path().join("results/mlp");
    let first = ledger(&root);
    assert_eq!(first["trials"][0]["runs"].as_array().unwrap().len(), 2, "one run per seed");

    // more trials: the first three are replayed as they are, two more proposed
    std::fs::write(dir.path().join("m.yaml"), search(5)).unwrap();
    let out = qat(&["run", "m.yaml", "-q", "--jobs", "1"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let second = ledger(&root);
    assert_eq!(second["trials"].as_array().unwrap().len(), 5);
    assert_eq!(second["trials"].as_array().unwrap()[..3], first["trials"].as_array().unwrap()[..]);
    assert_eq!(run_dirs(&root).len(), 10);

    // each trial's value is the mean over its seeds of its best evaluation
    let rows = csv_rows(&root.join("results.csv"));
    for (i, t) in second["trials"].as_array().unwrap().iter().enumerate() {
        let best: Vec<f64> = rows[1..]
            .iter()
            .filter(|r| r[0] == i.to_string())
            .map(|r| {
                r[rows[0].iter().position(|h| h == "best_test_acc").unwrap()].parse::<f64>().unwrap() / 100.0
            })
            .collect();
        let mean = best.iter().sum::<f64>() / best.len() as f64;
        assert!((t["value"].as_f64().unwrap() - mean).abs() < 1e-4, "trial {i}: {t} vs {best:?}");
    }

    let listed = qat(&["list", "m.yaml"], dir.path());
    let l = text(&listed);
    assert!(l.contains("search: 5 of 5 trials (5 finished)"), "{l}");
    let ranked: Vec<f64> =
        l.lines().skip(2).map(|line| line.split_whitespace().nth(4).unwrap().parse().unwrap()).collect();
    assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "ranked best first: {l}");

    // the table ranks by the metric; best.yaml is the best trial's config, a runnable experiment
    let table = text(&qat(&["table", "results/mlp", "--metric", "best_test_acc"], dir.path()));
    let means: Vec<f64> = table
        .lines()
        .skip(2)
        .map(|l| l.split('|').nth(3).unwrap().split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(means.len(), 5, "{table}");
    assert!(means.windows(2).all(|w| w[0] >= w[1]), "{table}");
    let best = std::fs::read_to_string(root.join("best.yaml")).unwrap();
    let best_trial = l.lines().nth(2).unwrap().split_whitespace().nth(1).unwrap().to_string();
    let lr = second["trials"][best_trial.parse::<usize>().unwrap()]["values"]["train.optimizer.lr"]
        .as_f64()
        .unwrap();
    assert!(best.contains(&format!("lr: {lr}")), "{best}");
    let listed_best = qat(&["list", "results/mlp/best.yaml"], dir.path());
    assert!(text(&listed_best).contains("1 runs of experiment `mlp`"), "{}", text(&listed_best));

    // --only names a trial of the ledger; its runs are done, so nothing trains
    let only = qat(&["run", "m.yaml", "-q", "--only", "4"], dir.path());
    assert!(only.status.success(), "{}", text(&only));
    assert_eq!(ledger(&root), second);
    let bad = qat(&["run", "m.yaml", "-q", "--only", "7"], dir.path());
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(text(&bad).contains("--only 7: the ledger holds trials 0 to 4"), "{}", text(&bad));

    // another space is refused with the difference; --force discards the ledger and says so
    std::fs::write(dir.path().join("m.yaml"), search(5).replace("1.0e-1", "1.0e-2")).unwrap();
    let other = qat(&["run", "m.yaml", "-q"], dir.path());
    assert_eq!(other.status.code(), Some(2), "{}", text(&other));
    assert!(text(&other).contains("the ledger was written for another search"), "{}", text(&other));
    assert!(text(&other).contains("--force"), "{}", text(&other));
    let forced = qat(&["run", "m.yaml", "-q", "--force", "--jobs", "2"], dir.path());
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(text(&forced).contains("discarding the ledger"), "{}", text(&forced));
    assert_eq!(ledger(&root)["trials"].as_array().unwrap().len(), 5);
}

#[test]
fn a_compute_budget_ends_the_search_and_raising_it_continues() {
    let dir = workdir();
    let search = |budget: f64| {
        format!(
            "name: capped\nmodel: {{hidden: [16]}}\ntrain: {{epochs: 3}}\nsweep:\n  search:\n    method: random\n    trials: 6\n    budget: {budget}\n    metric: test_loss\n    space:\n      train.optimizer.lr: {{log_uniform: [1.0e-4, 1.0e-1]}}\n    prune: {{method: asha, min_resource: 1, reduction: 3}}\n"
        )
    };
    std::fs::write(dir.path().join("m.yaml"), search(2.5)).unwrap();
    let out = qat(&["run", "m.yaml", "-q", "--jobs", "1"], dir.path());
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let root = dir.path().join("results/capped");
    let first = ledger(&root);
    let trials = first["trials"].as_array().unwrap();
    // 2.5 whole runs of 3 epochs: 7 epochs in all; each trial's first rung is 1 epoch
    let spent: u64 = trials.iter().map(|t| t["evaluations"].as_u64().unwrap()).sum();
    assert!(spent <= 7 && trials.len() < 6, "{first}");
    assert!(
        t.contains(&format!(
            "(budget 2.5 whole runs; the budget ended the search after {} of 6 trials)",
            trials.len()
        )),
        "{t}"
    );
    let whole_runs: f64 = t.split("trained, ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(whole_runs <= 2.5 && (whole_runs * 3.0 - spent as f64).abs() < 0.02, "{t}");

    // a larger budget continues the same search: its trials replayed, then on to 6 trials
    std::fs::write(dir.path().join("m.yaml"), search(100.0)).unwrap();
    let out = qat(&["run", "m.yaml", "-q", "--jobs", "1"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let second = ledger(&root);
    assert_eq!(second["trials"].as_array().unwrap().len(), 6, "{second}");
    assert_eq!(second["trials"][0]["values"], first["trials"][0]["values"]);
    assert!(!text(&out).contains("the budget ended"), "{}", text(&out));
}

#[test]
fn the_median_rule_prunes_trials_worse_than_the_median_for_good() {
    let dir = workdir();
    let yaml = "name: med\nmodel: {hidden: [16]}\ntrain: {epochs: 4}\nsweep:\n  search:\n    method: random\n    trials: 8\n    metric: test_loss\n    space:\n      train.optimizer.lr: {log_uniform: [1.0e-5, 1.0e-1]}\n    prune: {method: median, min_resource: 1, reduction: 2, startup: 2}\n";
    std::fs::write(dir.path().join("m.yaml"), yaml).unwrap();
    let out = qat(&["run", "m.yaml", "-q", "--jobs", "1"], dir.path());
    assert!(out.status.success(), "pruned trials do not fail the command: {}", text(&out));
    let l = ledger(&dir.path().join("results/med"));
    let trials = l["trials"].as_array().unwrap();
    // a pruned trial stopped at a rung (1, 2 or 4 evaluations) where its loss was above the
    // median of the trials before it there
    let pruned: Vec<&serde_json::Value> = trials.iter().filter(|t| t["state"] == "pruned").collect();
    assert!(!pruned.is_empty(), "{l}");
    for t in &pruned {
        let k = t["rungs"].as_array().unwrap().len() - 1;
        let mine = t["rungs"][k].as_f64().unwrap();
        let index = t["trial"].as_u64().unwrap();
        let mut earlier: Vec<f64> = trials
            .iter()
            .filter(|o| o["trial"].as_u64().unwrap() < index && o["rungs"].as_array().unwrap().len() > k)
            .map(|o| o["rungs"][k].as_f64().unwrap())
            .collect();
        earlier.sort_by(f64::total_cmp);
        let n = earlier.len();
        assert!(n >= 2, "{t}");
        assert!(mine > 0.5 * (earlier[(n - 1) / 2] + earlier[n / 2]), "{t} vs {earlier:?}");
    }
    let status = text(&qat(&["status", "results/med"], dir.path()));
    assert!(status.contains(&format!("{} pruned", pruned.len())), "{status}");
}

#[test]
fn search_errors_stop_before_anything_runs() {
    let dir = workdir();
    let base = "name: bad\nmodel: {hidden: [16]}\ntrain: {epochs: 1}\nsweep:\n  search:\n    method: random\n    trials: 4\n    metric: test_acc\n    space:\n      train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}\n";
    let cases: Vec<(String, &str)> = vec![
        (base.replace("{log_uniform: [1.0e-4, 1.0e-1]}", "{log_uniform: [0, 1.0e-1]}"),
         "b.yaml:10:7: sweep.search.space.train.optimizer.lr: log_uniform: low must be > 0"),
        (base.replace("train.optimizer.lr:", "train.optimizer.lrr:"),
         "b.yaml:10:7: sweep.search.space.train.optimizer.lrr: the value 0.0001 gives an invalid run: unknown field `lrr`"),
        (base.replace("train.optimizer.lr:", "train.optimiser.lr:"),
         "sweep.search.space.train.optimiser.lr: `train.optimiser.lr` is not a config key (did you mean `optimizer`?)"),
        (base.replace("metric: test_acc", "metric: val_loss"), "b.yaml:8:5: sweep.search.metric: val_loss: this image dataset has no validation split; hold out training images with data.validation"),
        (base.replace("{log_uniform: [1.0e-4, 1.0e-1]}", "{uniform: [-1.0, 1.0e-1]}"),
         "sweep.search.space.train.optimizer.lr: the value -1.0 gives an invalid run"),
        (format!("{base}  grid: {{model.hidden: [[8]]}}\n"), "b.yaml:5:3: sweep: `search` replaces `grid`, `zip` and `exclude`; a search cannot be combined with them"),
        (base.replace("trials: 4", "trials: 3\n    space2: 1"), "unknown field `space2`"),
        (base.replace("{log_uniform: [1.0e-4, 1.0e-1]}", "{choice: [1.0e-3, 1.0e-2]}"), "sweep.search.trials: 4 trials in a space of only 2 distinct points"),
        (base.replace("{log_uniform: [1.0e-4, 1.0e-1]}", "{normal: [0, 1]}"), "b.yaml:10:7: sweep.search.space.train.optimizer.lr: unknown distribution `normal`"),
        (base.replace("{log_uniform: [1.0e-4, 1.0e-1]}", "{uniform: [0.1, 0.01]}"), "b.yaml:10:7: sweep.search.space.train.optimizer.lr: uniform: needs low < high"),
        (base.replace("trials: 4", "trials: 0"), "b.yaml:7:5: sweep.search.trials: must be at least 1"),
        (base.replace("metric: test_acc", "metric: test_accuracy"), "b.yaml:8:5: sweep.search.metric: unknown metric `test_accuracy`; one of val_loss"),
        (base.replace("trials: 4", "trials: 4\n    budget: -1"), "b.yaml:8:5: sweep.search.budget: -1 whole runs; give a positive number"),
    ];
    for (yaml, expected) in cases {
        std::fs::write(dir.path().join("b.yaml"), &yaml).unwrap();
        let out = qat(&["run", "b.yaml", "-q"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{yaml}\n{}", text(&out));
        assert!(text(&out).contains(expected), "expected `{expected}` in:\n{}", text(&out));
        assert!(!dir.path().join("results/bad").exists(), "nothing ran for {expected}");
    }
    std::fs::write(dir.path().join("b.yaml"), base).unwrap();
    let out = qat(&["run", "b.yaml", "-q", "--set", "train.optimizer.lr=0.01"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--set train.optimizer.lr: b.yaml searches this key"), "{}", text(&out));
}

#[test]
fn a_validation_split_holds_out_training_images_and_a_search_tunes_on_it() {
    let dir = workdir();
    let yaml = "name: val\ndata: {validation: 5000}\nmodel: {hidden: [16]}\ntrain: {epochs: 2}\nsweep:\n  search:\n    method: random\n    trials: 3\n    metric: val_acc\n    space:\n      train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}\n";
    std::fs::write(dir.path().join("v.yaml"), yaml).unwrap();
    let out = qat(&["run", "v.yaml", "-q", "--jobs", "2"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let root = dir.path().join("results/val");
    // validation and test side by side, per epoch and per run
    for run in run_dirs(&root) {
        let metrics = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
        let header: Vec<&str> = metrics.lines().next().unwrap().split(',').collect();
        let (val, test) = (
            header.iter().position(|h| *h == "val_acc").unwrap(),
            header.iter().position(|h| *h == "test_acc").unwrap(),
        );
        for line in metrics.lines().skip(1) {
            let cells: Vec<f64> = line.split(',').map(|c| c.parse().unwrap()).collect();
            assert!(cells[val] > 0.1 && cells[test] > 0.1 && cells[val] != cells[test], "{line}");
        }
    }
    let mut reader = csv::Reader::from_path(root.join("results.csv")).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<Vec<String>> = std::iter::once(header.clone())
        .chain(reader.records().map(|r| r.unwrap().iter().map(String::from).collect()))
        .collect();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let (final_val, final_test) = (col("final_val_acc"), col("final_test_acc"));
    let l = ledger(&root);
    for (row, trial) in rows[1..].iter().zip(l["trials"].as_array().unwrap()) {
        // the search's value is the validation accuracy, not the test accuracy
        let val: f64 = row[final_val].parse().unwrap();
        assert!((trial["value"].as_f64().unwrap() * 100.0 - val).abs() < 1e-2, "{row:?} {trial}");
        assert_ne!(row[final_val], row[final_test]);
    }
    // errors: on text, or more than the training set
    for (yaml, expected) in [
        ("name: e\ndata: {validation: 60000}\nmodel: {hidden: [16]}\n", "data.validation: 60000 images; mnist has 60000 training images, so hold out between 1 and 59999"),
        ("name: e\ndata: {dataset: tinyshakespeare, validation: 100}\nmodel: {kind: transformer, depth: 1, heads: 2, width: 32, context: 32}\ntrain: {steps: 10}\n", "data.validation: an image key"),
    ] {
        std::fs::write(dir.path().join("e.yaml"), yaml).unwrap();
        let out = qat(&["run", "e.yaml", "-q"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(expected), "{}", text(&out));
    }
}
