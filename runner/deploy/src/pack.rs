//! Storage packings of level codes (indices into a layer's level set, `0..levels`).
//!
//! Every packer has an unpacker that needs only the packed bytes and the number of codes; the
//! unpackers reject digits outside the code space, so a corrupted file is an error, not garbage.
//!
//! - [`Packing::Bits`]: `k` bits per code, a little-endian bit stream (code `i` starts at bit
//!   `k·i`); 1 bit for binary, 2 for ternary (fast to decode), 3 for pentary, 4 for 4-bit
//!   grids, NF4 and FP130, 8 for 8-bit.
//! - [`Packing::Base3Bytes`]: five trits per byte as a base-3 number `t0 + 3t1 + 9t2 + 27t3 + 81t4`
//!   (1.6 bits per weight, 243 of 256 byte values used).
//! - [`Packing::Base3Words`]: twenty trits per 32-bit word (1.6 bits per weight), the base-3
//!   number `v = Σ t_k·3^(19−k)` stored as `⌈v·2³²/3²⁰⌉`: multiplying the word by 3 brings the
//!   next trit into the bits above 32, so decoding is a multiply and a shift per trit.
//! - [`Packing::Base5Groups`]: three pentary digits per 7 bits (`p0 + 5p1 + 25p2 < 128`).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// How a layer's codes are stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Packing {
    /// `bits` bits per code (1 to 8), little-endian bit stream.
    Bits {
        /// Bits per code.
        bits: u32,
    },
    /// Five trits per byte, base 3.
    Base3Bytes,
    /// Twenty trits per 32-bit word, base 3 scaled to the word.
    Base3Words,
    /// Three base-5 digits per 7 bits.
    Base5Groups,
}

impl Packing {
    /// The densest plain bit packing for `levels` codes.
    pub fn bits_for(levels: usize) -> Self {
        let bits = usize::BITS - levels.saturating_sub(1).leading_zeros();
        Packing::Bits { bits: bits.max(1) }
    }

    /// Largest level count this packing can store.
    pub fn max_levels(self) -> usize {
        match self {
            Packing::Bits { bits } => 1usize << bits.min(16),
            Packing::Base3Bytes | Packing::Base3Words => 3,
            Packing::Base5Groups => 5,
        }
    }

    /// Bytes that `count` codes take.
    pub fn packed_len(self, count: usize) -> usize {
        match self {
            Packing::Bits { bits } => (count * bits as usize).div_ceil(8),
            Packing::Base3Bytes => count.div_ceil(5),
            Packing::Base3Words => 4 * count.div_ceil(20),
            Packing::Base5Groups => (count.div_ceil(3) * 7).div_ceil(8),
        }
    }

    /// Pack `codes` (each below [`Packing::max_levels`]).
    pub fn pack(self, codes: &[u8]) -> Result<Vec<u8>> {
        if let Some(bad) = codes.iter().find(|&&c| c as usize >= self.max_levels()) {
            return Err(invalid(format!("code {bad} does not fit {self:?}")));
        }
        Ok(match self {
            Packing::Bits { bits } => pack_bits(codes, bits),
            Packing::Base3Bytes => digit_groups(codes, 3, 5).into_iter().map(|g| g as u8).collect(),
            Packing::Base3Words => {
                pack_trit_words(codes, 20, 32).iter().flat_map(|w| (*w as u32).to_le_bytes()).collect()
            }
            Packing::Base5Groups => {
                let groups: Vec<u8> = digit_groups(codes, 5, 3).into_iter().map(|g| g as u8).collect();
                pack_bits(&groups, 7)
            }
        })
    }

    /// Unpack `count` codes from `bytes` (which must be exactly [`Packing::packed_len`] long).
    pub fn unpack(self, bytes: &[u8], count: usize) -> Result<Vec<u8>> {
        if bytes.len() != self.packed_len(count) {
            return Err(invalid(format!(
                "{count} codes packed as {self:?} take {} bytes, found {}",
                self.packed_len(count),
                bytes.len()
            )));
        }
        match self {
            Packing::Bits { bits } if (1..=8).contains(&bits) => Ok(unpack_bits(bytes, bits, count)),
            Packing::Bits { bits } => Err(invalid(format!("{bits} bits per code (1 to 8 are supported)"))),
            Packing::Base3Bytes => {
                let groups: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
                split_digit_groups(&groups, 3, 5, count)
            }
            Packing::Base3Words => {
                let words: Vec<u64> = bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64)
                    .collect();
                unpack_trit_words(&words, 20, 32, count)
            }
            Packing::Base5Groups => {
                let groups: Vec<u32> =
                    unpack_bits(bytes, 7, count.div_ceil(3)).into_iter().map(u32::from).collect();
                split_digit_groups(&groups, 5, 3, count)
            }
        }
    }
}

