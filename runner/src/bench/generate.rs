//! `qat bench generate`: token generation from language-model files (and from a random
//! ternary model of any shape) on the deployment runtime, in llama-bench's terms: prompt
//! processing (tokens/s over a prompt of half the context, one pass), generation (tokens/s over
//! the tokens that then fill the context, one at a time on the KV cache, batch 1), and the rate
//! past the context (each token recomputes a whole window, nanoGPT's crop rule). For a model that
//! streams its weights from memory, the bound is weight bytes per token ÷ the best read
//! bandwidth of [`super::kernels::bandwidth_probe`].

use std::time::Instant;

use qatlab_deploy::decoder::Decoder;
use qatlab_deploy::runtime::{argmax, TernaryLayout};

use crate::error::{Error, Result};

/// What was measured for one decoder at one thread count.
pub struct Rates {
    /// Prompt tokens per second.
    pub prompt: f64,
    /// Generated tokens per second within the context.
    pub generate: f64,
    /// Generated tokens per second past the context.
    pub past: f64,
    /// Prompt and generated tokens per repetition.
    pub tokens: (usize, usize),
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// How much to run per repetition.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Repetitions (medians are reported).
    pub repeat: usize,
    /// Prompt tokens (None: half the context).
    pub prompt: Option<usize>,
    /// Tokens generated after the prompt (None: up to the context).
    pub generate: Option<usize>,
    /// Tokens generated past the context.
    pub past: usize,
}

/// Measure `decoder` as `plan` says.
pub fn measure(decoder: &Decoder, plan: Plan) -> Result<Rates> {
    let err = |e: qatlab_deploy::DeployError| Error::Config(e.to_string());
    let (context, vocab) = (decoder.text().context, decoder.vocab());
    let prompt_len = plan.prompt.unwrap_or(context / 2).clamp(1, context);
    let generated = plan.generate.unwrap_or(context).min(context - prompt_len);
    let (repeat, past) = (plan.repeat, plan.past);
    let window: Vec<u8> = (0..context).map(|i| ((i * 7919 + 13) % vocab) as u8).collect();
    let (mut prompt, mut generate, mut beyond) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat.max(1) {
        let mut state = decoder.state(1);
        let start = Instant::now();
        let logits = decoder.forward(&mut state, &window[..prompt_len]).map_err(err)?;
        prompt.push(prompt_len as f64 / start.elapsed().as_secs_f64());
        let mut next = argmax(&logits[logits.len() - vocab..]) as u8;
        let start = Instant::now();
        for _ in 0..generated {
            next = argmax(&decoder.forward(&mut state, &[next]).map_err(err)?) as u8;
        }
        if generated > 0 {
            generate.push(generated as f64 / start.elapsed().as_secs_f64());
        }
        let start = Instant::now();
        for _ in 0..past {
            let logits = decoder.window_logits(&window, 1).map_err(err)?;
            next = argmax(&logits[logits.len() - vocab..]) as u8;
        }
        std::hint::black_box(next);
        if past > 0 {
            beyond.push(past as f64 / start.elapsed().as_secs_f64());
        }
    }
    let or_nan = |v: Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
    Ok(Rates {
        prompt: median(prompt),
        generate: or_nan(generate),
        past: or_nan(beyond),
        tokens: (prompt_len, generated),
    })
}

/// One table row: a decoder built for a layout, measured on `threads` threads.
pub struct Row {
    /// The model's name.
    pub model: String,
    /// `--packing` name of the ternary layout.
    pub layout: &'static str,
    /// Threads.
    pub threads: usize,
    /// Weight bytes one token reads.
    pub bytes_per_token: usize,
    /// The rates.
    pub rates: Rates,
}

/// The `--packing` name of a layout.
pub fn layout_name(layout: TernaryLayout) -> &'static str {
    match layout {
        TernaryLayout::Auto => "none (f32) or auto",
        TernaryLayout::TwoBit => "bits (2-bit)",
        TernaryLayout::Trits => "base3 (1.6-bit)",
    }
}

/// Measure `decoder` on each of `threads` thread counts.
pub fn rows(
    model: &str,
    layout: TernaryLayout,
    decoder: &mut Decoder,
    threads: &[usize],
    plan: Plan,
) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for &n in threads {
        decoder.set_threads(n);
        let rates = measure(decoder, plan)?;
        out.push(Row {
            model: model.to_string(),
            layout: layout_name(layout),
            threads: n,
            bytes_per_token: decoder.weight_bytes_per_token(),
            rates,
        });
    }
    Ok(out)
}

/// A rate with a decimal below 100 (a large model's few tokens per second).
fn rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

/// The markdown table of `rows`; with `bandwidth` (GB/s per thread count), each row's bound
/// (bytes per token ÷ bandwidth) and its share of it.
pub fn table(rows: &[Row], bandwidth: Option<&[(usize, f64)]>) -> String {
    let mut out = String::from(
        "| model | ternary layout | threads | prompt tok/s (pp) | generation tok/s (tg) | past the context tok/s | weight MB/token | bound tok/s | % of bound |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let bound = bandwidth
            .and_then(|b| b.iter().find(|(t, _)| *t == r.threads))
            .map(|(_, gbs)| gbs * 1e9 / r.bytes_per_token as f64);
        let (pp, tg) = r.rates.tokens;
        out += &format!(
            "| {} | {} | {} | {} (pp{pp}) | {} (tg{tg}) | {} | {:.3} | {} | {} |\n",
            r.model,
            r.layout,
            r.threads,
            rate(r.rates.prompt),
            rate(r.rates.generate),
            rate(r.rates.past),
            r.bytes_per_token as f64 / 1e6,
            bound.map_or("—".into(), |b| format!("{b:.1}")),
            bound.map_or("—".into(), |b| format!("{:.0}%", 100.0 * r.rates.generate / b)),
        );
    }
    out
}

/// Parse `depth=24,width=2048,heads=16,context=256` (vocab 256, the byte tokenizer).
pub fn parse_shape(spec: &str) -> Result<qatlab_deploy::synthetic::Shape> {
    let mut shape =
        qatlab_deploy::synthetic::Shape { depth: 0, width: 0, heads: 0, context: 256, vocab: 256 };
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| {
            Error::Config(format!("--shape {spec}: `{part}` is not key=value (depth, width, heads, context)"))
        })?;
        let value: usize =
            value.parse().map_err(|_| Error::Config(format!("--shape {spec}: `{value}` is not a count")))?;
        match key {
            "depth" => shape.depth = value,
            "width" => shape.width = value,
            "heads" => shape.heads = value,
            "context" => shape.context = value,
            other => {
                return Err(Error::Config(format!(
                    "--shape {spec}: unknown key `{other}` (depth, width, heads, context)"
                )))
            }
        }
    }
    Ok(shape)
}

/// The size of the largest (last-level) CPU cache the OS reports, in bytes.
pub fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let level: usize = read(e.path().join("level"))?.parse().ok()?;
            let size = read(e.path().join("size"))?;
            let (digits, unit) =
                size.split_at(size.find(|c: char| !c.is_ascii_digit()).unwrap_or(size.len()));
            let scale = match unit {
                "K" => 1 << 10,
                "M" => 1 << 20,
                "" => 1,
                _ => return None,
            };
            Some((level, digits.parse::<usize>().ok()? * scale))
        })
        .max()
        .map(|(_, bytes)| bytes)
}
