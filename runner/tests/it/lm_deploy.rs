//! Language models deployed: small ternary models trained here export to model files, the
//! runtime scores the training evaluation's windows within 0.01 nats of the training engine,
//! and `qat generate` (KV cache, integer kernels) gives `qat sample`'s text for the same seed,
//! past the context too (crop and recompute). Bad prompts and files are clear errors.

use std::path::{Path, PathBuf};

use super::cli::{qat, run_dirs, text, workdir};

/// A ternary BitLinear model of two blocks, trained long enough to write more than one letter.
const TERNARY: &str = "data: {dataset: tinyshakespeare}\n\
    model: {kind: transformer, depth: 2, heads: 2, width: 32, context: 32, activation_bits: 8}\n\
    quantizer: ternary\n\
    train: {steps: 300, batch_size: 8, optimizer: {name: adamw, lr: 1.0e-2, weight_decay: 0.1}, \
    schedule: {name: warmup-cosine, warmup: 20, to: 0.1}, grad_clip: 1.0}\n\
    eval: {every: 300, batches: 3}\n";

/// Train `name` (TERNARY with `model_extra` merged into the model) and export it.
fn trained_and_exported(dir: &Path, name: &str, model_extra: &str, packing: &str) -> (PathBuf, PathBuf) {
    let yaml = TERNARY.replace("activation_bits: 8}", &format!("activation_bits: 8{model_extra}}}"));
    std::fs::write(dir.join(format!("{name}.yaml")), format!("name: {name}\n{yaml}")).unwrap();
    let out = qat(&["run", &format!("{name}.yaml"), "-q"], dir);
    assert!(out.status.success(), "{}", text(&out));
    let run = run_dirs(dir, name).remove(0);
    let file = dir.join(format!("{name}.qat"));
    let out =
        qat(&["export", run.to_str().unwrap(), "-o", file.to_str().unwrap(), "--packing", packing], dir);
    assert!(out.status.success(), "{}", text(&out));
    (run, file)
}

