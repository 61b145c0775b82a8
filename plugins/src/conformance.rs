//! The conformance suite every quantizer must pass, built-in or dynamic: the same generic
//! checks run over every registered name (and over any parameter variants a test adds).
//! It returns every failure as a message instead of panicking, so `qat plugins --check` can
//! report on a third-party library too.

use qatlab_core::{Catalog, QuantCtx, Quantized, Quantizer, Shape};
use serde_yaml::Mapping;

/// Deterministic pseudo-random numbers for test tensors (no RNG dependency in the plugin crate).
pub struct TestRng(u64);

impl TestRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Approximately N(0, σ²) (sum of four uniforms, rescaled).
    pub fn normal(&mut self, sigma: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0;
        s * sigma * (3.0f32).sqrt()
    }
}

fn build(
    catalog: &Catalog<dyn Quantizer>,
    name: &str,
    params: &Mapping,
) -> Result<Box<dyn Quantizer>, String> {
    catalog.build(name, params).map_err(|e| e.to_string())
}

fn eval_ctx() -> QuantCtx {
    QuantCtx { training: false, step: 0, epoch: 0, seed: 7 }
}

fn scale_of(q: &Quantized, shape: Shape, i: usize) -> f32 {
    q.scale_of_row(if q.scales.len() == 1 { 0 } else { i / shape.cols })
}

/// Run every check on quantizer `name` built with `params`; returns the failures.
pub fn check_quantizer(catalog: &Catalog<dyn Quantizer>, name: &str, params: &Mapping) -> Vec<String> {
    let mut failures = Vec::new();
    let label =
        format!("{name} {}", serde_yaml::to_string(params).unwrap_or_default().trim().replace('\n', ", "));
    let mut fail = |m: String| failures.push(format!("{label}: {m}"));
    let shape = Shape::new(7, 13);
    let mut rng = TestRng::new(11);
    let w: Vec<f32> = (0..shape.len()).map(|_| rng.normal(0.1)).collect();
    let mut q = match build(catalog, name, params) {
        Ok(q) => q,
        Err(e) => return vec![format!("{label}: does not build: {e}")],
    };
    let mut out = Quantized::default();
    if let Err(e) = q.quantize(&w, shape, eval_ctx(), &mut out) {
        return vec![format!("{label}: quantize failed: {e}")];
    }
    if out.values.len() != w.len() {
        fail(format!("{} values for {} weights", out.values.len(), w.len()));
        return failures;
    }
    let bits = q.bits_per_weight();
    if out.levels.is_empty() {
        if out.values != w {
            fail("a quantizer without levels must pass weights through".into());
        }
        if bits != 32.0 {
            fail(format!("a float quantizer declares {bits} bits, expected 32"));
        }
    } else {
        check_levels(&out, shape, bits, &mut fail);
        check_idempotent(q.as_mut(), &out, shape, &mut fail);
    }
    check_gradient_reaches_weights(q.as_ref(), &w, shape, &out, &mut fail);
    if !q.params().is_empty() {
        check_param_gradients(q.as_mut(), &w, shape, &mut fail);
    }
    check_one_channel_granularity(catalog, name, params, &mut fail);
    failures
}

fn check_levels(out: &Quantized, shape: Shape, bits: f64, fail: &mut impl FnMut(String)) {
    if !out.levels.windows(2).all(|p| p[0] < p[1]) {
        fail(format!("levels are not strictly ascending: {:?}", out.levels));
    }
    if out.codes.len() != out.values.len() {
        fail(format!("{} codes for {} values", out.codes.len(), out.values.len()));
        return;
    }
    if !(out.scales.len() == 1 || out.scales.len() == shape.rows) {
        fail(format!("{} scales: expected 1 or one per row ({})", out.scales.len(), shape.rows));
        return;
    }
    for (i, (&c, &v)) in out.codes.iter().zip(&out.values).enumerate() {
        let Some(level) = out.levels.get(c as usize) else {
            fail(format!("code {c} at {i} outside the {} levels", out.levels.len()));
            return;
        };
        if v != level * scale_of(out, shape, i) {
            fail(format!("value {v} at {i} is not level {level} × scale {}", scale_of(out, shape, i)));
            return;
        }
    }
    let needed = (out.levels.len() as f64).log2();
    if bits + 1e-9 < needed || bits > needed.ceil() + 1e-9 {
        fail(format!(
            "declares {bits} bits per weight for {} levels (needs {needed:.3}, at most {})",
            out.levels.len(),
            needed.ceil()
        ));
    }
}

