//! The portable path: decodes each packed byte with shifts and masks.

use super::{block_cols, BLOCK_BYTES};

/// See [`super::CodeMatrix::code_dots`]; `data` holds `out.len() / n` rows of `row_bytes`.
pub fn code_dots(
    data: &[u8],
    bits: u32,
    row_bytes: usize,
    x: &[i8],
    stride: usize,
    n: usize,
    out: &mut [i32],
) {
    let fields = 8 / bits as usize;
    let mask = ((1u16 << bits) - 1) as u8;
    for (row, out) in data.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        for (i, o) in out.iter_mut().enumerate() {
            let x = &x[i * stride..(i + 1) * stride];
            let mut sum = 0i32;
            for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                let base = b * block_cols(bits);
                for k in 0..fields {
                    let xs = &x[base + k * BLOCK_BYTES..base + (k + 1) * BLOCK_BYTES];
                    for (byte, &xv) in block.iter().zip(xs) {
                        sum += ((byte >> (bits as usize * k)) & mask) as i32 * xv as i32;
                    }
                }
            }
            *o = sum;
        }
    }
}

/// Trit sums over the base-3 layout ([`super::Layout::Trits`]).
pub fn trit_dots(data: &[u8], row_bytes: usize, x: &[i8], stride: usize, n: usize, out: &mut [i32]) {
    let per_block = super::Layout::Trits.block_cols();
    for (row, out) in data.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        for (i, o) in out.iter_mut().enumerate() {
            let x = &x[i * stride..(i + 1) * stride];
            let mut sum = 0i32;
            for (b, block) in row.chunks_exact(BLOCK_BYTES).enumerate() {
                for (lane, &byte) in block.iter().enumerate() {
                    for (k, t) in super::trits_of(byte).into_iter().enumerate() {
                        sum += t as i32 * x[b * per_block + k * BLOCK_BYTES + lane] as i32;
                    }
                }
            }
            *o = sum;
        }
    }
}
