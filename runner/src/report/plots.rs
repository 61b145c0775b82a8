//! Plots per experiment (plotters, SVG and PNG): test accuracy against total weight bits with
//! one series per quantizer (the Pareto view of the low-bit literature), and test-accuracy
//! curves per run group (mean over seeds).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::experiment::RunPlan;
use crate::report::tensorboard::group_name;
use crate::run::{RunDir, Status};

/// Where the plotting font is looked for (DejaVu Sans from Debian's fonts-dejavu-core), after
/// `$QAT_PLOT_FONT`.
const FONT_PATHS: [&str; 2] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

/// Register a TrueType font for plot text once; plotters needs one to lay out labels.
fn font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates: Vec<PathBuf> =
                std::env::var_os("QAT_PLOT_FONT").map(PathBuf::from).into_iter().chain(FONT_PATHS.iter().map(PathBuf::from)).collect();
            let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                format!("no font for plot labels: set QAT_PLOT_FONT to a .ttf file, or install fonts-dejavu-core (looked in {})", FONT_PATHS.join(", "))
            })?;
            let bytes: &'static [u8] = Box::leak(std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| format!("{}: not a usable font", path.display()))
        })
        .clone()
}

/// What the plots need of one finished run.
struct RunPoint {
    series: String,
    group: String,
    bits: f64,
    accuracy: f64,
    curve: Vec<f64>,
}

fn collect(plan: &RunPlan, results: &Path) -> Vec<RunPoint> {
    plan.runs
        .iter()
        .filter_map(|run| {
            let dir = RunDir::new(results, &run.config);
            let record = dir.read_record().filter(|r| r.status == Status::Success)?;
            let curve = read_test_accuracy(&dir.path.join("metrics.csv"));
            Some(RunPoint {
                series: qatlab_core::config::spec_label(&run.config.quantizer),
                group: group_name(run),
                bits: record.total_bits,
                accuracy: 100.0 * record.final_scores.map_or(0.0, |s| s.test_acc),
                curve,
            })
        })
        .collect()
}

fn read_test_accuracy(path: &Path) -> Vec<f64> {
    let Ok(mut reader) = csv::Reader::from_path(path) else { return Vec::new() };
    let Some(col) = reader.headers().ok().and_then(|h| h.iter().position(|c| c == "test_acc")) else {
        return Vec::new();
    };
    reader.records().filter_map(|r| r.ok()?.get(col)?.parse::<f64>().ok()).map(|v| 100.0 * v).collect()
}

/// Write `plots/accuracy_vs_bits` and `plots/curves` (SVG and PNG) for the finished runs of
/// `plan`; returns the files written.
pub fn write_plots(plan: &RunPlan, results: &Path) -> Result<Vec<PathBuf>> {
    let points = collect(plan, results);
    if points.is_empty() {
        return Ok(Vec::new());
    }
    font().map_err(Error::Config)?;
    let dir = results.join(&plan.experiment).join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut written = Vec::new();
    for ext in ["svg", "png"] {
        for kind in [Plot::AccuracyVsBits, Plot::Curves] {
            let path = dir.join(format!("{}.{ext}", kind.stem()));
            draw(&path, kind, &points, &plan.experiment)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The plots of an experiment.
#[derive(Clone, Copy)]
enum Plot {
    AccuracyVsBits,
    Curves,
}

impl Plot {
    fn stem(self) -> &'static str {
        match self {
            Plot::AccuracyVsBits => "accuracy_vs_bits",
            Plot::Curves => "curves",
        }
    }

    fn render<DB: DrawingBackend>(self, root: &Area<DB>, points: &[RunPoint], title: &str) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        match self {
            Plot::AccuracyVsBits => accuracy_vs_bits(root, points, title),
            Plot::Curves => curves(root, points, title),
        }
    }
}

type Area<'a, DB> = DrawingArea<DB, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, plot: Plot, points: &[RunPoint], title: &str) -> Result<()> {
    let size = (900, 600);
    let outcome = if path.extension().is_some_and(|e| e == "svg") {
        let root = SVGBackend::new(path, size).into_drawing_area();
        plot.render(&root, points, title).and_then(|_| root.present().map_err(|e| e.into()))
    } else {
        let root = BitMapBackend::new(path, size).into_drawing_area();
        plot.render(&root, points, title).and_then(|_| root.present().map_err(|e| e.into()))
    };
    outcome.map_err(|e| Error::Config(format!("plot {}: {e}", path.display())))
}

fn accuracy_vs_bits<DB: DrawingBackend>(root: &Area<DB>, points: &[RunPoint], title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let kb = |p: &RunPoint| p.bits / 8.0 / 1024.0;
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(kb(p)), hi.max(kb(p))));
    let (ymin, ymax) =
        points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.accuracy), hi.max(p.accuracy)));
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: test accuracy vs weight memory"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), (ymin - 0.3)..(ymax + 0.3))?;
    chart
        .configure_mesh()
        .x_desc("total weight memory (kB, log scale)")
        .y_desc("test accuracy (%)")
        .draw()?;
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        series.entry(&p.series).or_default().push((kb(p), p.accuracy));
    }
    for (i, (name, mut xy)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        xy.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(xy.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))?
            .label(name)
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
        // the line joins the means over seeds at each size
        let mut means: Vec<(f64, f64)> = Vec::new();
        for chunk in xy.chunk_by(|a, b| a.0 == b.0) {
            means.push((chunk[0].0, chunk.iter().map(|p| p.1).sum::<f64>() / chunk.len() as f64));
        }
        chart.draw_series(LineSeries::new(means, color))?;
    }
    draw_legend(&mut chart)
}

fn curves<DB: DrawingBackend>(root: &Area<DB>, points: &[RunPoint], title: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let mut groups: BTreeMap<&str, Vec<&Vec<f64>>> = BTreeMap::new();
    for p in points.iter().filter(|p| !p.curve.is_empty()) {
        groups.entry(&p.group).or_default().push(&p.curve);
    }
    let means: Vec<(&str, Vec<f64>)> = groups
        .into_iter()
        .map(|(g, curves)| {
            let epochs = curves.iter().map(|c| c.len()).min().unwrap_or(0);
            (g, (0..epochs).map(|e| curves.iter().map(|c| c[e]).sum::<f64>() / curves.len() as f64).collect())
        })
        .collect();
    let epochs = means.iter().map(|(_, c)| c.len()).max().unwrap_or(1).max(2);
    let ymin = means.iter().flat_map(|(_, c)| c.iter().skip(c.len() / 3)).fold(100.0f64, |m, v| m.min(*v));
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: test accuracy per epoch (mean over seeds)"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(1f64..epochs as f64, (ymin - 0.5).max(0.0)..100.0)?;
    chart.configure_mesh().x_desc("epoch").y_desc("test accuracy (%)").draw()?;
    for (i, (group, curve)) in means.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let xy: Vec<(f64, f64)> = curve.iter().enumerate().map(|(e, a)| ((e + 1) as f64, *a)).collect();
        chart
            .draw_series(LineSeries::new(xy, color.stroke_width(2)))?
            .label(group)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    draw_legend(&mut chart)
}

/// The legend box both plots use, in the lower right corner.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}
