//! `qat data`: fetching from a local HTTP server on 127.0.0.1 that the test starts (serving
//! the datasets folder, whole, corrupted, cut short or ignoring ranges), verification, resume,
//! the offline switch, and a run that fetches its missing dataset into the cache first. No test
//! talks to anything but 127.0.0.1.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use crate::cli::text;

/// How the test server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Honest: 200, or 206 for a range request.
    Normal,
    /// One byte in the middle of every body flipped.
    Corrupt,
    /// The first response stops half-way through its body; honest after that.
    DropFirst,
    /// Ranges ignored: always 200 and the whole file.
    IgnoreRange,
}

/// A server for at most 20 requests (then its thread ends); returns its base URL and the
/// `Range` header of each request it saw ("" without one).
fn serve(root: PathBuf, mode: Mode) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().take(20).enumerate() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            let mut range = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = v.trim().trim_end_matches('-').to_string();
                }
            }
            log.lock().unwrap().push(range.clone());
            let path = first.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let Ok(mut body) = std::fs::read(root.join(&path)) else {
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            };
            if mode == Mode::Corrupt {
                let middle = body.len() / 2;
                body[middle] ^= 0x40;
            }
            let total = body.len();
            let start: usize = if mode == Mode::IgnoreRange { 0 } else { range.parse().unwrap_or(0) };
            let head = if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
                    total - start,
                    total - 1
                )
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n")
            };
            let _ = stream.write_all(head.as_bytes());
            let end = if mode == Mode::DropFirst && n == 0 { total / 2 } else { total };
            let _ = stream.write_all(&body[start..end]);
        }
    });
    (url, seen)
}

/// The folder holding the datasets (as the test suite finds them).
fn datasets_root() -> PathBuf {
    qatlab_runner::data::find_dir(qatlab_core::config::Dataset::Mnist).unwrap()
}

/// `qat` in `cwd` with no dataset configuration from the environment: no `QAT_DATA_DIR`, a
/// private cache, downloads allowed.
fn qat_isolated(args: &[&str], cwd: &Path, cache: &Path, extra: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qat"));
    command.args(args).current_dir(cwd).env_remove("QAT_DATA_DIR").env_remove("QAT_OFFLINE");
    command.env_remove("QAT_DATA_MIRROR").env("XDG_CACHE_HOME", cache);
    for (k, v) in extra {
        command.env(k, v);
    }
    command.output().unwrap()
}

const SHAKESPEARE: &str = "tinyshakespeare/input.txt";

fn fetch_shakespeare(mirror: &str, dir: &Path, extra: &[&str]) -> Output {
    let target = dir.join("data");
    let mut args =
        vec!["data", "fetch", "tinyshakespeare", "--dir", target.to_str().unwrap(), "--mirror", mirror];
    args.extend(extra);
    qat_isolated(&args, dir, &dir.join("cache"), &[])
}

#[test]
fn a_fetch_downloads_verifies_and_then_finds_the_files_present() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = serve(datasets_root(), Mode::Normal);
    let out = fetch_shakespeare(&url, dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let fetched = std::fs::read(dir.path().join("data").join(SHAKESPEARE)).unwrap();
    assert_eq!(fetched, std::fs::read(datasets_root().join(SHAKESPEARE)).unwrap());
    assert!(text(&out).contains("SHA-256 verified"), "{}", text(&out));
    let again = fetch_shakespeare(&url, dir.path(), &[]);
    assert!(again.status.success() && text(&again).contains("present and verified"), "{}", text(&again));
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing downloaded twice");
}

#[test]
fn corrupted_bytes_are_a_checksum_error_and_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = serve(datasets_root(), Mode::Corrupt);
    let out = fetch_shakespeare(&url, dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("expected 1115394 bytes with 86c4e6aa"), "{}", text(&out));
    let folder = dir.path().join("data/tinyshakespeare");
    assert_eq!(
        std::fs::read_dir(&folder).unwrap().count(),
        0,
        "no file that looks complete, no partial file"
    );
}

