//! Getting datasets onto a fresh machine: where each one's files come from (the maintainers'
//! location, with mirrors where the original host is flaky), their sizes and SHA-256 sums
//! compiled in, and a download that resumes a partial file by HTTP range request, retries with
//! backoff, verifies size and checksum, and renames into place atomically, so a failed or
//! corrupt download never leaves a file that looks complete.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One file of a dataset.
#[derive(Clone, Copy, Debug)]
pub struct RemoteFile {
    /// File name inside the dataset's folder.
    pub name: &'static str,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: &'static str,
    /// The MD5 the maintainers publish, where that is the only sum they publish.
    pub md5: Option<&'static str>,
}

/// A dataset qatlab can fetch.
#[derive(Clone, Copy, Debug)]
pub struct RemoteDataset {
    /// Its id (`qat data fetch <id>`) and the folder it lives in.
    pub id: &'static str,
    /// Its files.
    pub files: &'static [RemoteFile],
    /// Base URLs tried in order; a file is `<base><name>`.
    pub urls: &'static [&'static str],
    /// Where the sums come from.
    pub sums_from: &'static str,
}

/// The datasets qatlab fetches. Sums: SHA-256 of the files the maintainers distribute, as the
/// project's dataset folder records them (its README lists the MD5 sums the MNIST and
/// Fashion-MNIST maintainers publish, which these files match).
pub const DATASETS: [RemoteDataset; 4] = [
    RemoteDataset {
        id: "mnist",
        files: &[
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                size: 9_912_422,
                sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                md5: None,
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                size: 28_881,
                sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                md5: None,
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                size: 1_648_877,
                sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                md5: None,
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                size: 4_542,
                sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                md5: None,
            },
        ],
        // The original host is often unreachable; torchvision's mirrors serve the same bytes.
        urls: &[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ],
        sums_from: "SHA-256 of the maintainers' files (they publish MD5 sums, which these match)",
    },
    RemoteDataset {
        id: "fashion-mnist",
        files: &[
            RemoteFile {
                name: "train-images-idx3-ubyte.gz",
                size: 26_421_880,
                sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                md5: None,
            },
            RemoteFile {
                name: "train-labels-idx1-ubyte.gz",
                size: 29_515,
                sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                md5: None,
            },
            RemoteFile {
                name: "t10k-images-idx3-ubyte.gz",
                size: 4_422_102,
                sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                md5: None,
            },
            RemoteFile {
                name: "t10k-labels-idx1-ubyte.gz",
                size: 5_148,
                sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                md5: None,
            },
        ],
        urls: &["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        sums_from: "SHA-256 of the maintainers' files (they publish MD5 sums, which these match)",
    },
    RemoteDataset {
        id: "tinyshakespeare",
        files: &[RemoteFile {
            name: "input.txt",
            size: 1_115_394,
            sha256: "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            md5: None,
        }],
        urls: &["https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"],
        sums_from: "SHA-256 of the char-rnn repository's file (no sum is published)",
    },
    RemoteDataset {
        id: "cifar10",
        files: &[RemoteFile {
            name: "cifar-10-binary.tar.gz",
            size: 170_052_171,
            sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            md5: Some("c32a1d4ab5d03f1284b67883e8d87530"),
        }],
        urls: &["https://www.cs.toronto.edu/~kriz/"],
        sums_from: "the maintainers publish MD5 c32a1d4ab5d03f1284b67883e8d87530; the SHA-256 is the one \
                    third-party loaders carry",
    },
];

/// The dataset of `id`, or an error listing the ids.
pub fn dataset(id: &str) -> Result<&'static RemoteDataset> {
    DATASETS.iter().find(|d| d.id == id).ok_or_else(|| {
        let ids: Vec<&str> = DATASETS.iter().map(|d| d.id).collect();
        let hint = qatlab_core::registry::did_you_mean(id, &ids);
        Error::Config(format!("unknown dataset `{id}`{hint}; datasets: {}", ids.join(", ")))
    })
}

/// How one fetch behaves.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Download again even when the files verify.
    pub force: bool,
    /// A mirror laid out as `<mirror>/<id>/<file>`, used instead of the dataset's own URLs.
    pub mirror: Option<String>,
    /// Further attempts after a failed one (each resumes what is there).
    pub retries: u32,
    /// Progress bars (on a terminal) instead of plain lines.
    pub bars: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            force: false,
            mirror: std::env::var("QAT_DATA_MIRROR").ok().filter(|m| !m.is_empty()),
            retries: 3,
            bars: false,
        }
    }
}

/// Whether `file` in `dir` has the right size and checksum.
pub fn verifies(dir: &Path, file: &RemoteFile) -> bool {
    let path = dir.join(file.name);
    path.metadata().is_ok_and(|m| m.len() == file.size) && sums_of(&path).is_ok_and(|s| matches(file, &s))
}

/// Whether (SHA-256, MD5) are the file's.
fn matches(file: &RemoteFile, (sha256, md5): &(String, String)) -> bool {
    *sha256 == file.sha256 && file.md5.is_none_or(|m| m == md5)
}

/// SHA-256 and MD5 of a file, lowercase hex, in one read.
fn sums_of(path: &Path) -> std::io::Result<(String, String)> {
    use md5::Md5;
    let (mut sha, mut md5) = (Sha256::new(), Md5::new());
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        md5.update(&buf[..n]);
    }
    Ok((super::hex(&sha.finalize()), super::hex(&md5.finalize())))
}

