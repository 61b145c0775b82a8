//! Elementwise and row functions that training and deployment must compute alike, so that the
//! runtime reproduces the trained model's numbers: the transformer's activations, RoPE's angles
//! and the softmax of one row of attention scores. The built-in activation plugins and the
//! training engine's host ops call these same functions.

/// erf's polynomial of Abramowitz & Stegun 7.1.26 at t = 1/(1 + p·|z|) (absolute error below
/// 1.5e-7); erf(z) = sign(z)·(1 − poly(t)·e^(−z²)).
#[inline]
fn erf_poly(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))))
}

/// erf by Abramowitz & Stegun 7.1.26.
pub fn erf(x: f32) -> f32 {
    let y = 1.0 - erf_poly(x) * (-x * x).exp();
    y.copysign(x)
}

/// GELU x·Φ(x) and its derivative Φ(x) + x·φ(x) from one exponential: [`erf`]'s approximation
/// of Φ and the density φ share e^(−x²/2), and GELU runs over every MLP value of a transformer.
#[inline]
pub fn gelu_with_slope(x: f32) -> (f32, f32) {
    let e = (-0.5 * x * x).exp();
    let z = x / std::f32::consts::SQRT_2;
    let cdf = 0.5 * (1.0 + (1.0 - erf_poly(z) * e).copysign(z));
    let pdf = e / (2.0 * std::f32::consts::PI).sqrt();
    (x * cdf, cdf + x * pdf)
}

/// Logistic σ.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// SiLU (swish) x·σ(x).
#[inline]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// Squared ReLU x·max(x, 0) (BitNet b1.58 2B4T's MLP activation).
#[inline]
pub fn relu2(x: f32) -> f32 {
    x * x.max(0.0)
}

/// RoPE's base wavelength.
pub const ROPE_BASE: f32 = 10_000.0;

/// (cos, sin) of RoPE's angle p·θᵢ, θᵢ = 10000^(−2i/d), for pair `i` of a head of `d`
/// dimensions at position `p`.
pub fn rope_angle(p: usize, i: usize, d: usize) -> (f32, f32) {
    let theta = ROPE_BASE.powf(-2.0 * i as f32 / d as f32);
    let (sin, cos) = (p as f32 * theta).sin_cos();
    (cos, sin)
}

/// Turn each head of `row` (heads of `d` values, "rotate half" pairs (i, i + d/2)) by the angles
/// of one position, `angles[i]` = (cos, sin), times `sign` (1 forward, −1 to undo).
pub fn rope_rotate(row: &mut [f32], d: usize, angles: &[(f32, f32)], sign: f32) {
    let half = d / 2;
    for head in row.chunks_exact_mut(d) {
        let (a, b) = head.split_at_mut(half);
        for ((a, b), &(cos, sin)) in a.iter_mut().zip(b.iter_mut()).zip(angles) {
            let sin = sign * sin;
            (*a, *b) = (*a * cos - *b * sin, *b * cos + *a * sin);
        }
    }
}

/// softmax of one row in place (max subtracted first, then one normalising multiply).
pub fn softmax_row(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0;
    row.iter_mut().for_each(|v| {
        *v = (*v - max).exp();
        sum += *v;
    });
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert!((gelu_with_slope(1.0).0 - 0.841_344_7).abs() < 1e-6, "GELU(1) = Φ(1)");
        assert!((gelu_with_slope(-1.0).0 + 0.158_655_3).abs() < 1e-6);
        assert!((erf(0.5) - 0.520_499_9).abs() < 5e-7);
        assert_eq!(relu2(-2.0), 0.0);
        assert_eq!(relu2(3.0), 9.0);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        let mut row = [0.0f32, 2f32.ln()];
        softmax_row(&mut row);
        assert!((row[0] - 1.0 / 3.0).abs() < 1e-7 && (row[1] - 2.0 / 3.0).abs() < 1e-7);
        let (cos, sin) = rope_angle(3, 0, 8);
        assert!((cos - 3f32.cos()).abs() < 1e-7 && (sin - 3f32.sin()).abs() < 1e-7, "θ₀ = 1");
        let mut head = [1.0f32, 2.0, 3.0, 4.0];
        let angles = [rope_angle(5, 0, 4), rope_angle(5, 1, 4)];
        rope_rotate(&mut head, 4, &angles, 1.0);
        rope_rotate(&mut head, 4, &angles, -1.0);
        assert!(head.iter().zip([1.0, 2.0, 3.0, 4.0]).all(|(a, b)| (a - b).abs() < 1e-6), "{head:?}");
    }
}
