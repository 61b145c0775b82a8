//! Integration tests of the runner, one module per topic.

mod checkpoints;
mod cifar;
mod cli;
mod data;
mod deploy;
mod engine;
mod fetch;
mod lm;
mod lm_deploy;
mod plugins;
mod runs;
mod search;
mod slurm;
mod sweep;

/// Parse a YAML run config for a test.
pub fn config(yaml: &str) -> qatlab_core::config::RunConfig {
    serde_yaml::from_str(yaml).unwrap()
}
