//! `--launcher slurm` against a real one-node Slurm cluster (`../shared/tools/slurm-local.sh up`,
//! which `.ci/run` starts and stops). Skipped with a message when no cluster answers, unless
//! QAT_REQUIRE_SLURM is set (CI sets it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{qat, text, workdir};

fn cluster_up() -> bool {
    let up =
        Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    if !up {
        assert!(
            std::env::var_os("QAT_REQUIRE_SLURM").is_none(),
            "QAT_REQUIRE_SLURM is set but no Slurm cluster answers (run ../shared/tools/slurm-local.sh up as root)"
        );
        eprintln!("skipping the Slurm test: no cluster answers `sinfo` (as root: ../shared/tools/slurm-local.sh up)");
    }
    up
}

fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {seconds} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn queue_empty(job: &str) -> bool {
    Command::new("squeue").args(["-h", "-j", job]).output().is_ok_and(|o| o.stdout.is_empty())
}

fn manifest(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(root.join("slurm/manifest.json")).unwrap()).unwrap()
}

fn job_of(out: &std::process::Output) -> String {
    let t = text(out);
    t.split("submitted job array ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("no job id in: {t}"))
        .to_string()
}

#[test]
fn a_sweep_runs_as_a_job_array_and_a_killed_task_is_resubmitted_alone() {
    if !cluster_up() {
        return;
    }
    let dir = workdir();
    let yaml = "name: array\nmodel: {hidden: [64, 64]}\ntrain: {epochs: 3}\nsweep:\n  grid: {quantizer: [ternary, binary]}\n  seeds: [0, 1]\n";
    std::fs::write(dir.path().join("a.yaml"), yaml).unwrap();
    let dry = qat(&["run", "a.yaml", "--launcher", "slurm", "--dry-run", "--time", "00:10:00"], dir.path());
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(text(&dry).contains("dry run: wrote"), "{}", text(&dry));

    let out = qat(&["run", "a.yaml", "--launcher", "slurm"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("4 runs"), "{}", text(&out));
    let job = job_of(&out);
    let root = dir.path().join("results/array");
    let runs = manifest(&root)["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 4);

    // kill one task while its run is mid-way (an epoch checkpointed, not finished)
    let mut victim = None;
    wait_until("a run to checkpoint its first epoch", 180, || {
        victim = runs.iter().find_map(|r| {
            let run = root.join(r["run_id"].as_str().unwrap());
            let running =
                std::fs::read_to_string(run.join("run.json")).is_ok_and(|s| s.contains("\"running\""));
            (running && run.join("checkpoint.safetensors").is_file()).then(|| r["index"].as_u64().unwrap())
        });
        victim.is_some()
    });
    let victim = victim.unwrap();
    assert!(Command::new("scancel").arg(format!("{job}_{victim}")).status().unwrap().success());
    wait_until("the first array to end", 300, || queue_empty(&job));
    let status = qat(&["status", "results/array"], dir.path());
    assert!(text(&status).contains("3 success"), "{}", text(&status));

    // resubmission sends only the missing run, which resumes from its checkpoint
    let again = qat(&["run", "a.yaml", "--launcher", "slurm"], dir.path());
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("1 runs"), "{}", text(&again));
    let script =
        std::fs::read_to_string(manifest(&root)["submissions"][1]["script"].as_str().unwrap()).unwrap();
    assert!(script.contains(&format!("#SBATCH --array={victim}\n")), "{script}");
    let second = job_of(&again);
    wait_until("the second array to end", 300, || queue_empty(&second));

    let status = qat(&["status", "results/array"], dir.path());
    assert!(text(&status).contains("4 runs: 4 success"), "{}", text(&status));
    let csv = std::fs::read_to_string(root.join("results.csv")).unwrap();
    assert_eq!(csv.lines().filter(|l| l.contains(",success,")).count(), 4, "{csv}");
    let table = qat(&["table", "results/array"], dir.path());
    let t = text(&table);
    assert_eq!(t.lines().filter(|l| l.ends_with("| 2 |")).count(), 2, "{t}");
    let nothing = qat(&["run", "a.yaml", "--launcher", "slurm"], dir.path());
    assert!(text(&nothing).contains("nothing to submit"), "{}", text(&nothing));
}

#[test]
fn sbatch_missing_is_a_clear_error() {
    let dir = workdir();
    std::fs::write(dir.path().join("a.yaml"), "name: nosb\nmodel: {hidden: [8]}\ntrain: {epochs: 1}\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qat"))
        .args(["run", "a.yaml", "--launcher", "slurm", "--set", "train.optimizer.lr=0.002"])
        .current_dir(dir.path())
        .env("PATH", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot run sbatch"), "{}", text(&out));
    assert!(
        dir.path().join("results/nosb/slurm/manifest.json").is_file(),
        "the script and manifest are still written"
    );
    // the array tasks get the same --set overrides (they are part of the run ids)
    let slurm = dir.path().join("results/nosb/slurm");
    let script = std::fs::read_dir(&slurm)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sh"))
        .expect("a submit script");
    let script = std::fs::read_to_string(script).unwrap();
    assert!(script.contains(" --set train.optimizer.lr=0.002"), "{script}");
}

#[test]
fn a_search_submits_batches_of_trials_each_from_what_has_finished() {
    if !cluster_up() {
        return;
    }
    let dir = workdir();
    let yaml = "name: slurmsearch\nmodel: {hidden: [16]}\ntrain: {epochs: 3}\nsweep:\n  search:\n    method: random\n    trials: 4\n    metric: test_acc\n    space:\n      train.optimizer.lr: {log_uniform: [1.0e-4, 1.0e-1]}\n    prune: {method: asha, min_resource: 1, reduction: 3}\n";
    std::fs::write(dir.path().join("s.yaml"), yaml).unwrap();
    let root = dir.path().join("results/slurmsearch");
    let missing = qat(&["run", "s.yaml", "--launcher", "slurm"], dir.path());
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(text(&missing).contains("give --trials-per-submit N"), "{}", text(&missing));
    let states = || -> Vec<String> {
        let l: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("ledger.json")).unwrap()).unwrap();
        l["trials"].as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap().to_string()).collect()
    };
    // each call enters what the last array reached and submits the next batch: trials 0-1 to
    // rung 1 (1 epoch), then 2-3, then ASHA's one promotion (the top ⌊4/3⌋ at rung 1), then nothing
    let mut submitted = Vec::new();
    for _ in 0..4 {
        let out = qat(&["run", "s.yaml", "--launcher", "slurm", "--trials-per-submit", "2"], dir.path());
        assert!(out.status.success(), "{}", text(&out));
        let t = text(&out);
        if t.contains("nothing to submit") {
            assert!(t.contains("the search is over (4 trials)"), "{t}");
            break;
        }
        let trials = t.split(": trials ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
        submitted.push(trials);
        let job = job_of(&out);
        wait_until("the array to end", 300, || queue_empty(&job));
    }
    assert_eq!(
        submitted.len(),
        3,
        "{submitted:?}\n{}",
        std::fs::read_to_string(root.join("ledger.json")).unwrap()
    );
    assert_eq!(submitted[..2], ["0,1".to_string(), "2,3".to_string()]);
    let states = states();
    assert_eq!(states.iter().filter(|s| *s == "finished").count(), 1, "{states:?}");
    assert_eq!(states.iter().filter(|s| *s == "pruned").count(), 3, "{states:?}");
    let status = text(&qat(&["status", "results/slurmsearch"], dir.path()));
    assert!(status.contains("4 runs: 3 pruned, 1 success"), "{status}");
    assert!(root.join("best.yaml").is_file());
}