fn check_idempotent(q: &mut dyn Quantizer, first: &Quantized, shape: Shape, fail: &mut impl FnMut(String)) {
    let mut again = Quantized::default();
    if let Err(e) = q.quantize(&first.values, shape, eval_ctx(), &mut again) {
        fail(format!("quantizing the quantized weights failed: {e}"));
        return;
    }
    if again.codes != first.codes {
        let diff = again.codes.iter().zip(&first.codes).filter(|(a, b)| a != b).count();
        fail(format!("quantizing twice changed {diff} codes"));
    }
    if again.scales == first.scales && again.values != first.values {
        fail("quantizing twice with unchanged scales changed the values".into());
    }
}

fn check_gradient_reaches_weights(
    q: &dyn Quantizer,
    w: &[f32],
    shape: Shape,
    out: &Quantized,
    fail: &mut impl FnMut(String),
) {
    let mut rng = TestRng::new(5);
    let grad: Vec<f32> = (0..w.len()).map(|_| rng.normal(1.0)).collect();
    let mut grad_w = vec![0.0; w.len()];
    let mut grad_p = vec![0.0; q.params().len()];
    q.backward(w, shape, out, &grad, &mut grad_w, &mut grad_p);
    if grad_w.iter().all(|g| *g == 0.0) {
        fail("no gradient reaches the latent weights".into());
    }
    if grad_w.iter().chain(&grad_p).any(|g| !g.is_finite()) {
        fail("non-finite gradient".into());
    }
}

fn check_param_gradients(q: &mut dyn Quantizer, w: &[f32], shape: Shape, fail: &mut impl FnMut(String)) {
    let mut frozen = Quantized::default();
    let _ = q.quantize(w, shape, eval_ctx(), &mut frozen);
    let mut rng = TestRng::new(9);
    let c: Vec<f32> = (0..w.len()).map(|_| rng.normal(1.0)).collect();
    let mut grad_w = vec![0.0; w.len()];
    let mut analytic = vec![0.0; q.params().len()];
    q.backward(w, shape, &frozen, &c, &mut grad_w, &mut analytic);
    let scale = q.param_grad_scale(shape) as f64;
    let mut surrogate = vec![0.0; w.len()];
    let mut loss = |q: &mut dyn Quantizer| -> Result<f64, String> {
        q.surrogate(w, shape, &frozen, &mut surrogate).map_err(|e| e.to_string())?;
        Ok(surrogate.iter().zip(&c).map(|(s, c)| (*s as f64) * (*c as f64)).sum())
    };
    for k in 0..analytic.len() {
        let p = q.params()[k];
        let eps = 1e-3 * p.abs().max(1e-2);
        q.params_mut()[k] = p + eps;
        let up = loss(q);
        q.params_mut()[k] = p - eps;
        let down = loss(q);
        q.params_mut()[k] = p;
        let (up, down) = match (up, down) {
            (Ok(u), Ok(d)) => (u, d),
            (Err(e), _) | (_, Err(e)) => {
                fail(format!("has learnable parameters but no surrogate: {e}"));
                return;
            }
        };
        let numeric = scale * (up - down) / (2.0 * eps as f64);
        let a = analytic[k] as f64;
        if (a - numeric).abs() > 1e-3 + 1e-2 * numeric.abs().max(a.abs()) {
            fail(format!("parameter {k}: backward gives {a}, finite differences of the surrogate {numeric}"));
        }
    }
}

fn check_one_channel_granularity(
    catalog: &Catalog<dyn Quantizer>,
    name: &str,
    params: &Mapping,
    fail: &mut impl FnMut(String),
) {
    let has_granularity = catalog.infos().any(|i| i.name == name && i.defaults.contains_key("granularity"));
    if !has_granularity || params.contains_key("granularity") {
        return;
    }
    let shape = Shape::new(1, 29);
    let mut rng = TestRng::new(3);
    let w: Vec<f32> = (0..shape.len()).map(|_| rng.normal(0.2)).collect();
    let run = |granularity: &str| {
        let mut p = params.clone();
        p.insert("granularity".into(), granularity.into());
        let mut out = Quantized::default();
        build(catalog, name, &p)
            .and_then(|mut q| q.quantize(&w, shape, eval_ctx(), &mut out).map_err(|e| e.to_string()))
            .map(|_| out.values)
    };
    match (run("tensor"), run("channel")) {
        (Ok(t), Ok(c)) if t != c => fail("per-tensor and per-channel differ on a one-channel tensor".into()),
        (Err(e), _) | (_, Err(e)) => fail(format!("granularity variants fail: {e}")),
        _ => {}
    }
}
