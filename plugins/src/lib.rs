//! # qatlab-plugins: the built-in strategies
//!
//! Design decision: built-ins get no privileges. Each one is registered through the same
//! [`Registry`] calls a third-party plugin uses, from the same plain-data traits of
//! `qatlab-core`, so anything a built-in can do a dynamic plugin can do too, and the generic
//! conformance tests run over every registered strategy alike.
//!
//! One plugin is one file: the math as free functions, a thin struct, a serde `Config` with
//! `deny_unknown_fields` and defaults.

use qatlab_core::{Registry, Result};

pub mod activations;
pub mod clip;
pub mod conformance;
pub mod distillers;
pub mod quantizers;
pub mod schedules;
pub mod ste;

/// Source label of built-in strategies in listings.
pub const BUILT_IN: &str = "built-in";

/// A registry holding every built-in strategy.
pub fn builtin_registry() -> Registry {
    let mut registry = Registry::default();
    register_builtins(&mut registry).expect("built-in names are unique");
    registry
}

/// Register every built-in strategy into `registry`.
pub fn register_builtins(registry: &mut Registry) -> Result<()> {
    quantizers::register(&mut registry.quantizers)?;
    activations::register(&mut registry.activations)?;
    schedules::register(&mut registry.schedules)?;
    distillers::register(&mut registry.distillers)?;
    Ok(())
}
