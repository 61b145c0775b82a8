//! The command line as plain data (clap derive). Validation and planning happen elsewhere.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// qat: quantization-aware training of low-bit networks, from YAML experiments.
#[derive(Debug, Parser)]
#[command(name = "qat", version, about)]
pub struct Cli {
    /// Load a dynamic plugin library (repeatable); also `$QAT_PLUGIN_PATH` and an experiment's
    /// `plugins:` list. Nothing is loaded implicitly from the current directory.
    #[arg(long = "plugin", global = true, value_name = "LIBRARY")]
    pub plugins: Vec<PathBuf>,
    /// Never download a dataset (as `QAT_OFFLINE=1`): a missing one is an error before any run.
    #[arg(long, global = true)]
    pub offline: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an experiment file (every run of its sweep); finished runs are skipped, interrupted
    /// ones resume from their last epoch.
    Run(RunArgs),
    /// Print the runs an experiment file expands to (index, run id, overrides) without running.
    List(ListArgs),
    /// Aggregate an experiment's results.csv over seeds: mean ± std per group.
    Table(TableArgs),
    /// Per-run status of an experiment's results directory (and of its Slurm arrays).
    Status(StatusArgs),
    /// Reproduce a reference table: run its experiment (resuming), compare with the published
    /// numbers, write results/repro/<table>.md.
    Repro(ReproArgs),
    /// List the registered strategies with their parameters and defaults; with `--plugin`, what
    /// those libraries provide.
    Plugins(PluginsArgs),
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Export a finished run as a packed model file (or a C header and inference file).
    Export(ExportArgs),
    /// Print a model file's header, layers, sizes and real bits per weight.
    Inspect(InspectArgs),
    /// Run a model file on the integer kernels over its dataset's test set (a language model:
    /// its loss over the training evaluation's windows).
    Infer(InferArgs),
    /// Analyse a finished run: per-class scores, confusion, calibration (ECE), per-layer code
    /// statistics, SQNR and cosine, and each layer's sensitivity; also stored in its run.json.
    Analyze(AnalyzeArgs),
    /// Generate text from a finished language-model run (its evaluation weights).
    Sample(SampleArgs),
    /// Generate text from a language-model file on the deployment runtime (integer kernels,
    /// KV cache), streamed as it is drawn.
    Generate(GenerateArgs),
    /// Datasets on this machine: list where each was found, fetch (download and verify), or
    /// verify what is there.
    #[command(subcommand)]
    Data(DataCommand),
}

/// `qat data …`.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Each dataset: where it was found, its size, and whether its files verify.
    List,
    /// Download datasets (resuming partial files, verifying size and SHA-256).
    Fetch(DataFetchArgs),
    /// Re-check the files of datasets that are present (all of them without ids).
    Verify(DataVerifyArgs),
}

/// Arguments of `qat data fetch`.
#[derive(Debug, clap::Args)]
pub struct DataFetchArgs {
    /// Dataset ids: mnist, fashion-mnist, tinyshakespeare.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Folder to put them in (default: `$QAT_DATA_DIR`, else the user cache).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Download again even when the files verify.
    #[arg(long)]
    pub force: bool,
    /// A mirror laid out as `<mirror>/<id>/<file>`, used instead of the datasets' own locations
    /// (also `$QAT_DATA_MIRROR`).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Further attempts after a failed transfer (each resumes the partial file).
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
}

/// Arguments of `qat data verify`.
#[derive(Debug, clap::Args)]
pub struct DataVerifyArgs {
    /// Dataset ids (default: every dataset that is present).
    pub ids: Vec<String>,
}

