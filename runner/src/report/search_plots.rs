//! A search's plots (SVG and PNG, in `results/<name>/plots/`): `search_progress`, the best
//! finished trial so far against trials and against the compute spent (replayed from the
//! ledger's reports in the order jobs ended), and `search_space`, parallel coordinates of the
//! searched values, one line per trial coloured by its metric.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::plots::{font, Area, DrawResult};
use crate::error::{Error, Result};
use crate::experiment::search::ledger::{Ledger, TrialState};
use crate::experiment::search::Goal;
use crate::experiment::SearchPlan;
use crate::launch::search::Compute;

/// What the plots need, gathered from the ledger.
pub struct SearchPoints {
    /// Per trial: its index, state, value and its values' positions on [0, 1] per dimension.
    trials: Vec<(usize, TrialState, Option<f64>, Vec<f64>)>,
    /// Per report, in order: the compute spent so far and the best finished value so far.
    progress: Vec<(f64, Option<f64>)>,
    /// Dimension names, then the metric.
    axes: Vec<String>,
    /// The unit of compute.
    unit: &'static str,
    /// Lower is better.
    minimize: bool,
}

impl SearchPoints {
    /// Gather from `ledger`; `spent[i]` is what report i trained.
    pub fn new(search: &SearchPlan, ledger: &Ledger, spent: &[f64], compute: &Compute) -> Self {
        let spec = &search.spec;
        let unit_position = |d: usize, v: f64| {
            let (lo, hi) = search.space.dims[d].distribution.coordinate_bounds();
            (v - lo) / (hi - lo)
        };
        let trials = ledger
            .trials
            .iter()
            .map(|t| {
                let coords = search.space.coordinates(&t.pairs()).unwrap_or_default();
                let unit = coords.iter().enumerate().map(|(d, &x)| unit_position(d, x)).collect();
                (t.trial, t.state, t.value, unit)
            })
            .collect();
        let mut progress = Vec::new();
        let (mut total, mut best): (f64, Option<f64>) = (0.0, None);
        for (report, spent) in ledger.reports.iter().zip(spent) {
            total += spent;
            if report.state == TrialState::Finished {
                if let Some(v) = ledger.trials[report.trial].value {
                    best = Some(best.map_or(v, |b| if spec.loss(v) < spec.loss(b) { v } else { b }));
                }
            }
            progress.push((total / compute.whole_run, best));
        }
        let mut axes: Vec<String> = search.space.dims.iter().map(|d| d.path.clone()).collect();
        axes.push(spec.metric.clone());
        Self { trials, progress, axes, unit: compute.unit, minimize: spec.goal() == Goal::Minimize }
    }
}

/// Write `plots/search_progress` and `plots/search_space` (SVG and PNG); the files written.
pub fn write_search_plots(dir: &Path, points: &SearchPoints, title: &str) -> Result<Vec<PathBuf>> {
    if points.trials.iter().all(|t| t.2.is_none()) {
        return Ok(Vec::new());
    }
    font().map_err(Error::Config)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut written = Vec::new();
    for ext in ["svg", "png"] {
        for stem in ["search_progress", "search_space"] {
            let path = dir.join(format!("{stem}.{ext}"));
            let size = (1100, 550);
            let outcome = if ext == "svg" {
                let root = SVGBackend::new(&path, size).into_drawing_area();
                render(stem, &root, points, title).and_then(|_| root.present().map_err(|e| e.into()))
            } else {
                let root = BitMapBackend::new(&path, size).into_drawing_area();
                render(stem, &root, points, title).and_then(|_| root.present().map_err(|e| e.into()))
            };
            outcome.map_err(|e| Error::Config(format!("plot {}: {e}", path.display())))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn render<DB: DrawingBackend>(stem: &str, root: &Area<DB>, points: &SearchPoints, title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    match stem {
        "search_progress" => progress(root, points, title),
        _ => space(root, points, title),
    }
}

/// Viridis at `t` in [0, 1] (dark purple → yellow), linear between five of its stops.
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] =
        [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + f * (b as f64 - a as f64)).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

fn value_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        (0.0, 1.0)
    } else {
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.01).max(1e-6);
        (lo - pad, hi + pad)
    }
}

