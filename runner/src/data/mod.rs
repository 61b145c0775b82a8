//! Datasets: the original gzipped IDX files, checked against known SHA-256 sums, and the
//! reference project's preprocessing (antialiased resize, normalisation, seeded augmentation).

pub mod augment;
pub mod cifar;
pub mod fetch;
pub mod idx;
pub mod resize;
pub mod text;

use std::path::{Path, PathBuf};

use qatlab_core::config::{DataConfig, Dataset};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// MNIST's normalisation mean (of pixels scaled to [0, 1]).
pub const MEAN: f32 = 0.1307;
/// MNIST's normalisation standard deviation.
pub const STD: f32 = 0.3081;

/// The four IDX files of a greyscale dataset with their SHA-256 sums (of the `.gz` files), as
/// the fetch catalogue lists them.
fn files(dataset: Dataset) -> Result<[(&'static str, &'static str); 4]> {
    let set = fetch::dataset(dataset.dir_name())?;
    match set.files {
        [a, b, c, d] => Ok([a, b, c, d].map(|f| (f.name, f.sha256))),
        _ => Err(Error::Data(format!("{} is not an IDX dataset of four files", set.id))),
    }
}

/// Raw images (u8, row-major, one after another) with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Pixels, `len × rows × cols`.
    pub images: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl Split {
    /// The images whose `mask` entry equals `keep`, in order.
    pub fn subset(&self, mask: &[bool], keep: bool) -> Self {
        let (images, labels) = pick_images(&self.images, &self.labels, mask, keep);
        Self { images, labels, rows: self.rows, cols: self.cols }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.images[i * n..(i + 1) * n]
    }
}

/// Network-ready samples: normalised floats, row-major `len × features`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// Inputs.
    pub x: Vec<f32>,
    /// Labels.
    pub labels: Vec<u8>,
    /// Inputs per sample.
    pub features: usize,
}

impl Samples {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// Append another set of samples of the same width.
    pub fn extend(&mut self, other: Samples) {
        self.x.extend(other.x);
        self.labels.extend(other.labels);
    }
}

/// Train and test splits of one dataset.
pub struct DatasetFiles {
    /// 60,000 training images.
    pub train: Split,
    /// 10,000 test images.
    pub test: Split,
}

/// Where datasets are looked for, in order: `$QAT_DATA_DIR`, `./data`, `shared/datasets`
/// beside the current directory or any of its parents (`../shared/datasets` from the repo root),
/// then the user cache ([`cache_dir`]).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("QAT_DATA_DIR") {
        dirs.push(PathBuf::from(dir));
    }
    dirs.push(PathBuf::from("data"));
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(cwd.ancestors().skip(1).map(|a| a.join("shared").join("datasets")));
    }
    dirs.extend(cache_dir());
    dirs
}

/// The user's dataset cache, `qatlab/datasets` in the platform's cache folder
/// (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS); None without a home.
pub fn cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("qatlab").join("datasets"))
}

/// Where fetches go: `$QAT_DATA_DIR` when set, else the cache.
pub fn fetch_root() -> Result<PathBuf> {
    match std::env::var_os("QAT_DATA_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => cache_dir().ok_or_else(|| {
            Error::Data(
                "no place to put datasets: set QAT_DATA_DIR (no HOME or XDG_CACHE_HOME either)".into(),
            )
        }),
    }
}

/// Set by `--offline`: never download (as `QAT_OFFLINE=1`).
pub static OFFLINE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether downloads are off (`--offline` or `QAT_OFFLINE=1`).
pub fn offline() -> bool {
    OFFLINE.load(std::sync::atomic::Ordering::Relaxed) || std::env::var("QAT_OFFLINE").is_ok_and(|v| v == "1")
}