/// Arguments of `qat sample`.
#[derive(clap::Args, Debug)]
pub struct SampleArgs {
    /// The run directory (`results/<experiment>/<run id>`).
    pub run: PathBuf,
    /// What to generate.
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// The prompt and the draws, shared by `qat sample` and `qat generate` (the same seed gives
/// the same text from both).
#[derive(Debug, clap::Args)]
pub struct SamplingArgs {
    /// Text to continue (default: a newline, as nanoGPT's sample.py). Past the context, the last
    /// `context` tokens are kept.
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Tokens to generate (0: print the prompt only).
    #[arg(long, default_value_t = crate::train::sample::DEFAULT_TOKENS)]
    pub tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = crate::train::sample::DEFAULT_TEMPERATURE)]
    pub temperature: f32,
    /// Draw only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = crate::train::sample::DEFAULT_TOP_K)]
    pub top_k: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = crate::train::sample::DEFAULT_SEED)]
    pub seed: u64,
}

/// Arguments of `qat generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The model file (`qat export` of a language-model run).
    pub file: PathBuf,
    /// What to generate.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Kernel path: auto, scalar, avx2 or avx512.
    #[arg(long, default_value = "auto")]
    pub kernel: String,
    /// Threads for the matrix products and attention heads (1: none spawned).
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub threads: usize,
    /// How the KV cache stores keys and values: f32 (as training computes them) or f16 (half
    /// the bytes each token reads back; logits move by the rounding of the stored values).
    #[arg(long, value_enum, default_value = "f32")]
    pub kv_cache: KvCache,
    /// Also generate with the training engine of this run directory (`qat sample`, same
    /// settings) and say whether the texts agree, or where they part and the two tokens'
    /// logits there.
    #[arg(long)]
    pub compare: Option<PathBuf>,
}

/// Arguments of `qat analyze`.
#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The run directory (`results/<experiment>/<run id>`).
    pub run: PathBuf,
    /// Also evaluate the run's weights post-quantized by this quantizer (YAML, e.g.
    /// `"{name: int, bits: 4}"`); repeatable. Nothing is retrained.
    #[arg(long = "post-quantize", value_name = "QUANTIZER")]
    pub post_quantize: Vec<String>,
    /// With --post-quantize: apply empirical bias correction to each post-quantized network.
    #[arg(long)]
    pub bias_correction: bool,
    /// With --post-quantize: re-estimate batch-norm statistics for each post-quantized network.
    #[arg(long)]
    pub recalibrate_batch_norm: bool,
    /// Language models: also score this many draws of random validation windows (`eval.batches`
    /// batches of `train.batch_size`, nanoGPT's estimate) and print their mean, spread and range.
    #[arg(long, default_value_t = 0)]
    pub draws: usize,
}

/// Arguments of `qat export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The run directory (`results/<experiment>/<run id>`).
    pub run: PathBuf,
    /// Output file (`model.qat`; with `--format c-header`, the header's path).
    #[arg(long, short)]
    pub output: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value = "model")]
    pub format: ExportFormat,
    /// How to store ternary and pentary codes.
    #[arg(long, value_enum, default_value = "bits")]
    pub packing: crate::export::PackingChoice,
}

/// A thread count: a whole number, at least 1.
fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("`{value}` is not a thread count: give a whole number, at least 1")),
    }
}

/// `--kv-cache` of `qat generate` and `qat bench generate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCache {
    /// Single precision.
    F32,
    /// IEEE half precision.
    F16,
}

impl KvCache {
    /// The decoder's setting.
    pub fn precision(self) -> qatlab_deploy::kv::KvPrecision {
        match self {
            KvCache::F32 => qatlab_deploy::kv::KvPrecision::F32,
            KvCache::F16 => qatlab_deploy::kv::KvPrecision::F16,
        }
    }
}

/// Output of `qat export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// The versioned binary model file.
    Model,
    /// A C header with the weights as const arrays, plus a portable C inference file beside it.
    CHeader,
}

/// Arguments of `qat inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The model file.
    pub file: PathBuf,
}

