//! Which kernel variants have run in this process, so that a test can fail when a path it
//! should have exercised silently fell back to another. CI sets `QAT_REQUIRE_AVX2`,
//! `QAT_REQUIRE_AVX512_VNNI` and `QAT_REQUIRE_AVX512_VBMI` from the CPU's flags; a test that
//! loops over [`super::Path::available`] then asks [`missing_required`] what did not run.

use std::sync::atomic::{AtomicU8, Ordering};

/// One kernel variant of [`super::CodeMatrix::code_dots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Portable code on any layout.
    Scalar,
    /// AVX2 on whole-bit codes.
    Avx2,
    /// AVX-512 VNNI on whole-bit codes.
    Avx512Vnni,
    /// AVX-512 VNNI with the VBMI lookup decoder on the 1.6-bit trit layout.
    Avx512Trits,
}

impl Variant {
    const ALL: [Variant; 4] = [Variant::Scalar, Variant::Avx2, Variant::Avx512Vnni, Variant::Avx512Trits];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The environment variable that demands this variant, if any.
    fn requirement(self) -> Option<&'static str> {
        match self {
            Variant::Scalar => None,
            Variant::Avx2 => Some("QAT_REQUIRE_AVX2"),
            Variant::Avx512Vnni => Some("QAT_REQUIRE_AVX512_VNNI"),
            Variant::Avx512Trits => Some("QAT_REQUIRE_AVX512_VBMI"),
        }
    }
}

static RAN: AtomicU8 = AtomicU8::new(0);

/// Note that `variant` ran (one relaxed atomic OR per call, off the inner loops).
pub(super) fn record(variant: Variant) {
    // a plain load first: once the bit is set the line stays shared between cores, where a
    // read-modify-write on every kernel call would move it from core to core
    if RAN.load(Ordering::Relaxed) & variant.bit() == 0 {
        RAN.fetch_or(variant.bit(), Ordering::Relaxed);
    }
}

/// Every variant that has run in this process so far.
pub fn ran() -> Vec<Variant> {
    let bits = RAN.load(Ordering::Relaxed);
    Variant::ALL.into_iter().filter(|v| bits & v.bit() != 0).collect()
}

/// Of `expected`, the variants whose `QAT_REQUIRE_*` variable is set to 1 but which have not
/// run, each as a sentence naming the variable.
pub fn missing_required(expected: &[Variant]) -> Vec<String> {
    missing_of(&ran(), expected, |var| std::env::var(var).is_ok_and(|s| s == "1"))
}

fn missing_of(ran: &[Variant], expected: &[Variant], required: impl Fn(&str) -> bool) -> Vec<String> {
    expected
        .iter()
        .filter_map(|v| Some((v, v.requirement()?)))
        .filter(|(v, var)| required(var) && !ran.contains(v))
        .map(|(v, var)| format!("{var}=1, but the {v:?} kernel never ran (ran: {ran:?})"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_variant_that_did_not_run_is_named_with_its_variable() {
        let ran = [Variant::Scalar, Variant::Avx2];
        let all = [Variant::Avx2, Variant::Avx512Vnni, Variant::Avx512Trits];
        let missing = missing_of(&ran, &all, |var| var != "QAT_REQUIRE_AVX512_VBMI");
        assert_eq!(
            missing,
            ["QAT_REQUIRE_AVX512_VNNI=1, but the Avx512Vnni kernel never ran (ran: [Scalar, Avx2])"]
        );
        assert!(missing_of(&ran, &all, |_| false).is_empty(), "nothing required, nothing missing");
    }
}
