//! # qatlab-core: the plugin API
//!
//! The one design decision of this crate: **every strategy works on plain data** (`&[f32]`,
//! a [`Shape`], owned `Vec`s it fills), never on a training backend's tensors. A quantizer,
//! activation, schedule or distiller written against this crate therefore builds fast (no dfdx),
//! can be called from any engine, and can later be carried across a C ABI by a dynamic plugin.
//!
//! The crate holds:
//! - the four strategy traits: [`Quantizer`], [`Activation`], [`Schedule`], [`Distiller`];
//! - the [`Registry`] that maps names to factories building a strategy from its YAML parameters;
//! - the experiment [`config`] types that every crate shares.

pub mod abi;
pub mod activation;
pub mod config;
pub mod distiller;
pub mod error;
pub mod quantizer;
pub mod registry;
pub mod schedule;

pub use activation::Activation;
pub use distiller::Distiller;
pub use error::{PluginError, Result};
pub use quantizer::{QuantCtx, Quantized, Quantizer, Shape};
pub use registry::{Catalog, Kind, PluginInfo, Registry};
pub use schedule::{Progress, Schedule};
