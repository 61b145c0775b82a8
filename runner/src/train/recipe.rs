//! Training-recipe options around the optimizer step: weight averages (EMA, SWA), gradient
//! accumulation and batch mixing (mixup, CutMix). Plain host state, saved in checkpoints.

use std::collections::BTreeMap;

use qatlab_core::config::{MixConfig, MixKind};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use serde::{Deserialize, Serialize};

use crate::nn::model::Network;

/// Averages of every parameter (weights, quantizer parameters, residual scales, norm gains and
/// biases), by path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Averages {
    /// Exponential moving average (empty when off or before the first step).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ema: BTreeMap<String, Vec<f32>>,
    /// Stochastic weight average (empty before its first epoch).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub swa: BTreeMap<String, Vec<f32>>,
    /// Epochs in the stochastic weight average.
    #[serde(default)]
    pub swa_count: u64,
}

impl Averages {
    /// Whether nothing is kept (checkpoints then omit the field).
    pub fn is_empty(&self) -> bool {
        self.ema.is_empty() && self.swa.is_empty()
    }

    /// ema ← decay·ema + (1 − decay)·p after an optimizer step (ema = p at the first).
    pub fn update_ema(&mut self, decay: f32, net: &Network) {
        blend(&mut self.ema, net, |a, p| *a = decay * *a + (1.0 - decay) * p);
    }

    /// Add the current parameters to the stochastic weight average (a running mean).
    pub fn add_to_swa(&mut self, net: &Network) {
        self.swa_count += 1;
        let n = self.swa_count as f32;
        blend(&mut self.swa, net, |a, p| *a += (p - *a) / n);
    }
}

/// Update each average with `update(average, parameter)`; a parameter without one starts it
/// with its current values.
fn blend(averages: &mut BTreeMap<String, Vec<f32>>, net: &Network, update: impl Fn(&mut f32, f32)) {
    for p in net.params() {
        match averages.get_mut(&p.path) {
            Some(average) => average.iter_mut().zip(p.values).for_each(|(a, &v)| update(a, v)),
            None => {
                averages.insert(p.path, p.values.to_vec());
            }
        }
    }
}

/// Exchange the network's parameters with those of `average` that it holds (call twice to
/// undo).
pub fn swap_params(average: &mut BTreeMap<String, Vec<f32>>, net: &mut Network) {
    for p in net.params_mut() {
        if let Some(a) = average.get_mut(&p.path) {
            p.values.swap_with_slice(a);
        }
    }
}

/// Gradients summed over micro-batches until an optimizer step, one sum per parameter in the
/// order of [`Network::params_mut`].
#[derive(Default)]
pub struct Accumulator {
    sums: Vec<Vec<f32>>,
    pending: usize,
}

impl Accumulator {
    /// Micro-batches summed since the last step.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Add every parameter's current gradient.
    pub fn add(&mut self, net: &mut Network) {
        let params = net.params_mut();
        self.sums.resize(params.len(), Vec::new());
        for (sum, p) in self.sums.iter_mut().zip(params) {
            sum.resize(p.grad.len(), 0.0);
            sum.iter_mut().zip(p.grad.iter()).for_each(|(s, g)| *s += g);
        }
        self.pending += 1;
    }

    /// Write the mean gradients into the parameters and start over.
    pub fn take_mean_into(&mut self, net: &mut Network) {
        let n = self.pending.max(1) as f32;
        for (sum, p) in self.sums.iter_mut().zip(net.params_mut()) {
            p.grad.iter_mut().zip(sum.iter_mut()).for_each(|(g, s)| {
                *g = *s / n;
                *s = 0.0;
            });
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
