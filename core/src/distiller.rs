//! The distillation trait.

/// A distillation loss: given student and teacher logits (row-major `batch × classes`) and the
/// labels, return the loss averaged over the batch and write ∂loss/∂student_logits. A distiller
/// may also compare penultimate features (the last hidden layer's output).
pub trait Distiller: Send + Sync {
    /// Loss and its gradient on the student logits (written into `grad`, same layout).
    fn loss(&self, student: &[f32], teacher: &[f32], labels: &[u8], classes: usize, grad: &mut [f32]) -> f32;

    /// Whether [`Distiller::feature_loss`] takes part (the engine then computes features).
    fn uses_features(&self) -> bool {
        false
    }

    /// A loss term on the penultimate features (rows of `dims` values, the same width for
    /// student and teacher), added to [`Distiller::loss`]; writes ∂term/∂student_features.
    fn feature_loss(&self, _student: &[f32], _teacher: &[f32], _dims: usize, _grad: &mut [f32]) -> f32 {
        0.0
    }
}
