//! The ops a model graph is made of, one file each. An op owns its parameters (declared with a
//! path suffix and a kind), runs its forward pass on host values or dfdx tensors ([`super::op`]),
//! writes its parameters' gradients in the backward pass, and says how it deploys.
//!
//! A new op is one file here and its `mod` line below; a preset ([`super::presets`]) places it in
//! a graph. Ops that follow every hidden activation when their config key asks for them register
//! in [`AFTER_ACTIVATION`] instead, and need no preset change.

pub mod act_quant;
pub mod activation;
pub mod add;
pub mod attention;
pub mod conv;
pub mod dropout;
pub mod embed;
pub mod gate;
pub mod linear;
pub mod max_pool;
pub mod norm;
pub mod positions;
pub mod rope;
pub mod table;
pub mod tied_head;

use qatlab_core::config::RunConfig;

use super::op::Op;

/// Builds an op to follow a hidden activation at `path` (the layer's name), when `config`
/// asks for one.
pub type AfterActivation = fn(config: &RunConfig, path: &str) -> Option<(&'static str, Box<dyn Op>)>;

/// The ops placed after every hidden activation of the presets, in order, each named
/// `<layer>.<suffix>` by the suffix it returns.
pub const AFTER_ACTIVATION: &[AfterActivation] = &[dropout::after_activation];