/// The number after `marker` in `haystack`.
fn number_after(haystack: &str, marker: &str) -> f64 {
    let rest =
        &haystack[haystack.find(marker).unwrap_or_else(|| panic!("{marker} in {haystack}")) + marker.len()..];
    rest.trim_start()
        .split(|c: char| !(c.is_ascii_digit() || "+-.".contains(c)))
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runtime and training loss agree on the evaluation windows; generation equals sampling.
fn assert_parity(dir: &Path, run: &Path, file: &Path) {
    let (run, file) = (run.to_str().unwrap(), file.to_str().unwrap());
    let out = qat(&["infer", file, "--compare", run, "--batch", "3"], dir);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    let (loss, difference) = (number_after(&report, "validation loss"), number_after(&report, "= "));
    assert!(report.contains("over 24 windows of 32 tokens (3 batches of 8)"), "{report}");
    assert!(loss < 2.9, "300 steps learn more than letter frequencies (ln 65 = 4.17): {report}");
    assert!(difference.abs() < 0.01, "runtime within 0.01 nats of training: {report}");
    for draw in [&["--temperature", "0"][..], &["--temperature", "0.8", "--top-k", "40", "--seed", "3"]] {
        let mut args = vec!["--prompt", "ROMEO:", "--tokens", "100"];
        args.extend_from_slice(draw);
        let generated = qat(&[&["generate", file, "--compare", run][..], &args].concat(), dir);
        assert!(generated.status.success(), "{}", text(&generated));
        let sampled = qat(&[&["sample", run][..], &args].concat(), dir);
        let (stdout, report) =
            (String::from_utf8_lossy(&generated.stdout), String::from_utf8_lossy(&generated.stderr));
        assert_eq!(stdout.chars().count(), "ROMEO:".len() + 100 + 1, "{stdout}");
        if report.contains("gives the same 100 tokens") {
            assert_eq!(stdout, String::from_utf8_lossy(&sampled.stdout), "{draw:?}");
            continue;
        }
        // Where they part (100 tokens past a context of 32), the engines' logits of the two
        // tokens agree: an int8 code that rounds the other way at a .5 boundary, not an error
        // of the runtime. Greedy picks part only at a near tie.
        let logits: Vec<f64> = ["(logit ", "has ", "(logit ", "has "]
            .iter()
            .scan(0, |from, marker| {
                let at =
                    *from + report[*from..].find(marker).unwrap_or_else(|| panic!("{marker} in {report}"));
                *from = at + marker.len();
                Some(number_after(&report[at..], marker))
            })
            .collect();
        let (runtime, training) = ((logits[0], logits[1]), (logits[3], logits[2]));
        assert!((runtime.0 - training.0).abs() < 0.05 && (runtime.1 - training.1).abs() < 0.05, "{report}");
        if draw[1] == "0" {
            assert!((runtime.0 - runtime.1).abs() < 0.05, "greedy parts at a near tie only: {report}");
        }
    }
}

#[test]
fn a_ternary_language_model_deploys_with_the_training_evaluation_and_sample_text() {
    let dir = workdir();
    // the tied embedding quantized to 8 bits: stored as int8 with a scale per row, read by the
    // lookup and the head
    let embed = ", layers: {embed: {quantizer: {name: int, bits: 8, symmetric: false}}}";
    let (run, file) = trained_and_exported(dir.path(), "lmd", embed, "bits");
    assert_parity(dir.path(), &run, &file);
    let inspect = text(&qat(&["inspect", file.to_str().unwrap()], dir.path()));
    for line in [
        "language model: Char tokenizer, 65 tokens, context 32",
        "blocks.1.mlp.proj",
        "head = norm · embedᵀ (f32)",
        "embed                          65×32 int8, a scale per row      2340 bytes",
        "pos                            32×32 f32                        4096 bytes",
        "KV cache 512 bytes per position (16384 for the context of 32)",
    ] {
        assert!(inspect.contains(line), "{line} in {inspect}");
    }

    let generate =
        |args: &[&str]| qat(&[&["generate", file.to_str().unwrap()][..], args].concat(), dir.path());
    // a half-precision KV cache and two threads generate the same amount of text; f32 on two
    // threads is the one-thread text exactly
    let greedy = ["--prompt", "ROMEO:", "--tokens", "100", "--temperature", "0"];
    let one = generate(&greedy);
    let two = generate(&[&greedy[..], &["--threads", "2"]].concat());
    assert_eq!(String::from_utf8_lossy(&two.stdout), String::from_utf8_lossy(&one.stdout));
    let half = generate(&[&greedy[..], &["--kv-cache", "f16", "--threads", "2"]].concat());
    assert!(half.status.success(), "{}", text(&half));
    assert_eq!(String::from_utf8_lossy(&half.stdout).chars().count(), "ROMEO:".len() + 100 + 1);
    let out = generate(&[&greedy[..], &["--kv-cache", "f8"]].concat());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("f8") && text(&out).contains("f16"), "{}", text(&out));
    let out = generate(&["--prompt", "ROMEO: é€"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("characters outside the model's vocabulary: ['é', '€']"), "{}", text(&out));
    let out = generate(&["--prompt", "ROMEO:", "--tokens", "0"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ROMEO:\n", "--tokens 0 prints the prompt");
    let long = "KING:\n".repeat(20);
    let out = generate(&["--prompt", &long, "--tokens", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("the prompt has 120 tokens; the model sees the last 32"),
        "{}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&long), "the whole prompt is printed");
    let out = generate(&["--prompt", ""]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("empty"), "{}", text(&out));
    let out = generate(&["--threads", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("`0` is not a thread count"), "{}", text(&out));

    // the benchmark runs the file in both ternary layouts; a bad shape is named
    let out =
        qat(&["bench", "generate", file.to_str().unwrap(), "--repeat", "1", "--threads", "1"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    for row in ["| lmd | bits (2-bit) | 1 | ", "| lmd | base3 (1.6-bit) | 1 | ", "(pp16)", "(tg16)"] {
        assert!(text(&out).contains(row), "{row} in {}", text(&out));
    }
    let out = qat(&["bench", "generate", "--shape", "depth=2,width=63,heads=2"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("width a multiple of 2·heads"), "{}", text(&out));
    let out = qat(&["bench", "generate", "--shape", "depth=2,size=64"], dir.path());
    assert!(text(&out).contains("unknown key `size`"), "{}", text(&out));
    let out = qat(&["bench", "generate", file.to_str().unwrap(), "--threads", "1,0"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("`0` is not a thread count"), "{}", text(&out));

    // the C runtime has no token ops, and says which
    let out = qat(&["export", run.to_str().unwrap(), "--format", "c-header", "-o", "m.h"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("op 0 (`tokens`) is `embed`, which the C runtime does not implement"),
        "{}",
        text(&out)
    );
    // a classifier's commands name what the file is
    let out = qat(&["bench", "infer", file.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("a language model reads text, not images"), "{}", text(&out));

    // every cut and a flipped byte are errors, never a panic
    let bytes = std::fs::read(&file).unwrap();
    for (i, cut) in [20, bytes.len() / 2, bytes.len() - 3].into_iter().enumerate() {
        let broken = dir.path().join(format!("cut{i}.qat"));
        std::fs::write(&broken, &bytes[..cut]).unwrap();
        let out = qat(&["generate", broken.to_str().unwrap(), "--prompt", "A"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    }
    let mut flipped = bytes.clone();
    flipped[bytes.len() - 100] ^= 0x10;
    std::fs::write(dir.path().join("flipped.qat"), &flipped).unwrap();
    let out = qat(&["generate", "flipped.qat", "--prompt", "A"], dir.path());
    assert!(text(&out).contains("checksum mismatch"), "{}", text(&out));
}

#[test]
fn rope_gated_subln_untied_models_deploy_in_the_trit_packing_too() {
    let dir = workdir();
    let extra =
        ", position: rope, mlp: {gated: true, activation: silu}, subln: true, tie_embeddings: false, \
                 layers: {embed: {quantizer: {name: int, bits: 4}}}";
    let (run, file) = trained_and_exported(dir.path(), "lmr", extra, "base3");
    assert_parity(dir.path(), &run, &file);
    let inspect = text(&qat(&["inspect", file.to_str().unwrap()], dir.path()));
    for line in [
        "rope(blocks.0.attn.qkv, 2 heads)",
        "Silu(blocks.0.mlp.gate)",
        "base3 5/byte",
        "head = norm · headᵀ",
        "embed                          65×32 int8, a scale per row",
        "head                           65×32 f32",
    ] {
        assert!(inspect.contains(line), "{line} in {inspect}");
    }
}
