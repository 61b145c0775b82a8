//! Built-in activations.

use qatlab_core::{Activation, Catalog, Result};
use serde::{Deserialize, Serialize};

use crate::BUILT_IN;

/// `relu`: f(x) = max(x, 0), f′(x) = 1 for x > 0 else 0.
pub struct Relu;

/// `relu` takes no parameters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl Activation for Relu {
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]) {
        for ((x, y), dy) in x.iter().zip(y).zip(dy) {
            (*y, *dy) = if *x > 0.0 { (*x, 1.0) } else { (0.0, 0.0) };
        }
    }

    fn is_relu(&self) -> bool {
        true
    }
}

/// Register every built-in activation.
pub fn register(catalog: &mut Catalog<dyn Activation>) -> Result<()> {
    catalog.register("relu", "max(x, 0)", BUILT_IN, |_: NoParams| Ok(Box::new(Relu)))?;
    Ok(())
}
