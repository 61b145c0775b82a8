//! The conformance suite over every registered quantizer (defaults) and parameter variants.

use qatlab_plugins::builtin_registry;
use qatlab_plugins::conformance::check_quantizer;
use serde_yaml::Mapping;

fn params(yaml: &str) -> Mapping {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn every_registered_quantizer_passes_with_its_defaults() {
    let registry = builtin_registry();
    let names: Vec<String> = registry.quantizers.infos().map(|i| i.name.clone()).collect();
    assert!(names.len() >= 12, "{names:?}");
    let failures: Vec<String> =
        names.iter().flat_map(|n| check_quantizer(&registry.quantizers, n, &Mapping::new())).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parameter_variants_pass() {
    let registry = builtin_registry();
    let mut cases: Vec<(&str, String)> = Vec::new();
    for bits in 2..=8 {
        for symmetric in [true, false] {
            cases.push(("int", format!("{{bits: {bits}, symmetric: {symmetric}}}")));
        }
        cases.push(("lsq", format!("{{bits: {bits}}}")));
    }
    for clip in ["octav", "prop", "absmax", "percentile", "mse-grid", "learned"] {
        cases.push(("int", format!("{{bits: 2, clip: {{method: {clip}, init: null}}}}")));
        cases.push((
            "int",
            format!("{{bits: 4, granularity: channel, clip: {{method: {clip}, init: null}}}}"),
        ));
    }
    for ste in ["identity", "clipped", "approx-sign", "swish-sign", "magnitude-aware"] {
        cases.push(("int", format!("{{bits: 2, ste: {ste}}}")));
        cases.push(("ternary", format!("{{ste: {ste}}}")));
    }
    cases.extend([
        ("ternary", "{learn_scale: true}".to_string()),
        ("ternary", "{granularity: channel}".to_string()),
        ("binary", "{balanced: false}".to_string()),
        ("binary", "{clip: {method: learned, init: null}}".to_string()),
        ("pentary", "{clip: {method: learned, init: null}}".to_string()),
        ("ternary-twn", "{alpha: 0.5, granularity: channel}".to_string()),
        ("nf4", "{granularity: tensor}".to_string()),
        ("fp130", "{clip: {method: absmax, init: null}}".to_string()),
        ("self-compress", "{init_bits: 2}".to_string()),
    ]);
    let failures: Vec<String> =
        cases.iter().flat_map(|(name, p)| check_quantizer(&registry.quantizers, name, &params(p))).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_suite_catches_a_broken_quantizer() {
    use qatlab_core::{Catalog, Kind, QuantCtx, Quantized, Quantizer, Shape};
    /// Claims ternary levels but writes values off the grid and passes no gradient.
    struct Broken;
    impl Quantizer for Broken {
        fn quantize(
            &mut self,
            w: &[f32],
            shape: Shape,
            _: QuantCtx,
            out: &mut Quantized,
        ) -> qatlab_core::Result<()> {
            out.prepare(shape, true);
            out.levels = vec![-1.0, 0.0, 1.0];
            out.scales = vec![1.0];
            out.values.copy_from_slice(w);
            Ok(())
        }
        fn bits_per_weight(&self) -> f64 {
            1.0
        }
        fn backward(&self, _: &[f32], _: Shape, _: &Quantized, _: &[f32], grad_w: &mut [f32], _: &mut [f32]) {
            grad_w.fill(0.0);
        }
    }
    #[derive(Default, serde::Serialize, serde::Deserialize)]
    struct NoParams {}
    let mut catalog: Catalog<dyn Quantizer> = Catalog::new(Kind::Quantizer);
    catalog
        .register("broken", "test", "test", |_: NoParams| Ok(Box::new(Broken) as Box<dyn Quantizer>))
        .unwrap();
    let failures = check_quantizer(&catalog, "broken", &Mapping::new()).join("\n");
    assert!(failures.contains("is not level"), "{failures}");
    assert!(failures.contains("no gradient reaches the latent weights"), "{failures}");
}
