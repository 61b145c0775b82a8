//! `qat bench kernels` and `qat bench infer`: the deployment kernels timed side by side with an
//! f32 GEMV and the machine's measured read bandwidth, in one run, so the ratios are comparable.
//!
//! "Cold" rotates over enough copies of the matrix to exceed the last-level cache (as a real
//! model's layers would stream from DRAM); "hot" repeats one matrix.

use std::hint::black_box;
use std::time::Instant;

use qatlab_deploy::format::ModelFile;
use qatlab_deploy::kernel::probe::{read_sum, ReadMethod};
use qatlab_deploy::kernel::{CodeMatrix, IntLinear, Path};
use qatlab_deploy::runtime::Runtime;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::Samples;

/// Bytes the cold cases rotate over: three times the 256 MiB last-level cache of this project's
/// machine class, so no copy is still cached when it comes round again.
const COLD_BYTES: usize = 768 << 20;

/// One measured case.
struct Row {
    shape: (usize, usize),
    n: usize,
    kind: String,
    threads: usize,
    cold: bool,
    seconds: f64,
    weight_bytes: usize,
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
    let (probe, bandwidth) = bandwidth_probe(seconds.min(0.3));
    out += &probe;
    out += &format!(
        "\nkernel paths on this CPU: {:?}\n\n",
        Path::available().iter().map(|p| p.name()).collect::<Vec<_>>()
    );
    out += "| shape (rows×cols) | n | weights | threads | cache | µs/call | GOP/s | weight GB/s | % of best read |\n";
    out += "|---|---|---|---|---|---|---|---|---|\n";
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
            for subject in subjects(rows, cols, big, quick) {
                for threads in if big { vec![1, 2] } else { vec![1] } {
                    for cold in if big { vec![true, false] } else { vec![false] } {
                        rows_out.push(measure(&subject, rows, cols, n, threads, cold, seconds));
                    }
                }
            }
            for r in rows_out {
                let bw = bandwidth.iter().find(|(t, _)| *t == r.threads).map_or(f64::NAN, |b| b.1);
                let gbs = r.weight_bytes as f64 / r.seconds / 1e9;
                out += &format!(
                    "| {}×{} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0}% |\n",
                    r.shape.0,
                    r.shape.1,
                    r.n,
                    r.kind,
                    r.threads,
                    if r.cold { "cold" } else { "hot" },
                    r.seconds * 1e6,
                    2.0 * (r.shape.0 * r.shape.1 * r.n) as f64 / r.seconds / 1e9,
                    gbs,
                    100.0 * gbs / bw
                );
            }
        }
    }
    out
}

/// The formats compared at one shape: ternary 2-bit on each available path, ternary 1.6-bit
/// (five trits per byte), 4-bit and 8-bit on the fastest, and f32.
fn subjects(rows: usize, cols: usize, big: bool, quick: bool) -> Vec<Subject> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let best = Path::best();
    let mut out = Vec::new();
    let int = |bits: u32, offset: i32, step: i32, rng: &mut ChaCha8Rng| {
        let levels = if bits == 2 { 3 } else { 1u16 << bits };
        let codes: Vec<u8> = (0..rows * cols).map(|_| rng.gen_range(0..levels) as u8).collect();
        IntLinear { codes: CodeMatrix::from_codes(&codes, rows, cols, bits), offset, step }
    };
    let copies = |bytes: usize| if big { (COLD_BYTES / bytes.max(1)).max(2) } else { 1 };
    let ternary = int(2, -1, 1, &mut rng);
    let n = copies(ternary.codes.bytes());
    for path in Path::available() {
        if path == Path::Scalar && (big && !quick) {
            continue; // minutes per case at 4096²; the property tests cover its correctness
        }
        let name = match path {
            Path::Scalar => "ternary 2-bit scalar",
            Path::Avx2 => "ternary 2-bit avx2",
            Path::Avx512Vnni => "ternary 2-bit avx512",
        };
        out.push(Subject::Int(vec![ternary.clone(); n], path, name));
    }
    let trit_codes: Vec<u8> = (0..rows * cols).map(|_| rng.gen_range(0..3u8)).collect();
    let trits = IntLinear { codes: CodeMatrix::from_trits(&trit_codes, rows, cols), offset: -1, step: 1 };
    out.push(Subject::Int(vec![trits.clone(); copies(trits.codes.bytes())], best, "ternary 1.6-bit"));
    let int4 = int(4, -15, 2, &mut rng);
    out.push(Subject::Int(vec![int4.clone(); copies(int4.codes.bytes())], best, "int4"));
    let int8 = int(8, -128, 1, &mut rng);
    out.push(Subject::Int(vec![int8.clone(); copies(int8.codes.bytes())], best, "int8"));
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
    out.push(Subject::F32(vec![w; copies(rows * cols * 4)]));
    out
}

