//! Training-recipe options around the optimizer step: weight averages (EMA, SWA), gradient
//! accumulation and batch mixing (mixup, CutMix). Plain host state, saved in checkpoints.

use qatlab_core::config::{MixConfig, MixKind};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::nn::model::Layer;

/// Averages of the latent weights, per layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    /// Exponential moving average (empty when off or before the first step).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ema: Vec<Vec<f32>>,
    /// Stochastic weight average (empty before its first epoch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub swa: Vec<Vec<f32>>,
    /// Epochs in the stochastic weight average.
    #[serde(default)]
    pub swa_count: u64,
}

impl Averages {
    /// Whether nothing is kept (checkpoints then omit the field).
    pub fn is_empty(&self) -> bool {
        self.ema.is_empty() && self.swa.is_empty()
    }

    /// ema ← decay·ema + (1 − decay)·w after an optimizer step (ema = w at the first).
    pub fn update_ema(&mut self, decay: f32, layers: &[Layer]) {
        if self.ema.is_empty() {
            self.ema = layers.iter().map(|l| l.weight.clone()).collect();
            return;
        }
        for (average, layer) in self.ema.iter_mut().zip(layers) {
            average.iter_mut().zip(&layer.weight).for_each(|(a, w)| *a = decay * *a + (1.0 - decay) * w);
        }
    }

    /// Add the current weights to the stochastic weight average (a running mean).
    pub fn add_to_swa(&mut self, layers: &[Layer]) {
        self.swa_count += 1;
        if self.swa.is_empty() {
            self.swa = layers.iter().map(|l| l.weight.clone()).collect();
            return;
        }
        let n = self.swa_count as f32;
        for (average, layer) in self.swa.iter_mut().zip(layers) {
            average.iter_mut().zip(&layer.weight).for_each(|(a, w)| *a += (w - *a) / n);
        }
    }
}

/// Exchange the layers' latent weights with `average` (call twice to undo).
pub fn swap_weights(average: &mut [Vec<f32>], layers: &mut [Layer]) {
    for (a, layer) in average.iter_mut().zip(layers) {
        std::mem::swap(a, &mut layer.weight);
    }
}

/// Gradients summed over micro-batches until an optimizer step.
#[derive(Default)]
pub struct Accumulator {
    sums: Vec<[Vec<f32>; 4]>,
    pending: usize,
}

impl Accumulator {
    /// Micro-batches summed since the last step.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Add the layers' current gradients (weights, quantizer parameters, residual scale, norm
    /// gain and bias).
    pub fn add(&mut self, layers: &[Layer]) {
        if self.sums.len() != layers.len() {
            self.sums = layers.iter().map(|_| Default::default()).collect();
        }
        for (sum, layer) in self.sums.iter_mut().zip(layers) {
            for (s, g) in sum.iter_mut().zip([
                &layer.grad_weight,
                &layer.grad_params,
                &layer.grad_residual,
                &layer.grad_norm_affine,
            ]) {
                s.resize(g.len(), 0.0);
                s.iter_mut().zip(g).for_each(|(s, g)| *s += g);
            }
        }
        self.pending += 1;
    }

    /// Write the mean gradients into the layers and start over.
    pub fn take_mean_into(&mut self, layers: &mut [Layer]) {
        let n = self.pending.max(1) as f32;
        for (sum, layer) in self.sums.iter_mut().zip(layers) {
            for (s, g) in sum.iter_mut().zip([
                &mut layer.grad_weight,
                &mut layer.grad_params,
                &mut layer.grad_residual,
                &mut layer.grad_norm_affine,
            ]) {
                g.iter_mut().zip(s.iter_mut()).for_each(|(g, s)| {
                    *g = *s / n;
                    *s = 0.0;
                });
            }
        }
        self.pending = 0;
    }
}

/// A mixed batch's second labels and the weight λ of the first.
pub struct Mixed {
    /// Label of the sample each one was mixed with.
    pub partner_labels: Vec<u8>,
    /// Weight of the original sample (and of its label's loss).
    pub lambda: f32,
}

