//! Plots per experiment (plotters, SVG and PNG): the final score against total weight memory
//! with one series per quantizer (the Pareto view of the low-bit literature), and its curve per
//! run group (mean over seeds). The score is test accuracy for classifiers and validation loss
//! for language models ([`Measure`]).

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
pub(crate) fn font() -> std::result::Result<(), String> {
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

/// What the plots show of a run.
#[derive(Clone, Copy, PartialEq)]
enum Measure {
    /// Test accuracy in %, per epoch (classifiers).
    Accuracy,
    /// Validation loss in nats per token, per evaluation every `every` steps (language models).
    ValLoss {
        /// Optimizer steps between evaluations.
        every: usize,
    },
}

impl Measure {
    fn of(plan: &RunPlan) -> Self {
        // language models train by steps (the config check ties the two together)
        match plan.runs.first().and_then(|r| r.config.steps_per_eval()) {
            Some((every, _)) => Measure::ValLoss { every },
            None => Measure::Accuracy,
        }
    }

    /// The x value of point `i` (0-based) of a curve.
    fn x(self, i: usize) -> f64 {
        match self {
            Measure::Accuracy => (i + 1) as f64,
            Measure::ValLoss { every } => ((i + 1) * every) as f64,
        }
    }

    /// The axis label.
    fn label(self) -> &'static str {
        match self {
            Measure::Accuracy => "test accuracy (%)",
            Measure::ValLoss { .. } => "validation loss (nats per token)",
        }
    }

    /// metrics.csv's column and the factor to the plotted unit.
    fn column(self) -> (&'static str, f64) {
        match self {
            Measure::Accuracy => ("test_acc", 100.0),
            Measure::ValLoss { .. } => ("test_loss", 1.0),
        }
    }

    /// The x axis of a curve.
    fn interval(self) -> &'static str {
        match self {
            Measure::Accuracy => "epoch",
            Measure::ValLoss { .. } => "optimizer step",
        }
    }
}

/// What the plots need of one finished run.
struct RunPoint {
    series: String,
    group: String,
    bits: f64,
    /// The final score in the plotted unit.
    value: f64,
    curve: Vec<f64>,
}

fn collect(plan: &RunPlan, results: &Path, measure: Measure) -> Vec<RunPoint> {
    plan.runs
        .iter()
        .filter_map(|run| {
            let dir = RunDir::new(results, &run.config);
            let record = dir.read_record().filter(|r| r.status == Status::Success)?;
            let curve = read_curve(&dir, measure);
            let scores = record.final_scores?;
            Some(RunPoint {
                series: qatlab_core::config::spec_label(&run.config.quantizer),
                group: group_name(run),
                bits: record.total_bits,
                value: match measure {
                    Measure::Accuracy => 100.0 * scores.test_acc,
                    Measure::ValLoss { .. } => scores.test_loss,
                },
                curve,
            })
        })
        .collect()
}

fn read_curve(dir: &RunDir, measure: Measure) -> Vec<f64> {
    let (column, factor) = measure.column();
    dir.read_metric(column).unwrap_or_default().into_iter().map(|v| factor * v).collect()
}

/// Write `plots/accuracy_vs_bits` (language models: `plots/loss_vs_memory`) and `plots/curves`
/// (SVG and PNG) for the finished runs of `plan`; returns the files written.
pub fn write_plots(plan: &RunPlan, results: &Path) -> Result<Vec<PathBuf>> {
    let measure = Measure::of(plan);
    let points = collect(plan, results, measure);
    if points.is_empty() {
        return Ok(Vec::new());
    }
    font().map_err(Error::Config)?;
    let dir = results.join(&plan.experiment).join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut written = Vec::new();
    for ext in ["svg", "png"] {
        for kind in [Plot::VsMemory, Plot::Curves] {
            let path = dir.join(format!("{}.{ext}", kind.stem(measure)));
            draw(&path, kind, measure, &points, &plan.experiment)?;
            written.push(path);
        }
    }
    Ok(written)
}

/// The plots of an experiment.
#[derive(Clone, Copy)]
enum Plot {
    VsMemory,
    Curves,
}