/// Arguments of `qat infer`.
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// The model file.
    pub file: PathBuf,
    /// Samples per kernel call (a language model: windows per call).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Kernel path: auto, scalar, avx2 or avx512.
    #[arg(long, default_value = "auto")]
    pub kernel: String,
    /// Also run the training-time evaluation of this run directory and count the images on
    /// which the two disagree (a language model: its loss on the same windows, and the
    /// difference).
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// A language model trained on `dataset: text`: the text file (checked by its SHA-256).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Arguments of `qat run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The experiment YAML file.
    pub file: PathBuf,
    /// Override a config key for every run: a dotted path and a YAML value
    /// (`--set train.optimizer.lr=3e-3`); repeatable. Part of each run's config and run id.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Root of the results tree; runs go to `<results>/<experiment>/<run id>/`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Rerun every selected run from scratch, finished or not.
    #[arg(long)]
    pub force: bool,
    /// Rerun failed and diverged runs (finished successful runs are still skipped).
    #[arg(long)]
    pub retry_failed: bool,
    /// Print log lines instead of progress bars.
    #[arg(long, short)]
    pub quiet: bool,
    /// Runs in parallel (each single-threaded); default: the number of cores.
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Run only these runs: indices or run ids from `qat list` (repeat or separate by commas).
    #[arg(long)]
    pub only: Vec<String>,
    /// Where runs execute: here, or as a Slurm job array (one task per run).
    #[arg(long, value_enum, default_value = "local")]
    pub launcher: Launcher,
    /// Slurm partition.
    #[arg(long)]
    pub partition: Option<String>,
    /// Slurm time limit per task (e.g. 01:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// CPUs per Slurm task (each run is single-threaded).
    #[arg(long, default_value_t = 1)]
    pub cpus_per_task: usize,
    /// Memory per Slurm task (e.g. 4G).
    #[arg(long)]
    pub mem: Option<String>,
    /// At most this many array tasks at once.
    #[arg(long)]
    pub array_parallelism: Option<usize>,
    /// An extra `#SBATCH` argument, verbatim (repeatable), e.g. `--sbatch-arg=--qos=low`.
    #[arg(long = "sbatch-arg", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// With `--launcher slurm`: write the manifest and script, do not submit.
    #[arg(long)]
    pub dry_run: bool,
    /// With `--launcher slurm`, for a search: propose this many trials per job array; each
    /// later `qat run --launcher slurm` enters what finished and submits the next batch.
    #[arg(long)]
    pub trials_per_submit: Option<usize>,
}

/// Where `qat run` executes runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Launcher {
    /// On this machine, `--jobs` at a time.
    Local,
    /// As a Slurm job array.
    Slurm,
}

/// Arguments of `qat repro`.
#[derive(Debug, clap::Args)]
pub struct ReproArgs {
    /// The table (`table1`, ...); see `--list`.
    #[arg(required_unless_present = "list")]
    pub table: Option<String>,
    /// List the tables.
    #[arg(long)]
    pub list: bool,
    /// The published-numbers data file.
    #[arg(long, default_value = "experiments/repro/published.yaml")]
    pub data: PathBuf,
    /// Root of the results tree.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Runs in parallel; default: the number of cores.
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Print log lines instead of progress bars.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `qat status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// An experiment's results directory, e.g. results/quickstart.
    pub dir: PathBuf,
}

/// Arguments of `qat plugins`.
#[derive(Debug, clap::Args)]
pub struct PluginsArgs {
    /// Run the quantizer conformance suite on the quantizers of these libraries.
    #[arg(long, value_name = "LIBRARY")]
    pub check: Vec<PathBuf>,
}

/// Arguments of `qat list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The experiment YAML file.
    pub file: PathBuf,
    /// The same overrides as `qat run --set` (the run ids depend on them).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Root of the results tree (where a search's ledger is read).
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
}

/// Arguments of `qat table`.
#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// An experiment's results directory (holding results.csv), e.g. results/quickstart.
    pub dir: PathBuf,
    /// Group by these columns (comma-separated); default: every swept key but the seed.
    #[arg(long, value_delimiter = ',')]
    pub by: Vec<String>,
    /// Metric columns to aggregate (comma-separated); a language model's table defaults to
    /// final_val_loss.
    #[arg(long, value_delimiter = ',', default_value = crate::report::results::DEFAULT_METRIC)]
    pub metric: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "md")]
    pub format: crate::report::results::TableFormat,
}