/// `codes` as a little-endian stream of `bits`-bit fields (the last byte zero-padded).
pub fn pack_bits(codes: &[u8], bits: u32) -> Vec<u8> {
    let mut out = vec![0u8; (codes.len() * bits as usize).div_ceil(8)];
    for (i, &code) in codes.iter().enumerate() {
        let start = i * bits as usize;
        let field = (code as u16) << (start % 8);
        out[start / 8] |= field as u8;
        if let Some(next) = out.get_mut(start / 8 + 1) {
            *next |= (field >> 8) as u8;
        }
    }
    out
}

/// The inverse of [`pack_bits`] for `count` fields.
pub fn unpack_bits(bytes: &[u8], bits: u32, count: usize) -> Vec<u8> {
    let mask = (1u16 << bits) - 1;
    (0..count)
        .map(|i| {
            let start = i * bits as usize;
            let low = bytes[start / 8] as u16;
            let high = bytes.get(start / 8 + 1).copied().unwrap_or(0) as u16;
            ((((high << 8) | low) >> (start % 8)) & mask) as u8
        })
        .collect()
}

/// Groups of `per_group` base-`base` digits as numbers, first digit least significant; the last
/// group is padded with zero digits.
fn digit_groups(codes: &[u8], base: u32, per_group: usize) -> Vec<u32> {
    codes
        .chunks(per_group)
        .map(|group| group.iter().rev().fold(0u32, |acc, &d| acc * base + d as u32))
        .collect()
}

/// The inverse of [`digit_groups`]; a group too large for its digits is an error.
fn split_digit_groups(groups: &[u32], base: u32, per_group: usize, count: usize) -> Result<Vec<u8>> {
    let limit = base.pow(per_group as u32);
    let mut out = Vec::with_capacity(count);
    for (i, &group) in groups.iter().enumerate() {
        if group >= limit {
            return Err(invalid(format!(
                "packed group {i} holds {group}, above the largest valid {}",
                limit - 1
            )));
        }
        let mut g = group;
        for _ in 0..per_group {
            out.push((g % base) as u8);
            g /= base;
        }
    }
    out.truncate(count);
    Ok(out)
}

/// Trits as words of `word_bits` bits holding `per_word` trits each (3^per_word < 2^word_bits):
/// the base-3 number v (first trit most significant) stored as ⌈v·2^word_bits / 3^per_word⌉.
/// The rounding error stays below 1/3^per_word of the word, so every trit decodes exactly.
pub fn pack_trit_words(trits: &[u8], per_word: u32, word_bits: u32) -> Vec<u64> {
    let full = 3u128.pow(per_word);
    trits
        .chunks(per_word as usize)
        .map(|chunk| {
            let v =
                (0..per_word as usize).fold(0u128, |acc, k| acc * 3 + *chunk.get(k).unwrap_or(&0) as u128);
            ((v << word_bits).div_ceil(full)) as u64
        })
        .collect()
}

