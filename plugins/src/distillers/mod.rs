//! Built-in distillation losses on logits.

use qatlab_core::{Catalog, Distiller, Result};
use serde::{Deserialize, Serialize};

use crate::BUILT_IN;

/// Parameters of `kd`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KdConfig {
    /// Weight of the distillation term (1 − alpha weighs the cross-entropy on the labels).
    pub alpha: f32,
    /// Softmax temperature T.
    pub temperature: f32,
}

impl Default for KdConfig {
    fn default() -> Self {
        Self { alpha: 0.5, temperature: 4.0 }
    }
}

/// Hinton et al. 2015: L = α·T²·KL(p_t^T ‖ p_s^T) + (1 − α)·CE(s, y), p^T = softmax(z/T),
/// averaged over the batch; ∂L/∂s = α·T·(p_s^T − p_t^T)/B + (1 − α)·(softmax(s) − onehot)/B.
pub struct Kd(KdConfig);

/// softmax(row/T) into `out`; returns log Σ exp(row/T).
fn softmax(row: &[f32], t: f32, out: &mut [f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v / t));
    let sum: f32 = row.iter().map(|v| (v / t - max).exp()).sum();
    for (o, v) in out.iter_mut().zip(row) {
        *o = (v / t - max).exp() / sum;
    }
    max + sum.ln()
}

impl Distiller for Kd {
    fn loss(&self, student: &[f32], teacher: &[f32], labels: &[u8], classes: usize, grad: &mut [f32]) -> f32 {
        let KdConfig { alpha, temperature: t } = self.0;
        let batch = labels.len().max(1) as f32;
        let (mut ps_t, mut pt_t, mut ps) = (vec![0.0; classes], vec![0.0; classes], vec![0.0; classes]);
        let mut total = 0.0f64;
        for (i, &label) in labels.iter().enumerate() {
            let range = i * classes..(i + 1) * classes;
            let (s, te) = (&student[range.clone()], &teacher[range.clone()]);
            let log_zs_t = softmax(s, t, &mut ps_t);
            softmax(te, t, &mut pt_t);
            let log_zs = softmax(s, 1.0, &mut ps);
            // KL(pt ‖ ps) = Σ pt (log pt − log ps), log ps = s/T − log Z
            let kl: f32 = pt_t
                .iter()
                .zip(s)
                .filter(|(p, _)| **p > 0.0)
                .map(|(p, sv)| p * (p.ln() - (sv / t - log_zs_t)))
                .sum();
            let ce = log_zs - s[label as usize];
            total += (alpha * t * t * kl + (1.0 - alpha) * ce) as f64;
            for k in 0..classes {
                let onehot = f32::from(k == label as usize);
                grad[range.start + k] =
                    (alpha * t * (ps_t[k] - pt_t[k]) + (1.0 - alpha) * (ps[k] - onehot)) / batch;
            }
        }
        (total / batch as f64) as f32
    }
}

/// Parameters of `feature`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureConfig {
    /// Weight of the feature term next to the cross-entropy on the labels.
    pub beta: f32,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self { beta: 1.0 }
    }
}

/// Cross-entropy on the labels plus β·MSE between the L2-normalised penultimate features of
/// student and teacher: β/(B·D) Σ_i ‖s_i/‖s_i‖ − t_i/‖t_i‖‖². With ŝ = s/‖s‖ and
/// g = 2β(ŝ − t̂)/(B·D), ∂/∂s = (g − ŝ(ŝ·g))/‖s‖.
pub struct Feature(FeatureConfig);

/// ‖row‖ guarded against an all-zero row (a dead ReLU layer).
fn norm(row: &[f32]) -> f32 {
    row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12)
}

impl Distiller for Feature {
    fn loss(
        &self,
        student: &[f32],
        _teacher: &[f32],
        labels: &[u8],
        classes: usize,
        grad: &mut [f32],
    ) -> f32 {
        let batch = labels.len().max(1) as f32;
        let mut p = vec![0.0; classes];
        let mut total = 0.0f64;
        for (i, &label) in labels.iter().enumerate() {
            let range = i * classes..(i + 1) * classes;
            let log_z = softmax(&student[range.clone()], 1.0, &mut p);
            total += (log_z - student[range.start + label as usize]) as f64;
            for k in 0..classes {
                grad[range.start + k] = (p[k] - f32::from(k == label as usize)) / batch;
            }
        }
        (total / batch as f64) as f32
    }

    fn uses_features(&self) -> bool {
        true
    }

    fn feature_loss(&self, student: &[f32], teacher: &[f32], dims: usize, grad: &mut [f32]) -> f32 {
        let scale = self.0.beta / student.len().max(1) as f32;
        let mut total = 0.0f64;
        let rows =
            student.chunks_exact(dims).zip(teacher.chunks_exact(dims)).zip(grad.chunks_exact_mut(dims));
        for ((s, t), g) in rows {
            let (ns, nt) = (norm(s), norm(t));
            let mut along = 0.0f32;
            for k in 0..dims {
                let d = s[k] / ns - t[k] / nt;
                total += (scale * d * d) as f64;
                g[k] = 2.0 * scale * d;
                along += s[k] / ns * g[k];
            }
            g.iter_mut().zip(s).for_each(|(g, &sv)| *g = (*g - sv / ns * along) / ns);
        }
        total as f32
    }
}

/// Register every built-in distiller.
pub fn register(catalog: &mut Catalog<dyn Distiller>) -> Result<()> {
    catalog.register(
        "feature",
        "CE + beta MSE of L2-normalised penultimate features (student and teacher of one width)",
        BUILT_IN,
        |c: FeatureConfig| {
            if !(c.beta >= 0.0) {
                return Err(format!("beta: must be >= 0, got {}", c.beta));
            }
            Ok(Box::new(Feature(c)) as Box<dyn Distiller>)
        },
    )?;
    catalog.register(
        "kd",
        "alpha T^2 KL(p_t^T || p_s^T) + (1 - alpha) CE (Hinton et al. 2015)",
        BUILT_IN,
        |c: KdConfig| {
            if !(0.0..=1.0).contains(&c.alpha) {
                return Err(format!("alpha: must lie in [0, 1], got {}", c.alpha));
            }
            if !(c.temperature > 0.0) {
                return Err(format!("temperature: must be > 0, got {}", c.temperature));
            }
            Ok(Box::new(Kd(c)) as Box<dyn Distiller>)
        },
    )?;
    Ok(())
}
