//! The command line: [`args`] holds the clap structs (plain data, each flag documented), and
//! [`commands`] carries each subcommand out on the rest of the crate.

pub mod args;
pub mod commands;

pub use args::Cli;
pub use commands::dispatch;
