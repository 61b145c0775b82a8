//! Dropout (`model.dropout: p`), inverted as in PyTorch: in a training pass each value is kept
//! with probability 1 − p and scaled by 1/(1 − p), so evaluation is the identity.
//!
//! The mask is a function of (`train.seed`, step, the op's path) alone, so an interrupted run
//! resumes bit-identically and two dropout ops never share a mask. On the tape it is a constant
//! factor, so the gradient is masked the same way.

use dfdx::prelude::*;
use qatlab_core::config::RunConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::augment::stream_seed;
use crate::nn::deploy::{Deployment, Node};
use crate::nn::op::{Back, Cx, Forward, Host, Mode, Op, Pass, Value};

/// A dropout op.
pub struct Dropout {
    /// Probability of dropping a value, in [0, 1).
    pub p: f32,
    /// The run's seed.
    pub seed: u64,
}

/// Registration in [`super::AFTER_ACTIVATION`]: a dropout op after every hidden activation when
/// `model.dropout` is set.
pub fn after_activation(config: &RunConfig, _layer: &str) -> Option<(&'static str, Box<dyn Op>)> {
    let p = config.model.dropout as f32;
    (p > 0.0).then(|| ("dropout", Box::new(Dropout { p, seed: config.train.seed }) as Box<dyn Op>))
}

impl Dropout {
    /// The mask of `len` values for `path` at `step`: 0 or 1/(1 − p).
    pub fn mask(&self, path: &str, step: u64, len: usize) -> Vec<f32> {
        // FNV-1a of the path, so the stream depends on the op's name, not on its position
        let path_hash =
            path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(self.seed ^ path_hash, step as usize, 0xd709));
        let keep = 1.0 / (1.0 - self.p);
        (0..len).map(|_| if rng.gen::<f32>() < self.p { 0.0 } else { keep }).collect()
    }
}

impl<T: Mode> Forward<T> for Dropout {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        let x = inputs.into_iter().next().expect("dropout reads one value");
        let Pass::Train { step } = cx.pass else { return x };
        match x {
            Value::Host(mut h) => {
                let mask = self.mask(cx.name, step, h.data.len());
                h.data.iter_mut().zip(&mask).for_each(|(v, m)| *v *= m);
                if h.wants_grad {
                    cx.save::<T>(mask);
                }
                Value::Host(Host { ..h })
            }
            Value::Graph(t) => {
                let shape = *t.shape();
                let mask = self.mask(cx.name, step, shape.0 * shape.1);
                Value::Graph(t * cx.dev.tensor_from_vec(mask, shape))
            }
        }
    }
}

impl Op for Dropout {
    fn tag(&self) -> &'static str {
        "dropout"
    }

    fn backward(&mut self, back: Back) -> Vec<Option<Vec<f32>>> {
        back.times_saved_derivative()
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        out.alias(node);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Task;
    use crate::nn::engine::Engine;
    use crate::nn::loss::cross_entropy;
    use crate::nn::model::Network;

    fn config(dropout: f64) -> RunConfig {
        let yaml = format!(
            "name: d\nmodel: {{hidden: [6, 5], activation: gelu, activation_bits: null, dropout: {dropout}}}"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn network(dropout: f64) -> Network {
        let task = Task { channels: 4, side: 1, classes: 3 };
        Network::new(&qatlab_plugins::builtin_registry(), &config(dropout), &task).unwrap()
    }

    #[test]
    fn masks_keep_one_minus_p_scaled_and_depend_on_step_and_path() {
        let d = Dropout { p: 0.25, seed: 7 };
        let mask = d.mask("fc1.dropout", 3, 40_000);
        let kept = mask.iter().filter(|m| **m != 0.0).count() as f64 / mask.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(mask.iter().all(|m| *m == 0.0 || *m == 1.0 / 0.75));
        assert_eq!(mask, d.mask("fc1.dropout", 3, 40_000), "the same (seed, step, path), the same mask");
        assert_ne!(mask, d.mask("fc1.dropout", 4, 40_000));
        assert_ne!(mask, d.mask("fc2.dropout", 3, 40_000));
    }

    #[test]
    fn the_config_key_places_it_after_every_hidden_activation_and_evaluation_ignores_it() {
        let net = network(0.5);
        let names: Vec<&str> = net.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fc1.norm",
                "fc1",
                "fc1.act",
                "fc1.dropout",
                "fc2.norm",
                "fc2",
                "fc2.act",
                "fc2.dropout",
                "fc3.norm",
                "fc3"
            ]
        );
        assert!(!network(0.0).nodes.iter().any(|n| n.op.tag() == "dropout"));
        let (mut with, mut without) = (net, network(0.0));
        with.quantize_all(false, 0, 0, 0).unwrap();
        without.quantize_all(false, 0, 0, 0).unwrap();
        let x: Vec<f32> = (0..8).map(|i| i as f32 / 4.0 - 1.0).collect();
        let engine = Engine::new();
        let eval = |n: &Network| engine.logits(n, &x, 2, Pass::Eval).0;
        assert_eq!(eval(&with), eval(&without), "identity at evaluation");
        let train = |n: &Network, step| engine.logits(n, &x, 2, Pass::Train { step }).0;
        assert_ne!(train(&with, 0), eval(&with));
        assert_eq!(train(&with, 0), train(&with, 0));
        assert_ne!(train(&with, 0), train(&with, 1));
    }

    #[test]
    fn gradients_through_the_mask_match_finite_differences() {
        let mut net = network(0.3);
        let x: Vec<f32> = (0..12).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let labels = [0u8, 2, 1];
        let engine = Engine::new();
        let loss = |net: &mut Network| {
            net.quantize_all(false, 0, 0, 0).unwrap();
            let logits = engine.logits(net, &x, 3, Pass::Train { step: 5 }).0;
            cross_entropy(&logits, &labels, 3, &mut vec![0.0; logits.len()]).0 as f64
        };
        net.quantize_all(false, 0, 0, 0).unwrap();
        engine.backward(&mut net, &x, 3, 5, &mut |l, g| cross_entropy(l, &labels, 3, g).0);
        net.layers_mut().for_each(|l| l.backward_quantizer());
        let grads: Vec<Vec<f32>> = net.layers().map(|l| l.grad_weight.clone()).collect();
        let eps = 1e-3;
        for (l, grad) in grads.iter().enumerate() {
            for (i, &analytic) in grad.iter().enumerate() {
                let w = net.layers().nth(l).unwrap().weight[i];
                net.layers_mut().nth(l).unwrap().weight[i] = w + eps;
                let up = loss(&mut net);
                net.layers_mut().nth(l).unwrap().weight[i] = w - eps;
                let down = loss(&mut net);
                net.layers_mut().nth(l).unwrap().weight[i] = w;
                let numeric = (up - down) / (2.0 * eps as f64);
                assert!(
                    (analytic as f64 - numeric).abs() < 2e-3 + 2e-2 * numeric.abs(),
                    "layer {l}[{i}]: {analytic} vs {numeric}"
                );
            }
        }
    }
}