/// The first search directory that holds `dataset`'s folder; a dataset found nowhere is
/// fetched into [`fetch_root`] (one line on stderr says so) unless [`offline`].
pub fn find_dir(dataset: Dataset) -> Result<PathBuf> {
    static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
    let dirs = search_dirs();
    let id = dataset.dir_name();
    if let Some(dir) = dirs.iter().find(|d| d.join(id).is_dir()) {
        return Ok(dir.clone());
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.join(id).display().to_string()).collect();
    if offline() {
        return Err(Error::Data(format!(
            "{id} not found and downloads are off (QAT_OFFLINE=1 or --offline); looked in: {}. \
             Fetch it with `qat data fetch {id}`, or point QAT_DATA_DIR at a folder that holds `{id}/`",
            looked.join(", ")
        )));
    }
    let root = fetch_root()?;
    eprintln!(
        "qat: {id} is not on this machine (looked in {}); fetching it into {}",
        looked.join(", "),
        root.display()
    );
    fetch::fetch(fetch::dataset(id)?, &root, &fetch::FetchOptions::default(), &mut |line| {
        eprintln!("qat: {line}")
    })?;
    Ok(root)
}

/// Load and verify both splits of `dataset` from `root/<dataset dir>/`.
pub fn load(dataset: Dataset, root: &Path) -> Result<DatasetFiles> {
    let dir = root.join(dataset.dir_name());
    let [train_x, train_y, test_x, test_y] =
        files(dataset)?.map(|(name, sum)| read_verified(&dir.join(name), sum));
    Ok(DatasetFiles { train: split(train_x?, train_y?)?, test: split(test_x?, test_y?)? })
}

fn split(images: (PathBuf, Vec<u8>), labels: (PathBuf, Vec<u8>)) -> Result<Split> {
    let (n, rows, cols, pixels) =
        idx::parse_images(&images.1).map_err(|e| Error::Data(format!("{}: {e}", images.0.display())))?;
    let labels_v =
        idx::parse_labels(&labels.1).map_err(|e| Error::Data(format!("{}: {e}", labels.0.display())))?;
    if labels_v.len() != n {
        return Err(Error::Data(format!(
            "{} holds {n} images but {} holds {} labels",
            images.0.display(),
            labels.0.display(),
            labels_v.len()
        )));
    }
    Ok(Split { images: pixels, labels: labels_v, rows, cols })
}

