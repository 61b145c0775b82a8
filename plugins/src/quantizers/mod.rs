//! Built-in weight quantizers.

use qatlab_core::{Catalog, Quantizer, Result};
use serde::{Deserialize, Serialize};

use crate::BUILT_IN;

pub mod float;
pub mod ternary;

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
    /// The row ranges that share one scale: the whole matrix, or each row.
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
    catalog.register("ternary", ternary::SUMMARY, BUILT_IN, ternary::build)?;
    Ok(())
}
