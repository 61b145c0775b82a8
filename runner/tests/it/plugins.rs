//! Dynamic plugins end to end: the example library in a sweep, the conformance check, a
//! panicking plugin failing only its run, and the load errors (wrong ABI, missing entry, not a
//! library, clashing names), each naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{qat, text, workdir};

/// Build the example and fixture plugin libraries (a no-op when up to date) and return the
/// directory they are in.
fn plugin_dir() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "qatlab-plugin-pow2",
            "-p",
            "qatlab-plugin-faulty",
            "-p",
            "qatlab-plugin-template",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(status.success());
    // the test binary lives in <target>/release/deps
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

fn library(dir: &Path, name: &str) -> String {
    dir.join(format!("{}{name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX))
        .display()
        .to_string()
}

#[test]
fn a_sweep_uses_a_plugin_quantizer_and_activation() {
    let libs = plugin_dir();
    let dir = workdir();
    let yaml = format!(
        "name: plug\nplugins: [{}]\nquantizer: {{name: pow2, bits: 3}}\nmodel: {{hidden: [16]}}\ntrain: {{epochs: 1}}\nsweep:\n  grid:\n    model.activation: [relu, swish]\n",
        library(&libs, "qatlab_plugin_pow2")
    );
    std::fs::write(dir.path().join("p.yaml"), yaml).unwrap();
    let out = qat(&["run", "p.yaml", "-q", "--jobs", "2"], dir.path());
    assert!(out.status.success(), "{}", text(&out));
    let results = std::fs::read_to_string(dir.path().join("results/plug/results.csv")).unwrap();
    let rows: Vec<&str> = results.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{results}");
    assert!(rows.iter().all(|r| r.contains(",success,")), "{results}");
    assert!(rows[1].contains("swish"), "{results}");
    let acc: f64 = rows[1].split(',').nth(5).unwrap().parse().unwrap();
    assert!(acc > 70.0, "a 16-unit pow2 net with swish learns: {results}");
}

#[test]
fn the_conformance_check_runs_on_plugin_quantizers() {
    let libs = plugin_dir();
    let out = qat(
        &[
            "plugins",
            "--check",
            &library(&libs, "qatlab_plugin_pow2"),
            "--check",
            &library(&libs, "qatlab_plugin_template"),
        ],
        Path::new("."),
    );
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("quantizer   pow2") && t.contains("activation  swish"), "{t}");
    assert!(t.contains("conformance pow2: pass") && t.contains("conformance my-sign: pass"), "{t}");
}

#[test]
fn a_panicking_plugin_fails_its_run_and_the_sweep_finishes() {
    let libs = plugin_dir();
    let dir = workdir();
    let yaml = format!(
        "name: faulty\nplugins: [{}]\nmodel: {{hidden: [16]}}\ntrain: {{epochs: 1}}\nsweep:\n  grid:\n    quantizer: [{{name: panic-after, step: 3}}, ternary]\n",
        library(&libs, "qatlab_plugin_faulty")
    );
    std::fs::write(dir.path().join("f.yaml"), yaml).unwrap();
    let out = qat(&["run", "f.yaml", "-q", "--jobs", "1"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let results = std::fs::read_to_string(dir.path().join("results/faulty/results.csv")).unwrap();
    let rows: Vec<&str> = results.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{results}");
    assert!(rows[0].contains(",failed,") && rows[0].contains("deliberate failure at step 3"), "{results}");
    assert!(rows[1].contains(",success,"), "{results}");
}

/// Compile a C shared library for the load-error tests (gcc or cc must be on PATH).
fn c_library(dir: &Path, name: &str, source: &str) -> String {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = dir.join(format!("lib{name}.so"));
    let status = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&out).arg(&c).status().unwrap();
    assert!(status.success(), "cc failed");
    out.display().to_string()
}

fn assert_load_error(library: &str, expected: &str) {
    let out = qat(&["plugins", "--plugin", library], Path::new("."));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains(&format!("plugin {library}:")), "names the file: {t}");
    assert!(t.contains(expected), "expected `{expected}` in: {t}");
}

#[test]
fn load_errors_name_the_file_and_the_problem() {
    let dir = workdir();
    let wrong_abi = c_library(
        dir.path(),
        "wrongabi",
        "struct table { unsigned abi_version; unsigned size; };\nstatic struct table t = {999, 8};\nconst void *qatlab_plugin_entry(void) { return &t; }\n",
    );
    assert_load_error(&wrong_abi, "built against plugin ABI version 999, this qat speaks version 1");
    let no_entry = c_library(dir.path(), "noentry", "int unrelated = 1;\n");
    assert_load_error(&no_entry, "no `qatlab_plugin_entry` symbol");
    let text_file = dir.path().join("notes.so");
    std::fs::write(&text_file, "not a library").unwrap();
    assert_load_error(&text_file.display().to_string(), "not a loadable library");
    let libs = plugin_dir();
    let pow2 = library(&libs, "qatlab_plugin_pow2");
    let out = qat(&["plugins", "--plugin", &pow2, "--plugin", &pow2], Path::new("."));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("quantizer `pow2` is registered twice"), "{}", text(&out));
}
