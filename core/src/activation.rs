//! The elementwise activation trait.

/// An elementwise activation: fills f(x) and f′(x) in one pass, so the engine can build the
/// straight-through product `f′(x)·grad` without ever differentiating the plugin.
pub trait Activation: Send + Sync {
    /// For each `x[i]`, write `f(x[i])` into `y[i]` and `f′(x[i])` into `dy[i]`.
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]);

    /// True when the activation is exactly max(x, 0); lets an engine use its native kernel.
    fn is_relu(&self) -> bool {
        false
    }
}
