//! The distillation trait.

/// A distillation loss on logits: given student and teacher logits (row-major `batch × classes`)
/// and the labels, return the loss averaged over the batch and write ∂loss/∂student_logits.
pub trait Distiller: Send + Sync {
    /// Loss and its gradient on the student logits (written into `grad`, same layout).
    fn loss(&self, student: &[f32], teacher: &[f32], labels: &[u8], classes: usize, grad: &mut [f32]) -> f32;
}
