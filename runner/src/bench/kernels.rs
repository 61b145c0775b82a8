//! `qat bench kernels` and `qat bench infer`: the deployment kernels timed side by side with an
//! f32 GEMV and the machine's measured read bandwidth, in one run, so the ratios are comparable.
//!
//! "Cold" rotates over enough copies of the matrix to exceed the last-level cache (as a real
//! model's layers would stream from DRAM); "hot" repeats one matrix.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use qatlab_deploy::format::ModelFile;
use qatlab_deploy::kernel::probe::{read_sum, ReadMethod};
use qatlab_deploy::kernel::{CodeMatrix, IntLinear, Path};
use qatlab_deploy::runtime::Runtime;
use qatlab_deploy::team::{Team, Workers};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::Samples;

/// Bytes the cold cases rotate over: three times the last-level cache the OS reports, at least
/// 768 MiB (three times the 256 MiB of this project's first machines), so that no copy is still
/// cached when it comes round again. (A fixed 768 MiB was 1.6 times this machine's 480 MiB.)
fn cold_bytes() -> usize {
    super::generate::last_level_cache_bytes().map_or(768 << 20, |llc| (3 * llc).max(768 << 20))
}

/// One measured case.
struct Row {
    shape: (usize, usize),
    n: usize,
    kind: String,
    threads: usize,
    cold: bool,
    seconds: f64,
    weight_bytes: usize,
    /// A cold row's bound: the best rate of the probe's fastest methods read in turn with the
    /// kernel's calls (GB/s).
    read_beside: Option<f64>,
}

