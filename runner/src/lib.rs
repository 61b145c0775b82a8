//! # qatlab-runner: engine, experiments and the `qat` command line
//!
//! Design decision: dfdx is confined to [`engine`], which turns plain-slice plugins into graph
//! pieces and returns plain gradients; everything else (model state, optimizer, data, logging,
//! sweeps) works on `Vec<f32>`, so the training backend could be swapped without touching it.

pub mod alloc;
pub mod analysis;
pub mod bench;
pub mod c_export;
pub mod cli;
pub mod conv;
pub mod data;
pub mod dynamic;
pub mod engine;
pub mod error;
pub mod execute;
pub mod experiment;
pub mod export;
pub mod kernel_bench;
pub mod loss;
pub mod model;
pub mod optim;
pub mod outputs;
pub mod plots;
pub mod recipe;
pub mod report;
pub mod repro;
pub mod results;
pub mod slurm;
pub mod sweep;
pub mod tensorboard;
pub mod train;
