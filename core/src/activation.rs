//! The activation trait.

/// An activation: fills f(x) and f′(x) in one pass, so the engine can build the
/// straight-through product `f′(x)·grad` without ever differentiating the plugin.
pub trait Activation: Send + Sync {
    /// For each `x[i]`, write `f(x[i])` into `y[i]` and `f′(x[i])` into `dy[i]`. A row-wise
    /// activation treats the whole slice as one sample.
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]);

    /// The same over a batch: `x` holds rows of `features` values, one per sample. Only
    /// activations that look across a sample (see [`Activation::is_row_wise`]) override it; the
    /// derivative they write is the diagonal one, with the per-sample statistic held constant.
    fn apply_rows(&self, x: &[f32], features: usize, y: &mut [f32], dy: &mut [f32]) {
        let _ = features;
        self.apply(x, y, dy)
    }

    /// True when f(x[i]) depends on the other values of the sample (e.g. its maximum).
    fn is_row_wise(&self) -> bool {
        false
    }

    /// True when the activation is exactly max(x, 0); lets an engine use its native kernel.
    fn is_relu(&self) -> bool {
        false
    }
}
