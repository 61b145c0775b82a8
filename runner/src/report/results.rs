//! `results.csv` (one row per run of an experiment, every swept key a column) and `qat table`
//! (mean ± std over seeds, grouped by the swept keys).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::experiment::sweep::inline;
use crate::experiment::RunPlan;
use crate::run::{write_atomic, RunDir, Status};

/// The fixed metric columns of `results.csv`, after the swept keys.
pub const METRIC_COLUMNS: [&str; 13] = [
    "status",
    "final_test_acc",
    "best_test_acc",
    "best_epoch",
    "test_loss",
    "train_acc",
    "train_loss",
    "total_bits",
    "kB",
    "sparsity",
    "wall_s",
    "samples_per_s",
    "error",
];

/// The fixed metric columns of a language model's `results.csv`: validation loss in nats per
/// token (the final one, the lowest, and its evaluation), bits per character, next-token
/// accuracy, and tokens per second.
pub const LM_METRIC_COLUMNS: [&str; 13] = [
    "status",
    "final_val_loss",
    "best_val_loss",
    "best_eval",
    "final_val_bpc",
    "final_val_acc",
    "train_loss",
    "total_bits",
    "kB",
    "sparsity",
    "wall_s",
    "tokens_per_s",
    "error",
];

/// Rewrite `results/<experiment>/results.csv` from the run directories of every run of `plan`
/// that has a record (runs not started yet are left out, so a resumed sweep never duplicates).
pub fn write_results_csv(plan: &RunPlan, results: &Path) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["index".to_string(), "run_id".to_string()];
    header.extend(plan.swept.iter().filter(|k| *k != "train.seed").cloned());
    header.push("seed".into());
    let first_metric = header.len();
    let text = plan.language_models();
    header.extend(if text { LM_METRIC_COLUMNS } else { METRIC_COLUMNS }.map(String::from));
    let records: Vec<_> =
        plan.runs.iter().map(|run| RunDir::new(results, &run.config).read_record()).collect();
    // classifiers with a validation split: its accuracies beside the test set's
    let validated = !text
        && records.iter().flatten().any(|r| r.final_scores.as_ref().is_some_and(|s| s.val_acc.is_some()));
    if validated {
        header.extend(["final_val_acc", "best_val_acc"].map(String::from));
    }
    let mut ptq: Vec<String> =
        records.iter().flatten().flat_map(|r| r.post_quantized.keys().cloned()).collect();
    ptq.sort();
    ptq.dedup();
    header.extend(ptq.iter().map(|label| format!("ptq[{label}]")));
    w.write_record(&header).map_err(|e| Error::Config(e.to_string()))?;
    for (run, record) in plan.runs.iter().zip(records) {
        let Some(r) = record else { continue };
        let mut row = vec![run.index.to_string(), r.run_id.clone()];
        for key in plan.swept.iter().filter(|k| *k != "train.seed") {
            row.push(
                run.overrides.iter().find(|(k, _)| k == key).map(|(_, v)| inline(v)).unwrap_or_default(),
            );
        }
        row.push(run.config.train.seed.to_string());
        let f = r.final_scores.clone().unwrap_or_default();
        let b = r.best.clone().unwrap_or_default();
        let status = format!("{:?}", r.status).to_lowercase();
        // the columns both kinds of run end with
        let tail = [
            format!("{:.1}", r.total_bits),
            format!("{:.3}", r.total_bits / 8.0 / 1024.0),
            format!("{:.4}", r.sparsity),
            format!("{:.1}", r.wall_s),
            format!("{:.0}", r.samples_per_s),
            r.error.clone().unwrap_or_default(),
        ];
        if text {
            row.extend([
                status,
                format!("{:.6}", f.test_loss),
                format!("{:.6}", b.test_loss),
                b.epoch.to_string(),
                format!("{:.6}", f.test_loss / std::f64::consts::LN_2),
                format!("{:.4}", 100.0 * f.test_acc),
                format!("{:.6}", f.train_loss),
            ]);
            row.extend(tail);
        } else {
            row.extend([
                status,
                format!("{:.4}", 100.0 * f.test_acc),
                format!("{:.4}", 100.0 * b.test_acc),
                b.epoch.to_string(),
                format!("{:.6}", f.test_loss),
                format!("{:.4}", 100.0 * f.train_acc),
                format!("{:.6}", f.train_loss),
            ]);
            row.extend(tail);
        }
        if r.status != Status::Success {
            // unfinished or failed runs have no final metrics worth averaging
            for cell in row.iter_mut().skip(first_metric + 1).take(METRIC_COLUMNS.len() - 2) {
                if r.final_scores.is_none() {
                    cell.clear();
                }
            }
        }
        if validated {
            let percent = |v: Option<f64>| v.map_or(String::new(), |a| format!("{:.4}", 100.0 * a));
            row.push(percent(r.final_scores.as_ref().and_then(|s| s.val_acc)));
            row.push(percent(r.best.as_ref().and_then(|s| s.val_acc)));
        }
        row.extend(
            ptq.iter().map(|label| {
                r.post_quantized.get(label).map_or(String::new(), |a| format!("{:.4}", 100.0 * a))
            }),
        );
        w.write_record(&row).map_err(|e| Error::Config(e.to_string()))?;
    }
    let bytes = w.into_inner().map_err(|e| Error::Config(e.to_string()))?;
    write_atomic(&results.join(&plan.experiment).join("results.csv"), &bytes)
}

