//! Softmax cross-entropy on the host: loss, gradient on the logits, and correct predictions.

/// Mean softmax cross-entropy of `logits` (row-major `batch × classes`) against `labels`.
/// Writes ∂loss/∂logits = (softmax − onehot)/batch into `grad`; returns (mean loss, correct).
pub fn cross_entropy(logits: &[f32], labels: &[u8], classes: usize, grad: &mut [f32]) -> (f32, usize) {
    cross_entropy_smoothed(logits, labels, classes, 0.0, grad)
}

/// Cross-entropy against smoothed targets t = (1 − ε)·onehot + ε/classes (PyTorch's
/// `label_smoothing`); ∂loss/∂logits = (softmax − t)/batch.
pub fn cross_entropy_smoothed(
    logits: &[f32],
    labels: &[u8],
    classes: usize,
    eps: f32,
    grad: &mut [f32],
) -> (f32, usize) {
    let batch = labels.len();
    let mut total = 0.0f64;
    let mut correct = 0;
    let uniform = eps / classes as f32;
    for ((row, g), &label) in logits.chunks_exact(classes).zip(grad.chunks_exact_mut(classes)).zip(labels) {
        let (log_sum, argmax) = log_sum_exp_argmax(row);
        correct += usize::from(argmax == label as usize);
        for (k, (gk, &z)) in g.iter_mut().zip(row).enumerate() {
            let target = uniform + (1.0 - eps) * f32::from(k == label as usize);
            total -= (target * (z - log_sum)) as f64;
            *gk = ((z - log_sum).exp() - target) / batch as f32;
        }
    }
    ((total / batch as f64) as f32, correct)
}

/// Sum of per-sample cross-entropies and the number of correct predictions, without gradient.
pub fn cross_entropy_sum(logits: &[f32], labels: &[u8], classes: usize) -> (f64, usize) {
    let mut total = 0.0f64;
    let mut correct = 0;
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let (log_sum, argmax) = log_sum_exp_argmax(row);
        total += (log_sum - row[label as usize]) as f64;
        correct += usize::from(argmax == label as usize);
    }
    (total, correct)
}

/// log Σ exp(row) computed stably, and the index of the first maximum.
fn log_sum_exp_argmax(row: &[f32]) -> (f32, usize) {
    let (argmax, max) =
        row.iter().copied().enumerate().fold(
            (0, f32::NEG_INFINITY),
            |best, (i, v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            },
        );
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (max + sum.ln(), argmax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_log_classes() {
        let mut grad = vec![0.0; 4];
        let (loss, _) = cross_entropy(&[0.0; 4], &[2], 4, &mut grad);
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        assert_eq!(grad, vec![0.25, 0.25, -0.75, 0.25]);
    }

    #[test]
    fn label_smoothing_targets_and_gradient() {
        // uniform logits: loss = ln K whatever the smoothing; the gradient is p − t
        let mut grad = vec![0.0; 4];
        let (loss, _) = cross_entropy_smoothed(&[0.0; 4], &[1], 4, 0.2, &mut grad);
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        assert_eq!(grad, vec![0.2, -0.6, 0.2, 0.2]);
        let logits = [0.3, -1.2, 2.0];
        let mut g = vec![0.0; 3];
        cross_entropy_smoothed(&logits, &[0], 3, 0.1, &mut g);
        for i in 0..3 {
            let (mut up, mut down) = (logits, logits);
            up[i] += 1e-3;
            down[i] -= 1e-3;
            let mut s = vec![0.0; 3];
            let fd = (cross_entropy_smoothed(&up, &[0], 3, 0.1, &mut s).0
                - cross_entropy_smoothed(&down, &[0], 3, 0.1, &mut s).0)
                / 2e-3;
            assert!((fd - g[i]).abs() < 1e-3);
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let logits = vec![0.3, -1.2, 2.0, 0.1, 0.5, 0.5];
        let labels = [2, 0];
        let mut grad = vec![0.0; 6];
        cross_entropy(&logits, &labels, 3, &mut grad);
        for i in 0..6 {
            let (mut up, mut down) = (logits.clone(), logits.clone());
            up[i] += 1e-3;
            down[i] -= 1e-3;
            let mut g = vec![0.0; 6];
            let fd = (cross_entropy(&up, &labels, 3, &mut g).0 - cross_entropy(&down, &labels, 3, &mut g).0)
                / 2e-3;
            assert!((fd - grad[i]).abs() < 1e-3, "logit {i}: {fd} vs {}", grad[i]);
        }
    }
}
