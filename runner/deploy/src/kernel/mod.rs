//! Integer matrix–vector kernels over packed unsigned codes.
//!
//! A layer with a uniform level grid has integer levels `a + d·code` (ternary: `code − 1`;
//! 2bitsym ×4: `2·code − 3`), so `Σ level·x = d·Σ code·x + a·Σ x`. The kernels compute the
//! code sum `Σ code·x` with codes on the unsigned side of the int8 dot-product instructions
//! (AVX-512 VNNI `vpdpbusd`, AVX2 `vpmaddubsw`) and the int8 activations on the signed side;
//! [`IntLinear`] adds the affine part. One scale per row is applied after the integer sum, by
//! the caller.
//!
//! Layout ([`CodeMatrix`]): each row is whole 64-byte blocks and, where the columns do not fill
//! the last one, a short block of `tail` bytes (a multiple of 8); byte `j` of a block of `w`
//! bytes holds the codes of columns `j + w·k` (k = 0 .. 8/bits) of the block at bits `bits·k`, so
//! one shift and one mask turn a block into `w` consecutive codes that line up with `w`
//! consecutive activations. A row of any multiple of 32 columns then takes exactly its 2-bit
//! codes (a width-128 row: 32 bytes, not a 64-byte block); trits pad a short block to a
//! multiple of 40 columns. The kernels read a short block with masked loads. Padding codes are
//! zero and padded activations are zero.

#![allow(unsafe_code)]

mod avx2;
mod avx512;
pub mod probe;
pub mod ran;
mod scalar;

pub use crate::team::Workers;

/// Matrices smaller than this run on one thread even when asked to split their rows.
pub const PARALLEL_MIN_WEIGHTS: usize = 1 << 18;

/// Bytes per block of the kernel layout (one AVX-512 register).
pub const BLOCK_BYTES: usize = 64;

/// An instruction-set path; [`Path::best`] picks the fastest one this CPU has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Portable Rust over the packed layout.
    Scalar,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-512 BW + VNNI `vpdpbusd`.
    Avx512Vnni,
}

impl Path {
    /// The fastest path available on this CPU.
    pub fn best() -> Self {
        Self::available().into_iter().last().unwrap_or(Path::Scalar)
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Self> {
        let mut paths = vec![Path::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                paths.push(Path::Avx2);
            }
            if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni") {
                paths.push(Path::Avx512Vnni);
            }
        }
        paths
    }

    /// Lower-case name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// How codes sit in a 64-byte block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `bits`-bit fields (2, 4 or 8): byte `j` holds columns `j + 64·k` at bits `bits·k`.
    Bits(u32),
    /// Five trits per byte (1.6 bits per weight): byte `j` holds columns `j + 64·k`, k = 0..5,
    /// as `28·(3·t0 + t1) + 9·t2 + 3·t3 + t4` (t_k the code of column j + 64·k; see
    /// [`trit_byte`]): the first two trits are a function of the top six bits and the last
    /// three of the remainder, which table-lookup decoders want (the storage format's scaled
    /// base-3 bytes need arithmetic or 256-entry tables).
    Trits,
}

impl Layout {
    /// Codes per byte.
    pub fn fields(self) -> usize {
        match self {
            Layout::Bits(bits) => 8 / bits as usize,
            Layout::Trits => 5,
        }
    }

    /// Columns per 64-byte block.
    pub fn block_cols(self) -> usize {
        BLOCK_BYTES * self.fields()
    }
}

/// Unsigned codes of a `rows × cols` matrix in a kernel layout.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeMatrix {
    rows: usize,
    cols: usize,
    layout: Layout,
    /// Bytes of each row's short last block (0: none).
    tail: usize,
    data: Vec<u8>,
}

/// Whole blocks and the bytes of the short last block of a row of `cols` in `layout`.
fn row_shape(cols: usize, layout: Layout) -> (usize, usize) {
    let (per_block, fields) = (layout.block_cols(), layout.fields());
    let (full, rest) = (cols / per_block, cols % per_block);
    match rest.div_ceil(fields).next_multiple_of(8) {
        BLOCK_BYTES => (full + 1, 0),
        tail => (full, tail),
    }
}

