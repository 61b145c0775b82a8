//! Known-value tests of the built-in strategies.

use qatlab_core::{Progress, QuantCtx, Quantized, Shape};
use qatlab_plugins::builtin_registry;
use serde_yaml::Mapping;

fn params(yaml: &str) -> Mapping {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn ternary_absmean_levels_codes_and_bits() {
    let registry = builtin_registry();
    let mut q = registry.quantizers.build("ternary", &Mapping::new()).unwrap();
    // mean|w| = (0.1+0.5+1.0+0.2+0.3+0.9)/6 = 0.5
    let w = [0.1, -0.5, 1.0, -0.2, 0.3, -0.9];
    let mut out = Quantized::default();
    q.quantize(&w, Shape::new(2, 3), QuantCtx::default(), &mut out).unwrap();
    // w/γ = 0.2, -1.0, 2.0, -0.4, 0.6, -1.8 → round, clamp → 0, -1, 1, 0, 1, -1
    assert_eq!(out.levels, vec![-1.0, 0.0, 1.0]);
    assert_eq!(out.codes, vec![1, 0, 2, 1, 2, 0]);
    assert_eq!(out.values, vec![0.0, -0.5, 0.5, 0.0, 0.5, -0.5]);
    assert_eq!(out.scales, vec![0.5]);
    assert_eq!(q.bits_per_weight(), 1.6);
    assert!(q.params().is_empty());
}

#[test]
fn ternary_rounds_half_to_even_like_the_reference() {
    let registry = builtin_registry();
    let mut q = registry.quantizers.build("ternary", &Mapping::new()).unwrap();
    // γ = mean(|0.5|, |1.5|) = 1.0: 0.5 rounds to 0 (even), 1.5 to 2 → clamped 1
    let mut out = Quantized::default();
    q.quantize(&[0.5, -1.5], Shape::new(1, 2), QuantCtx::default(), &mut out).unwrap();
    assert_eq!(out.values, vec![0.0, -1.0]);
}

#[test]
fn ternary_per_channel_scales_each_row() {
    let registry = builtin_registry();
    let mut q = registry.quantizers.build("ternary", &params("granularity: channel")).unwrap();
    let mut out = Quantized::default();
    q.quantize(&[1.0, -1.0, 0.2, -0.2], Shape::new(2, 2), QuantCtx::default(), &mut out).unwrap();
    assert_eq!(out.scales, vec![1.0, 0.2]);
    assert_eq!(out.values, vec![1.0, -1.0, 0.2, -0.2]);
}

#[test]
fn ternary_learned_scale_starts_at_the_channel_absmean_and_has_an_exact_gradient() {
    let registry = builtin_registry();
    let mut q = registry.quantizers.build("ternary", &params("learn_scale: true")).unwrap();
    let w = [0.4, -0.4, 0.0, 2.0, 1.0, 0.0];
    let shape = Shape::new(2, 3);
    let mut out = Quantized::default();
    q.quantize(&w, shape, QuantCtx::default(), &mut out).unwrap();
    assert_eq!(q.params(), &[0.8 / 3.0, 1.0]);
    let grad_values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let (mut grad_w, mut grad_s) = (vec![0.0; 6], vec![0.0; 2]);
    q.backward(&w, shape, &out, &grad_values, &mut grad_w, &mut grad_s);
    assert_eq!(grad_w, grad_values.to_vec(), "identity straight-through estimator");
    // codes: row 0 → 1, -1, 0 ; row 1 (γ=1) → 1, 1, 0
    assert_eq!(grad_s, vec![1.0 - 2.0, 4.0 + 5.0]);
}

#[test]
fn float_passes_weights_through_at_32_bits() {
    let registry = builtin_registry();
    let mut q = registry.quantizers.build("none", &Mapping::new()).unwrap();
    let mut out = Quantized::default();
    q.quantize(&[0.3, -7.0], Shape::new(1, 2), QuantCtx::default(), &mut out).unwrap();
    assert_eq!(out.values, vec![0.3, -7.0]);
    assert!(out.codes.is_empty() && out.levels.is_empty());
    assert_eq!(q.bits_per_weight(), 32.0);
}

#[test]
fn relu_values_and_derivative() {
    let registry = builtin_registry();
    let a = registry.activations.build("relu", &Mapping::new()).unwrap();
    let (mut y, mut dy) = (vec![0.0; 3], vec![0.0; 3]);
    a.apply(&[-1.0, 0.0, 2.5], &mut y, &mut dy);
    assert_eq!(y, vec![0.0, 0.0, 2.5]);
    assert_eq!(dy, vec![0.0, 0.0, 1.0]);
    assert!(a.is_relu());
}

#[test]
fn cosine_matches_pytorch_cosine_annealing_per_epoch() {
    let registry = builtin_registry();
    let s = registry.schedules.build("cosine", &Mapping::new()).unwrap();
    let at = |epoch| s.value(Progress { epoch, step: 0, epochs: 30, steps: 0 });
    assert_eq!(at(0), 1.0);
    assert!((at(15) - 0.5).abs() < 1e-12);
    // PyTorch CosineAnnealingLR(T_max=30) after one step: (1 + cos(π/30))/2
    assert!((at(1) - 0.997_260_947_684_137_6).abs() < 1e-12);
    let c = registry.schedules.build("cosine", &params("{from: 1.0, to: 0.1}")).unwrap();
    assert!((c.value(Progress { epoch: 30, step: 0, epochs: 30, steps: 0 }) - 0.1).abs() < 1e-12);
}

#[test]
fn constant_schedule_holds_its_value() {
    let registry = builtin_registry();
    let s = registry.schedules.build("constant", &params("value: 0.3")).unwrap();
    assert_eq!(s.value(Progress { epoch: 7, step: 99, epochs: 30, steps: 1000 }), 0.3);
}