fn progress<DB: DrawingBackend>(root: &Area<DB>, p: &SearchPoints, title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let metric = p.axes.last().cloned().unwrap_or_default();
    let (lo, hi) = value_range(p.trials.iter().filter_map(|t| t.2));
    // left: every trial's value (finished filled, stopped hollow) and the best finished so far
    let mut chart = ChartBuilder::on(&left)
        .caption(format!("{title}: {metric} by trial"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..(p.trials.len() as f64 - 0.5), lo..hi)?;
    chart.configure_mesh().x_desc("trial").y_desc(metric.as_str()).draw()?;
    let dots = Palette99::pick(0).to_rgba();
    for (i, state, value, _) in &p.trials {
        if let Some(v) = value {
            let style = if *state == TrialState::Finished { dots.filled() } else { dots.stroke_width(1) };
            chart.draw_series(std::iter::once(Circle::new((*i as f64, *v), 4, style)))?;
        }
    }
    let mut best: Option<f64> = None;
    let mut line = Vec::new();
    for (i, state, value, _) in &p.trials {
        if let (TrialState::Finished, Some(v)) = (state, value) {
            let better = best.is_none_or(|b| if p.minimize { *v < b } else { *v > b });
            if better {
                best = Some(*v);
            }
        }
        if let Some(b) = best {
            line.push((*i as f64, b));
        }
    }
    let best_color = Palette99::pick(1).to_rgba();
    chart
        .draw_series(LineSeries::new(line, best_color.stroke_width(2)))?
        .label("best finished so far")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], best_color));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.8)).draw()?;
    // right: the best finished so far against the compute spent, in whole runs
    let spent = p.progress.last().map_or(1.0, |x| x.0).max(1e-9);
    let (lo, hi) = value_range(p.progress.iter().filter_map(|x| x.1));
    let mut chart = ChartBuilder::on(&right)
        .caption(format!("best {metric} against compute"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..spent * 1.05, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc(format!("compute spent (whole runs of {})", p.unit))
        .y_desc(metric.as_str())
        .draw()?;
    let steps: Vec<(f64, f64)> = p.progress.iter().filter_map(|&(x, b)| b.map(|b| (x, b))).collect();
    chart.draw_series(LineSeries::new(steps.clone(), best_color.stroke_width(2)))?;
    chart.draw_series(steps.into_iter().map(|xy| Circle::new(xy, 3, best_color.filled())))?;
    Ok(())
}

fn space<DB: DrawingBackend>(root: &Area<DB>, p: &SearchPoints, title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let axes = p.axes.len();
    let (lo, hi) = value_range(p.trials.iter().filter_map(|t| t.2));
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: searched values, coloured by {}", p.axes[axes - 1]), ("sans-serif", 18))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(40)
        .build_cartesian_2d(-0.2..(axes as f64 - 0.8), -0.05..1.05)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(axes)
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            if (x - i as f64).abs() < 0.01 && i < axes {
                p.axes[i].rsplit('.').next().unwrap_or_default().to_string()
            } else {
                String::new()
            }
        })
        .y_desc("position in range (log for log-uniform)")
        .draw()?;
    for a in 0..axes {
        chart.draw_series(LineSeries::new([(a as f64, 0.0), (a as f64, 1.0)], BLACK.mix(0.4)))?;
    }
    // better trials drawn last, on top
    let mut order: Vec<&(usize, TrialState, Option<f64>, Vec<f64>)> =
        p.trials.iter().filter(|t| t.2.is_some()).collect();
    order.sort_by(|a, b| {
        let (x, y) = (a.2.unwrap_or_default(), b.2.unwrap_or_default());
        if p.minimize {
            y.total_cmp(&x)
        } else {
            x.total_cmp(&y)
        }
    });
    for (_, state, value, unit) in order {
        let v = value.unwrap_or_default();
        let shade = if p.minimize { (hi - v) / (hi - lo) } else { (v - lo) / (hi - lo) };
        let color = viridis(shade);
        let mut xy: Vec<(f64, f64)> = unit.iter().enumerate().map(|(d, &u)| (d as f64, u)).collect();
        xy.push(((axes - 1) as f64, (v - lo) / (hi - lo)));
        let width = if *state == TrialState::Finished { 3 } else { 1 };
        chart.draw_series(LineSeries::new(xy, color.stroke_width(width)))?;
    }
    Ok(())
}
