//! Choosing the next token from a language model's logits: greedy (temperature 0), or a draw
//! from softmax(logits / temperature) restricted to the `top_k` largest, seeded. `qat sample`
//! (the training-time model) and the deployment runtime use this one implementation, so the
//! same seed gives the same text from both, up to numerical ties.
//!
//! The generator is SplitMix64 (Steele et al., 2014): 64 bits of state, enough for sampling,
//! and no dependency for the runtime crate.

/// A seeded sampler.
#[derive(Clone, Debug)]
pub struct Sampler {
    /// Softmax temperature; 0 picks the largest logit.
    pub temperature: f32,
    /// Keep only the `k` largest logits (ties with the k-th are kept); None keeps all.
    pub top_k: Option<usize>,
    state: u64,
}

impl Sampler {
    /// A sampler drawing from `seed`.
    pub fn new(temperature: f32, top_k: Option<usize>, seed: u64) -> Self {
        Self { temperature, top_k, state: seed }
    }

    /// The next uniform number in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The index of the next token given its logits.
    pub fn pick(&mut self, logits: &[f32]) -> usize {
        let first_max =
            |v: &[f32]| v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best });
        if self.temperature <= 0.0 || logits.len() < 2 {
            return first_max(logits);
        }
        let threshold = match self.top_k {
            Some(k) if k > 0 && k < logits.len() => {
                let mut sorted = logits.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                sorted[k - 1]
            }
            _ => f32::NEG_INFINITY,
        };
        let max = logits[first_max(logits)] as f64;
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| if l >= threshold { ((l as f64 - max) / self.temperature as f64).exp() } else { 0.0 })
            .collect();
        let total: f64 = weights.iter().sum();
        let mut u = self.uniform() * total;
        for (i, w) in weights.iter().enumerate() {
            if u < *w {
                return i;
            }
            u -= w;
        }
        weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_greedy_and_top_one_is_too() {
        let logits = [0.1, 2.0, -1.0, 2.0];
        assert_eq!(Sampler::new(0.0, None, 1).pick(&logits), 1, "the first of tied maxima");
        let mut s = Sampler::new(1.0, Some(1), 7);
        assert!((0..100).all(|_| [1, 3].contains(&s.pick(&logits))), "top-1 keeps the tied maxima only");
    }

    #[test]
    fn draws_follow_the_softmax_and_repeat_with_the_seed() {
        // softmax of ln(1), ln(3): 1/4 and 3/4
        let logits = [0.0, 3f32.ln()];
        let mut s = Sampler::new(1.0, None, 42);
        let ones = (0..20_000).filter(|_| s.pick(&logits) == 1).count() as f64 / 20_000.0;
        assert!((ones - 0.75).abs() < 0.015, "{ones}");
        let draw = |seed| {
            let mut s = Sampler::new(0.8, Some(2), seed);
            (0..50).map(|_| s.pick(&[0.3, 0.2, 0.1, -5.0])).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        assert!(draw(3).iter().all(|&i| i < 2), "top-2 never draws the others");
    }
}