/// Mix the batch `x` (rows of `size × size` features) in place, drawing from `seed`; `None`
/// when this batch is left as it is (`prob`).
pub fn mix_batch(x: &mut [f32], labels: &[u8], size: usize, mix: &MixConfig, seed: u64) -> Option<Mixed> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if labels.len() < 2 || rng.gen::<f64>() >= mix.prob {
        return None;
    }
    let beta = Beta::new(mix.alpha, mix.alpha).expect("alpha > 0 is validated");
    let mut lambda = beta.sample(&mut rng) as f32;
    let mut partner: Vec<usize> = (0..labels.len()).collect();
    partner.shuffle(&mut rng);
    let f = size * size;
    let original = x.to_vec();
    match mix.kind {
        MixKind::Mixup => {
            for (i, &j) in partner.iter().enumerate() {
                for k in 0..f {
                    x[i * f + k] = lambda * original[i * f + k] + (1.0 - lambda) * original[j * f + k];
                }
            }
        }
        MixKind::Cutmix => {
            let (top, left, height, width) = cut_box(size, lambda, &mut rng);
            for (i, &j) in partner.iter().enumerate() {
                for r in top..top + height {
                    let row = r * size;
                    x[i * f + row + left..i * f + row + left + width]
                        .copy_from_slice(&original[j * f + row + left..j * f + row + left + width]);
                }
            }
            lambda = 1.0 - (height * width) as f32 / f as f32;
        }
    }
    Some(Mixed { partner_labels: partner.iter().map(|&j| labels[j]).collect(), lambda })
}

/// CutMix's box: sides √(1 − λ)·size around a uniform centre, clipped to the image.
fn cut_box(size: usize, lambda: f32, rng: &mut ChaCha8Rng) -> (usize, usize, usize, usize) {
    let side = ((1.0 - lambda).sqrt() * size as f32) as usize;
    let (cy, cx) = (rng.gen_range(0..size), rng.gen_range(0..size));
    let clip = |c: usize| (c.saturating_sub(side / 2), (c + side.div_ceil(2)).min(size));
    let ((top, bottom), (left, right)) = (clip(cy), clip(cx));
    (top, left, bottom - top, right - left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixup_blends_images_and_returns_the_partners() {
        let mix = MixConfig { kind: MixKind::Mixup, alpha: 0.4, prob: 1.0 };
        let x0: Vec<f32> = (0..3 * 4).map(|i| (i / 4) as f32).collect(); // image i is all i
        let mut x = x0.clone();
        let mixed = mix_batch(&mut x, &[7, 8, 9], 2, &mix, 5).unwrap();
        for i in 0..3 {
            let partner = (mixed.partner_labels[i] - 7) as f32;
            let expected = mixed.lambda * i as f32 + (1.0 - mixed.lambda) * partner;
            assert!(x[i * 4..(i + 1) * 4].iter().all(|v| (v - expected).abs() < 1e-6));
        }
        let mut again = x0.clone();
        let second = mix_batch(&mut again, &[7, 8, 9], 2, &mix, 5).unwrap();
        assert_eq!((again, second.lambda), (x, mixed.lambda), "seeded");
    }

    #[test]
    fn cutmix_pastes_a_box_and_lambda_is_the_kept_area() {
        let mix = MixConfig { kind: MixKind::Cutmix, alpha: 1.0, prob: 1.0 };
        for seed in 0..20 {
            let mut x: Vec<f32> = (0..2 * 64).map(|i| (i / 64) as f32).collect();
            let mixed = mix_batch(&mut x, &[0, 1], 8, &mix, seed).unwrap();
            for i in 0..2 {
                let own = x[i * 64..(i + 1) * 64].iter().filter(|&&v| v == i as f32).count();
                let expected = if mixed.partner_labels[i] as usize == i {
                    64
                } else {
                    (mixed.lambda * 64.0).round() as usize
                };
                assert_eq!(own, expected, "seed {seed}, image {i}");
            }
        }
    }

    #[test]
    fn batches_are_left_alone_with_probability_one_minus_prob() {
        let mix = MixConfig { kind: MixKind::Mixup, alpha: 1.0, prob: 0.0 };
        assert!(mix_batch(&mut [0.0; 8], &[0, 1], 2, &mix, 1).is_none());
    }
}