/// Read a `.gz` file, check its SHA-256 against `expected`, and decompress it.
pub fn read_verified(path: &Path, expected: &str) -> Result<(PathBuf, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| {
        Error::Data(format!(
            "cannot read {}: {e}; the dataset needs the four original .gz IDX files",
            path.display()
        ))
    })?;
    let actual = sha256_hex(&raw);
    if actual != expected {
        return Err(Error::Data(format!(
            "{} is corrupt: SHA-256 is {actual}, expected {expected}; replace it with the original file",
            path.display()
        )));
    }
    let bytes = idx::gunzip(&raw).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    Ok((path.to_path_buf(), bytes))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes` (how sums are written).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The reference preprocessing of every image of `split`: resize to `size`×`size`, scale to
/// [0, 1], normalise with [`MEAN`] and [`STD`].
pub fn preprocess(split: &Split, size: usize) -> Samples {
    let resizer = resize::Resizer::new(split.rows, split.cols, size, size);
    let mut x = Vec::with_capacity(split.len() * size * size);
    for i in 0..split.len() {
        push_normalised(split.image(i), &resizer, &mut x);
    }
    Samples { x, labels: split.labels.clone(), features: size * size }
}

/// Resize one u8 image and append its normalised pixels to `out`.
pub fn push_normalised(image: &[u8], resizer: &resize::Resizer, out: &mut Vec<f32>) {
    let small = resizer.apply(image);
    out.extend(small.iter().map(|&p| normalise(p)));
}

/// (p/255 − mean)/std.
pub fn normalise(pixel: u8) -> f32 {
    (pixel as f32 / 255.0 - MEAN) / STD
}

/// Raw training images, kept for per-epoch augmentation.
pub enum RawImages {
    /// Greyscale IDX images (MNIST, Fashion-MNIST).
    Grey(Split),
    /// Colour images (CIFAR-10).
    Colour(cifar::Images),
    /// None (text).
    None,
}

/// The images (equal-sized rows of `pixels`, one label each) whose `mask` entry is `keep`.
pub(crate) fn pick_images(pixels: &[u8], labels: &[u8], mask: &[bool], keep: bool) -> (Vec<u8>, Vec<u8>) {
    let size = pixels.len() / labels.len().max(1);
    let chosen = || mask.iter().enumerate().filter(move |(_, &m)| m == keep).map(|(i, _)| i);
    (
        chosen().flat_map(|i| pixels[i * size..(i + 1) * size].iter().copied()).collect(),
        chosen().map(|i| labels[i]).collect(),
    )
}

/// The seed of the validation split: fixed, so every run of a sweep (every seed) validates on
/// the same images.
const VALIDATION_SPLIT_SEED: u64 = 0x5A11_DA7E;

/// Which of `total` training images are held out: `n` of them, drawn without replacement from
/// [`VALIDATION_SPLIT_SEED`] (a seeded partial Fisher–Yates shuffle); true = validation.
fn held_out(total: usize, n: usize, config: &DataConfig) -> Result<Vec<bool>> {
    use rand::{Rng, SeedableRng};
    if n == 0 || n >= total {
        return Err(Error::Data(format!(
            "data.validation: {n} images; {} has {total} training images here, so hold out between 1 and {}",
            config.dataset.dir_name(),
            total.saturating_sub(1)
        )));
    }
    let mut order: Vec<usize> = (0..total).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(VALIDATION_SPLIT_SEED);
    for i in 0..n {
        let j = rng.gen_range(i..total);
        order.swap(i, j);
    }
    let mut mask = vec![false; total];
    order[..n].iter().for_each(|&i| mask[i] = true);
    Ok(mask)
}

/// Everything a run needs: clean train and test samples, and the raw training images for
/// per-epoch augmentation.
pub struct RunData {
    /// What the dataset asks of a model.
    pub task: Task,
    /// Clean, preprocessed training samples.
    pub train: Samples,
    /// Preprocessed test samples (all 10,000).
    pub test: Samples,
    /// Raw training images (for augmentation).
    pub raw_train: RawImages,
    /// The data config they were made with.
    pub config: DataConfig,
    /// The token streams of a text dataset (then `train` and `test` are empty).
    pub text: Option<text::Text>,
    /// Training images held out to validate (`data.validation`), preprocessed.
    pub validation: Option<Samples>,
}

/// What a dataset asks of a model: the shape of its inputs and the number of classes. Models,
/// losses, analysis and exports take these from here, never from constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// Input channels (1 for the greyscale digit and fashion sets).
    pub channels: usize,
    /// Height and width of the (square) input after preprocessing.
    pub side: usize,
    /// Number of classes.
    pub classes: usize,
}

impl Task {
    /// The task of the dataset `config` names, at its preprocessed size.
    pub fn of(config: &DataConfig) -> Self {
        match config.dataset {
            Dataset::Mnist | Dataset::FashionMnist => {
                Task { channels: 1, side: config.image_size, classes: 10 }
            }
            Dataset::Cifar10 => Task { channels: 3, side: cifar::SIDE, classes: cifar::CLASSES },
            // one token per input value; the model's context says how many per sample
            Dataset::Tinyshakespeare => Task { channels: 1, side: 1, classes: text::SHAKESPEARE_VOCAB },
            // planning fills in the vocabulary of a user's file (bytes: all 256)
            Dataset::Text => Task { channels: 1, side: 1, classes: config.vocab.unwrap_or(256) },
        }
    }

    /// Values per input sample (channel-major planes of `side²`).
    pub fn features(&self) -> usize {
        self.channels * self.side * self.side
    }
}

impl RunData {
    /// Find, verify, decode and preprocess the dataset named in `config`.
    pub fn load(config: &DataConfig) -> Result<Self> {
        let task = Task::of(config);
        if config.dataset.is_text() {
            let text = match config.dataset {
                Dataset::Text => text::Text::from_file(config)?,
                _ => text::Text::load(config.dataset, &find_dir(config.dataset)?)?,
            };
            if text.vocab_size() != task.classes {
                return Err(Error::Data(format!(
                    "{}: {} tokens in the vocabulary, expected {}",
                    config.dataset.dir_name(),
                    text.vocab_size(),
                    task.classes
                )));
            }
            return Ok(Self {
                task,
                train: Samples::default(),
                test: Samples::default(),
                raw_train: RawImages::None,
                config: config.clone(),
                text: Some(text),
                validation: None,
            });
        }
        let root = find_dir(config.dataset)?;
        if config.dataset == Dataset::Cifar10 {
            let files = cifar::load(&root.join(config.dataset.dir_name()))?;
            let (train, held) = match config.validation {
                Some(n) => {
                    let mask = held_out(files.train.len(), n, config)?;
                    let pick = |keep: bool| files.train.subset(&mask, keep);
                    (pick(false), Some(pick(true)))
                }
                None => (files.train, None),
            };
            return Ok(Self {
                task,
                train: cifar::preprocess(&train),
                test: cifar::preprocess(&files.test),
                raw_train: RawImages::Colour(train),
                config: config.clone(),
                text: None,
                validation: held.as_ref().map(cifar::preprocess),
            });
        }
        let files = load(config.dataset, &root)?;
        let (train, held) = match config.validation {
            Some(n) => {
                let mask = held_out(files.train.len(), n, config)?;
                (files.train.subset(&mask, false), Some(files.train.subset(&mask, true)))
            }
            None => (files.train, None),
        };
        Ok(Self {
            task,
            train: preprocess(&train, config.image_size),
            test: preprocess(&files.test, config.image_size),
            raw_train: RawImages::Grey(train),
            config: config.clone(),
            text: None,
            validation: held.as_ref().map(|h| preprocess(h, config.image_size)),
        })
    }

    /// The training samples of `epoch`: the clean set, plus a freshly augmented copy when
    /// augmentation is on (so an augmented epoch of MNIST is 120,000 images).
    /// With `crop_flip` (CIFAR), the training set itself cropped and flipped afresh.
    pub fn epoch_train(&self, seed: u64, epoch: usize) -> std::borrow::Cow<'_, Samples> {
        let raw = match &self.raw_train {
            RawImages::Colour(images) if self.config.crop_flip => {
                return std::borrow::Cow::Owned(cifar::crop_flip(images, seed, epoch))
            }
            RawImages::Grey(split) if self.config.augment => split,
            _ => return std::borrow::Cow::Borrowed(&self.train),
        };
        let mut all = self.train.clone();
        all.extend(augment::augmented_copy(raw, self.config.image_size, seed, epoch, self.config.elastic));
        std::borrow::Cow::Owned(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_split_is_fixed_disjoint_and_complete() {
        let config = DataConfig::default();
        let mask = held_out(100, 10, &config).unwrap();
        assert_eq!(mask.iter().filter(|&&m| m).count(), 10);
        assert_eq!(mask, held_out(100, 10, &config).unwrap(), "the same images every time");
        assert_ne!(mask[..10], [true; 10], "drawn, not the first ones");
        // images follow their labels into either part, each exactly once
        let split = Split {
            images: (0..100u8).flat_map(|i| [i, i]).collect(),
            labels: (0..100u8).collect(),
            rows: 1,
            cols: 2,
        };
        let (val, train) = (split.subset(&mask, true), split.subset(&mask, false));
        assert_eq!((val.len(), train.len()), (10, 90));
        let mut all: Vec<u8> = val.labels.iter().chain(&train.labels).copied().collect();
        all.sort();
        assert_eq!(all, (0..100u8).collect::<Vec<_>>());
        for part in [&val, &train] {
            for (i, &label) in part.labels.iter().enumerate() {
                assert_eq!(part.images[2 * i..2 * i + 2], [label, label]);
            }
        }
        assert!(held_out(100, 100, &config).unwrap_err().to_string().contains("hold out between 1 and 99"));
    }
}
