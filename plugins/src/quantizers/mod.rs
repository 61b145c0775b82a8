//! Built-in weight quantizers.

use qatlab_core::{Catalog, Quantizer, Result};
use serde::{Deserialize, Serialize};

use crate::BUILT_IN;

pub mod binary;
pub mod float;
pub mod fp130;
pub mod grid;
pub mod int;
pub mod lsq;
pub mod nf4;
pub mod pentary;
pub mod self_compress;
pub mod soft;
pub mod stochastic;
pub mod ternary;
pub mod ttq;
pub mod twn;

/// Whether a quantizer uses one scale for the tensor or one per output channel (row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Granularity {
    /// One scale for the whole weight matrix.
    #[default]
    Tensor,
    /// One scale per output channel.
    Channel,
}

impl Granularity {
    /// The element ranges that share one scale: the whole matrix, or each row.
    pub fn groups(self, rows: usize, cols: usize) -> Vec<std::ops::Range<usize>> {
        match self {
            Granularity::Tensor => std::iter::once(0..rows * cols).collect(),
            Granularity::Channel => (0..rows).map(|r| r * cols..(r + 1) * cols).collect(),
        }
    }
}

/// Register every built-in quantizer.
pub fn register(catalog: &mut Catalog<dyn Quantizer>) -> Result<()> {
    catalog.register("none", float::SUMMARY, BUILT_IN, float::build)?;
    catalog.register("binary", binary::SUMMARY, BUILT_IN, binary::build)?;
    catalog.register("ternary", ternary::SUMMARY, BUILT_IN, ternary::build)?;
    catalog.register("ternary-twn", twn::SUMMARY, BUILT_IN, twn::build)?;
    catalog.register("ternary-stochastic", stochastic::SUMMARY, BUILT_IN, stochastic::build)?;
    catalog.register("ternary-ttq", ttq::SUMMARY, BUILT_IN, ttq::build)?;
    catalog.register("lsq", lsq::SUMMARY, BUILT_IN, lsq::build)?;
    catalog.register("pentary", pentary::SUMMARY, BUILT_IN, pentary::build)?;
    catalog.register("int", int::SUMMARY, BUILT_IN, int::build)?;
    catalog.register("fp130", fp130::SUMMARY, BUILT_IN, fp130::build)?;
    catalog.register("nf4", nf4::SUMMARY, BUILT_IN, nf4::build)?;
    catalog.register("self-compress", self_compress::SUMMARY, BUILT_IN, self_compress::build)?;
    catalog.register("soft", soft::SOFT_SUMMARY, BUILT_IN, soft::build_soft)?;
    catalog.register("ternary-ramp", soft::RAMP_SUMMARY, BUILT_IN, soft::build_ramp)?;
    Ok(())
}