impl Plot {
    fn stem(self, measure: Measure) -> &'static str {
        match (self, measure) {
            (Plot::VsMemory, Measure::Accuracy) => "accuracy_vs_bits",
            (Plot::VsMemory, Measure::ValLoss { .. }) => "loss_vs_memory",
            (Plot::Curves, _) => "curves",
        }
    }

    fn render<DB: DrawingBackend>(
        self,
        root: &Area<DB>,
        measure: Measure,
        points: &[RunPoint],
        title: &str,
    ) -> DrawResult
    where
        DB::ErrorType: 'static,
    {
        match self {
            Plot::VsMemory => vs_memory(root, measure, points, title),
            Plot::Curves => curves(root, measure, points, title),
        }
    }
}

/// A whole figure on some backend.
pub(crate) type Area<'a, DB> = DrawingArea<DB, plotters::coord::Shift>;
/// What drawing returns.
pub(crate) type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(path: &Path, plot: Plot, measure: Measure, points: &[RunPoint], title: &str) -> Result<()> {
    let size = (900, 600);
    let outcome = if path.extension().is_some_and(|e| e == "svg") {
        let root = SVGBackend::new(path, size).into_drawing_area();
        plot.render(&root, measure, points, title).and_then(|_| root.present().map_err(|e| e.into()))
    } else {
        let root = BitMapBackend::new(path, size).into_drawing_area();
        plot.render(&root, measure, points, title).and_then(|_| root.present().map_err(|e| e.into()))
    };
    outcome.map_err(|e| Error::Config(format!("plot {}: {e}", path.display())))
}

fn vs_memory<DB: DrawingBackend>(
    root: &Area<DB>,
    measure: Measure,
    points: &[RunPoint],
    title: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let kb = |p: &RunPoint| p.bits / 8.0 / 1024.0;
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(kb(p)), hi.max(kb(p))));
    let (ymin, ymax) =
        points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| (lo.min(p.value), hi.max(p.value)));
    let pad = match measure {
        Measure::Accuracy => 0.3,
        Measure::ValLoss { .. } => 0.02,
    };
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: {} vs weight memory", measure.label()), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        // labels sit at powers of the base: 10 leaves a narrow range (218-423 kB) unlabelled
        .build_cartesian_2d(
            (xmin * 0.8..xmax * 1.25).log_scale().base(if xmax < 10.0 * xmin { 2.0 } else { 10.0 }),
            (ymin - pad)..(ymax + pad),
        )?;
    chart.configure_mesh().x_desc("total weight memory (kB, log scale)").y_desc(measure.label()).draw()?;
    let mut series: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for p in points {
        series.entry(&p.series).or_default().push((kb(p), p.value));
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
    draw_legend(&mut chart, measure)
}

fn curves<DB: DrawingBackend>(
    root: &Area<DB>,
    measure: Measure,
    points: &[RunPoint],
    title: &str,
) -> DrawResult
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
    let y = match measure {
        // the last two thirds of every curve, where runs differ
        Measure::Accuracy => {
            let tail = means.iter().flat_map(|(_, c)| c.iter().skip(c.len() / 3));
            (tail.fold(100.0f64, |m, v| m.min(*v)) - 0.5).max(0.0)..100.0
        }
        Measure::ValLoss { .. } => {
            let all = means.iter().flat_map(|(_, c)| c.iter());
            let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            if lo > hi {
                0.0..1.0
            } else {
                (lo - 0.05)..(hi + 0.05)
            }
        }
    };
    let mut chart = ChartBuilder::on(root)
        .caption(format!("{title}: {} (mean over seeds)", measure.label()), ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(measure.x(0)..measure.x(epochs - 1), y)?;
    chart.configure_mesh().x_desc(measure.interval()).y_desc(measure.label()).draw()?;
    for (i, (group, curve)) in means.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let xy: Vec<(f64, f64)> = curve.iter().enumerate().map(|(e, a)| (measure.x(e), *a)).collect();
        chart
            .draw_series(LineSeries::new(xy, color.stroke_width(2)))?
            .label(group)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    draw_legend(&mut chart, measure)
}

/// The legend box both plots use.
fn draw_legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    measure: Measure,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        // where the curves are not: under rising accuracy, over falling loss
        .position(match measure {
            Measure::Accuracy => SeriesLabelPosition::LowerRight,
            Measure::ValLoss { .. } => SeriesLabelPosition::UpperRight,
        })
        .draw()?;
    Ok(())
}