fn measure(
    subject: &Subject,
    rows: usize,
    cols: usize,
    n: usize,
    threads: usize,
    cold: bool,
    seconds: f64,
) -> Row {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (kind, bytes, copies) = match subject {
        Subject::Int(m, path, name) => (format!("{name} ({})", path.name()), m[0].codes.bytes(), m.len()),
        Subject::F32(w) => ("f32".to_string(), w[0].len() * 4, w.len()),
    };
    let pick = |i: usize| if cold { i % copies } else { 0 };
    let seconds = pool.install(|| match subject {
        Subject::Int(m, path, _) => {
            let stride = m[0].codes.padded_cols();
            let x: Vec<i8> = (0..n * stride).map(|k| if k % stride < cols { rng.gen() } else { 0 }).collect();
            let mut out = vec![0i32; rows * n];
            median_call(seconds, |i| {
                m[pick(i)].forward(&x, n, &mut out, *path, threads > 1);
                black_box(&out);
            })
        }
        Subject::F32(w) => {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let mut out = vec![0f32; rows * n];
            median_call(seconds, |i| {
                f32_gemm(&w[pick(i)], cols, &x, n, &mut out, threads > 1);
                black_box(&out);
            })
        }
    });
    Row { shape: (rows, cols), n, kind, threads, cold, seconds, weight_bytes: bytes }
}

/// Median wall time of `call(i)` for i = 0, 1, ..., repeated for `seconds` (at least 5 calls).
fn median_call(seconds: f64, mut call: impl FnMut(usize)) -> f64 {
    let started = Instant::now();
    let mut times = Vec::new();
    while started.elapsed().as_secs_f64() < seconds || times.len() < 5 {
        let t = Instant::now();
        call(times.len());
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// The f32 baseline: `out[r·n + i] = Σ w[r][c]·x[i][c]`, sixteen accumulators per dot so the
/// compiler vectorises it (AVX2 under this workspace's target CPU; `f32::mul_add` would not).
fn f32_gemm(w: &[f32], cols: usize, x: &[f32], n: usize, out: &mut [f32], parallel: bool) {
    use rayon::prelude::*;
    let dot = |(r, o): (usize, &mut [f32])| {
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
    };
    if parallel {
        out.par_chunks_mut(n).enumerate().for_each(dot);
    } else {
        out.chunks_mut(n).enumerate().for_each(dot);
    }
}

/// The memory read rate, tried every way [`ReadMethod::all`] knows (streams per thread, load
/// width, prefetch distances, non-temporal hints), with 1 and 2 threads, measured as the cold
/// kernel rows are: one 16 MiB buffer per call, rotating over [`COLD_BYTES`] of them, median
/// call. Returns the table and, per thread count, the best rate in GB/s: the bound the kernels
/// are judged against.
pub fn bandwidth_probe(seconds: f64) -> (String, Vec<(usize, f64)>) {
    use rayon::prelude::*;
    const CHUNK: usize = 16 << 20;
    let chunks: Vec<Vec<u64>> =
        (0..COLD_BYTES / CHUNK).map(|c| (0..(CHUNK / 8) as u64).map(|w| w ^ c as u64).collect()).collect();
    let threads = [1usize, 2];
    let mut out = String::from(
        "memory read bandwidth, 16 MiB per call rotating over 768 MiB as the cold rows read \
         (GB/s, median call):\n\n",
    );
    out += "| read method | 1 thread | 2 threads |\n|---|---|---|\n";
    let mut best = vec![0f64; threads.len()];
    for method in ReadMethod::all() {
        let rates: Vec<f64> = threads
            .iter()
            .map(|&t| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(t).build().expect("a rayon pool");
                let median = pool.install(|| {
                    median_call(seconds, |i| {
                        let chunk = &chunks[i % chunks.len()];
                        let sum: u64 = chunk
                            .par_chunks(chunk.len() / t)
                            .map(|c| read_sum(c, method))
                            .reduce(|| 0, u64::wrapping_add);
                        black_box(sum);
                    })
                });
                CHUNK as f64 / median / 1e9
            })
            .collect();
        best.iter_mut().zip(&rates).for_each(|(b, r)| *b = b.max(*r));
        out += &format!("| {} | {:.1} | {:.1} |\n", method.label(), rates[0], rates[1]);
    }
    out += &format!("| **best** | **{:.1}** | **{:.1}** |\n", best[0], best[1]);
    (out, threads.into_iter().zip(best).collect())
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
