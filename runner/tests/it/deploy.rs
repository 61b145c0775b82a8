//! Deployment end to end: train short runs, export them, and check that the packed model on the
//! integer kernels (and the exported C code) predicts what the training-time evaluation predicts.

use std::path::Path;

use qatlab_deploy::kernel::Path as KernelPath;
use qatlab_deploy::runtime::Runtime;
use qatlab_runner::export;

use super::cli::{qat, record_of, run_dirs, text, workdir};

fn number_after(haystack: &str, marker: &str) -> f64 {
    let start = haystack.find(marker).unwrap_or_else(|| panic!("`{marker}` in {haystack}")) + marker.len();
    haystack[start..].split(|c: char| !(c.is_ascii_digit() || c == '.')).next().unwrap().parse().unwrap()
}

#[test]
fn deployed_models_predict_what_training_evaluation_predicts() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("deploy.yaml"),
        "name: deploy\nmodel: {hidden: [64, 64], norm: rms, activation_bits: 8}\ntrain: {epochs: 2}\n\
         sweep:\n  grid:\n    quantizer:\n      - ternary\n      - {name: int, bits: 2, symmetric: true}\n      \
         - {name: int, bits: 4, symmetric: true}\n",
    )
    .unwrap();
    let out = qat(&["run", "deploy.yaml", "-q", "--jobs", "2"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let runs = run_dirs(dir.path(), "deploy");
    assert_eq!(runs.len(), 3);
    for run in &runs {
        let model = run.join("model.qat");
        let out = qat(&["export", run.to_str().unwrap(), "-o", model.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{}", text(&out));
        let out = qat(&["infer", model.to_str().unwrap(), "--compare", run.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{}", text(&out));
        let report = text(&out);
        let deployed = number_after(&report, "test accuracy ");
        let trained = number_after(&report, "training-time evaluation: ");
        let differ = number_after(&report, "predictions differ on ");
        let record = record_of(run);
        let recorded = 100.0 * record["final_scores"]["test_acc"].as_f64().unwrap();
        assert!(
            (trained - recorded).abs() < 0.006,
            "the comparison reruns the recorded evaluation: {report}"
        );
        assert!(differ <= 10.0, "at most 10 of 10,000 images may differ: {report}");
        assert!((deployed - trained).abs() <= 0.1, "accuracy within 10 images: {report}");
        assert!(deployed > 90.0, "{report}");
    }
}

#[test]
fn export_inspect_and_every_kernel_path_agree() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("one.yaml"),
        "name: one\nquantizer: ternary\nmodel: {hidden: [32], activation_bits: 8}\ntrain: {epochs: 1}\n",
    )
    .unwrap();
    assert!(qat(&["run", "one.yaml", "-q"], dir.path()).status.success());
    let run = run_dirs(dir.path(), "one").remove(0);
    let mut predictions = Vec::new();
    for (packing, bits) in [("bits", 2.0), ("base3", 1.6), ("base3-words", 1.6)] {
        let file = dir.path().join(format!("{packing}.qat"));
        let out = qat(
            &["export", run.to_str().unwrap(), "-o", file.to_str().unwrap(), "--packing", packing],
            dir.path(),
        );
        assert!(out.status.success(), "{}", text(&out));
        let out = qat(&["inspect", file.to_str().unwrap()], dir.path());
        let listing = text(&out);
        assert!(out.status.success(), "{listing}");
        assert!(listing.contains("fc1         32×256 ternary"), "{listing}");
        assert!(listing
            .contains(&format!("bits/weight), file {} bytes", std::fs::metadata(&file).unwrap().len())));
        let bits_per_weight = number_after(&listing, "bytes of codes and scales (");
        assert!((bits_per_weight - bits).abs() < 0.02, "{packing}: {listing}");
        let model = export::read_model(&file).unwrap();
        let samples = export::test_samples(&model).unwrap();
        for path in KernelPath::available() {
            let runtime = Runtime::new(&model, path, false).unwrap();
            predictions.push((packing, path, export::infer(&runtime, &samples, 7).predictions));
        }
    }
    for (packing, path, p) in &predictions[1..] {
        assert_eq!(p, &predictions[0].2, "{packing} on {path:?} predicts as 2-bit codes on the scalar path");
    }
    use qatlab_deploy::kernel::ran::{missing_required, Variant};
    let missing = missing_required(&[Variant::Avx2, Variant::Avx512Vnni]);
    assert!(missing.is_empty(), "{missing:?}");
}

#[test]
fn a_convolutional_model_deploys_and_its_c_code_predicts_as_the_runtime() {
    let dir = workdir();
    // A full convolution, a pooled depthwise one, then two fully connected layers.
    std::fs::write(
        dir.path().join("c.yaml"),
        "name: c\nquantizer: {name: int, bits: 4, symmetric: true}\ndata: {image_size: 16}\n\
         model: {conv: [{channels: 4}, {channels: 4, depthwise: true, pool: true}], hidden: [32], norm: rms, \
         activation_bits: 8}\ntrain: {epochs: 1}\n",
    )
    .unwrap();
    assert!(qat(&["run", "c.yaml", "-q"], dir.path()).status.success());
    let run = run_dirs(dir.path(), "c").remove(0);
    let file = dir.path().join("c.qat");
    assert!(qat(&["export", run.to_str().unwrap(), "-o", file.to_str().unwrap()], dir.path())
        .status
        .success());
    let out = qat(&["infer", file.to_str().unwrap(), "--compare", run.to_str().unwrap()], dir.path());
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(number_after(&report, "predictions differ on ") <= 10.0, "{report}");
    assert!(number_after(&report, "test accuracy ") > 90.0, "{report}");
    let listing = text(&qat(&["inspect", file.to_str().unwrap()], dir.path()));
    assert!(listing.contains("dw3×3 16×16×4→4, pool"), "{listing}");
    assert!(listing.contains("conv2.pool = max-pool 2×2(conv2.act: 16×16×4)"), "{listing}");
    assert_c_predicts_as_the_runtime(dir.path(), &run, "model.h");
}

/// Export `run` as the C header `header` (in `dir`, with `qat_infer.c` beside it), compile it
/// with a driver under `-Wall -Werror`, and check that it predicts 1,000 test images as the
/// integer runtime does.
fn assert_c_predicts_as_the_runtime(dir: &Path, run: &Path, header: &str) {
    let out = qat(&["export", run.to_str().unwrap(), "-o", header, "--format", "c-header"], dir);
    assert!(out.status.success(), "{}", text(&out));
    let c_text = std::fs::read_to_string(dir.join("qat_infer.c")).unwrap();
    assert!(c_text.contains(&format!("#include \"{header}\"")), "the C file includes the header by its name");
    // A driver that reads preprocessed inputs from a file and prints one prediction per line.
    let samples_file = dir.join("inputs.f32");
    let model =
        export::export_run(run, &qatlab_plugins::builtin_registry(), export::PackingChoice::Bits).unwrap();
    let samples = export::test_samples(&model).unwrap();
    let count = 1000;
    let bytes: Vec<u8> = samples.x[..count * samples.features].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&samples_file, bytes).unwrap();
    std::fs::write(
        dir.join("main.c"),
        format!(
            "#include <stdio.h>\nint qat_predict(const float *input, float *logits);\n#include \"{header}\"\n\
             int main(int argc, char **argv) {{\n  float x[QAT_INPUTS]; FILE *f = fopen(argv[1], \"rb\");\n  \
             while (fread(x, sizeof(float), QAT_INPUTS, f) == QAT_INPUTS) printf(\"%d\\n\", qat_predict(x, 0));\n  \
             return argc == 2 ? 0 : 1;\n}}\n"
        ),
    )
    .unwrap();
    let exe = dir.join("infer");
    let cc = std::process::Command::new("cc")
        .args(["-std=c99", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(dir.join("main.c"))
        .arg(dir.join("qat_infer.c"))
        .arg("-lm")
        .output()
        .expect("a C compiler (cc), which Rust's linker needs anyway");
    assert!(cc.status.success(), "{}", text(&cc));
    let out = std::process::Command::new(&exe).arg(&samples_file).output().unwrap();
    let c_predictions: Vec<usize> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(c_predictions.len(), count);
    let runtime = Runtime::new(&model, KernelPath::best(), false).unwrap();
    let rust_predictions = runtime.predict(&samples.x[..count * samples.features], count);
    let differ = c_predictions.iter().zip(&rust_predictions).filter(|(a, b)| a != b).count();
    assert!(differ <= 3, "C and the integer runtime disagree on {differ} of {count} images");
}

#[test]
fn every_residual_variant_deploys_and_predicts_as_its_training_evaluation() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("r.yaml"),
        "name: r\nquantizer: {name: int, bits: 4, symmetric: true}\nmodel: {hidden: [32, 32, 32]}\n\
         train: {epochs: 1}\nsweep:\n  grid:\n    model.residual: [relu-sum, sum-relu, scaled-sum-relu, relu-scaled-sum]\n",
    )
    .unwrap();
    let out = qat(&["run", "r.yaml", "-q", "--jobs", "2"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let runs = run_dirs(dir.path(), "r");
    assert_eq!(runs.len(), 4);
    for run in &runs {
        let file = dir.path().join("r.qat");
        let out = qat(&["export", run.to_str().unwrap(), "-o", file.to_str().unwrap()], dir.path());
        assert!(out.status.success(), "{}", text(&out));
        let listing = text(&qat(&["inspect", file.to_str().unwrap()], dir.path()));
        assert!(listing.contains("fc2.residual = ") && listing.contains("fc3.residual = "), "{listing}");
        assert!(!listing.contains("fc1.residual"), "no skip around the first layer: {listing}");
        let out = qat(&["infer", file.to_str().unwrap(), "--compare", run.to_str().unwrap()], dir.path());
        let report = text(&out);
        assert!(out.status.success(), "{report}");
        assert!(number_after(&report, "predictions differ on ") <= 10.0, "{report}");
        assert!(number_after(&report, "test accuracy ") > 85.0, "{report}");
        assert_c_predicts_as_the_runtime(dir.path(), run, "residual.h");
    }
}

#[test]
fn unsupported_runs_and_bad_files_are_clear_errors() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("float.yaml"),
        "name: float\nquantizer: none\nmodel: {hidden: [16], activation_bits: 8}\ntrain: {epochs: 1}\n",
    )
    .unwrap();
    assert!(qat(&["run", "float.yaml", "-q"], dir.path()).status.success());
    let run = run_dirs(dir.path(), "float").remove(0);
    let out = qat(&["export", run.to_str().unwrap(), "-o", "m.qat"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("cannot deploy: fc1 is not quantized (quantizer `none`)"), "{}", text(&out));

    // An op the runtime cannot run fails the export with the op's path and tag.
    std::fs::write(
        dir.path().join("ops.yaml"),
        "name: ops\nquantizer: ternary\ndata: {image_size: 8}\nmodel: {hidden: [16]}\ntrain: {epochs: 1}\n\
         sweep:\n  zip:\n    - model.norm: [layer, rms]\n      model.norm_affine: [true, false]\n      model.activation: [relu, gelu]\n",
    )
    .unwrap();
    assert!(qat(&["run", "ops.yaml", "-q", "--jobs", "2"], dir.path()).status.success());
    let mut messages: Vec<String> = run_dirs(dir.path(), "ops")
        .iter()
        .map(|run| {
            let out = qat(&["export", run.to_str().unwrap(), "-o", "m.qat"], dir.path());
            assert_eq!(out.status.code(), Some(2), "{}", text(&out));
            text(&out)
        })
        .collect();
    messages.sort_by_key(|m| !m.contains("fc1.act"));
    assert!(
        messages[0].contains(
            "cannot deploy: fc1.act (activation): the kernels support relu only (and gelu, silu, relu2 in language models)"
        ),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].contains("cannot deploy: fc1.norm (norm): a learned gain and bias do not deploy"),
        "{}",
        messages[1]
    );

    let out = qat(&["export", "results/nothing-here", "-o", "m.qat"], dir.path());
    assert!(text(&out).contains("no config.yaml"), "{}", text(&out));

    std::fs::write(dir.path().join("junk.qat"), b"QATMODEL\x01\0\0\0\xff\xff\0\0{}\0\0\0\0").unwrap();
    let out = qat(&["inspect", "junk.qat"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("junk.qat: truncated file: the header needs 65535 bytes"), "{}", text(&out));
}

/// Regression: a run with `train.quantizer_schedule` (8-bit, then ternary) exported layers
/// labelled `int bits=8` that held 3 levels; export now names the quantizer trained with last.
#[test]
fn an_exported_quantizer_schedule_run_names_the_quantizer_its_layers_ended_with() {
    let dir = workdir();
    std::fs::write(
        dir.path().join("s.yaml"),
        "name: s\nquantizer: {name: int, bits: 8}\nmodel: {hidden: [16]}\n\
         train: {epochs: 2, quantizer_schedule: [{epoch: 1, quantizer: ternary}]}\n",
    )
    .unwrap();
    assert!(qat(&["run", "s.yaml", "-q"], dir.path()).status.success());
    let run = run_dirs(dir.path(), "s").remove(0);
    let model =
        export::export_run(&run, &qatlab_plugins::builtin_registry(), export::PackingChoice::Bits).unwrap();
    assert_eq!(model.header.layers.len(), 2);
    for layer in &model.header.layers {
        assert_eq!(layer.quantizer, "ternary", "{}", layer.name);
        assert_eq!(layer.levels.len(), 3, "{}", layer.name);
    }
}