/// `qat bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training throughput (samples/s, one thread) of an experiment's model.
    Train(BenchTrainArgs),
    /// Integer GEMV/GEMM kernels against f32 and the measured memory bandwidth.
    Kernels(BenchKernelsArgs),
    /// Samples/s of a model file on the kernels, batch 1 and 64, one thread.
    Infer(BenchInferArgs),
    /// Token generation from language-model files (prompt, generation on the KV cache, past
    /// the context), 2-bit and 1.6-bit ternary layouts, 1 and 2 threads; `--shape` adds a
    /// random model as large as memory bandwidth bounds.
    Generate(BenchGenerateArgs),
}

/// Arguments of `qat bench kernels`.
#[derive(Debug, clap::Args)]
pub struct BenchKernelsArgs {
    /// Seconds to spend per measured case (the median of its repetitions is reported).
    #[arg(long, default_value_t = 0.5)]
    pub seconds: f64,
    /// Only the small MNIST shapes (fast; for smoke tests).
    #[arg(long)]
    pub quick: bool,
    /// Only these shapes, as ROWSxCOLS (e.g. `--shape 4096x4096`); repeatable.
    #[arg(long = "shape")]
    pub shapes: Vec<String>,
}

/// Arguments of `qat bench generate`.
#[derive(Debug, clap::Args)]
pub struct BenchGenerateArgs {
    /// Language-model files (`qat export` of transformer runs).
    pub files: Vec<PathBuf>,
    /// Also a random ternary model of this shape, `depth=D,width=W,heads=H[,context=256]`
    /// (byte vocabulary), judged against the memory bandwidth: choose its packed weights at
    /// least twice the last-level cache.
    #[arg(long)]
    pub shape: Option<String>,
    /// Thread counts to run with.
    #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = at_least_one)]
    pub threads: Vec<usize>,
    /// Repetitions per case (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Tokens generated past the context per repetition (each recomputes a whole window).
    #[arg(long, default_value_t = 8)]
    pub past: usize,
    /// Prompt tokens (default: half the context).
    #[arg(long)]
    pub prompt: Option<usize>,
    /// Tokens generated after the prompt (default: up to the context).
    #[arg(long)]
    pub generate: Option<usize>,
    /// How the KV cache stores keys and values (as `qat generate --kv-cache`).
    #[arg(long, value_enum, default_value = "f32")]
    pub kv_cache: KvCache,
}

/// Arguments of `qat bench infer`.
#[derive(Debug, clap::Args)]
pub struct BenchInferArgs {
    /// The model file.
    pub file: PathBuf,
}

