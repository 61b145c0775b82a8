//! The command line as plain data (clap derive). Validation and planning happen elsewhere.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// qat: quantization-aware training of low-bit networks, from YAML experiments.
#[derive(Debug, Parser)]
#[command(name = "qat", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an experiment file; finished runs are skipped.
    Run(RunArgs),
    /// List the registered strategies with their parameters and defaults.
    Plugins,
    /// Measure performance.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Arguments of `qat run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The experiment YAML file.
    pub file: PathBuf,
    /// Root of the results tree; runs go to `<results>/<experiment>/<run id>/`.
    #[arg(long, default_value = "results")]
    pub results: PathBuf,
    /// Rerun runs that already succeeded.
    #[arg(long)]
    pub force: bool,
    /// Print one log line per epoch instead of a progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `qat bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training throughput (samples/s, one thread) of an experiment's model.
    Train(BenchTrainArgs),
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
    fn run_defaults_results_to_results() {
        let Command::Run(a) = parse(&["run", "x.yaml"]).command else { panic!("not run") };
        assert_eq!(a.results, PathBuf::from("results"));
        assert!(!a.force && !a.quiet);
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
    fn run_without_file_is_a_usage_error() {
        assert!(Cli::try_parse_from(["qat", "run"]).is_err());
    }
}
