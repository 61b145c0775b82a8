//! The `qat` command line: parse, then hand over to [`qatlab_runner::cli`]; errors are printed
//! once as `qat: …`. Exit codes: 0 all runs succeeded, 1 some run failed or diverged, 2 usage or
//! config error (nothing ran).

use std::process::ExitCode;

use clap::Parser;
use qatlab_runner::cli::{dispatch, Cli};
use qatlab_runner::error::Error;

#[global_allocator]
static GLOBAL: qatlab_runner::alloc::MiMalloc = qatlab_runner::alloc::MiMalloc;

fn main() -> ExitCode {
    qatlab_runner::alloc::keep_freed_pages();
    quit_quietly_on_closed_pipe();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qat: {e}");
            ExitCode::from(match e {
                Error::Config(_) | Error::Data(_) | Error::Fetch(_) => 2,
                Error::Interrupted => 130,
                _ => 1,
            })
        }
    }
}

/// `qat analyze … | head` closes stdout early; Rust ignores SIGPIPE, so the next print would
/// panic. Restore the default action, ending the process quietly as Unix tools do.
#[cfg(unix)]
fn quit_quietly_on_closed_pipe() {
    #[allow(unsafe_code)]
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler code and is sound at
    // any point; it runs first thing in main, before other threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn quit_quietly_on_closed_pipe() {}
