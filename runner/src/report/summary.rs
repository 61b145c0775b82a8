//! Text for the terminal: the run summary and the plugin listing.

use std::fmt::Write;

use qatlab_core::Registry;

use crate::run::Outcome;

/// One line per run: status, final and best test accuracy (language models: validation loss,
/// the best and its evaluation, bits per token), train accuracy, size, time.
pub fn summary(outcomes: &[Outcome], language_models: bool) -> String {
    let mut out = String::new();
    let columns = if language_models {
        ["val loss", "best (eval)", "val bpc"]
    } else {
        ["test acc", "best (epoch)", "train acc"]
    };
    let _ = writeln!(
        out,
        "{:<28} {:<9} {:>9} {:>14} {:>9} {:>10} {:>8} {:>8}",
        "run", "status", columns[0], columns[1], columns[2], "bits", "kB", "wall s"
    );
    for o in outcomes {
        let r = &o.record;
        let score = |s: &crate::run::Scores| {
            if language_models {
                format!("{:.4}", s.test_loss)
            } else {
                format!("{:.2}%", 100.0 * s.test_acc)
            }
        };
        let third = |s: &crate::run::Scores| {
            if language_models {
                format!("{:.3}", s.test_loss / std::f64::consts::LN_2)
            } else {
                format!("{:.2}%", 100.0 * s.train_acc)
            }
        };
        let (test, train) =
            r.final_scores.as_ref().map_or(("-".into(), "-".into()), |s| (score(s), third(s)));
        let best = r.best.as_ref().map_or("-".into(), |s| format!("{} ({})", score(s), s.epoch));
        let status = if o.skipped { "done".to_string() } else { format!("{:?}", r.status).to_lowercase() };
        let _ = writeln!(
            out,
            "{:<28} {:<9} {:>9} {:>14} {:>9} {:>10.0} {:>8.2} {:>8.1}",
            format!("{}/{}", r.experiment, r.run_id),
            status,
            test,
            best,
            train,
            r.total_bits,
            r.total_bits / 8.0 / 1024.0,
            r.wall_s
        );
        if let Some(e) = &r.error {
            let _ = writeln!(out, "  error: {e}");
        }
    }
    out
}

/// `qat list`: index, run id and the overrides of every run of a plan.
pub fn run_list(plan: &crate::experiment::RunPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} runs of experiment `{}` ({})",
        plan.runs.len(),
        plan.experiment,
        plan.file.display()
    );
    let _ = writeln!(out, "{:>5}  {:<10}  overrides", "index", "run id");
    for run in &plan.runs {
        let id = crate::run::run_id(&run.config);
        let _ =
            writeln!(out, "{:>5}  {:<10}  {}", run.index, id, crate::experiment::describe(&run.overrides));
    }
    out
}

/// Every registered strategy with its one-line definition and default parameters.
pub fn plugin_listing(registry: &Registry) -> String {
    let mut out = String::new();
    for (kind, infos) in registry.listing() {
        let _ = writeln!(out, "{}s:", kind.as_str());
        if infos.is_empty() {
            let _ = writeln!(out, "  (none registered)");
        }
        for info in infos {
            let params: Vec<String> = info
                .defaults
                .iter()
                .map(|(k, v)| format!("{}: {}", yaml_inline(k), yaml_inline(v)))
                .collect();
            let params = if params.is_empty() { "no parameters".to_string() } else { params.join(", ") };
            let _ = writeln!(out, "  {:<19} {}  [{}] ({})", info.name, info.summary, params, info.source);
        }
    }
    let _ = writeln!(out, "clipping strategies (quantizer parameter `clip: {{method: ...}}`):");
    for (name, summary) in qatlab_plugins::clip::CLIP_METHODS {
        let _ = writeln!(out, "  {name:<19} {summary}");
    }
    let clip_defaults = serde_yaml::to_value(qatlab_plugins::clip::ClipConfig::default()).unwrap_or_default();
    let _ = writeln!(out, "  clip settings and defaults: {}", yaml_inline(&clip_defaults));
    let _ = writeln!(out, "straight-through variants (quantizer parameter `ste:`, x = w/s):");
    for (name, summary) in qatlab_plugins::ste::STE_VARIANTS {
        let _ = writeln!(out, "  {name:<19} {summary}");
    }
    out
}

/// A YAML value on one line, in flow style; floats at f32 precision (plugin parameters are
/// f32, whose f64 widening would print as 0.699999988…).
fn yaml_inline(v: &serde_yaml::Value) -> String {
    crate::experiment::sweep::inline_with(v, &|x| {
        let f = x as f32;
        Some(if f.fract() == 0.0 { format!("{f:.1}") } else { f.to_string() })
    })
}
