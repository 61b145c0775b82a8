//! The between-layer arithmetic shared by training and deployment, so that both round the same
//! way: RMS normalisation and per-sample absmax activation quantization.

/// ε of the RMS norm: only guards an all-zero row (the reference uses none).
pub const RMS_EPS: f32 = 1e-12;

/// Floor of the absmax, as in the reference's `activation_quant`.
pub const ABSMAX_FLOOR: f32 = 1e-5;

/// Largest code of a `bits`-bit signed activation: 2^(bits−1) − 1.
pub fn qmax(bits: u32) -> i32 {
    (1 << (bits - 1)) - 1
}

/// RMS normalisation of each row without gain: x / sqrt(mean(x²) + ε).
pub fn rms_norm_rows(x: &mut [f32], features: usize) {
    x.chunks_exact_mut(features).for_each(|row| {
        rms_norm_row(row, Sums::InOrder);
    });
}

/// RMS normalisation of one row with sums of `sums`; returns the factor 1/sqrt(mean(x²) + ε).
pub fn rms_norm_row(row: &mut [f32], sums: Sums) -> f32 {
    let inv = 1.0 / (sums.dot(row, row) / row.len() as f32 + RMS_EPS).sqrt();
    row.iter_mut().for_each(|v| *v *= inv);
    inv
}

/// ε of the layer norm (PyTorch's default).
pub const LAYER_NORM_EPS: f32 = 1e-5;

/// Layer normalisation of one row without affine, (x − mean)/sqrt(var + ε), with sums of
/// `sums`; returns the factor 1/sqrt(var + ε).
pub fn layer_norm_row(row: &mut [f32], sums: Sums) -> f32 {
    let n = row.len() as f32;
    let mean = sums.sum(row) / n;
    row.iter_mut().for_each(|v| *v -= mean);
    let inv = 1.0 / (sums.dot(row, row) / n + LAYER_NORM_EPS).sqrt();
    row.iter_mut().for_each(|v| *v *= inv);
    inv
}

/// How a row's sums are taken. `InOrder` is one running sum, the order every recorded MLP run
/// and model file was computed with (so resumed and re-run ones stay bit-identical); `Lanes`
/// keeps eight independent sums, which vectorises, for the transformer's host-side ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sums {
    /// Left to right.
    InOrder,
    /// Eight lanes ([`dot`], [`sum`]).
    Lanes,
}

impl Sums {
    /// Σ aᵢ·bᵢ.
    pub fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Sums::InOrder => a.iter().zip(b).map(|(a, b)| a * b).sum(),
            Sums::Lanes => dot(a, b),
        }
    }

    /// Σ xᵢ.
    pub fn sum(self, x: &[f32]) -> f32 {
        match self {
            Sums::InOrder => x.iter().sum(),
            Sums::Lanes => sum(x),
        }
    }
}

/// Σ aᵢ·bᵢ in eight independent lanes, so it vectorises (one running sum is a serial chain the
/// compiler may not reorder).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(a, b)| a * b).sum();
    for (x, y) in ca.zip(cb) {
        for ((lane, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *lane += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Σ xᵢ in eight independent lanes (see [`dot`]).
pub fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        lanes.iter_mut().zip(chunk).for_each(|(lane, v)| *lane += v);
    }
    lanes.iter().sum::<f32>() + tail
}

/// max |x| over `x`, in eight independent lanes so it vectorises (a single running maximum is a
/// serial dependency chain the compiler may not reorder).
pub fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v.abs());
        }
    }
    lanes.iter().fold(tail, |m, v| m.max(*v))
}

/// The per-sample absmax scale of a row: s = qmax / max(max|x|, 1e-5).
pub fn row_scale(row: &[f32], bits: u32) -> f32 {
    qmax(bits) as f32 / abs_max(row).max(ABSMAX_FLOOR)
}

/// The code of one value: clamp(round_half_even(v·s), −qmax − 1, qmax), as a float.
#[inline]
pub fn quantize_value(v: f32, scale: f32, qmax: f32) -> f32 {
    (v * scale).round_ties_even().clamp(-qmax - 1.0, qmax)
}

/// Per-sample absmax quantization of one row to `bits` codes in `out`; returns the scale s.
pub fn quantize_row(row: &[f32], bits: u32, out: &mut [i8]) -> f32 {
    let (scale, qp) = (row_scale(row, bits), qmax(bits) as f32);
    out.iter_mut().zip(row).for_each(|(o, v)| *o = quantize_value(*v, scale, qp) as i8);
    scale
}

/// Fake-quantize the rows of `x` (the training form: codes divided by their scale again).
pub fn quantize_activations(x: &[f32], features: usize, bits: u32, out: &mut [f32]) {
    out.copy_from_slice(x);
    quantize_activations_in_place(out, features, bits);
}

/// [`quantize_activations`] overwriting its input.
pub fn quantize_activations_in_place(x: &mut [f32], features: usize, bits: u32) {
    let qp = qmax(bits) as f32;
    for row in x.chunks_exact_mut(features) {
        let scale = row_scale(row, bits);
        row.iter_mut().for_each(|v| *v = quantize_value(*v, scale, qp) / scale);
    }
}

/// Requantize non-negative integer activations to `bits` with the same per-sample absmax rule,
/// in integers: q = round_half_even(qmax · a / max a). Equal to normalising (by any positive
/// factor, RMS included) and then quantizing, because absmax quantization is scale-invariant.
pub fn requantize_relu(acc: &[i32], bits: u32, out: &mut [i8]) {
    let max = acc.iter().copied().max().unwrap_or(0).max(0) as i64;
    let qp = qmax(bits) as i64;
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = if max == 0 || a <= 0 { 0 } else { div_round_half_even(qp * a as i64, max) as i8 };
    }
}

/// n / d rounded to nearest, ties to even (n ≥ 0, d > 0).
pub fn div_round_half_even(n: i64, d: i64) -> i64 {
    let (q, r) = (n / d, n % d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absmax_quantization_known_values() {
        let mut out = [0i8; 4];
        let s = quantize_row(&[0.5, -1.0, 0.25, 0.0], 8, &mut out);
        assert_eq!(s, 127.0);
        assert_eq!(out, [64, -127, 32, 0], "63.5 rounds to even 64, 31.75 to 32");
    }

    #[test]
    fn integer_requantization_matches_rms_then_float_quantization() {
        let acc = [0, 3, 7, 12, 254, 1000, -5];
        let mut ints = [0i8; 7];
        requantize_relu(&acc, 8, &mut ints);
        let mut x: Vec<f32> = acc.iter().map(|&a| a.max(0) as f32).collect();
        rms_norm_rows(&mut x, 7);
        let mut floats = [0i8; 7];
        quantize_row(&x, 8, &mut floats);
        assert_eq!(ints, floats);
        assert_eq!(ints, [0, 0, 1, 2, 32, 127, 0]);
    }

    #[test]
    fn ties_round_to_even() {
        assert_eq!(div_round_half_even(5, 2), 2);
        assert_eq!(div_round_half_even(7, 2), 4);
        assert_eq!(div_round_half_even(8, 3), 3);
        assert_eq!(div_round_half_even(7, 3), 2);
    }
}
