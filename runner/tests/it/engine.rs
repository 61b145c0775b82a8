//! Numerical gradient checks of the engine: float path, straight-through path, learnable scale,
//! plugin activations (through the f/f′ construction) and layer norm.

use qatlab_core::{Activation, Registry};
use qatlab_runner::data::Task;
use qatlab_runner::nn::engine::{Engine, Pass};
use qatlab_runner::nn::loss::cross_entropy;
use qatlab_runner::nn::model::Network;
use serde::{Deserialize, Serialize};

const INPUTS: usize = 6;
const CLASSES: usize = 4;
const BATCH: usize = 3;

/// softplus(x) = ln(1 + eˣ), f′ = σ(x): smooth, so finite differences are exact to O(ε²).
struct Softplus;
impl Activation for Softplus {
    fn apply(&self, x: &[f32], y: &mut [f32], dy: &mut [f32]) {
        for ((x, y), dy) in x.iter().zip(y).zip(dy) {
            *y = x.exp().ln_1p();
            *dy = 1.0 / (1.0 + (-x).exp());
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

fn registry() -> Registry {
    let mut r = qatlab_plugins::builtin_registry();
    r.activations
        .register("softplus", "ln(1 + e^x)", "test", |_: NoParams| {
            Ok(Box::new(Softplus) as Box<dyn Activation>)
        })
        .unwrap();
    r
}

fn network(yaml: &str) -> Network {
    network_of(yaml, INPUTS)
}

fn network_of(yaml: &str, inputs: usize) -> Network {
    let config = crate::config(&format!("name: grad\n{yaml}"));
    let side = (inputs as f64).sqrt() as usize;
    // a conv front-end takes a square image; a plain MLP any width (one channel of 1×inputs)
    let task = if side * side == inputs {
        Task { channels: 1, side, classes: CLASSES }
    } else {
        Task { channels: inputs, side: 1, classes: CLASSES }
    };
    Network::new(&registry(), &config, &task).unwrap()
}

/// A fixed batch for `net` (its input width: the first layer's, or the image of its first
/// convolution).
fn batch_for(net: &Network) -> (Vec<f32>, Vec<u8>) {
    let first = &net.layers[0];
    let inputs = first.conv.map_or(first.shape.cols, |g| g.side * g.side);
    let x = (0..BATCH * inputs).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
    (x, vec![0, 3, 1])
}

fn loss(engine: &Engine, net: &mut Network) -> f64 {
    let (x, labels) = batch_for(net);
    net.quantize_all(false, 0, 0, 0).unwrap();
    let (logits, _) = engine.logits(net, &x, BATCH, Pass::Train);
    let mut g = vec![0.0; logits.len()];
    cross_entropy(&logits, &labels, CLASSES, &mut g).0 as f64
}

fn backward(engine: &Engine, net: &mut Network) {
    let (x, labels) = batch_for(net);
    net.quantize_all(false, 0, 0, 0).unwrap();
    engine.backward(net, &x, BATCH, &mut |logits, grad| cross_entropy(logits, &labels, CLASSES, grad).0);
    net.layers.iter_mut().for_each(|l| l.backward_quantizer());
}

fn assert_close(analytic: f32, numeric: f64, what: &str) {
    let tolerance = 2e-3 + 2e-2 * numeric.abs();
    assert!(
        (analytic as f64 - numeric).abs() < tolerance,
        "{what}: analytic {analytic} vs numeric {numeric}"
    );
}

/// Central differences of the loss in every latent weight against the engine's ∂L/∂w.
fn check_weight_gradients(yaml: &str) {
    check_weight_gradients_with(yaml, 1e-2);
}

fn check_weight_gradients_with(yaml: &str, eps: f32) {
    check_weight_gradients_of(yaml, eps, INPUTS);
}

fn check_weight_gradients_of(yaml: &str, eps: f32, inputs: usize) {
    let engine = Engine::new();
    let mut net = network_of(yaml, inputs);
    backward(&engine, &mut net);
    for l in 0..net.layers.len() {
        let analytic = net.layers[l].grad_weight.clone();
        for (i, &a) in analytic.iter().enumerate() {
            let w = net.layers[l].weight[i];
            net.layers[l].weight[i] = w + eps;
            let up = loss(&engine, &mut net);
            net.layers[l].weight[i] = w - eps;
            let down = loss(&engine, &mut net);
            net.layers[l].weight[i] = w;
            assert_close(a, (up - down) / (2.0 * eps as f64), &format!("{}[{i}]", net.layers[l].name));
        }
    }
}

#[test]
fn float_path_gradients_match_finite_differences() {
    check_weight_gradients("model: {hidden: [5, 4], activation_bits: null}");
}

#[test]
fn layer_norm_and_no_norm_gradients_match_finite_differences() {
    check_weight_gradients("model: {hidden: [5], norm: layer, activation_bits: null}");
    check_weight_gradients("model: {hidden: [5], norm: none, activation_bits: null}");
}

#[test]
fn batch_norm_training_gradients_match_finite_differences() {
    // a batch of three normalised per feature is strongly curved: a smaller step
    check_weight_gradients_with("model: {hidden: [5, 4], norm: batch, activation_bits: null}", 1e-3);
}

#[test]
fn batch_norm_keeps_running_statistics_and_evaluates_samples_independently() {
    let engine = Engine::new();
    let mut net = network("model: {hidden: [5], norm: batch, activation_bits: null}");
    let (x, _) = batch_for(&net);
    backward(&engine, &mut net);
    // running = 0.9·(0, 1) + 0.1·(batch mean, unbiased batch variance) of the first layer's input
    for f in 0..INPUTS {
        let column: Vec<f32> = (0..BATCH).map(|b| x[b * INPUTS + f]).collect();
        let mean = column.iter().sum::<f32>() / BATCH as f32;
        let var = column.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / (BATCH - 1) as f32;
        assert!((net.norm_stats[0].mean[f] - 0.1 * mean).abs() < 1e-6);
        assert!((net.norm_stats[0].var[f] - (0.9 + 0.1 * var)).abs() < 1e-5);
    }
    net.quantize_all(false, 0, 0, 0).unwrap();
    let (all, _) = engine.logits(&net, &x, BATCH, Pass::Eval);
    let (first, _) = engine.logits(&net, &x[..INPUTS], 1, Pass::Eval);
    for (a, b) in all[..CLASSES].iter().zip(&first) {
        assert!((a - b).abs() < 1e-5, "evaluation uses running statistics: rows are independent");
    }
    let (train_all, _) = engine.logits(&net, &x, BATCH, Pass::Train);
    assert_ne!(&train_all[..CLASSES], &all[..CLASSES], "training uses batch statistics");
}

#[test]
fn plugin_activation_gradients_match_finite_differences() {
    check_weight_gradients("model: {hidden: [5, 4], activation: softplus, activation_bits: null}");
}

/// With a ternary quantizer, ∂L/∂w (latent) must equal ∂L/∂ŵ of the same network evaluated in
/// float at ŵ: the identity straight-through estimator, end to end through the engine.
#[test]
fn straight_through_gradient_equals_the_float_gradient_at_the_quantized_weights() {
    let engine = Engine::new();
    let mut ternary = network("model: {hidden: [5, 4], activation_bits: null}\nquantizer: ternary");
    backward(&engine, &mut ternary);
    let mut float = network("model: {hidden: [5, 4], activation_bits: null}");
    for (f, t) in float.layers.iter_mut().zip(&ternary.layers) {
        f.weight = t.quantized.values.clone();
    }
    let eps = 1e-2;
    for l in 0..float.layers.len() {
        for i in 0..float.layers[l].weight.len() {
            let w = float.layers[l].weight[i];
            float.layers[l].weight[i] = w + eps;
            let up = loss(&engine, &mut float);
            float.layers[l].weight[i] = w - eps;
            let down = loss(&engine, &mut float);
            float.layers[l].weight[i] = w;
            let numeric = (up - down) / (2.0 * eps as f64);
            assert_close(ternary.layers[l].grad_weight[i], numeric, &format!("fc{}[{i}]", l + 1));
        }
    }
    assert!(ternary.layers.iter().all(|l| l.grad_weight.iter().any(|g| *g != 0.0)));
}

#[test]
fn learnable_per_channel_scale_gradient_matches_finite_differences() {
    let engine = Engine::new();
    let mut net =
        network("model: {hidden: [5], activation_bits: null}\nquantizer: {name: ternary, learn_scale: true}");
    backward(&engine, &mut net);
    let eps = 1e-3;
    for l in 0..net.layers.len() {
        let analytic = net.layers[l].grad_params.clone();
        assert_eq!(analytic.len(), net.layers[l].shape.rows, "one scale per output channel");
        for (r, &a) in analytic.iter().enumerate() {
            let s = net.layers[l].quantizer.params()[r];
            net.layers[l].quantizer.params_mut()[r] = s + eps;
            let up = loss(&engine, &mut net);
            net.layers[l].quantizer.params_mut()[r] = s - eps;
            let down = loss(&engine, &mut net);
            net.layers[l].quantizer.params_mut()[r] = s;
            assert_close(a, (up - down) / (2.0 * eps as f64), &format!("fc{}.scale[{r}]", l + 1));
        }
    }
}

#[test]
fn activation_fake_quantization_has_the_reference_values() {
    // 8 bits: s = 127 / max|x| = 63.5; x·s = 127, −63.5, 0.635 → round half even → 127, −64, 1
    let mut out = vec![0.0; 3];
    qatlab_runner::nn::model::quantize_activations(&[2.0, -1.0, 0.01], 3, 8, &mut out);
    assert_eq!(out, vec![2.0, -64.0 / 63.5, 1.0 / 63.5]);
}

#[test]
fn residual_variants_gradients_match_finite_differences() {
    for variant in ["relu-sum", "sum-relu", "scaled-sum-relu", "relu-scaled-sum"] {
        check_weight_gradients(&format!(
            "model: {{hidden: [5, 5], residual: {variant}, activation_bits: null}}"
        ));
    }
}

#[test]
fn learned_residual_scale_gradient_matches_finite_differences() {
    for variant in ["scaled-sum-relu", "relu-scaled-sum"] {
        let engine = Engine::new();
        let mut net =
            network(&format!("model: {{hidden: [5, 5, 5], residual: {variant}, activation_bits: null}}"));
        let with_scale: Vec<usize> =
            (0..net.layers.len()).filter(|&l| !net.layers[l].residual_scale.is_empty()).collect();
        assert_eq!(with_scale, vec![1, 2], "the square hidden layers carry a scale");
        for &l in &with_scale {
            net.layers[l].residual_scale[0] = 0.7;
        }
        backward(&engine, &mut net);
        let eps = 1e-3;
        for &l in &with_scale {
            let a = net.layers[l].residual_scale[0];
            net.layers[l].residual_scale[0] = a + eps;
            let up = loss(&engine, &mut net);
            net.layers[l].residual_scale[0] = a - eps;
            let down = loss(&engine, &mut net);
            net.layers[l].residual_scale[0] = a;
            assert_close(
                net.layers[l].grad_residual[0],
                (up - down) / (2.0 * eps as f64),
                &format!("{variant} fc{}.a", l + 1),
            );
        }
    }
}

#[test]
fn gradient_clipping_scales_every_gradient_to_the_global_norm() {
    let mut net = network("model: {hidden: [2]}");
    for (i, layer) in net.layers.iter_mut().enumerate() {
        layer.grad_weight = vec![if i == 0 { 3.0 } else { 0.0 }; layer.weight.len()];
        layer.grad_weight[0] = 4.0;
        layer.grad_params.clear();
    }
    // layer 0: one 4 and eleven 3s; layer 1: one 4 and the rest 0 → norm² = 16 + 11·9 + 16 = 131
    let before = qatlab_runner::train::clip_global_norm(&mut net, 1.0);
    assert!((before - 131f32.sqrt()).abs() < 1e-4);
    let after: f32 = net.layers.iter().flat_map(|l| &l.grad_weight).map(|g| g * g).sum::<f32>().sqrt();
    assert!((after - 1.0).abs() < 1e-4, "{after}");
    assert_eq!(
        qatlab_runner::train::clip_global_norm(&mut net, 10.0),
        after,
        "under the limit nothing changes"
    );
}

#[test]
fn convolution_gradients_match_finite_differences() {
    // Softplus keeps the loss smooth, so central differences are exact to O(ε²): a full 3×3
    // convolution, a depthwise one, max-pooling, with and without the RMS norm of the head.
    let check = |yaml: &str| check_weight_gradients_of(yaml, 1e-3, 16);
    check("model: {conv: [{channels: 3}], hidden: [5], activation: softplus, norm: none, activation_bits: null}");
    check("model: {conv: [{channels: 3}, {channels: 3, depthwise: true}], hidden: [5], activation: softplus, activation_bits: null}");
    check("model: {conv: [{channels: 2, pool: true}, {channels: 2, depthwise: true, pool: true}], hidden: [4], activation: softplus, activation_bits: null}");
    // A full convolution after the first mixes channels and passes gradients to its input.
    check("model: {conv: [{channels: 2}, {channels: 3}], hidden: [4], activation: softplus, activation_bits: null}");
    // With pooling after it, two window values lie within 1e-3 of each other here: a smaller step
    // keeps the same maximum on both sides.
    check_weight_gradients_of(
        "model: {conv: [{channels: 2}, {channels: 3, pool: true}], hidden: [4], activation: softplus, activation_bits: null}",
        2e-4,
        16,
    );
}

#[test]
fn convolutions_see_their_neighbourhood_with_zero_padding() {
    // One full convolution with a single filter whose only non-zero tap is the centre's right
    // neighbour: the output is the input shifted left by one column, zero at the right edge.
    let side = 4;
    let mut net =
        network_of("model: {conv: [{channels: 1}], hidden: [], activation_bits: null}", side * side);
    net.layers[0].weight = vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
    net.quantize_all(false, 0, 0, 0).unwrap();
    let x: Vec<f32> = (0..side * side).map(|i| i as f32).collect();
    let (features, _) = qatlab_runner::nn::conv::forward(&net.layers[..1], &net.stage, &x, 1);
    for y in 0..side {
        for c in 0..side {
            let expected = if c + 1 < side { (y * side + c + 1) as f32 } else { 0.0 };
            assert_eq!(features[y * side + c], expected, "({y}, {c})");
        }
    }
}

#[test]
fn layer_norm_gain_and_bias_gradients_match_finite_differences() {
    let engine = Engine::new();
    let mut net = network("model: {hidden: [5, 4], norm: layer, norm_affine: true, activation: softplus, activation_bits: null}");
    for layer in &mut net.layers {
        let n = layer.norm_affine.len();
        assert_eq!(n, 2 * layer.shape.cols, "a gain and a bias per input feature");
        layer.norm_affine.iter_mut().enumerate().for_each(|(i, v)| {
            *v = if i < n / 2 { 0.8 + 0.05 * i as f32 } else { 0.1 * (i % 3) as f32 - 0.1 }
        });
    }
    backward(&engine, &mut net);
    let eps = 1e-3;
    for l in 0..net.layers.len() {
        for i in 0..net.layers[l].norm_affine.len() {
            let a = net.layers[l].norm_affine[i];
            net.layers[l].norm_affine[i] = a + eps;
            let up = loss(&engine, &mut net);
            net.layers[l].norm_affine[i] = a - eps;
            let down = loss(&engine, &mut net);
            net.layers[l].norm_affine[i] = a;
            let what = format!(
                "{}.{}[{i}]",
                net.layers[l].name,
                if i < net.layers[l].shape.cols { "gain" } else { "bias" }
            );
            assert_close(net.layers[l].grad_norm_affine[i], (up - down) / (2.0 * eps as f64), &what);
        }
    }
    check_weight_gradients("model: {hidden: [5], norm: layer, norm_affine: true, activation_bits: null}");
}