/// `qat table`'s metric unless told otherwise (a language model's table uses `final_val_loss`).
pub const DEFAULT_METRIC: &str = "final_test_acc";

/// Output format of `qat table`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    /// A markdown table.
    Md,
    /// CSV.
    Csv,
}

/// Aggregate `results.csv` in `dir`: one row per distinct value of the `by` columns (default:
/// every swept column but the seed), `metric` as mean ± sample std over successful runs, and n.
pub fn table(dir: &Path, by: &[String], metrics: &[String], format: TableFormat) -> Result<String> {
    let path = dir.join("results.csv");
    let mut reader = csv::Reader::from_path(&path).map_err(|e| {
        Error::Config(format!("cannot read {}: {e}; run the experiment first", path.display()))
    })?;
    let header: Vec<String> =
        reader.headers().map_err(|e| Error::Config(e.to_string()))?.iter().map(String::from).collect();
    let col = |name: &str| -> Result<usize> {
        header.iter().position(|h| h == name).ok_or_else(|| {
            Error::Config(format!(
                "{}: no column `{name}`; columns are: {}",
                path.display(),
                header.join(", ")
            ))
        })
    };
    let seed_col = col("seed")?;
    let by: Vec<String> = if by.is_empty() { header[2..seed_col].to_vec() } else { by.to_vec() };
    let by_cols: Vec<usize> = by.iter().map(|b| col(b)).collect::<Result<_>>()?;
    // a language model's table has no test accuracy: the default metric is its validation loss
    let lm_default = metrics == [DEFAULT_METRIC] && !header.iter().any(|h| h == DEFAULT_METRIC);
    let metrics: Vec<String> = if lm_default { vec!["final_val_loss".to_string()] } else { metrics.to_vec() };
    let metrics = &metrics[..];
    let metric_cols: Vec<usize> = metrics.iter().map(|m| col(m)).collect::<Result<_>>()?;
    let status_col = col("status")?;
    // group key → (first row's position, one value list per metric)
    type Group = (usize, Vec<Vec<f64>>);
    let mut groups: BTreeMap<Vec<String>, Group> = BTreeMap::new();
    for (order, record) in reader.records().enumerate() {
        let record = record.map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let key: Vec<String> = by_cols.iter().map(|&c| record[c].to_string()).collect();
        let entry = groups.entry(key).or_insert_with(|| (order, vec![Vec::new(); metric_cols.len()]));
        if &record[status_col] != "success" {
            continue;
        }
        for (values, &c) in entry.1.iter_mut().zip(&metric_cols) {
            if let Ok(v) = record[c].parse::<f64>() {
                values.push(v);
            }
        }
    }
    let mut rows: Vec<(Vec<String>, Group)> = groups.into_iter().collect();
    rows.sort_by_key(|(_, (order, _))| *order);
    if dir.join(crate::experiment::search::ledger::LEDGER_FILE).is_file() {
        // a search's trials, ranked by the first metric (best first; trials without a finished
        // run last, in trial order)
        let descending = !lower_is_better(&metrics[0]);
        let key = |values: &[Vec<f64>]| stats(&values[0]).0.map(|m| if descending { -m } else { m });
        rows.sort_by(|a, b| match (key(&a.1 .1), key(&b.1 .1)) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
    }
    let mut out = String::new();
    let mut head = by.clone();
    head.extend(metrics.iter().cloned());
    head.push("n".into());
    let n_of = |values: &[Vec<f64>]| values.first().map_or(0, Vec::len);
    match format {
        TableFormat::Md => {
            let _ = writeln!(out, "| {} |", head.join(" | "));
            let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
            for (key, (_, values)) in &rows {
                let mut cells = key.clone();
                cells.extend(values.iter().zip(metrics).map(|(v, m)| mean_std_to(v, decimals_of(m))));
                cells.push(n_of(values).to_string());
                let _ = writeln!(out, "| {} |", cells.join(" | "));
            }
        }
        TableFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let mut h = by.clone();
            for m in metrics {
                h.push(format!("{m}_mean"));
                h.push(format!("{m}_std"));
            }
            h.push("n".into());
            let _ = w.write_record(&h);
            for (key, (_, values)) in &rows {
                let mut cells = key.clone();
                for v in values {
                    let (m, s) = stats(v);
                    cells.push(m.map_or(String::new(), |m| format!("{m:.4}")));
                    cells.push(s.map_or(String::new(), |s| format!("{s:.4}")));
                }
                cells.push(n_of(values).to_string());
                let _ = w.write_record(&cells);
            }
            out = String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default();
        }
    }
    Ok(out)
}