impl CodeMatrix {
    /// Lay out row-major `codes` (each below 2^bits) as `bits`-bit fields.
    ///
    /// # Panics
    /// If `bits` is not 2, 4 or 8 or `codes` is not `rows × cols` long (a caller's bug).
    pub fn from_codes(codes: &[u8], rows: usize, cols: usize, bits: u32) -> Self {
        assert!(matches!(bits, 2 | 4 | 8), "kernel codes are 2, 4 or 8 bits, not {bits}");
        Self::lay_out(codes, rows, cols, Layout::Bits(bits), |fields| {
            fields.iter().enumerate().fold(0u8, |byte, (k, &c)| byte | c << (bits as usize * k))
        })
    }

    /// Lay out row-major ternary codes (0, 1, 2) five to a byte.
    ///
    /// # Panics
    /// If a code is above 2 or `codes` is not `rows × cols` long (a caller's bug).
    pub fn from_trits(codes: &[u8], rows: usize, cols: usize) -> Self {
        assert!(codes.iter().all(|&c| c < 3), "trits are 0, 1 or 2");
        Self::lay_out(codes, rows, cols, Layout::Trits, |fields| {
            trit_byte(fields.try_into().expect("five trits per byte"))
        })
    }

    /// Gather each byte's fields (column j + w·k of its block of w bytes, zero past the row)
    /// and encode.
    fn lay_out(codes: &[u8], rows: usize, cols: usize, layout: Layout, encode: impl Fn(&[u8]) -> u8) -> Self {
        assert_eq!(codes.len(), rows * cols, "codes of a {rows}×{cols} matrix");
        let (per_block, fields) = (layout.block_cols(), layout.fields());
        let (blocks, tail) = row_shape(cols, layout);
        let widths: Vec<usize> =
            std::iter::repeat_n(BLOCK_BYTES, blocks).chain((tail > 0).then_some(tail)).collect();
        let mut data = Vec::with_capacity(rows * (blocks * BLOCK_BYTES + tail));
        let mut gathered = vec![0u8; fields];
        for r in 0..rows {
            let row = &codes[r * cols..(r + 1) * cols];
            for (block, &width) in widths.iter().enumerate() {
                for lane in 0..width {
                    for (k, g) in gathered.iter_mut().enumerate() {
                        *g = row.get(block * per_block + k * width + lane).copied().unwrap_or(0);
                    }
                    data.push(encode(&gathered));
                }
            }
        }
        Self { rows, cols, layout, tail, data }
    }

