//! The `qat` command line: parse, plan, execute, print; errors are printed once as `qat: …`.
//! Exit codes: 0 all runs succeeded, 1 some run failed or diverged, 2 usage or config error
//! (nothing ran).

use std::process::ExitCode;

use clap::Parser;
use qatlab_core::config::RunConfig;
use qatlab_runner::bench::{bench_train, PYTORCH_TERNARY_SAMPLES_PER_S};
use qatlab_runner::cli::{BenchCommand, BenchTrainArgs, Cli, Command, RunArgs};
use qatlab_runner::data::RunData;
use qatlab_runner::error::Error;
use qatlab_runner::execute::{display_path, execute, ExecOptions};
use qatlab_runner::outputs::Status;
use qatlab_runner::{experiment, report};

#[global_allocator]
static GLOBAL: qatlab_runner::alloc::MiMalloc = qatlab_runner::alloc::MiMalloc;

fn main() -> ExitCode {
    qatlab_runner::alloc::keep_freed_pages();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qat: {e}");
            ExitCode::from(match e {
                Error::Config(_) | Error::Data(_) => 2,
                _ => 1,
            })
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode, Error> {
    let registry = qatlab_plugins::builtin_registry();
    match cli.command {
        Command::Run(args) => run(&args, &registry),
        Command::Plugins => {
            print!("{}", report::plugin_listing(&registry));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Train(args)) => bench(&args, &registry),
    }
}

fn run(args: &RunArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let plan = experiment::load(&args.file, registry)?;
    let options = ExecOptions { results: args.results.clone(), force: args.force, quiet: args.quiet };
    let outcomes = execute(&plan, registry, &options)?;
    print!("{}", report::summary(&outcomes));
    let all_ok = outcomes.iter().all(|o| o.record.status == Status::Success);
    for o in &outcomes {
        println!("results: {}", display_path(&o.dir));
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn bench(args: &BenchTrainArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let config: RunConfig = match &args.file {
        Some(file) => experiment::load(file, registry)?.runs.remove(0),
        None => experiment::parse(report::QUICKSTART_BENCH_YAML, "built-in quickstart recipe")?,
    };
    let data = RunData::load(&config.data)?;
    let result = bench_train(&config, registry, &data, args.epochs)?;
    let per_epoch: Vec<String> = result.per_epoch.iter().map(|s| format!("{s:.0}")).collect();
    let median = result.median();
    println!(
        "model: {} hidden {:?}, quantizer {}, batch {}",
        config.name, config.model.hidden, config.quantizer.name, config.train.batch_size
    );
    println!("training samples/s per epoch (1 thread): {}", per_epoch.join(", "));
    println!("median: {median:.0} samples/s");
    println!(
        "vs PyTorch anchor for the ternary quickstart recipe ({:.0} samples/s, 1 thread): {:.2}x",
        PYTORCH_TERNARY_SAMPLES_PER_S,
        median / PYTORCH_TERNARY_SAMPLES_PER_S
    );
    Ok(ExitCode::SUCCESS)
}
