//! Deployment of qatlab models: storage packings of low-bit codes, the versioned model file,
//! integer CPU kernels (scalar, AVX2, AVX-512 VNNI) and a runtime that reproduces the training
//! evaluation. No training code: a deployment pulls in this crate alone.

pub mod act;
pub(crate) mod attention;
pub mod conv;
pub mod decoder;
pub mod error;
pub mod format;
pub mod graph;
pub mod kernel;
pub mod kv;
pub mod math;
pub mod pack;
pub mod runtime;
pub mod sample;
pub mod synthetic;
pub mod team;

pub use error::{DeployError, Result};
