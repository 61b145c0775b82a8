//! # qatlab-runner: engine, experiments and the `qat` command line
//!
//! Design decision: dfdx is confined to [`nn::engine`], which turns plain-slice plugins into graph
//! pieces and returns plain gradients; everything else (model state, optimizer, data, logging,
//! sweeps) works on `Vec<f32>`, so the training backend could be swapped without touching it.
//!
//! Folders by concern, each depending only on those listed before it:
//! [`data`] → [`nn`] → [`train`] → [`run`] → [`experiment`] → [`report`] → [`launch`] →
//! [`export`] → [`bench`] → [`cli`].

pub mod alloc;
pub mod bench;
pub mod cli;
pub mod data;
pub mod dynamic;
pub mod error;
pub mod experiment;
pub mod export;
pub mod launch;
pub mod nn;
pub mod report;
pub mod run;
pub mod train;