    /// A `rows × cols` matrix of random ternary codes (0, 1, 2) laid out as `layout` (2-bit
    /// fields or trits), drawn from `seed` a byte at a time: fast enough for the billions of
    /// weights of a bandwidth benchmark. Padding columns hold random codes too; the kernels'
    /// padded activations are zero, so they add nothing.
    ///
    /// # Panics
    /// If `layout` is not 2-bit fields or trits.
    pub fn random_ternary(rows: usize, cols: usize, layout: Layout, seed: u64) -> Self {
        let valid: Vec<u8> = match layout {
            Layout::Bits(2) => (0..=255u8).filter(|b| (0..4).all(|k| (b >> (2 * k)) & 3 < 3)).collect(),
            Layout::Trits => (0..=TRIT_LAST_CODE).filter(|&b| trit_byte(trits_of(b)) == b).collect(),
            other => panic!("random ternary codes are 2-bit fields or trits, not {other:?}"),
        };
        let (blocks, tail) = row_shape(cols, layout);
        let len = rows * (blocks * BLOCK_BYTES + tail);
        let mut state = seed | 1;
        let data = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                valid[((state >> 32) as usize * valid.len()) >> 32]
            })
            .collect();
        Self { rows, cols, layout, tail, data }
    }

    /// Output channels.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Inputs per row (before padding).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How the codes are laid out.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The activation stride the kernels expect: a row's columns in the layout, rounded up to 64
    /// so that every activation row keeps the first one's alignment (rows of trits with a short
    /// block, 4120 columns for 4096, read misaligned ran 8 activation rows 45 % slower). Only the
    /// activations carry this padding, not the codes.
    pub fn padded_cols(&self) -> usize {
        let (blocks, tail) = row_shape(self.cols, self.layout);
        (blocks * self.layout.block_cols() + tail * self.layout.fields()).next_multiple_of(BLOCK_BYTES)
    }

    /// Bytes of packed codes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    fn row_bytes(&self) -> usize {
        let (blocks, tail) = row_shape(self.cols, self.layout);
        blocks * BLOCK_BYTES + tail
    }

    /// `out[r·n + i] = Σ_c code[r][c] · x[i·padded_cols + c]` for `n` activation rows, on `path`,
    /// with the rows split over `workers`.
    ///
    /// # Panics
    /// If the buffers are too short, or `path` is not available on this CPU.
    pub fn code_dots(&self, x: &[i8], n: usize, out: &mut [i32], path: Path, workers: Workers) {
        let stride = self.padded_cols();
        assert!(x.len() >= n * stride && out.len() >= n * self.rows, "buffer sizes");
        assert!(Path::available().contains(&path), "{path:?} is not available on this CPU");
        if n == 0 || self.rows == 0 {
            return;
        }
        // below a quarter million weights a split costs more than it saves (a width-128 layer:
        // `qat bench generate` measured 10.5k tokens/s on two threads against 13.8k on one)
        let workers = if self.rows * self.cols >= PARALLEL_MIN_WEIGHTS { workers } else { Workers::One };
        let rows_per_part = self.rows.div_ceil(workers.count()).max(1);
        workers.for_chunks(&mut out[..n * self.rows], rows_per_part * n, |part, out| {
            self.rows_from(part * rows_per_part, x, n, out, path)
        });
    }

    /// Code sums of the rows from `first` on (as many as `out` holds for `n` activation rows).
    fn rows_from(&self, first: usize, x: &[i8], n: usize, out: &mut [i32], path: Path) {
        let (stride, row_bytes, tail) = (self.padded_cols(), self.row_bytes(), self.tail);
        let rows = out.len() / n;
        let data = &self.data[first * row_bytes..(first + rows) * row_bytes];
        match (self.layout, path) {
            (Layout::Bits(bits), Path::Scalar) => {
                ran::record(ran::Variant::Scalar);
                scalar::code_dots(data, bits, (row_bytes, tail), x, stride, n, out)
            }
            // SAFETY: `code_dots` confirmed the CPU features.
            (Layout::Bits(bits), Path::Avx2) => unsafe {
                ran::record(ran::Variant::Avx2);
                avx2::code_dots(data, bits, (row_bytes, tail), x, stride, n, out)
            },
            // SAFETY: as above.
            (Layout::Bits(bits), Path::Avx512Vnni) => unsafe {
                ran::record(ran::Variant::Avx512Vnni);
                avx512::code_dots(data, bits, (row_bytes, tail), x, stride, n, out)
            },
            // SAFETY: as above, and `has_byte_permutes` confirmed VBMI.
            (Layout::Trits, Path::Avx512Vnni) if has_byte_permutes() => unsafe {
                ran::record(ran::Variant::Avx512Trits);
                avx512::trit_dots(data, (row_bytes, tail), x, stride, n, out)
            },
            // The trit decoder's 256-entry lookups need AVX-512 VBMI byte permutes, which AVX2
            // and some VNNI CPUs (Cascade Lake) lack: scalar there.
            (Layout::Trits, _) => {
                ran::record(ran::Variant::Scalar);
                scalar::trit_dots(data, (row_bytes, tail), x, stride, n, out)
            }
        }
    }
}

/// The trits of a byte of the [`Layout::Trits`] layout, first first (zeros past the last code,
/// 250, which the layout never writes).
pub const fn trits_of(byte: u8) -> [u8; 5] {
    if byte > TRIT_LAST_CODE {
        return [0; 5];
    }
    let (lead, rest) = (byte / TRIT_LEAD_STEP, byte % TRIT_LEAD_STEP);
    [lead / 3, lead % 3, rest / 9, rest / 3 % 3, rest % 3]
}

/// The layout byte of five trits, first first.
pub const fn trit_byte(t: [u8; 5]) -> u8 {
    TRIT_LEAD_STEP * (3 * t[0] + t[1]) + 9 * t[2] + 3 * t[3] + t[4]
}

/// The first two trits count in steps of 28, a multiple of 4, so they are a function of the
/// byte's top six bits; the last three (0–26) fit below it.
const TRIT_LEAD_STEP: u8 = 28;
const TRIT_LAST_CODE: u8 = trit_byte([2; 5]);

/// 64-entry decoding tables of the trit layout for `vpermb`: indexed by the byte's top six
/// bits, the offset of its first two trits and those trits; indexed by the byte less that
/// offset, the last three trits.
struct TritTables {
    offset: [u8; 64],
    trits: [[u8; 64]; 5],
}