/// The inverse of [`pack_trit_words`]: per trit, multiply by 3 and take the bits above
/// `word_bits`. A word that is not the image of any trit group is an error.
pub fn unpack_trit_words(words: &[u64], per_word: u32, word_bits: u32, count: usize) -> Result<Vec<u8>> {
    let mask = (1u64 << word_bits) - 1;
    let mut out = Vec::with_capacity(count);
    for (i, &word) in words.iter().enumerate() {
        let mut x = word & mask;
        let start = out.len();
        for _ in 0..per_word {
            x *= 3;
            out.push((x >> word_bits) as u8);
            x &= mask;
        }
        // Only ⌈v·2^B/3^N⌉ words are valid; anything else decodes to a group that re-encodes
        // to another word.
        if word > mask || pack_trit_words(&out[start..], per_word, word_bits)[0] != word {
            return Err(invalid(format!("packed trit word {i} ({word:#x}) is outside the code space")));
        }
    }
    out.truncate(count);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_base3_byte_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..243u32 {
            let trits: Vec<u8> = (0..5).map(|k| (n / 3u32.pow(k) % 3) as u8).collect();
            let packed = Packing::Base3Bytes.pack(&trits).unwrap();
            assert_eq!(packed, vec![n as u8], "t0 is the least significant digit");
            assert_eq!(Packing::Base3Bytes.unpack(&packed, 5).unwrap(), trits);
            seen.insert(packed[0]);
        }
        assert_eq!(seen.len(), 243);
        let err = Packing::Base3Bytes.unpack(&[243], 5).unwrap_err().to_string();
        assert!(err.contains("holds 243, above the largest valid 242"), "{err}");
    }

    #[test]
    fn every_ten_trit_code_of_a_16_bit_word_round_trips() {
        let mut words = std::collections::HashSet::new();
        for n in 0..3u32.pow(10) {
            let trits: Vec<u8> = (0..10).map(|k| (n / 3u32.pow(9 - k) % 3) as u8).collect();
            let word = pack_trit_words(&trits, 10, 16)[0];
            assert!(word < 1 << 16);
            assert_eq!(unpack_trit_words(&[word], 10, 16, 10).unwrap(), trits, "code {n}");
            words.insert(word);
        }
        assert_eq!(words.len(), 59049, "distinct codes get distinct words");
    }

    #[test]
    fn twenty_trit_words_have_the_published_scaling() {
        // All twos is v = 3^20 − 1, stored just below 2^32.
        let word = pack_trit_words(&[2; 20], 20, 32)[0];
        assert_eq!(word, ((3u128.pow(20) - 1) << 32).div_ceil(3u128.pow(20)) as u64);
        assert_eq!(pack_trit_words(&[0; 20], 20, 32)[0], 0);
        // One in the first trit is 3^19 / 3^20 = one third of the word.
        let mut first = [0u8; 20];
        first[0] = 1;
        assert_eq!(pack_trit_words(&first, 20, 32)[0], (1u64 << 32).div_ceil(3));
    }

    #[test]
    fn bit_packing_known_bytes() {
        assert_eq!(pack_bits(&[1, 2, 0, 3], 2), vec![0b11_00_10_01]);
        assert_eq!(pack_bits(&[0xF, 0x1, 0x7], 4), vec![0x1F, 0x07]);
        assert_eq!(pack_bits(&[5, 3, 7], 3), vec![0b11_011_101, 0b1]);
        assert_eq!(Packing::bits_for(2), Packing::Bits { bits: 1 });
        assert_eq!(Packing::bits_for(3), Packing::Bits { bits: 2 });
        assert_eq!(Packing::bits_for(5), Packing::Bits { bits: 3 });
        assert_eq!(Packing::bits_for(16), Packing::Bits { bits: 4 });
        assert_eq!(Packing::bits_for(256), Packing::Bits { bits: 8 });
    }

    #[test]
    fn out_of_range_codes_and_wrong_lengths_are_errors() {
        let err = Packing::Base3Words.pack(&[0, 3]).unwrap_err().to_string();
        assert!(err.contains("code 3 does not fit"), "{err}");
        let err = Packing::Bits { bits: 2 }.unpack(&[0, 0], 3).unwrap_err().to_string();
        assert!(err.contains("3 codes packed as Bits { bits: 2 } take 1 bytes, found 2"), "{err}");
        let err = Packing::Base3Words.unpack(&[1, 0, 0, 0], 20).unwrap_err().to_string();
        assert!(err.contains("outside the code space"), "{err}");
    }

    fn packings() -> impl Strategy<Value = (Packing, usize)> {
        prop_oneof![
            (1u32..=8).prop_map(|b| (Packing::Bits { bits: b }, 1usize << b)),
            Just((Packing::Base3Bytes, 3)),
            Just((Packing::Base3Words, 3)),
            Just((Packing::Base5Groups, 5)),
        ]
    }

    proptest! {
        #[test]
        fn every_packing_round_trips(
            (packing, levels) in packings(),
            raw in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let codes: Vec<u8> = raw.iter().map(|c| (*c as usize % levels) as u8).collect();
            let packed = packing.pack(&codes).unwrap();
            prop_assert_eq!(packed.len(), packing.packed_len(codes.len()));
            prop_assert_eq!(packing.unpack(&packed, codes.len()).unwrap(), codes);
        }
    }
}
