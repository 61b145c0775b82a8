//! `qat repro`: run a reference table's experiment (resuming like any sweep) and compare it with
//! the published numbers in `experiments/repro/published.yaml`: each row's measured mean ± std
//! against the published value with a tolerance, or the direction of a published trend.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::report::results::{mean_std, stats};

/// The data file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    /// Tables by short name (`table1`).
    pub tables: BTreeMap<String, TableSpec>,
}

/// One reference table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// Heading.
    pub title: String,
    /// Experiment file, relative to the data file.
    pub experiment: String,
    /// Experiments to run first (e.g. a distillation teacher), relative to the data file.
    #[serde(default)]
    pub before: Vec<String>,
    /// Where the numbers come from.
    pub source: String,
    /// results.csv column compared (for `rows`).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// Allowed |measured mean − published mean| in points.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// Rows with published numbers.
    #[serde(default)]
    pub rows: Vec<RowSpec>,
    /// Published trends.
    #[serde(default)]
    pub trends: Vec<TrendSpec>,
    /// Notes printed under the table (what was run differently, and why).
    #[serde(default)]
    pub notes: Vec<String>,
}

fn default_metric() -> String {
    "final_test_acc".into()
}

fn default_tolerance() -> f64 {
    0.3
}

/// A row: which runs (results.csv cells that must match) and the published values.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowSpec {
    /// Row label.
    pub label: String,
    /// Column → cell text of the runs that belong to the row.
    #[serde(rename = "match")]
    pub match_: BTreeMap<String, String>,
    /// Published values (compared to their mean).
    pub published: Vec<f64>,
    /// The results.csv column compared, when not the table's.
    #[serde(default)]
    pub metric: Option<String>,
}

/// A trend over one swept key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrendSpec {
    /// results.csv column.
    pub metric: String,
    /// The swept column it varies over (numeric).
    pub by: String,
    /// `decreasing`, `increasing`, or a description when `best_near` is given.
    pub expect: String,
    /// The best (highest) mean should sit at this value of `by`.
    #[serde(default)]
    pub best_near: Option<f64>,
    /// The worst (lowest) mean should sit at this value of `by`.
    #[serde(default)]
    pub worst_near: Option<f64>,
    /// For a categorical `by`: its cells in the published order, from worst to best.
    #[serde(default)]
    pub order: Vec<String>,
    /// Only runs whose cells match these (column → cell text).
    #[serde(default, rename = "match")]
    pub match_: BTreeMap<String, String>,
    /// How far from `best_near` still counts.
    #[serde(default)]
    pub within: f64,
    /// The published statement.
    pub published: String,
}

/// Read the data file.
pub fn read_published(path: &Path) -> Result<Published> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read {}: {e}; run qat repro from the repository root or pass --data",
            path.display()
        ))
    })?;
    serde_yaml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// The experiment file of a table.
pub fn experiment_file(data: &Path, spec: &TableSpec) -> PathBuf {
    data.parent().unwrap_or(Path::new(".")).join(&spec.experiment)
}

/// Rows of results.csv as column → cell maps.
fn read_rows(csv_path: &Path) -> Result<Vec<BTreeMap<String, String>>> {
    let mut reader = csv::Reader::from_path(csv_path)
        .map_err(|e| Error::Config(format!("{}: {e}", csv_path.display())))?;
    let header: Vec<String> =
        reader.headers().map_err(|e| Error::Config(e.to_string()))?.iter().map(String::from).collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| Error::Config(e.to_string()))?;
        rows.push(header.iter().cloned().zip(record.iter().map(String::from)).collect());
    }
    Ok(rows)
}

