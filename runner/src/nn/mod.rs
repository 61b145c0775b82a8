//! The network as a graph of ops: what an op is ([`op`]), the ops themselves, one file each
//! ([`ops`]), the presets that expand `model.kind` into a graph ([`presets`]), the network and
//! its quantized weights ([`model`]), its parameters by path ([`params`]), its deployable form
//! ([`deploy`]), the losses ([`loss`]), the graph runner ([`engine`]) and the dense math of
//! host-side ops ([`host`]). Only `engine`, `op`
//! and the ops name dfdx types.

pub mod deploy;
pub mod engine;
pub mod host;
pub mod loss;
pub mod model;
pub mod op;
pub mod ops;
pub mod params;
pub mod presets;
