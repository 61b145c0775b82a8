//! Ways of reading memory for the bandwidth probe, so that kernels are judged against the best
//! read rate the machine gives rather than against one loop that the kernels themselves can beat:
//! several interleaved streams per thread, software prefetch at several distances (or none, leaving
//! it to the hardware prefetchers), and non-temporal prefetch hints.

/// Software prefetch of a read method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefetch {
    /// None: the hardware prefetchers alone.
    None,
    /// The kernels' own: 2 KiB ahead into L1 and 8 KiB ahead into L2.
    Kernels,
    /// Into L1 only, this many bytes ahead.
    L1(usize),
    /// Into L2 only, this many bytes ahead.
    L2(usize),
    /// Non-temporal (`prefetchnta`), this many bytes ahead: lines that bypass most of the cache
    /// hierarchy, as a stream read once wants.
    NonTemporal(usize),
}

/// One way of reading a buffer: `streams` interleaved sequential streams per thread, each
/// prefetched as `prefetch` says, with scalar 8-byte loads or (`wide`) 64-byte AVX-512 loads as
/// the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMethod {
    /// Concurrent sequential streams, each over its own contiguous part.
    pub streams: usize,
    /// Software prefetch.
    pub prefetch: Prefetch,
    /// 64-byte loads (AVX-512; only [`Prefetch::None`] and [`Prefetch::Kernels`]).
    pub wide: bool,
}

impl ReadMethod {
    /// Every method the probe tries.
    pub fn all() -> Vec<ReadMethod> {
        let prefetches = [
            Prefetch::None,
            Prefetch::Kernels,
            Prefetch::L1(1024),
            Prefetch::L1(2048),
            Prefetch::L2(4096),
            Prefetch::L2(8192),
            Prefetch::L2(16384),
            Prefetch::NonTemporal(1024),
            Prefetch::NonTemporal(4096),
        ];
        let scalar = [1, 2, 4]
            .into_iter()
            .flat_map(|streams| prefetches.map(|prefetch| ReadMethod { streams, prefetch, wide: false }));
        let wide = super::Path::available().contains(&super::Path::Avx512Vnni).then(|| {
            [1, 2, 4].into_iter().flat_map(|streams| {
                [Prefetch::None, Prefetch::Kernels].map(|prefetch| ReadMethod {
                    streams,
                    prefetch,
                    wide: true,
                })
            })
        });
        scalar.chain(wide.into_iter().flatten()).collect()
    }

    /// A short label, e.g. `2 streams, L2 +16 KiB`.
    pub fn label(&self) -> String {
        let prefetch = match self.prefetch {
            Prefetch::None => "no prefetch".to_string(),
            Prefetch::Kernels => "kernels' prefetch (L1 +2 KiB, L2 +8 KiB)".to_string(),
            Prefetch::L1(d) => format!("L1 prefetch +{} KiB", d / 1024),
            Prefetch::L2(d) => format!("L2 prefetch +{} KiB", d / 1024),
            Prefetch::NonTemporal(d) => format!("NTA prefetch +{} KiB", d / 1024),
        };
        let loads = if self.wide { "64-byte loads" } else { "8-byte loads" };
        format!("{} stream{}, {loads}, {prefetch}", self.streams, if self.streams > 1 { "s" } else { "" })
    }
}

/// Wrapping sum of `words` read as `method` says, in 16 independent lanes per stream so that
/// memory, not an add chain, sets the pace. The result does not depend on the method.
pub fn read_sum(words: &[u64], method: ReadMethod) -> u64 {
    const BLOCK: usize = 16; // 128 bytes
    let streams = method.streams.max(1);
    let per = words.len() / BLOCK / streams * BLOCK;
    let parts: Vec<&[u64]> = (0..streams).map(|s| &words[s * per..(s + 1) * per]).collect();
    let rest = words[streams * per..].iter().fold(0u64, |a, &b| a.wrapping_add(b));
    #[cfg(target_arch = "x86_64")]
    if method.wide && super::Path::available().contains(&super::Path::Avx512Vnni) {
        // SAFETY: `available()` confirmed AVX-512.
        let sum = unsafe { super::avx512::stream_sum(&parts, method.prefetch == Prefetch::Kernels) };
        return sum.wrapping_add(rest);
    }
    let mut lanes = [0u64; BLOCK];
    for b in (0..per).step_by(BLOCK) {
        for part in &parts {
            let block = &part[b..b + BLOCK];
            // both 64-byte lines of the block, as the kernels prefetch every line they read
            prefetch(block.as_ptr() as *const u8, method.prefetch);
            prefetch(block[8..].as_ptr() as *const u8, method.prefetch);
            let block: &[u64; BLOCK] = block.try_into().expect("a block of 16");
            for k in 0..BLOCK {
                lanes[k] = lanes[k].wrapping_add(block[k]);
            }
        }
    }
    lanes.iter().fold(rest, |a, &b| a.wrapping_add(b))
}

#[inline(always)]
fn prefetch(at: *const u8, how: Prefetch) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address; SSE is part of x86-64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA, _MM_HINT_T0, _MM_HINT_T1};
        match how {
            Prefetch::None => {}
            Prefetch::Kernels => super::prefetch_ahead(at),
            Prefetch::L1(d) => _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(d) as *const i8),
            Prefetch::L2(d) => _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(d) as *const i8),
            Prefetch::NonTemporal(d) => _mm_prefetch::<_MM_HINT_NTA>(at.wrapping_add(d) as *const i8),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, how);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_reads_every_word_once() {
        for len in [0, 1, 15, 16, 17, 129, 1000, 4099] {
            let words: Vec<u64> = (0..len as u64).map(|i| i * i + 7).collect();
            let expected = words.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            for method in ReadMethod::all() {
                assert_eq!(read_sum(&words, method), expected, "{len} words, {}", method.label());
            }
        }
    }
}
