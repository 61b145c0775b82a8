//! Errors a plugin or the registry returns.

use thiserror::Error;

/// Result alias used across the plugin API.
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

/// What can go wrong when building or running a strategy.
#[derive(Debug, Error)]
pub enum PluginError {
    /// No strategy of this kind is registered under `name`.
    #[error("unknown {kind} `{name}`{suggestion}; registered {kind}s: {known}")]
    UnknownName {
        /// Strategy kind ("quantizer", "activation", ...).
        kind: &'static str,
        /// The name that was asked for.
        name: String,
        /// ` (did you mean `x`?)` or empty.
        suggestion: String,
        /// Comma-separated list of registered names.
        known: String,
    },
    /// The parameters did not match the strategy's config (unknown key, wrong type, ...).
    #[error("{kind} `{name}`: {message}")]
    BadParams {
        /// Strategy kind.
        kind: &'static str,
        /// Strategy name.
        name: String,
        /// What was wrong, with the valid choices when known.
        message: String,
    },
    /// A second strategy was registered under a name already taken.
    #[error("{kind} `{name}` is registered twice; pick another name for the second one")]
    Duplicate {
        /// Strategy kind.
        kind: &'static str,
        /// The clashing name.
        name: String,
    },
    /// A strategy was asked for a capability it does not have.
    #[error("{kind} `{name}` does not support {what}")]
    Unsupported {
        /// Strategy kind.
        kind: &'static str,
        /// Strategy name.
        name: String,
        /// The missing capability.
        what: String,
    },
    /// Inputs of the wrong size or an invalid state.
    #[error("{0}")]
    Invalid(String),
}