/// Mean and sample standard deviation (None when undefined).
pub fn stats(v: &[f64]) -> (Option<f64>, Option<f64>) {
    if v.is_empty() {
        return (None, None);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let std = (v.len() > 1)
        .then(|| (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt());
    (Some(mean), std)
}

/// `mean ± std` (or the single value, or `-`) with two decimals (accuracies in %).
pub fn mean_std(v: &[f64]) -> String {
    mean_std_to(v, 2)
}

/// `mean ± std` with `decimals` decimals.
pub fn mean_std_to(v: &[f64], decimals: usize) -> String {
    match stats(v) {
        (None, _) => "-".into(),
        (Some(m), None) => format!("{m:.decimals$}"),
        (Some(m), Some(s)) => format!("{m:.decimals$} ± {s:.decimals$}"),
    }
}

/// Whether a smaller value of a results.csv column is better (losses, bits per character).
fn lower_is_better(metric: &str) -> bool {
    metric.contains("loss") || metric.contains("bpc")
}

/// Decimals a metric column is shown with: losses and bits per character differ in the
/// third decimal, accuracies in % in the second.
fn decimals_of(metric: &str) -> usize {
    if lower_is_better(metric) {
        4
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[97.0, 98.0, 99.0]), "98.00 ± 1.00");
        assert_eq!(mean_std(&[97.5]), "97.50");
        assert_eq!(mean_std(&[]), "-");
    }

    #[test]
    fn table_groups_by_swept_columns_and_skips_failed_runs() {
        let dir = tempfile::tempdir().unwrap();
        let csv = "index,run_id,quantizer,seed,status,final_test_acc\n\
                   0,a,ternary,0,success,97.0\n1,b,ternary,1,success,98.0\n\
                   2,c,binary,0,success,96.0\n3,d,binary,1,failed,\n";
        std::fs::write(dir.path().join("results.csv"), csv).unwrap();
        let t = table(dir.path(), &[], &["final_test_acc".into()], TableFormat::Md).unwrap();
        assert_eq!(t, "| quantizer | final_test_acc | n |\n|---|---|---|\n| ternary | 97.50 ± 0.71 | 2 |\n| binary | 96.00 | 1 |\n");
        let err = table(dir.path(), &["nope".into()], &["final_test_acc".into()], TableFormat::Md)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column `nope`"), "{err}");
    }
}