/// A weight format under test.
enum Subject {
    Int(Vec<IntLinear>, Path, &'static str),
    F32(Vec<Vec<f32>>),
}

/// Parse `ROWSxCOLS` shape filters.
pub fn parse_shapes(specs: &[String]) -> crate::error::Result<Vec<(usize, usize)>> {
    specs
        .iter()
        .map(|s| {
            let parsed = s.split_once('x').and_then(|(r, c)| Some((r.parse().ok()?, c.parse().ok()?)));
            parsed.filter(|&(r, c)| r > 0 && c > 0).ok_or_else(|| {
                crate::error::Error::Config(format!(
                    "--shape {s}: expected ROWSxCOLS with positive numbers, e.g. 4096x4096"
                ))
            })
        })
        .collect()
}

/// Run the kernel benchmark and return its table (Markdown): the MNIST layer shapes, the two
/// LLM-sized shapes unless `quick`, or exactly `only` when given.
pub fn run(seconds: f64, quick: bool, only: &[(usize, usize)]) -> String {
    let mut out = String::new();
    let (table, probe) = bandwidth_probe(seconds.min(0.3));
    out += &table;
    let bandwidth = probe.rates();
    out += &format!(
        "\nkernel paths on this CPU: {:?}\n\n",
        Path::available().iter().map(|p| p.name()).collect::<Vec<_>>()
    );
    out += "A cold row's read rate is measured beside it: the probe's fastest methods for its \
            thread count read their own rotating buffers in turn with the kernel's calls, and the \
            row is a share of the best of them, so both rates come from the same seconds. A hot \
            row is a share of the table's best.\n\n";
    out += "| shape (rows×cols) | n | weights | threads | cache | µs/call | GOP/s | weight GB/s | read GB/s | % of read |\n";
    out += "|---|---|---|---|---|---|---|---|---|---|\n";
    let mut shapes = vec![(64, 256), (64, 64), (10, 64)];
    if !quick {
        shapes.splice(0..0, [(4096, 4096), (4096, 11008)]);
    }
    if !only.is_empty() {
        shapes = only.to_vec();
    }
    for &(rows, cols) in &shapes {
        let big = rows * cols >= 1 << 20;
        for n in [1, 8] {
            let mut rows_out = Vec::new();
            for format in formats(big, quick) {
                let subject = subject(format, rows, cols, big, probe.cold_bytes());
                for threads in if big { vec![1, 2] } else { vec![1] } {
                    for cold in if big { vec![true, false] } else { vec![false] } {
                        let beside = (cold && big).then_some(&probe);
                        rows_out.push(measure(&subject, (rows, cols, n), threads, cold, seconds, beside));
                    }
                }
            }
            for r in rows_out {
                let best = bandwidth.iter().find(|(t, _)| *t == r.threads).map_or(f64::NAN, |b| b.1);
                let bw = r.read_beside.unwrap_or(best);
                let gbs = r.weight_bytes as f64 / r.seconds / 1e9;
                out += &format!(
                    "| {}×{} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1}% |\n",
                    r.shape.0,
                    r.shape.1,
                    r.n,
                    r.kind,
                    r.threads,
                    if r.cold { "cold" } else { "hot" },
                    r.seconds * 1e6,
                    2.0 * (r.shape.0 * r.shape.1 * r.n) as f64 / r.seconds / 1e9,
                    gbs,
                    bw,
                    100.0 * gbs / bw
                );
            }
        }
    }
    out
}

/// A weight format to build at one shape.
#[derive(Clone, Copy)]
enum Format {
    /// Ternary 2-bit codes on this path.
    Ternary(Path, &'static str),
    /// Ternary 1.6-bit (five trits per byte) on the fastest path.
    Trits,
    /// k-bit codes on the fastest path (levels `offset + step·code`).
    Int(u32, i32, i32, &'static str),
    /// Dense f32.
    F32,
}

/// The formats compared at one shape: ternary 2-bit on each available path, ternary 1.6-bit
/// (five trits per byte), 4-bit and 8-bit on the fastest, and f32.
fn formats(big: bool, quick: bool) -> Vec<Format> {
    let mut out = Vec::new();
    for path in Path::available() {
        if path == Path::Scalar && (big && !quick) {
            continue; // minutes per case at 4096²; the property tests cover its correctness
        }
        let name = match path {
            Path::Scalar => "ternary 2-bit scalar",
            Path::Avx2 => "ternary 2-bit avx2",
            Path::Avx512Vnni => "ternary 2-bit avx512",
        };
        out.push(Format::Ternary(path, name));
    }
    out.extend([Format::Trits, Format::Int(4, -15, 2, "int4"), Format::Int(8, -128, 1, "int8"), Format::F32]);
    out
}

/// `format` at `rows × cols` with random weights, in enough copies to rotate over `cold_bytes`
/// when `big` (built one format at a time: the copies of every format at once would not fit).
fn subject(format: Format, rows: usize, cols: usize, big: bool, cold_bytes: usize) -> Subject {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let copies = |bytes: usize| if big { (cold_bytes / bytes.max(1)).max(2) } else { 1 };
    let int = |bits: u32, offset: i32, step: i32, rng: &mut ChaCha8Rng| {
        let levels = if bits == 2 { 3 } else { 1u16 << bits };
        let codes: Vec<u8> = (0..rows * cols).map(|_| rng.gen_range(0..levels) as u8).collect();
        IntLinear { codes: CodeMatrix::from_codes(&codes, rows, cols, bits), offset, step }
    };
    match format {
        Format::Ternary(path, name) => {
            let m = int(2, -1, 1, &mut rng);
            Subject::Int(vec![m.clone(); copies(m.codes.bytes())], path, name)
        }
        Format::Trits => {
            let codes: Vec<u8> = (0..rows * cols).map(|_| rng.gen_range(0..3u8)).collect();
            let m = IntLinear { codes: CodeMatrix::from_trits(&codes, rows, cols), offset: -1, step: 1 };
            Subject::Int(vec![m.clone(); copies(m.codes.bytes())], Path::best(), "ternary 1.6-bit")
        }
        Format::Int(bits, offset, step, name) => {
            let m = int(bits, offset, step, &mut rng);
            Subject::Int(vec![m.clone(); copies(m.codes.bytes())], Path::best(), name)
        }
        Format::F32 => {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            Subject::F32(vec![w; copies(rows * cols * 4)])
        }
    }
}

/// Time `subject` on `(rows, cols, n)`; with `beside`, the probe's fastest methods read in
/// turn with its calls.
fn measure(
    subject: &Subject,
    (rows, cols, n): (usize, usize, usize),
    threads: usize,
    cold: bool,
    seconds: f64,
    beside: Option<&Probe>,
) -> Row {
    let team = Team::new(threads);
    let workers = Workers::Team(&team);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (kind, bytes, copies) = match subject {
        Subject::Int(m, path, name) => (format!("{name} ({})", path.name()), m[0].codes.bytes(), m.len()),
        Subject::F32(w) => ("f32".to_string(), w[0].len() * 4, w.len()),
    };
    let pick = |i: usize| if cold { i % copies } else { 0 };
    let methods = beside.map_or(Vec::new(), |p| p.fastest(threads));
    // each probe call reads a buffer of its own, never one a call before it left in the cache
    let probe_reads = |i: usize, k: usize| {
        if let Some(p) = beside {
            p.read(i * methods.len() + k, &team, methods[k]);
        }
    };
    let times = match subject {
        Subject::Int(m, path, _) => {
            let stride = m[0].codes.padded_cols();
            let x: Vec<i8> = (0..n * stride).map(|k| if k % stride < cols { rng.gen() } else { 0 }).collect();
            let mut out = vec![0i32; rows * n];
            median_calls(seconds, 1 + methods.len(), |i, k| {
                if k == 0 {
                    m[pick(i)].forward(&x, n, &mut out, *path, workers);
                    black_box(&out);
                } else {
                    probe_reads(i, k - 1);
                }
            })
        }
        Subject::F32(w) => {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; rows * n];
            median_calls(seconds, 1 + methods.len(), |i, k| {
                if k == 0 {
                    f32_gemm(&w[pick(i)], cols, &x, n, &mut out, workers);
                    black_box(&out);
                } else {
                    probe_reads(i, k - 1);
                }
            })
        }
    };
    let read_beside = (!methods.is_empty())
        .then(|| times[1..].iter().map(|&t| PROBE_CHUNK as f64 / t / 1e9).fold(0.0, f64::max));
    Row { shape: (rows, cols), n, kind, threads, cold, seconds: times[0], weight_bytes: bytes, read_beside }
}

/// Median wall time of `call(i)` for i = 0, 1, ..., repeated for `seconds` (at least 5 calls).
fn median_call(seconds: f64, mut call: impl FnMut(usize)) -> f64 {
    median_calls(seconds, 1, |i, _| call(i))[0]
}

/// Median wall time of each of `kinds` calls made in turn, `call(i, k)` for round i = 0, 1, ...
/// and kind k, for `seconds` per kind (at least 5 rounds): rates of the same moments.
fn median_calls(seconds: f64, kinds: usize, mut call: impl FnMut(usize, usize)) -> Vec<f64> {
    let started = Instant::now();
    let mut times = vec![Vec::new(); kinds];
    let mut round = 0;
    while started.elapsed().as_secs_f64() < seconds * kinds as f64 || round < 5 {
        for (k, times) in times.iter_mut().enumerate() {
            let t = Instant::now();
            call(round, k);
            times.push(t.elapsed().as_secs_f64());
        }
        round += 1;
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// The f32 baseline: `out[r·n + i] = Σ w[r][c]·x[i][c]`, sixteen accumulators per dot so the
/// compiler vectorises it (AVX2 under this workspace's target CPU; `f32::mul_add` would not).
fn f32_gemm(w: &[f32], cols: usize, x: &[f32], n: usize, out: &mut [f32], workers: Workers) {
    workers.for_chunks(out, n, |r, o| {
        let wr = &w[r * cols..(r + 1) * cols];
        for (i, o) in o.iter_mut().enumerate() {
            let xi = &x[i * cols..(i + 1) * cols];
            let mut acc = [0f32; 16];
            let (wc, xc) = (wr.chunks_exact(16), xi.chunks_exact(16));
            let tail: f32 = wc.remainder().iter().zip(xc.remainder()).map(|(a, b)| a * b).sum();
            for (a, b) in wc.zip(xc) {
                let (a, b): (&[f32; 16], &[f32; 16]) = (a.try_into().expect("16"), b.try_into().expect("16"));
                for k in 0..16 {
                    acc[k] += a[k] * b[k];
                }
            }
            *o = acc.iter().sum::<f32>() + tail;
        }
    });
}

/// Bytes of one probe call: a cold kernel row reads about as much per call (a 4096² int8 matrix).
const PROBE_CHUNK: usize = 16 << 20;

/// The bandwidth probe's buffers (16 MiB each, rotating over [`cold_bytes`] as the cold rows do)
/// and what its table found: per thread count, every method's rate.
pub struct Probe {
    chunks: Vec<Vec<u64>>,
    rates: Vec<(usize, Vec<(ReadMethod, f64)>)>,
}

impl Probe {
    /// Bytes its buffers (and the cold kernel rows) rotate over.
    pub fn cold_bytes(&self) -> usize {
        self.chunks.len() * PROBE_CHUNK
    }

    /// The best rate per thread count (GB/s): the bound the kernels are judged against.
    pub fn rates(&self) -> Vec<(usize, f64)> {
        self.rates.iter().map(|(t, r)| (*t, r.iter().map(|m| m.1).fold(0.0, f64::max))).collect()
    }

    /// The three fastest methods on `threads` threads, read again beside a cold kernel row.
    fn fastest(&self, threads: usize) -> Vec<ReadMethod> {
        let Some((_, rates)) = self.rates.iter().find(|(t, _)| *t == threads) else { return Vec::new() };
        let mut sorted = rates.clone();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        sorted.into_iter().take(3).map(|m| m.0).collect()
    }

    /// Read buffer `i` (rotating) with `method`, split over `team` as the kernels split rows.
    fn read(&self, i: usize, team: &Team, method: ReadMethod) {
        let chunk = &self.chunks[i % self.chunks.len()];
        let per = chunk.len() / team.threads();
        let sums: Vec<AtomicU64> = (0..team.threads()).map(|_| AtomicU64::new(0)).collect();
        team.run(&|t| sums[t].store(read_sum(&chunk[t * per..(t + 1) * per], method), Ordering::Relaxed));
        black_box(sums.iter().fold(0u64, |a, s| a.wrapping_add(s.load(Ordering::Relaxed))));
    }
}

/// The memory read rate, tried every way [`ReadMethod::all`] knows (streams per thread, load
/// width, prefetch distances, non-temporal hints), with 1 and 2 threads, measured as the cold
/// kernel rows are: one 16 MiB buffer per call, rotating over [`cold_bytes`] of them, median
/// call. Returns the table and the probe, whose best rates the kernels are judged against.
pub fn bandwidth_probe(seconds: f64) -> (String, Probe) {
    let chunks: Vec<Vec<u64>> = (0..cold_bytes() / PROBE_CHUNK)
        .map(|c| (0..(PROBE_CHUNK / 8) as u64).map(|w| w ^ c as u64).collect())
        .collect();
    let mut probe = Probe { chunks, rates: Vec::new() };
    let threads = [1usize, 2];
    let mut out = format!(
        "memory read bandwidth, 16 MiB per call rotating over {} MiB (three times the last-level \
         cache) as the cold rows read (GB/s, median call):\n\n",
        probe.cold_bytes() >> 20
    );
    out += "| read method | 1 thread | 2 threads |\n|---|---|---|\n";
    let methods = ReadMethod::all();
    let mut rates = vec![Vec::new(); threads.len()];
    for &method in &methods {
        for (k, &t) in threads.iter().enumerate() {
            let team = Team::new(t);
            let median = median_call(seconds, |i| probe.read(i, &team, method));
            rates[k].push((method, PROBE_CHUNK as f64 / median / 1e9));
        }
        let [one, two] = [&rates[0], &rates[1]].map(|r| r.last().expect("just measured").1);
        out += &format!("| {} | {one:.1} | {two:.1} |\n", method.label());
    }
    probe.rates = threads.into_iter().zip(rates).collect();
    let best = probe.rates();
    out += &format!("| **best** | **{:.1}** | **{:.1}** |\n", best[0].1, best[1].1);
    (out, probe)
}

/// `qat bench infer`: samples/s of the model on one thread at batch 1 and 64, per kernel path.
pub fn infer_table(model: &ModelFile, samples: &Samples) -> String {
    let mut out = format!("{} on {} test images, 1 thread\n\n", model.header.name, samples.len());
    out += "| kernel | batch | samples/s | µs/sample | accuracy |\n|---|---|---|---|---|\n";
    for path in Path::available() {
        let runtime = Runtime::new(model, path, false).expect("available paths load");
        for batch in [1, 64] {
            let result = crate::export::infer(&runtime, samples, batch);
            out += &format!(
                "| {} | {batch} | {:.0} | {:.2} | {:.2}% |\n",
                path.name(),
                1.0 / result.seconds_per_sample,
                1e6 * result.seconds_per_sample,
                100.0 * result.accuracy
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_beside_each_other_alternate_and_give_a_median_each() {
        let mut order = Vec::new();
        let medians = median_calls(0.0, 3, |round, kind| {
            order.push((round, kind));
            std::thread::sleep(std::time::Duration::from_micros(200 * (kind as u64 + 1)));
        });
        // at least five rounds, each calling every kind in turn
        assert!(order.len() >= 15 && order.len() % 3 == 0, "{order:?}");
        assert!(order.iter().enumerate().all(|(i, &(round, kind))| round == i / 3 && kind == i % 3));
        assert_eq!(medians.len(), 3);
        assert!(medians[0] < medians[1] && medians[1] < medians[2], "{medians:?}");
        assert!(medians[0] >= 200e-6, "{medians:?}");
    }
}
