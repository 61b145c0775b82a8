//! Storage of the decoder's key/value cache: f32 as the attention computes them, or f16 (IEEE
//! half precision, as llama.cpp keeps its cache by default), which halves what every token reads
//! back. Scores, softmax and the weighted sum stay in f32 either way; only the stored keys and
//! values round (a relative error below 2⁻¹¹).

use half::f16;
use half::slice::HalfFloatSliceExt;

/// How a key/value cache stores its values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvPrecision {
    /// As computed: the runtime's logits follow training's evaluation to its rounding.
    #[default]
    F32,
    /// Half precision: half the cache bytes per token.
    F16,
}

impl KvPrecision {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            KvPrecision::F32 => 4,
            KvPrecision::F16 => 2,
        }
    }

    /// Lower-case name for messages and tables.
    pub fn name(self) -> &'static str {
        match self {
            KvPrecision::F32 => "f32",
            KvPrecision::F16 => "f16",
        }
    }
}

/// A head's cached keys or values (positions × d, back to back), in their stored precision.
#[derive(Clone, Copy)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Rows<'a> {
    /// Values held.
    pub(crate) fn len(self) -> usize {
        match self {
            Rows::F32(v) => v.len(),
            Rows::F16(v) => v.len(),
        }
    }

    /// Position `p` (`buffer.len()` values from `p · buffer.len()`) as f32: borrowed where stored
    /// so, else converted into `buffer` (F16C instructions where the CPU has them).
    pub(crate) fn position<'b>(self, p: usize, buffer: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        let d = buffer.len();
        match self {
            Rows::F32(v) => &v[p * d..(p + 1) * d],
            Rows::F16(v) => {
                v[p * d..(p + 1) * d].convert_to_f32_slice(buffer);
                buffer
            }
        }
    }
}

/// Values of a cache, in its precision.
pub(crate) enum Store {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Store {
    /// `len` zeros.
    pub(crate) fn zeros(precision: KvPrecision, len: usize) -> Self {
        match precision {
            KvPrecision::F32 => Store::F32(vec![0.0; len]),
            KvPrecision::F16 => Store::F16(vec![f16::ZERO; len]),
        }
    }

    /// Store `values` from index `at` on.
    pub(crate) fn write(&mut self, at: usize, values: &[f32]) {
        match self {
            Store::F32(v) => v[at..at + values.len()].copy_from_slice(values),
            Store::F16(v) => v[at..at + values.len()].convert_from_f32_slice(values),
        }
    }

    /// The `len` values from index `at`, as stored.
    pub(crate) fn rows(&self, at: usize, len: usize) -> Rows<'_> {
        match self {
            Store::F32(v) => Rows::F32(&v[at..at + len]),
            Store::F16(v) => Rows::F16(&v[at..at + len]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_f32(rows: Rows) -> Vec<f32> {
        match rows {
            Rows::F32(v) => v.to_vec(),
            Rows::F16(v) => v.iter().map(|h| h.to_f32()).collect(),
        }
    }

    #[test]
    fn values_read_back_as_written_or_to_half_precision() {
        let values = [1.0f32, -0.5, 3.140625, 1e-3, 65504.0, 1.0 + 1.0 / 4096.0];
        for precision in [KvPrecision::F32, KvPrecision::F16] {
            let mut store = Store::zeros(precision, 10);
            store.write(3, &values);
            let read = as_f32(store.rows(2, 8));
            assert_eq!((read[0], read[7]), (0.0, 0.0), "{precision:?}: untouched values stay zero");
            for (got, want) in read[1..7].iter().zip(values) {
                match precision {
                    KvPrecision::F32 => assert_eq!(*got, want),
                    KvPrecision::F16 => assert!((got - want).abs() <= want.abs() / 2048.0, "{got} vs {want}"),
                }
            }
        }
        // what f16 keeps: 1, −0.5, 3.140625 and 65504 (its largest finite value) exactly, 10⁻³ as
        // the nearest half, and 1 + 2⁻¹² (half a step above 1) rounds to 1 (ties to even)
        let mut store = Store::zeros(KvPrecision::F16, 6);
        store.write(0, &values);
        assert_eq!(as_f32(store.rows(0, 6)), &[1.0, -0.5, 3.140625, 0.0010004044, 65504.0, 1.0]);
        assert_eq!((KvPrecision::F32.bytes(), KvPrecision::F16.bytes()), (4, 2));
    }
}
