//! The portable path: decodes each packed byte with shifts and masks.

use super::BLOCK_BYTES;

/// The blocks of one row of `row_bytes` whose last `tail` bytes (if any) are a short block, with
/// the first column each covers: byte `j` of a block of `w` bytes holds columns `first + j + w·k`.
fn blocks(row: &[u8], tail: usize, per_block: usize) -> impl Iterator<Item = (&[u8], usize)> {
    let (full, short) = row.split_at(row.len() - tail);
    let count = full.len() / BLOCK_BYTES;
    full.chunks_exact(BLOCK_BYTES)
        .chain((tail > 0).then_some(short))
        .enumerate()
        .map(move |(b, block)| (block, if b < count { b * per_block } else { count * per_block }))
}

/// See [`super::CodeMatrix::code_dots`]; `data` holds `out.len() / n` rows of `row_bytes`, each
/// ending in a short block of `tail` bytes (0: none).
pub fn code_dots(
    data: &[u8],
    bits: u32,
    (row_bytes, tail): (usize, usize),
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
            for (block, first) in blocks(row, tail, super::block_cols(bits)) {
                let w = block.len();
                for k in 0..fields {
                    let xs = &x[first + k * w..first + (k + 1) * w];
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
pub fn trit_dots(
    data: &[u8],
    (row_bytes, tail): (usize, usize),
    x: &[i8],
    stride: usize,
    n: usize,
    out: &mut [i32],
) {
    let per_block = super::Layout::Trits.block_cols();
    for (row, out) in data.chunks_exact(row_bytes).zip(out.chunks_exact_mut(n)) {
        for (i, o) in out.iter_mut().enumerate() {
            let x = &x[i * stride..(i + 1) * stride];
            let mut sum = 0i32;
            for (block, first) in blocks(row, tail, per_block) {
                let w = block.len();
                for (lane, &byte) in block.iter().enumerate() {
                    for (k, t) in super::trits_of(byte).into_iter().enumerate() {
                        sum += t as i32 * x[first + k * w + lane] as i32;
                    }
                }
            }
            *o = sum;
        }
    }
}