/// Arguments of `qat bench train`.
#[derive(Debug, clap::Args)]
pub struct BenchTrainArgs {
    /// Experiment whose model and recipe to time (default: the quickstart recipe).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Epochs to time; the median epoch is reported.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("qat").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn run_takes_a_file_and_flags() {
        let Command::Run(a) = parse(&["run", "x.yaml", "--force", "-q", "--results", "out"]).command else {
            panic!("not run")
        };
        assert_eq!(a.file, PathBuf::from("x.yaml"));
        assert!(a.force && a.quiet);
        assert_eq!(a.results, PathBuf::from("out"));
    }

    #[test]
    fn data_fetch_takes_ids_and_flags_and_offline_is_global() {
        let cli = parse(&[
            "data",
            "fetch",
            "mnist",
            "tinyshakespeare",
            "--dir",
            "d",
            "--mirror",
            "http://m",
            "--retries",
            "0",
            "--offline",
        ]);
        assert!(cli.offline);
        let Command::Data(DataCommand::Fetch(a)) = cli.command else { panic!("not data fetch") };
        assert_eq!(a.ids, ["mnist", "tinyshakespeare"]);
        assert_eq!(
            (a.dir, a.mirror.as_deref(), a.retries, a.force),
            (Some(PathBuf::from("d")), Some("http://m"), 0, false)
        );
        assert!(Cli::try_parse_from(["qat", "data", "fetch"]).is_err(), "fetch needs an id");
        assert!(matches!(parse(&["data", "list"]).command, Command::Data(DataCommand::List)));
    }

    #[test]
    fn run_defaults_results_to_results() {
        let Command::Run(a) = parse(&["run", "x.yaml"]).command else { panic!("not run") };
        assert_eq!(a.results, PathBuf::from("results"));
        assert!(!a.force && !a.quiet && !a.retry_failed);
        assert_eq!(a.jobs, None);
        assert!(a.only.is_empty());
    }

    #[test]
    fn run_takes_jobs_only_and_retry() {
        let Command::Run(a) =
            parse(&["run", "x.yaml", "--jobs", "2", "--only", "1,3", "--only", "ab12", "--retry-failed"])
                .command
        else {
            panic!("not run")
        };
        assert_eq!(a.jobs, Some(2));
        assert_eq!(a.only, vec!["1,3".to_string(), "ab12".to_string()]);
        assert!(a.retry_failed);
    }

    #[test]
    fn table_splits_by_and_metric_lists() {
        let Command::Table(a) =
            parse(&["table", "results/x", "--by", "quantizer,model.hidden", "--format", "csv"]).command
        else {
            panic!("not table")
        };
        assert_eq!(a.by, vec!["quantizer".to_string(), "model.hidden".to_string()]);
        assert_eq!(a.metric, vec!["final_test_acc".to_string()]);
        assert_eq!(a.format, crate::report::results::TableFormat::Csv);
    }

    #[test]
    fn bench_train_defaults_to_three_epochs() {
        let Command::Bench(BenchCommand::Train(a)) = parse(&["bench", "train"]).command else {
            panic!("not bench")
        };
        assert_eq!(a.epochs, 3);
        assert!(a.file.is_none());
    }

    #[test]
    fn repro_needs_a_table_or_list() {
        assert!(Cli::try_parse_from(["qat", "repro"]).is_err());
        let Command::Repro(a) = parse(&["repro", "--list"]).command else { panic!("not repro") };
        assert!(a.list && a.table.is_none());
        let Command::Repro(a) = parse(&["repro", "table1", "-j", "2"]).command else { panic!("not repro") };
        assert_eq!((a.table.as_deref(), a.jobs), (Some("table1"), Some(2)));
        assert_eq!(a.data, PathBuf::from("experiments/repro/published.yaml"));
    }

    #[test]
    fn slurm_flags_parse() {
        let Command::Run(a) = parse(&[
            "run",
            "x.yaml",
            "--launcher",
            "slurm",
            "--partition",
            "gpu",
            "--time",
            "01:00:00",
            "--cpus-per-task",
            "2",
            "--mem",
            "4G",
            "--array-parallelism",
            "8",
            "--sbatch-arg=--qos=low",
            "--dry-run",
        ])
        .command
        else {
            panic!("not run")
        };
        assert_eq!(a.launcher, Launcher::Slurm);
        assert_eq!(
            (a.partition.as_deref(), a.time.as_deref(), a.mem.as_deref()),
            (Some("gpu"), Some("01:00:00"), Some("4G"))
        );
        assert_eq!((a.cpus_per_task, a.array_parallelism), (2, Some(8)));
        assert_eq!(a.sbatch_args, vec!["--qos=low".to_string()]);
        assert!(a.dry_run);
        let Command::Run(local) = parse(&["run", "x.yaml"]).command else { panic!("not run") };
        assert_eq!(local.launcher, Launcher::Local);
    }

    #[test]
    fn plugin_libraries_are_a_global_repeatable_flag() {
        let cli = parse(&["plugins", "--plugin", "a.so", "--check", "b.so", "--plugin", "c.so"]);
        assert_eq!(cli.plugins, vec![PathBuf::from("a.so"), PathBuf::from("c.so")]);
        let Command::Plugins(a) = cli.command else { panic!("not plugins") };
        assert_eq!(a.check, vec![PathBuf::from("b.so")]);
    }

    #[test]
    fn run_without_file_is_a_usage_error() {
        assert!(Cli::try_parse_from(["qat", "run"]).is_err());
    }
}