fn values(
    rows: &[BTreeMap<String, String>],
    metric: &str,
    keep: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Vec<f64> {
    rows.iter()
        .filter(|r| r.get("status").is_some_and(|s| s == "success") && keep(r))
        .filter_map(|r| r.get(metric)?.parse::<f64>().ok())
        .collect()
}

/// The comparison report of `name` from the experiment's results.csv, as markdown; also
/// returns (rows within tolerance, rows compared).
pub fn report(name: &str, spec: &TableSpec, csv_path: &Path) -> Result<(String, usize, usize)> {
    let rows = read_rows(csv_path)?;
    let wall_s: f64 = values(&rows, "wall_s", |_| true).iter().sum();
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", spec.title);
    let _ = writeln!(out, "Source of the published numbers: {}.", spec.source);
    let runs = rows.len();
    let ok_runs = rows.iter().filter(|r| r.get("status").is_some_and(|s| s == "success")).count();
    let _ = writeln!(
        out,
        "Measured: `qat repro {name}` ({} runs, {ok_runs} successful; {:.1} min of single-thread training in total).\n",
        runs,
        wall_s / 60.0
    );
    let (mut within, mut compared) = (0, 0);
    if !spec.rows.is_empty() {
        let _ = writeln!(
            out,
            "| row | published | measured (mean ± std) | n | difference | within ±{} |",
            spec.tolerance
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        for row in &spec.rows {
            let metric = row.metric.as_deref().unwrap_or(&spec.metric);
            let v = values(&rows, metric, |r| {
                row.match_.iter().all(|(k, want)| r.get(k).is_some_and(|c| c == want))
            });
            let published_mean = row.published.iter().sum::<f64>() / row.published.len().max(1) as f64;
            let published: Vec<String> = row.published.iter().map(|p| format!("{p:.2}")).collect();
            let (mean, _) = stats(&v);
            let (diff, verdict) = match mean {
                Some(m) => {
                    compared += 1;
                    let d = m - published_mean;
                    let ok = d.abs() <= spec.tolerance + 1e-9;
                    within += usize::from(ok);
                    (format!("{d:+.2}"), if ok { "✅" } else { "❌" })
                }
                None => ("-".into(), "not run"),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {diff} | {verdict} |",
                row.label,
                published.join(", "),
                mean_std(&v),
                v.len()
            );
        }
        let _ = writeln!(out, "\n{within} of {compared} rows within ±{} points.\n", spec.tolerance);
    }
    for trend in &spec.trends {
        let mut levels: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let selected = |r: &&BTreeMap<String, String>| {
            r.get("status").is_some_and(|s| s == "success")
                && trend.match_.iter().all(|(k, want)| r.get(k).is_some_and(|c| c == want))
        };
        for r in rows.iter().filter(selected) {
            if let (Some(level), Some(v)) =
                (r.get(&trend.by), r.get(&trend.metric).and_then(|v| v.parse::<f64>().ok()))
            {
                levels.entry(level.clone()).or_default().push(v);
            }
        }
        if !trend.order.is_empty() {
            // a categorical axis: the published order, worst first, must show rising means
            let ordered: Vec<(&String, Vec<f64>)> = trend
                .order
                .iter()
                .map(|cell| (cell, levels.get(cell).cloned().unwrap_or_default()))
                .collect();
            let means: Vec<Option<f64>> = ordered.iter().map(|(_, v)| stats(v).0).collect();
            let holds = means.iter().all(Option::is_some) && means.windows(2).all(|w| w[1] > w[0]);
            compared += 1;
            within += usize::from(holds);
            let _ =
                writeln!(out, "**{}** over `{}` (published: {}):\n", trend.metric, trend.by, trend.published);
            let _ = writeln!(
                out,
                "| {} (published order, worst first) | {} (mean ± std) | n |\n|---|---|---|",
                trend.by, trend.metric
            );
            for (cell, v) in &ordered {
                let _ = writeln!(out, "| {cell} | {} | {} |", mean_std(v), v.len());
            }
            let verdict = if holds { "✅ the order holds." } else { "❌ the order does not hold." };
            let _ = writeln!(out, "\nExpected: {}. {verdict}\n", trend.expect);
            continue;
        }
        let mut series: Vec<(f64, Vec<f64>)> =
            levels.into_iter().filter_map(|(k, v)| k.parse::<f64>().ok().map(|x| (x, v))).collect();
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        let means: Vec<f64> = series.iter().filter_map(|(_, v)| stats(v).0).collect();
        let at_extreme = |target: f64, best: bool| {
            let pick =
                series
                    .iter()
                    .zip(&means)
                    .max_by(|a, b| if best { a.1.total_cmp(b.1) } else { b.1.total_cmp(a.1) });
            pick.is_some_and(|((x, _), _)| (x - target).abs() <= trend.within + 1e-9)
        };
        let holds = match (trend.best_near, trend.worst_near, trend.expect.as_str()) {
            (Some(target), _, _) => at_extreme(target, true),
            (None, Some(target), _) => at_extreme(target, false),
            (None, None, "decreasing") => means.windows(2).all(|w| w[1] < w[0]),
            (None, None, "increasing") => means.windows(2).all(|w| w[1] > w[0]),
            (None, None, other) => {
                return Err(Error::Config(format!(
                "{name}: unknown trend `{other}`; use decreasing, increasing, best_near, worst_near or order"
            )))
            }
        };
        compared += 1;
        within += usize::from(holds);
        let _ = writeln!(out, "**{}** over `{}` (published: {}):\n", trend.metric, trend.by, trend.published);
        let _ = writeln!(out, "| {} | {} (mean ± std) | n |\n|---|---|---|", trend.by, trend.metric);
        for (x, v) in &series {
            let _ = writeln!(out, "| {x} | {} | {} |", mean_std(v), v.len());
        }
        let _ = writeln!(
            out,
            "\nExpected: {}. {}\n",
            trend.expect,
            if holds { "✅ the trend holds." } else { "❌ the trend does not hold." }
        );
    }
    for note in &spec.notes {
        let _ = writeln!(out, "- {note}");
    }
    Ok((out, within, compared))
}

/// `qat repro --list`.
pub fn list(published: &Published, data: &Path, results: &Path) -> String {
    let mut out = String::new();
    for (name, spec) in &published.tables {
        let done = results.join("repro").join(format!("{name}.md")).is_file();
        let _ = writeln!(
            out,
            "{name:<8} {}  [{}]{}",
            spec.title,
            experiment_file(data, spec).display(),
            if done { "  (report written)" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = r#"
tables:
  t:
    title: "T"
    experiment: t.yaml
    source: "somewhere"
    tolerance: 0.3
    rows:
      - {label: "a", match: {quantizer: ternary}, published: [97.5, 97.7]}
      - {label: "b", match: {quantizer: binary}, published: [96.0]}
      - {label: "c", match: {quantizer: none}, published: [98.0]}
      - {label: "d", match: {quantizer: ternary}, metric: "ptq[binary]", published: [60.0]}
    trends:
      - {metric: sparsity, by: quantizer.alpha, expect: decreasing, published: "falls"}
      - {metric: final_test_acc, by: quantizer.alpha, expect: "best near 0.7", best_near: 0.7, within: 0.1, published: "peak"}
      - {metric: final_test_acc, by: quantizer, expect: "binary < ternary", order: [binary, ternary], match: {seed: "0"}, published: "order"}
"#;

    #[test]
    fn rows_compare_to_the_published_mean_and_trends_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("published.yaml");
        std::fs::write(&data, DATA).unwrap();
        let published = read_published(&data).unwrap();
        let csv =
            "index,run_id,quantizer,quantizer.alpha,seed,status,final_test_acc,sparsity,wall_s,ptq[binary]\n\
                   0,a,ternary,0.5,0,success,97.5,0.5,10,60.1\n1,b,ternary,0.7,1,success,97.9,0.4,10,60.3\n\
                   2,c,binary,0.9,0,success,95.0,0.2,10,\n3,d,binary,0.9,1,failed,,,,\n";
        let path = dir.path().join("results.csv");
        std::fs::write(&path, csv).unwrap();
        let (md, within, compared) = report("t", &published.tables["t"], &path).unwrap();
        // a: mean 97.7 vs published mean 97.6 → +0.10 ✅; b: 95.0 vs 96.0 → −1.00 ❌; c: not run
        assert!(md.contains("| a | 97.50, 97.70 | 97.70 ± 0.28 | 2 | +0.10 | ✅ |"), "{md}");
        assert!(md.contains("| b | 96.00 | 95.00 | 1 | -1.00 | ❌ |"), "{md}");
        assert!(md.contains("| c | 98.00 | - | 0 | - | not run |"), "{md}");
        assert!(md.contains("✅ the trend holds"), "{md}");
        assert!(md.contains("0.5 min of single-thread training"), "{md}");
        assert!(
            md.contains("| d | 60.00 | 60.20 ± 0.14 | 2 | +0.20 | ✅ |"),
            "a row's own metric column: {md}"
        );
        assert!(
            md.contains("| binary | 95.00 | 1 |") && md.contains("| ternary | 97.50 | 1 |"),
            "seed-0 runs only: {md}"
        );
        assert!(md.contains("✅ the order holds."), "{md}");
        assert_eq!((within, compared), (5, 6), "{md}");
    }
}
