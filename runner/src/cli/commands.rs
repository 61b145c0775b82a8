//! What each `qat` subcommand does: plan, execute, print. Errors go back to `main`, which
//! prints them once as `qat: …` and picks the exit code.

use std::io::Write as _;
use std::process::ExitCode;

use qatlab_core::config::RunConfig;

use super::args::{
    AnalyzeArgs, BenchCommand, BenchGenerateArgs, BenchInferArgs, BenchTrainArgs, Cli, Command, DataCommand,
    ExportArgs, ExportFormat, GenerateArgs, InferArgs, Launcher, ListArgs, PluginsArgs, ReproArgs, RunArgs,
    SampleArgs, SamplingArgs, StatusArgs, TableArgs,
};
use crate::bench::train::{
    bench_train, LM_BENCH_STEPS, PYTORCH_BITNET_TOKENS_PER_S, PYTORCH_NANOGPT_TOKENS_PER_S,
    PYTORCH_TERNARY_SAMPLES_PER_S,
};
use crate::data::RunData;
use crate::dynamic;
use crate::error::Error;
use crate::launch::local::{display_path, execute, experiment_dir, ExecOptions, INTERRUPTED};
use crate::report::{results, summary as report};
use crate::run::Status;
use crate::{experiment, export};

/// Run the command `cli` names; errors come back to `main`, which prints them once.
pub fn dispatch(cli: Cli) -> Result<ExitCode, Error> {
    if cli.offline {
        crate::data::OFFLINE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut registry = qatlab_plugins::builtin_registry();
    let mut libraries = dynamic::env_paths();
    libraries.extend(cli.plugins.iter().cloned());
    let experiment_file = match &cli.command {
        Command::Run(a) => Some(&a.file),
        Command::List(a) => Some(&a.file),
        Command::Bench(BenchCommand::Train(a)) => a.file.as_ref(),
        _ => None,
    };
    if let Some(file) = experiment_file.filter(|f| f.is_file()) {
        libraries.extend(experiment::plugin_paths(file)?);
    }
    let loaded = dynamic::load_all(&mut registry, &libraries)?;
    match cli.command {
        Command::Run(args) if args.launcher == Launcher::Slurm => submit(&args, &registry, &libraries),
        Command::Run(args) => run(&args, &registry),
        Command::List(args) => list(&args, &registry),
        Command::Table(args) => table(&args),
        Command::Status(args) => status(&args),
        Command::Repro(args) => repro(&args, &registry),
        Command::Plugins(args) => plugins(&args, &mut registry, &loaded),
        Command::Bench(BenchCommand::Train(args)) => bench(&args, &registry),
        Command::Bench(BenchCommand::Kernels(args)) => {
            let shapes = crate::bench::kernels::parse_shapes(&args.shapes)?;
            print!("{}", crate::bench::kernels::run(args.seconds, args.quick, &shapes));
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Infer(args)) => bench_infer(&args),
        Command::Bench(BenchCommand::Generate(args)) => bench_generate(&args),
        Command::Export(args) => export(&args, &registry),
        Command::Inspect(args) => {
            let bytes = std::fs::metadata(&args.file).map_err(|e| Error::io(&args.file, e))?.len() as usize;
            print!("{}", export::describe(&export::read_model(&args.file)?, bytes));
            Ok(ExitCode::SUCCESS)
        }
        Command::Infer(args) => infer(&args, &registry),
        Command::Analyze(args) => analyze(&args, &registry),
        Command::Sample(args) => sample(&args, &registry),
        Command::Generate(args) => generate(&args, &registry),
        Command::Data(command) => data(&command),
    }
}

fn data(command: &DataCommand) -> Result<ExitCode, Error> {
    use crate::data::fetch::{dataset, fetch, verifies, FetchOptions, DATASETS};
    use std::io::IsTerminal;
    let present = |id: &str| crate::data::search_dirs().into_iter().map(|d| d.join(id)).find(|d| d.is_dir());
    match command {
        DataCommand::List => {
            println!("{:<16} {:<9} {:>10}  where", "dataset", "state", "MB");
            for set in &DATASETS {
                let (state, place) = match present(set.id) {
                    Some(dir) if set.files.iter().all(|f| verifies(&dir, f)) => {
                        ("verified", display_path(&dir))
                    }
                    Some(dir) => ("CORRUPT", display_path(&dir)),
                    None => ("missing", format!("`qat data fetch {}`", set.id)),
                };
                let mb = set.files.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6;
                println!("{:<16} {state:<9} {mb:>10.1}  {place}", set.id);
            }
            println!(
                "search order: {}",
                crate::data::search_dirs().iter().map(|d| display_path(d)).collect::<Vec<_>>().join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Fetch(args) => {
            if crate::data::offline() {
                return Err(Error::Config(
                    "qat data fetch with downloads off (QAT_OFFLINE=1 or --offline)".into(),
                ));
            }
            let sets = args.ids.iter().map(|id| dataset(id)).collect::<Result<Vec<_>, _>>()?;
            let root = match &args.dir {
                Some(dir) => dir.clone(),
                None => crate::data::fetch_root()?,
            };
            let mut options =
                FetchOptions { force: args.force, retries: args.retries, ..FetchOptions::default() };
            if args.mirror.is_some() {
                options.mirror.clone_from(&args.mirror);
            }
            options.bars = std::io::stderr().is_terminal();
            for set in sets {
                let dir = fetch(set, &root, &options, &mut |line| eprintln!("{line}"))?;
                println!(
                    "{}: {} ({} files verified; sums: {})",
                    set.id,
                    display_path(&dir),
                    set.files.len(),
                    set.sums_from
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        DataCommand::Verify(args) => {
            let ids: Vec<&str> = match args.ids.is_empty() {
                true => DATASETS.iter().map(|d| d.id).filter(|id| present(id).is_some()).collect(),
                false => args.ids.iter().map(String::as_str).collect(),
            };
            let mut bad = 0;
            for id in ids {
                let set = dataset(id)?;
                let Some(dir) = present(id) else {
                    println!("{id}: missing (`qat data fetch {id}`)");
                    bad += 1;
                    continue;
                };
                for f in set.files {
                    let ok = verifies(&dir, f);
                    bad += usize::from(!ok);
                    println!(
                        "{}: {}",
                        display_path(&dir.join(f.name)),
                        if ok { "ok" } else { "WRONG size or SHA-256" }
                    );
                }
            }
            Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn plugins(
    args: &PluginsArgs,
    registry: &mut qatlab_core::Registry,
    loaded: &[dynamic::Loaded],
) -> Result<ExitCode, Error> {
    let checked = dynamic::load_all(registry, &args.check)?;
    if loaded.is_empty() && checked.is_empty() {
        print!("{}", report::plugin_listing(registry));
        return Ok(ExitCode::SUCCESS);
    }
    for (path, provided) in loaded.iter().chain(&checked) {
        println!("{} provides:", path.display());
        for (kind, info) in provided {
            println!("  {:<11} {:<19} {}", kind.as_str(), info.name, info.summary);
        }
    }
    let mut failures = Vec::new();
    for (_, provided) in &checked {
        for (_, info) in provided.iter().filter(|(k, _)| *k == qatlab_core::Kind::Quantizer) {
            let found = qatlab_plugins::conformance::check_quantizer(
                &registry.quantizers,
                &info.name,
                &Default::default(),
            );
            println!(
                "conformance {}: {}",
                info.name,
                if found.is_empty() { "pass".to_string() } else { format!("{} failure(s)", found.len()) }
            );
            failures.extend(found);
        }
    }
    for f in &failures {
        println!("  {f}");
    }
    Ok(if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn run(args: &RunArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let plan = experiment::load_with(&args.file, registry, &args.set)?;
    if args.jobs == Some(0) {
        return Err(Error::Config("--jobs: must be at least 1".into()));
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = ExecOptions {
        results: args.results.clone(),
        force: args.force,
        retry_failed: args.retry_failed,
        quiet: args.quiet,
        jobs,
    };
    // Ctrl-C: stop at the next step, leave every run resumable; a second Ctrl-C kills.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("qat: stopping after the current step; run the same command again to resume");
    });
    if plan.search.is_some() {
        return run_search(&plan, args, registry, &options);
    }
    let selected = plan.selection(&args.only)?;
    let outcomes = execute(&plan, &selected, registry, &options)?;
    print!("{}", report::summary(&outcomes, plan.language_models()));
    match crate::report::plots::write_plots(&plan, &options.results) {
        Ok(files) if !files.is_empty() => {
            println!("plots: {}", display_path(files[0].parent().unwrap_or(&options.results)))
        }
        Ok(_) => {}
        Err(e) => eprintln!("qat: warning: no plots: {e}"),
    }
    let all_ok =
        outcomes.len() == selected.len() && outcomes.iter().all(|o| o.record.status == Status::Success);
    println!("results: {}", display_path(&experiment_dir(&options.results, &plan)));
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `qat run` of a search: run or resume it, print the ranked trials and where the best is.
fn run_search(
    plan: &experiment::RunPlan,
    args: &RunArgs,
    registry: &qatlab_core::Registry,
    options: &ExecOptions,
) -> Result<ExitCode, Error> {
    let spec = &plan.search.as_ref().expect("a search plan").spec;
    let (ledger, compute) = crate::launch::search::execute_search(plan, &args.only, registry, options)?;
    print!("{}", crate::report::search::ledger_table(&ledger, spec));
    let budget = spec.budget.map_or(String::new(), |b| {
        let cut = if ledger.trials.len() < spec.trials {
            format!("; the budget ended the search after {} of {} trials", ledger.trials.len(), spec.trials)
        } else {
            String::new()
        };
        format!(" (budget {b} whole runs{cut})")
    });
    println!(
        "compute: {:.0} {} trained, {:.2} whole runs of {:.0} {}{budget}",
        compute.trained,
        compute.unit,
        compute.trained / compute.whole_run,
        compute.whole_run,
        compute.unit
    );
    let root = experiment_dir(&options.results, plan);
    if let Some(best) = crate::launch::search::best_trial(&ledger, &|v| spec.loss(v)) {
        println!(
            "best: trial {best}, config in {}",
            display_path(&root.join(crate::launch::search::BEST_FILE))
        );
    }
    println!("results: {}", display_path(&root));
    let failed =
        ledger.trials.iter().any(|t| t.state == crate::experiment::search::ledger::TrialState::Failed);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn submit(
    args: &RunArgs,
    registry: &qatlab_core::Registry,
    libraries: &[std::path::PathBuf],
) -> Result<ExitCode, Error> {
    let plan = experiment::load_with(&args.file, registry, &args.set)?;
    // Array tasks would all train an unfinished teacher at once, in one directory.
    for (name, teacher) in &plan.teachers {
        let dir = crate::run::RunDir::new(&args.results, &teacher.config);
        if dir.read_record().map(|r| r.status) != Some(Status::Success) {
            return Err(Error::Config(format!(
                "{}: teacher `{name}` is not trained yet; train it first (for example `qat run` the \
                 file locally with a one-run sweep, or point train.distill.teacher at a finished run \
                 directory), then submit",
                args.file.display()
            )));
        }
    }
    let options = crate::launch::slurm::SlurmOptions {
        partition: args.partition.clone(),
        time: args.time.clone(),
        cpus_per_task: args.cpus_per_task,
        mem: args.mem.clone(),
        array_parallelism: args.array_parallelism,
        sbatch_args: args.sbatch_args.clone(),
        dry_run: args.dry_run,
        plugins: libraries.to_vec(),
        sets: args.set.clone(),
    };
    if plan.search.is_some() {
        return submit_search(&plan, args, registry, &options);
    }
    let selected = plan.selection(&args.only)?;
    let submitted = crate::launch::slurm::submit(&plan, &selected, &args.results, args.force, &options)?;
    for w in &submitted.warnings {
        eprintln!("qat: warning: {w}");
    }
    let dir = display_path(&experiment_dir(&args.results, &plan));
    match (&submitted.job_id, submitted.indices.is_empty()) {
        (_, true) => println!(
            "nothing to submit: every selected run of `{}` has succeeded (--force reruns them)",
            plan.experiment
        ),
        (Some(id), false) => {
            println!(
                "submitted job array {id}: {} runs ({})",
                submitted.indices.len(),
                display_path(&submitted.script)
            );
            println!("follow it with: qat status {dir}   (or squeue -j {id})");
        }
        (None, false) => println!(
            "dry run: wrote {} for {} runs; submit it with sbatch",
            display_path(&submitted.script),
            submitted.indices.len()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `qat run --launcher slurm` of a search: the next batch of trials as one job array.
fn submit_search(
    plan: &experiment::RunPlan,
    args: &RunArgs,
    registry: &qatlab_core::Registry,
    slurm: &crate::launch::slurm::SlurmOptions,
) -> Result<ExitCode, Error> {
    let Some(per_submit) = args.trials_per_submit.filter(|&n| n > 0) else {
        return Err(Error::Config(format!(
            "{}: a search on Slurm proposes trials in batches; give --trials-per-submit N (N ≥ 1)",
            args.file.display()
        )));
    };
    if !args.only.is_empty() {
        return Err(Error::Config("--only with --launcher slurm: a search submits the trials it proposes; run a ledger trial here with `qat run FILE --only K`".into()));
    }
    let options = ExecOptions {
        results: args.results.clone(),
        force: args.force,
        retry_failed: args.retry_failed,
        quiet: true,
        jobs: 1,
    };
    let done = crate::launch::search::submit_search(plan, registry, &options, per_submit, slurm)?;
    let spec = &plan.search.as_ref().expect("a search plan").spec;
    print!("{}", crate::report::search::ledger_table(&done.ledger, spec));
    for w in &done.submitted.warnings {
        eprintln!("qat: warning: {w}");
    }
    let dir = display_path(&experiment_dir(&args.results, plan));
    let trials: Vec<String> = done.trials.iter().map(usize::to_string).collect();
    match (&done.submitted.job_id, done.trials.is_empty()) {
        (_, true) if done.in_flight > 0 => println!(
            "nothing to submit: {} trials are queued or training; run this again when some have finished",
            done.in_flight
        ),
        (_, true) => println!("nothing to submit: the search is over ({} trials)", done.ledger.trials.len()),
        (Some(id), false) => {
            println!(
                "submitted job array {id}: trials {} ({})",
                trials.join(","),
                display_path(&done.submitted.script)
            );
            println!("follow it with: qat status {dir}; when some have finished, run this command again for the next batch");
        }
        (None, false) => println!(
            "dry run: wrote {} for trials {}; submit it with sbatch",
            display_path(&done.submitted.script),
            trials.join(",")
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn repro(args: &ReproArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    use crate::report::repro;
    let published = repro::read_published(&args.data)?;
    if args.list {
        print!("{}", repro::list(&published, &args.data, &args.results));
        return Ok(ExitCode::SUCCESS);
    }
    let name = args.table.clone().unwrap_or_default();
    let spec = published.tables.get(&name).ok_or_else(|| {
        let names: Vec<&str> = published.tables.keys().map(String::as_str).collect();
        Error::Config(format!("unknown table `{name}`; tables: {}", names.join(", ")))
    })?;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let options = ExecOptions {
        results: args.results.clone(),
        force: false,
        retry_failed: false,
        quiet: args.quiet,
        jobs,
    };
    // prerequisite experiments (a distillation teacher) run first, so the table's plan can name them
    let data_dir = args.data.parent().unwrap_or(std::path::Path::new("."));
    for first in &spec.before {
        let plan = experiment::load(&data_dir.join(first), registry)?;
        execute(&plan, &plan.selection(&[])?, registry, &options)?;
    }
    let plan = experiment::load(&repro::experiment_file(&args.data, spec), registry)?;
    let selected = plan.selection(&[])?;
    execute(&plan, &selected, registry, &options)?;
    if let Err(e) = crate::report::plots::write_plots(&plan, &args.results) {
        eprintln!("qat: warning: no plots: {e}");
    }
    let csv = experiment_dir(&args.results, &plan).join("results.csv");
    let (report, within, compared) = repro::report(&name, spec, &csv)?;
    let path = args.results.join("repro").join(format!("{name}.md"));
    crate::run::write_atomic(&path, report.as_bytes())?;
    print!("{report}");
    println!("written: {} ({within}/{compared} within tolerance or trend holding)", display_path(&path));
    Ok(ExitCode::SUCCESS)
}

fn status(args: &StatusArgs) -> Result<ExitCode, Error> {
    print!("{}", crate::launch::slurm::status(&args.dir)?);
    Ok(ExitCode::SUCCESS)
}

fn list(args: &ListArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let plan = experiment::load_with(&args.file, registry, &args.set)?;
    match &plan.search {
        Some(search) => {
            let root = experiment_dir(&args.results, &plan);
            let ledger = crate::experiment::search::ledger::Ledger::read(&root)?.unwrap_or_default();
            print!("{}", crate::report::search::ledger_table(&ledger, &search.spec))
        }
        None => print!("{}", report::run_list(&plan)),
    }
    Ok(ExitCode::SUCCESS)
}

fn table(args: &TableArgs) -> Result<ExitCode, Error> {
    print!("{}", results::table(&args.dir, &args.by, &args.metric, args.format)?);
    Ok(ExitCode::SUCCESS)
}

fn bench(args: &BenchTrainArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let config: RunConfig = match &args.file {
        Some(file) => experiment::load(file, registry)?.first_config(),
        None => experiment::parse(crate::bench::train::QUICKSTART_BENCH_YAML, "built-in quickstart recipe")?,
    };
    let data = RunData::load(&config.data)?;
    let result = bench_train(&config, registry, &data, args.epochs)?;
    let per_epoch: Vec<String> = result.per_epoch.iter().map(|s| format!("{s:.0}")).collect();
    let median = result.median();
    if let Some(t) = &config.model.transformer {
        println!(
            "model: {} transformer depth {} width {} heads {} context {}, quantizer {}, activation bits {:?}, batch {}",
            config.name,
            t.depth,
            t.width,
            t.heads,
            t.context,
            config.quantizer.name,
            config.model.activation_bits,
            config.train.batch_size
        );
        println!("training tokens/s per {LM_BENCH_STEPS} steps (1 thread): {}", per_epoch.join(", "));
        println!("median: {median:.0} tokens/s");
        // the anchor of the same kind of model: float, or BitLinear (quantized with input bits)
        let (what, anchor) = if config.quantizer.name != "none" && config.model.activation_bits.is_some() {
            ("nanoGPT's CPU shape with BitNet b1.58's BitLinear", PYTORCH_BITNET_TOKENS_PER_S)
        } else {
            ("nanoGPT's float CPU shape", PYTORCH_NANOGPT_TOKENS_PER_S)
        };
        println!("vs PyTorch anchor for {what} ({anchor:.0} tokens/s, 1 thread): {:.2}x", median / anchor);
        return Ok(ExitCode::SUCCESS);
    }
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

fn export(args: &ExportArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let model = export::export_run(&args.run, registry, args.packing)?;
    let written = match args.format {
        ExportFormat::Model => {
            let bytes = model.to_bytes().map_err(|e| Error::Config(e.to_string()))?;
            crate::run::write_atomic(&args.output, &bytes)?;
            vec![args.output.clone()]
        }
        ExportFormat::CHeader => crate::export::c::write(&model, &args.output)?,
    };
    for path in written {
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!("wrote {} ({size} bytes)", display_path(&path));
    }
    Ok(ExitCode::SUCCESS)
}

fn infer(args: &InferArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let model = export::read_model(&args.file)?;
    if model.header.text.is_some() {
        return infer_text(args, &model, registry);
    }
    let path = export::kernel_path(&args.kernel)?;
    let runtime = qatlab_deploy::runtime::Runtime::new(&model, path, false)
        .map_err(|e| Error::Config(e.to_string()))?;
    let samples = export::test_samples(&model)?;
    let result = export::infer(&runtime, &samples, args.batch);
    println!(
        "{}: test accuracy {:.2}% ({} images), {:.2} µs per sample at batch {} ({} kernels, 1 thread)",
        model.header.name,
        100.0 * result.accuracy,
        samples.len(),
        1e6 * result.seconds_per_sample,
        args.batch,
        path.name()
    );
    if let Some(run) = &args.compare {
        let trained = export::training_predictions(run, registry, &samples)?;
        let trained_accuracy = export::accuracy(&trained, &samples.labels);
        let differ = trained.iter().zip(&result.predictions).filter(|(a, b)| a != b).count();
        println!(
            "training-time evaluation: {:.2}%; predictions differ on {differ} of {} images",
            100.0 * trained_accuracy,
            samples.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_generate(args: &BenchGenerateArgs) -> Result<ExitCode, Error> {
    use crate::bench::generate::{last_level_cache_bytes, parse_shape, rows, table, Plan};
    use qatlab_deploy::decoder::Decoder;
    use qatlab_deploy::runtime::TernaryLayout;
    let path = qatlab_deploy::kernel::Path::best();
    let layouts = [TernaryLayout::TwoBit, TernaryLayout::Trits];
    let mut all = Vec::new();
    let plan = Plan { repeat: args.repeat, prompt: args.prompt, generate: args.generate, past: args.past };
    println!(
        "kernels: {}; threads {:?}; KV cache {}; {} repetitions, medians\n",
        path.name(),
        args.threads,
        args.kv_cache.precision().name(),
        args.repeat
    );
    for file in &args.files {
        let model = export::read_model(file)?;
        export::text::text_of(&model)?;
        // a model without ternary layers (float) runs once
        let ternary = model.header.layers.iter().any(|l| l.levels.len() == 3);
        for layout in if ternary { &layouts[..] } else { &[TernaryLayout::Auto][..] } {
            let layout = *layout;
            let mut decoder = Decoder::with_layout(&model, path, 1, layout)
                .map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
            decoder.set_kv_precision(args.kv_cache.precision());
            all.extend(rows(&model.header.name, layout, &mut decoder, &args.threads, plan)?);
        }
    }
    let mut bandwidth = None;
    if let Some(spec) = &args.shape {
        let shape = parse_shape(spec)?;
        let llc = last_level_cache_bytes();
        for layout in layouts {
            let start = std::time::Instant::now();
            let mut decoder = qatlab_deploy::synthetic::random_ternary(shape, layout, path, 1)
                .map_err(|e| Error::Config(format!("--shape {spec}: {e}")))?;
            decoder.set_kv_precision(args.kv_cache.precision());
            let bytes = decoder.weight_bytes_per_token();
            println!(
                "random ternary {spec}: {} ternary weights, {:.1} MB read per token in {}, built in {:.1} s; last-level cache {}",
                shape.linear_weights(),
                bytes as f64 / 1e6,
                crate::bench::generate::layout_name(layout),
                start.elapsed().as_secs_f64(),
                llc.map_or("unknown".into(), |b| format!("{:.0} MiB ({:.1}× in this layout)", b as f64 / (1 << 20) as f64, bytes as f64 / b as f64))
            );
            all.extend(rows(&format!("random {spec}"), layout, &mut decoder, &args.threads, plan)?);
        }
        let (table, probe) = crate::bench::kernels::bandwidth_probe(0.3);
        println!("\n{table}");
        bandwidth = Some(probe.rates());
    }
    println!("{}", table(&all, bandwidth.as_deref()));
    Ok(ExitCode::SUCCESS)
}

fn bench_infer(args: &BenchInferArgs) -> Result<ExitCode, Error> {
    let model = export::read_model(&args.file)?;
    let samples = export::test_samples(&model)?;
    print!("{}", crate::bench::kernels::infer_table(&model, &samples));
    Ok(ExitCode::SUCCESS)
}

fn sample(args: &SampleArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let mut run = crate::train::load_finished(&args.run, registry)?;
    let data = RunData::load(&run.config.data)?;
    let Some(text) = &data.text else {
        return Err(Error::Config(format!("{}: not a language-model run", args.run.display())));
    };
    let (prompt, mut sampler) = sampling(&args.sampling)?;
    println!("{}", run.trainer.sample(text, &prompt, args.sampling.tokens, &mut sampler)?);
    Ok(ExitCode::SUCCESS)
}

/// The prompt and sampler that `qat sample` and `qat generate` share.
fn sampling(args: &SamplingArgs) -> Result<(String, qatlab_deploy::sample::Sampler), Error> {
    let prompt = match &args.prompt_file {
        Some(file) => std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?,
        None => args.prompt.clone().unwrap_or_else(|| crate::train::sample::DEFAULT_PROMPT.to_string()),
    };
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        return Err(Error::Config(format!(
            "--temperature {}: give 0 (greedy) or a positive number",
            args.temperature
        )));
    }
    let top_k = (args.top_k > 0).then_some(args.top_k);
    Ok((prompt, qatlab_deploy::sample::Sampler::new(args.temperature, top_k, args.seed)))
}

fn generate(args: &GenerateArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let model = export::read_model(&args.file)?;
    let spec = export::text::text_of(&model)?.clone();
    let path = export::kernel_path(&args.kernel)?;
    let (prompt, mut sampler) = sampling(&args.sampling)?;
    let ids = export::text::prompt_ids(&spec, &prompt)?;
    let mut decoder = qatlab_deploy::decoder::Decoder::new(&model, path, args.threads)
        .map_err(|e| Error::Config(format!("{}: {e}", args.file.display())))?;
    decoder.set_kv_precision(args.kv_cache.precision());
    let fresh = sampler.clone();
    let mut out = std::io::stdout();
    let generated = export::text::generate(&decoder, &ids, args.sampling.tokens, &mut sampler, &mut out)?;
    let _ = writeln!(out);
    if let Some(run) = &args.compare {
        let spec = decoder.text();
        let show = |t: u8| format!("{:?}", spec.decode(&[t]));
        match export::text::parting_from_sample(&decoder, run, registry, &generated, ids.len(), fresh)? {
            None => eprintln!("qat sample {} gives the same {} tokens", run.display(), args.sampling.tokens),
            Some(p) => eprintln!(
                "qat sample {} parts at generated token {}: the runtime picks {} (logit {:.5}; {} has {:.5}), \
                 the training engine picks {} (logit {:.5}; {} has {:.5})",
                run.display(),
                p.index,
                show(p.picks.0),
                p.runtime.0,
                show(p.picks.1),
                p.runtime.1,
                show(p.picks.1),
                p.training.1,
                show(p.picks.0),
                p.training.0
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `qat infer` of a language model: the runtime's loss over the header's evaluation windows.
fn infer_text(
    args: &InferArgs,
    model: &qatlab_deploy::format::ModelFile,
    registry: &qatlab_core::Registry,
) -> Result<ExitCode, Error> {
    let spec = export::text::text_of(model)?;
    let path = export::kernel_path(&args.kernel)?;
    let decoder = qatlab_deploy::decoder::Decoder::new(model, path, 1)
        .map_err(|e| Error::Config(format!("{}: {e}", args.file.display())))?;
    let text = export::text::evaluation_text(spec, args.data.as_deref())?;
    let windows = export::text::evaluation_windows(spec, &text)?;
    let score = export::text::score(&decoder, &windows, args.batch)?;
    println!(
        "{}: validation loss {:.4} nats/token ({:.4} bits per {}), next-token accuracy {:.2}%, over {} windows of {} tokens ({} batches of {}); {:.0} tokens/s at {} windows per call ({} kernels, 1 thread)",
        model.header.name,
        score.loss,
        score.loss / std::f64::consts::LN_2,
        if spec.tokenizer == qatlab_deploy::format::TokenizerKind::Char { "character" } else { "byte" },
        100.0 * score.accuracy,
        spec.evaluation.batches * spec.evaluation.batch,
        spec.context,
        spec.evaluation.batches,
        spec.evaluation.batch,
        score.tokens as f64 / score.seconds.max(1e-9),
        args.batch.max(1),
        path.name()
    );
    if let Some(run) = &args.compare {
        let (loss, accuracy) = export::text::training_score(run, registry, &windows)?;
        println!(
            "training-time evaluation: validation loss {loss:.4}, next-token accuracy {:.2}%; runtime − training = {:+.5} nats/token",
            100.0 * accuracy,
            score.loss - loss
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn analyze(args: &AnalyzeArgs, registry: &qatlab_core::Registry) -> Result<ExitCode, Error> {
    let mut run = crate::train::load_finished(&args.run, registry)?;
    let data = RunData::load(&run.config.data)?;
    if args.bias_correction || args.recalibrate_batch_norm {
        let mut config = run.config.clone();
        config.eval.bias_correction |= args.bias_correction;
        config.eval.recalibrate_batch_norm |= args.recalibrate_batch_norm;
        run.trainer.set_eval_options(&config.eval);
    }
    if let (Some(text), Some(t)) = (&data.text, run.config.model.transformer.clone()) {
        // a language model: its loss over the whole validation split, beside the sampled windows
        let windows: Vec<(Vec<f32>, Vec<u8>)> =
            text.validation_split(64, t.context).into_iter().map(|w| (w.x, w.targets)).collect();
        let count: usize = windows.iter().map(|(_, targets)| targets.len()).sum();
        let (loss, accuracy) = run.trainer.evaluate_windows(&windows, t.context)?;
        println!(
            "validation split: {count} tokens in windows of {}: loss {loss:.4} nats/token ({:.4} bits), next-token accuracy {:.2}%",
            t.context,
            loss / std::f64::consts::LN_2,
            100.0 * accuracy
        );
        if let Some(last) =
            (crate::run::RunDir { path: args.run.clone() }).read_record().and_then(|r| r.final_scores)
        {
            println!("evaluation windows (training-time): loss {:.4}", last.test_loss);
        }
        // how far one estimate from random windows (nanoGPT's way) strays from the split's loss
        let (batches, batch) = (run.config.eval.batches.unwrap_or(20), run.config.train.batch_size);
        let mut estimates = Vec::with_capacity(args.draws);
        for draw in 1..=args.draws as u64 {
            let windows = (0..batches)
                .map(|i| text.random_val_windows(draw, i, batch, t.context).map(|w| (w.x, w.targets)))
                .collect::<Result<Vec<_>, _>>()?;
            estimates.push(run.trainer.evaluate_windows(&windows, t.context)?.0);
        }
        if estimates.len() > 1 {
            let n = estimates.len() as f64;
            let mean = estimates.iter().sum::<f64>() / n;
            let std = (estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            let (lo, hi) =
                estimates.iter().fold((f64::MAX, f64::MIN), |(lo, hi), e| (lo.min(*e), hi.max(*e)));
            println!(
                "{} estimates from {batches} random batches of {batch} windows each: mean {mean:.4}, std {std:.4}, range {lo:.4} to {hi:.4}",
                estimates.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let analysis = crate::train::analysis::analyze(&mut run.trainer, &data.test)?;
    print!("{}", crate::train::analysis::summary(&analysis));
    for text in &args.post_quantize {
        let spec: qatlab_core::config::PluginSpec =
            serde_yaml::from_str(text).map_err(|e| Error::Config(format!("--post-quantize {text}: {e}")))?;
        registry
            .quantizers
            .validate(&spec.name, &spec.params)
            .map_err(|e| Error::Config(format!("--post-quantize {text}: {e}")))?;
        let accuracy = run.trainer.evaluate_quantized_by(registry, &spec, &data.train, &data.test)?;
        println!("post-quantized by {text}: {:.2}%", 100.0 * accuracy);
    }
    let dir = crate::run::RunDir { path: args.run.clone() };
    if let Some(mut record) = dir.read_record() {
        record.analysis = Some(analysis);
        dir.write_record(&record)?;
        println!("\nstored in {}", display_path(&args.run.join("run.json")));
    }
    Ok(ExitCode::SUCCESS)
}