const TRIT_TABLES: TritTables = {
    let mut tables = TritTables { offset: [0; 64], trits: [[0; 64]; 5] };
    let mut i = 0;
    while i < 64 {
        // Index i as the top six bits (first two trits) and as the remainder (last three).
        let (lead, rest) = (trits_of(4 * i as u8), trits_of(i as u8));
        tables.offset[i] = 4 * i as u8 - 4 * i as u8 % TRIT_LEAD_STEP;
        tables.trits[0][i] = lead[0];
        tables.trits[1][i] = lead[1];
        tables.trits[2][i] = rest[2];
        tables.trits[3][i] = rest[3];
        tables.trits[4][i] = rest[4];
        i += 1;
    }
    tables
};

/// Whether a ternary `rows × cols` layer should run on the 1.6-bit trit layout rather than 2-bit
/// codes on `path`. Where the lookup decoder runs (AVX-512 VBMI), it costs about what 2-bit
/// decoding does per weight and moves a fifth fewer bytes, which wins once the matrix streams from
/// memory (more than 1 MiB of 2-bit codes, beyond a core's L2). Small layers stay cached either way
/// and pad less in 2-bit blocks (256 columns, not 320): `qat bench infer` on the quickstart model
/// measured 201k samples/s with trits against 230k with 2-bit codes.
pub fn prefers_trits(path: Path, rows: usize, cols: usize) -> bool {
    path == Path::Avx512Vnni && has_byte_permutes() && rows * cols / 4 > 1 << 20
}

/// Whether the CPU has the AVX-512 VBMI byte permutes the trit decoder looks up with.
pub(crate) fn has_byte_permutes() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512vbmi");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Columns per 64-byte block of `bits`-bit fields.
pub fn block_cols(bits: u32) -> usize {
    Layout::Bits(bits).block_cols()
}

/// A layer whose integer levels are `offset + step·code`: the kernel's code sums plus the affine
/// correction.
#[derive(Clone, Debug, PartialEq)]
pub struct IntLinear {
    /// The codes.
    pub codes: CodeMatrix,
    /// Integer level of code 0.
    pub offset: i32,
    /// Integer distance between neighbouring levels.
    pub step: i32,
}

impl IntLinear {
    /// `out[r·n + i] = Σ_c level[r][c] · x[i][c]` (int32, exact).
    pub fn forward(&self, x: &[i8], n: usize, out: &mut [i32], path: Path, workers: Workers) {
        self.codes.code_dots(x, n, out, path, workers);
        let stride = self.codes.padded_cols();
        let sums: Vec<i32> =
            (0..n).map(|i| x[i * stride..(i + 1) * stride].iter().map(|&v| v as i32).sum()).collect();
        let out = &mut out[..n * self.codes.rows];
        if let [sum] = sums[..] {
            // one activation row (token generation): a flat loop the compiler vectorises
            let shift = self.offset * sum;
            out.iter_mut().for_each(|o| *o = self.step * *o + shift);
            return;
        }
        for row in out.chunks_exact_mut(n) {
            for (o, s) in row.iter_mut().zip(&sums) {
                *o = self.step * *o + self.offset * s;
            }
        }
    }
}

/// Software prefetch for a stream being read at `at` (called once per 64-byte line, by the
/// kernels and by the bandwidth probe's "kernels' prefetch"): the line 2 KiB ahead into L1, and
/// the line 8 KiB ahead into L2. Streaming from DRAM, the hardware prefetchers alone left
/// half the bandwidth unused, and an L1 prefetch alone a fifth: a core has few L1 miss buffers
/// but more L2 ones, so the far L2 requests keep more lines in flight. Measured with
/// `qat bench kernels` (4096² ternary 2-bit, cold, one thread: 678 µs without prefetch, 335–416
/// with an L1 one at 1 KiB, 270–289 with both). Against reads measured beside each row, over a
/// rotation of three times the last-level cache: L1 at 2 KiB instead of 1 KiB took the same
/// row from 267–271 µs (five runs) to 248–268 (three), 89–90 % → 92–94 % of the read beside
/// it; L2 alone at 4 KiB was slower for ternary codes, and so were L1 alone at 2 or 3 KiB over
/// the earlier, too small rotation.
#[inline(always)]
pub(crate) fn prefetch_ahead(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address; SSE is part of x86-64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(2048) as *const i8);
        _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(8192) as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Row-major `rows × cols` → row-major `cols × rows` (the kernels give `rows × n` sums; the
/// runtime and the training engine want them per sample).
pub fn transpose<T: Copy + Default>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); m.len()];
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            out[c * rows + r] = *v;
        }
    }
    out
}