/// Download every file of `set` that is missing or does not verify into `root/<id>/`, and
/// verify it; returns the dataset's folder. Messages go to `log` (one line each).
pub fn fetch(
    set: &RemoteDataset,
    root: &Path,
    options: &FetchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf> {
    let dir = root.join(set.id);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for file in set.files {
        if !options.force && verifies(&dir, file) {
            log(&format!("{}/{}: present and verified", set.id, file.name));
            continue;
        }
        // A mirror replaces the dataset's own locations (machines without internet use one).
        let bases: Vec<String> = match &options.mirror {
            Some(m) => vec![format!("{}/{}/", m.trim_end_matches('/'), set.id)],
            None => set.urls.iter().map(|u| u.to_string()).collect(),
        };
        let mut errors = Vec::new();
        let mut done = false;
        for base in &bases {
            let url = format!("{base}{}", file.name);
            match download(&url, &dir, file, options, log) {
                Ok(()) => {
                    done = true;
                    break;
                }
                Err(e @ Error::Data(_)) => return Err(e),
                Err(e) => errors.push(format!("{url}: {e}")),
            }
        }
        if !done {
            return Err(Error::Fetch(format!(
                "{}/{}: every source failed:\n  {}\nset QAT_DATA_MIRROR (or --mirror) to a mirror laid out as <mirror>/{}/{}, or copy the files into {}",
                set.id,
                file.name,
                errors.join("\n  "),
                set.id,
                file.name,
                dir.display()
            )));
        }
    }
    Ok(dir)
}

/// Fetch `url` into `<dir>/<name>.part` (resuming what is there), verify it, rename it into
/// place. A checksum or size mismatch removes the partial file and is a [`Error::Data`].
fn download(
    url: &str,
    dir: &Path,
    file: &RemoteFile,
    options: &FetchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let part = dir.join(format!("{}.part", file.name));
    if options.force {
        let _ = std::fs::remove_file(&part);
    }
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .build();
    let mut attempt = 0;
    loop {
        match transfer(&agent, url, &part, file, options, log) {
            Ok(()) => break,
            Err(e) if attempt < options.retries => {
                attempt += 1;
                let wait = Duration::from_millis(250 << attempt.min(5));
                log(&format!(
                    "{url}: {e}; retrying in {:.1} s (attempt {} of {})",
                    wait.as_secs_f64(),
                    attempt + 1,
                    options.retries + 1
                ));
                std::thread::sleep(wait);
            }
            Err(e) => return Err(e),
        }
    }
    let got = part.metadata().map(|m| m.len()).unwrap_or(0);
    let sums = sums_of(&part).map_err(|e| Error::io(&part, e))?;
    if got != file.size || !matches(file, &sums) {
        let sum = &sums.0;
        let _ = std::fs::remove_file(&part);
        return Err(Error::Data(format!(
            "{url}: got {got} bytes with SHA-256 {sum}, expected {} bytes with {}; nothing was kept (a mirror serving other bytes?)",
            file.size, file.sha256
        )));
    }
    let target = dir.join(file.name);
    std::fs::rename(&part, &target).map_err(|e| Error::io(&target, e))?;
    log(&format!("{}: {} bytes, SHA-256 verified", target.display(), file.size));
    Ok(())
}

/// One request: continue the partial file from its length (a server that answers 200 to the
/// range request sends everything, so the file starts over).
fn transfer(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    file: &RemoteFile,
    options: &FetchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    if have == file.size {
        return Ok(());
    }
    let mut request = agent.get(url);
    if have > 0 && have < file.size {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| match e {
        ureq::Error::Status(code, _) => Error::Fetch(format!("HTTP {code}")),
        ureq::Error::Transport(t) => Error::Fetch(t.to_string()),
    })?;
    let resumed = response.status() == 206 && have > 0;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| Error::io(part, e))?;
    let start = if resumed { have } else { 0 };
    if have > 0 {
        log(&match resumed {
            true => format!("{url}: resuming at byte {have}"),
            false => format!("{url}: the server ignored the range request; starting over"),
        });
    } else {
        log(&format!("{url}: downloading {} bytes", file.size));
    }
    let bar = options.bars.then(|| {
        let bar = indicatif::ProgressBar::new(file.size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("a valid template"),
        );
        bar.set_message(file.name);
        bar.set_position(start);
        bar
    });
    let mut reader = response.into_reader().take(file.size - start);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                // keep what arrived for the next attempt to resume from
                out.sync_all().map_err(|e| Error::io(part, e))?;
                let now = part.metadata().map(|m| m.len()).unwrap_or(0);
                return Err(Error::Fetch(format!(
                    "connection lost after {now} of {} bytes ({e})",
                    file.size
                )));
            }
        };
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
        if let Some(bar) = &bar {
            bar.inc(n as u64);
        }
    }
    out.sync_all().map_err(|e| Error::io(part, e))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let now = part.metadata().map(|m| m.len()).unwrap_or(0);
    if now < file.size {
        return Err(Error::Fetch(format!("connection lost after {now} of {} bytes (closed)", file.size)));
    }
    Ok(())
}