#[test]
fn a_connection_dropped_half_way_is_resumed_by_the_next_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (url, seen) = serve(datasets_root(), Mode::DropFirst);
    let out = fetch_shakespeare(&url, dir.path(), &["--retries", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("connection lost after 557697 of 1115394 bytes"), "{}", text(&out));
    let part = dir.path().join("data/tinyshakespeare/input.txt.part");
    assert_eq!(part.metadata().unwrap().len(), 557_697, "the partial file stays for the next fetch");
    assert!(!dir.path().join("data").join(SHAKESPEARE).exists());
    let out = fetch_shakespeare(&url, dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("resuming at byte 557697"), "{}", text(&out));
    assert_eq!(*seen.lock().unwrap(), ["", "557697"], "the second request asks for the rest only");
    assert!(!part.exists());
    assert!(qatlab_runner::data::fetch::verifies(
        &dir.path().join("data/tinyshakespeare"),
        &qatlab_runner::data::fetch::dataset("tinyshakespeare").unwrap().files[0]
    ));
}

#[test]
fn a_server_that_ignores_ranges_restarts_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("data/tinyshakespeare");
    std::fs::create_dir_all(&folder).unwrap();
    let original = std::fs::read(datasets_root().join(SHAKESPEARE)).unwrap();
    std::fs::write(folder.join("input.txt.part"), &original[..1000]).unwrap();
    let (url, seen) = serve(datasets_root(), Mode::IgnoreRange);
    let out = fetch_shakespeare(&url, dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ignored the range request; starting over"), "{}", text(&out));
    assert_eq!(*seen.lock().unwrap(), ["1000"]);
    assert_eq!(std::fs::read(folder.join("input.txt")).unwrap(), original);
}

#[test]
fn a_refused_connection_names_the_url_and_the_mirror_variable() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let out = fetch_shakespeare(&url, dir.path(), &["--retries", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    assert!(message.contains(&format!("{url}/tinyshakespeare/input.txt: ")), "{message}");
    assert!(message.contains("QAT_DATA_MIRROR"), "{message}");
}

#[test]
fn an_https_url_is_attempted_with_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = serve(datasets_root(), Mode::Normal);
    let https = url.replace("http://", "https://");
    let out = fetch_shakespeare(&https, dir.path(), &["--retries", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out).to_lowercase();
    assert!(message.contains("tls") || message.contains("corrupt message"), "a TLS error: {message}");
    assert!(!message.contains("scheme"), "not an unsupported scheme: {message}");
}

#[test]
fn offline_a_missing_dataset_stops_before_any_run_and_says_how_to_fetch_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("f.yaml"),
        "name: f\ndata: {dataset: fashion-mnist}\nmodel: {hidden: [8]}\ntrain: {epochs: 1}\n",
    )
    .unwrap();
    let out =
        qat_isolated(&["run", "f.yaml"], dir.path(), &dir.path().join("cache"), &[("QAT_OFFLINE", "1")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let message = text(&out);
    assert!(message.contains("fashion-mnist not found and downloads are off"), "{message}");
    assert!(
        message.contains("qatlab/datasets/fashion-mnist") && message.contains("qat data fetch fashion-mnist"),
        "{message}"
    );
    assert!(!dir.path().join("results").exists(), "nothing ran");
    let flag = qat_isolated(&["run", "f.yaml", "--offline"], dir.path(), &dir.path().join("cache"), &[]);
    assert_eq!(flag.status.code(), Some(2), "{}", text(&flag));
}

#[test]
fn a_run_fetches_its_missing_dataset_into_the_cache_first() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = serve(datasets_root(), Mode::Normal);
    std::fs::write(dir.path().join("m.yaml"), "name: m\nmodel: {hidden: [8]}\ntrain: {epochs: 1}\n").unwrap();
    let cache = dir.path().join("cache");
    let out = qat_isolated(&["run", "m.yaml", "-q"], dir.path(), &cache, &[("QAT_DATA_MIRROR", &url)]);
    assert!(out.status.success(), "{}", text(&out));
    let saying_so = text(&out).lines().filter(|l| l.contains("mnist is not on this machine")).count();
    assert_eq!(saying_so, 1, "one line says so: {}", text(&out));
    assert!(text(&out).contains("fetching it into"), "{}", text(&out));
    let listing = qat_isolated(&["data", "list"], dir.path(), &cache, &[]);
    let listing = text(&listing);
    assert!(listing.lines().any(|l| l.starts_with("mnist") && l.contains("verified")), "{listing}");
    assert!(listing.lines().any(|l| l.starts_with("fashion-mnist") && l.contains("missing")), "{listing}");
}