/// The reference every path must match: `out[r·n + i] = Σ_c levels[r·cols + c] · x[i·cols + c]`,
/// straight from row-major integer levels (no packing).
pub fn reference_dots(levels: &[i32], rows: usize, cols: usize, x: &[i8], n: usize) -> Vec<i32> {
    let mut out = vec![0i32; rows * n];
    for r in 0..rows {
        for i in 0..n {
            out[r * n + i] = (0..cols).map(|c| levels[r * cols + c] * x[i * cols + c] as i32).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Activations of `n` rows of `cols` padded to `stride` with zeros.
    fn padded(x: &[i8], n: usize, cols: usize, stride: usize) -> Vec<i8> {
        let mut out = vec![0i8; n * stride];
        for i in 0..n {
            out[i * stride..i * stride + cols].copy_from_slice(&x[i * cols..(i + 1) * cols]);
        }
        out
    }

    #[test]
    fn the_layout_puts_column_j_plus_64k_in_byte_j() {
        let codes: Vec<u8> = (0..256).map(|c| (c / 64) as u8).collect();
        let m = CodeMatrix::from_codes(&codes, 1, 256, 2);
        assert_eq!(m.bytes(), 64);
        assert!(m.data.iter().all(|&b| b == 0b11_10_01_00), "fields k = 0..3 hold columns j + 64k");
        // Trits: 0,1,2,0,1 is 28·(3·0 + 1) + 9·2 + 3·0 + 1 = 47.
        let trits: Vec<u8> = (0..320).map(|c| [0, 1, 2, 0, 1][c / 64]).collect();
        let t = CodeMatrix::from_trits(&trits, 1, 320);
        assert_eq!(t.bytes(), 64);
        assert!(t.data.iter().all(|&b| b == 47));
        // a short last block: 65 4-bit codes take 40 bytes (80 columns), not a block of 128 (the
        // activations' stride rounds to 64 columns)
        let short = CodeMatrix::from_codes(&[1; 65], 1, 65, 4);
        assert_eq!((short.padded_cols(), short.bytes()), (128, 40));
        // a width-128 row of 2-bit codes is exactly 32 bytes; byte j holds columns j + 32k
        let codes: Vec<u8> = (0..128).map(|c| (c / 32) as u8).collect();
        let m = CodeMatrix::from_codes(&codes, 1, 128, 2);
        assert_eq!((m.padded_cols(), m.bytes()), (128, 32));
        assert!(m.data.iter().all(|&b| b == 0b11_10_01_00));
        // 320 + 128 columns of trits: a block and 32 bytes (160 columns), not two blocks
        let t = CodeMatrix::from_trits(&[1; 896], 2, 448);
        assert_eq!((t.padded_cols(), t.bytes()), (512, 2 * 96));
    }

    #[test]
    fn every_five_trits_round_trip_through_a_layout_byte_and_its_lookup_tables() {
        let mut seen = std::collections::HashSet::new();
        for v in 0..243u32 {
            let t = [81, 27, 9, 3, 1].map(|p| (v / p % 3) as u8);
            let byte = trit_byte(t);
            assert!(seen.insert(byte), "{t:?} shares byte {byte}");
            assert_eq!(trits_of(byte), t);
            // What the vpermb decoder does: first two trits by the top six bits, last three by
            // the byte less their offset.
            let top = (byte >> 2) as usize;
            let rest = (byte - TRIT_TABLES.offset[top]) as usize;
            let looked_up = [0, 1, 2, 3, 4].map(|k| TRIT_TABLES.trits[k][if k < 2 { top } else { rest }]);
            assert_eq!(looked_up, t, "byte {byte}");
        }
        assert_eq!(TRIT_LAST_CODE, 250);
    }

    #[test]
    fn ternary_levels_give_known_dots() {
        // levels −1, 0, 1 as codes 0, 1, 2 (offset −1, step 1)
        let layer =
            IntLinear { codes: CodeMatrix::from_codes(&[0, 1, 2, 2, 2, 0], 2, 3, 2), offset: -1, step: 1 };
        let stride = layer.codes.padded_cols();
        let x = padded(&[10, 20, 30], 1, 3, stride);
        for path in Path::available() {
            let mut out = vec![0; 2];
            layer.forward(&x, 1, &mut out, path, Workers::One);
            assert_eq!(out, vec![-10 + 30, 10 + 20 - 30], "{path:?}");
        }
    }

    #[test]
    fn split_rows_match_the_reference_on_every_kind_of_workers() {
        // 600 × 512 = 307,200 weights: above the split threshold; 600 rows split unevenly
        let (rows, cols) = (600, 512);
        assert!(rows * cols >= PARALLEL_MIN_WEIGHTS);
        let codes: Vec<u8> = (0..rows * cols).map(|i| (i * 7 % 13 % 3) as u8).collect();
        let levels: Vec<i32> = codes.iter().map(|&c| c as i32).collect();
        let team = crate::team::Team::new(2);
        for n in [1, 3] {
            let x: Vec<i8> = (0..n * cols).map(|i| (i * 31 % 255) as i8).collect();
            let expected = reference_dots(&levels, rows, cols, &x, n);
            for m in
                [CodeMatrix::from_codes(&codes, rows, cols, 2), CodeMatrix::from_trits(&codes, rows, cols)]
            {
                let xp = padded(&x, n, cols, m.padded_cols());
                for path in Path::available() {
                    for workers in [Workers::One, Workers::Rayon, Workers::Team(&team)] {
                        let mut out = vec![0; rows * n];
                        m.code_dots(&xp, n, &mut out, path, workers);
                        assert_eq!(
                            out,
                            expected,
                            "{path:?} {:?} n {n} on {} threads",
                            m.layout(),
                            workers.count()
                        );
                    }
                }
            }
        }
    }

    fn case() -> impl Strategy<Value = (u32, usize, usize, usize, Vec<u8>, Vec<i8>)> {
        (prop_oneof![Just(2u32), Just(4), Just(8)], 1usize..20, 1usize..700, 1usize..10).prop_flat_map(
            |(bits, rows, cols, n)| {
                let codes = proptest::collection::vec(0u8..=((1u16 << bits) - 1) as u8, rows * cols);
                let x = proptest::collection::vec(any::<i8>(), n * cols);
                (Just(bits), Just(rows), Just(cols), Just(n), codes, x)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        #[test]
        fn the_trit_layout_matches_the_reference(
            (rows, cols, n) in (1usize..12, 1usize..900, 1usize..10),
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let codes: Vec<u8> = (0..rows * cols).map(|_| (next() % 3) as u8).collect();
            let x: Vec<i8> = (0..n * cols).map(|_| next() as i8).collect();
            let m = CodeMatrix::from_trits(&codes, rows, cols);
            let levels: Vec<i32> = codes.iter().map(|&c| c as i32).collect();
            let expected = reference_dots(&levels, rows, cols, &x, n);
            let xp = padded(&x, n, cols, m.padded_cols());
            for path in Path::available() {
                let mut out = vec![0; rows * n];
                m.code_dots(&xp, n, &mut out, path, if n % 2 == 0 { Workers::Rayon } else { Workers::One });
                prop_assert_eq!(&out, &expected, "{:?}", path);
            }
            let missing = ran::missing_required(&[ran::Variant::Avx512Trits]);
            prop_assert!(missing.is_empty(), "{:?}", missing);
        }

        #[test]
        fn every_path_matches_the_reference((bits, rows, cols, n, codes, x) in case()) {
            let m = CodeMatrix::from_codes(&codes, rows, cols, bits);
            let levels: Vec<i32> = codes.iter().map(|&c| c as i32).collect();
            let expected = reference_dots(&levels, rows, cols, &x, n);
            let xp = padded(&x, n, cols, m.padded_cols());
            let team = crate::team::Team::new(2);
            for path in Path::available() {
                for (name, workers) in [("one", Workers::One), ("rayon", Workers::Rayon), ("team", Workers::Team(&team))] {
                    let mut out = vec![0; rows * n];
                    m.code_dots(&xp, n, &mut out, path, workers);
                    prop_assert_eq!(&out, &expected, "{:?} on {}", path, name);
                }
            }
            let missing = ran::missing_required(&[ran::Variant::Avx2, ran::Variant::Avx512Vnni]);
            prop_assert!(missing.is_empty(), "{:?}", missing);
        }
    }
}
