//! CIFAR-10, binary version: five training batches and one test batch of 10,000 records each, a
//! record being one label byte and 3,072 pixel bytes (the red, green and blue planes of a 32×32
//! image, row-major). Read from the maintainers' archive (`cifar-10-binary.tar.gz`) or its
//! extracted folder; member sizes and class counts are checked. Samples are channel-major
//! (`3 × 32 × 32`, as the file stores them), normalised per channel; training augmentation is
//! CIFAR's usual random crop with 4 pixels of zero padding and horizontal flip, in place.

use std::io::Read;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::augment::stream_seed;
use super::Samples;
use crate::error::{Error, Result};

/// Side of an image.
pub const SIDE: usize = 32;
/// Pixel bytes per image (three planes).
pub const PIXELS: usize = 3 * SIDE * SIDE;
/// Records per batch file.
pub const RECORDS: usize = 10_000;
/// Classes.
pub const CLASSES: usize = 10;
/// Per-channel mean of the training pixels in [0, 1] (red, green, blue).
pub const MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// Per-channel standard deviation.
pub const STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// The archive's name.
pub const ARCHIVE: &str = "cifar-10-binary.tar.gz";
/// The folder the archive extracts to.
pub const FOLDER: &str = "cifar-10-batches-bin";
/// Training members, in order.
pub const TRAIN_MEMBERS: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
/// The test member.
pub const TEST_MEMBER: &str = "test_batch.bin";

/// Raw images with their labels: `len × 3 × 32 × 32` bytes, channel-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// Pixels.
    pub pixels: Vec<u8>,
    /// One label per image.
    pub labels: Vec<u8>,
}

impl Images {
    /// The images whose `mask` entry equals `keep`, in order.
    pub fn subset(&self, mask: &[bool], keep: bool) -> Self {
        let (pixels, labels) = super::pick_images(&self.pixels, &self.labels, mask, keep);
        Self { pixels, labels }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there is no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * PIXELS..(i + 1) * PIXELS]
    }
}

/// Training (50,000) and test (10,000) images.
pub struct Cifar {
    /// The five training batches in order.
    pub train: Images,
    /// The test batch.
    pub test: Images,
}

/// Read CIFAR-10 from `dir` (the dataset's folder): the archive if it is there, else the
/// extracted members (in `cifar-10-batches-bin/` or directly in `dir`).
pub fn load(dir: &Path) -> Result<Cifar> {
    let archive = dir.join(ARCHIVE);
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    if archive.is_file() {
        let file = std::fs::File::open(&archive).map_err(|e| Error::io(&archive, e))?;
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let bad = |e: std::io::Error| {
            Error::Data(format!(
                "{}: {e}; fetch it again (`qat data fetch cifar10 --force`)",
                archive.display()
            ))
        };
        for entry in tar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let name = path.rsplit('/').next().unwrap_or_default().to_string();
            if TRAIN_MEMBERS.contains(&name.as_str()) || name == TEST_MEMBER {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(bad)?;
                members.push((name, bytes));
            }
        }
    } else {
        let folder = if dir.join(FOLDER).is_dir() { dir.join(FOLDER) } else { dir.to_path_buf() };
        for name in TRAIN_MEMBERS.iter().chain([&TEST_MEMBER]) {
            let path: PathBuf = folder.join(name);
            if let Ok(bytes) = std::fs::read(&path) {
                members.push((name.to_string(), bytes));
            }
        }
    }
    let source = if archive.is_file() { archive.display().to_string() } else { dir.display().to_string() };
    let mut take = |name: &str| -> Result<Vec<u8>> {
        let i = members.iter().position(|(n, _)| n == name).ok_or_else(|| {
            Error::Data(format!(
                "{source}: no member {name}; CIFAR-10's binary version has {} and {TEST_MEMBER}",
                TRAIN_MEMBERS.join(", ")
            ))
        })?;
        let bytes = members.swap_remove(i).1;
        if bytes.len() != RECORDS * (1 + PIXELS) {
            return Err(Error::Data(format!(
                "{source}: {name} holds {} bytes, not {} (10,000 records of a label and 3,072 pixels)",
                bytes.len(),
                RECORDS * (1 + PIXELS)
            )));
        }
        Ok(bytes)
    };
    let mut train =
        Images { pixels: Vec::with_capacity(5 * RECORDS * PIXELS), labels: Vec::with_capacity(5 * RECORDS) };
    for name in TRAIN_MEMBERS {
        decode(&take(name)?, &mut train);
    }
    let mut test =
        Images { pixels: Vec::with_capacity(RECORDS * PIXELS), labels: Vec::with_capacity(RECORDS) };
    decode(&take(TEST_MEMBER)?, &mut test);
    check_classes(&source, "the training batches", &train, 5000)?;
    check_classes(&source, TEST_MEMBER, &test, 1000)?;
    Ok(Cifar { train, test })
}

fn decode(bytes: &[u8], into: &mut Images) {
    for record in bytes.chunks_exact(1 + PIXELS) {
        into.labels.push(record[0]);
        into.pixels.extend_from_slice(&record[1..]);
    }
}

/// CIFAR-10 is balanced: each class has exactly `per_class` images in `what`.
fn check_classes(source: &str, what: &str, images: &Images, per_class: usize) -> Result<()> {
    let mut counts = [0usize; 256];
    images.labels.iter().for_each(|&l| counts[l as usize] += 1);
    if counts[..CLASSES].iter().any(|&c| c != per_class) || counts[CLASSES..].iter().any(|&c| c > 0) {
        return Err(Error::Data(format!(
            "{source}: {what} have class counts {:?} (labels 0–9, {per_class} each expected); the file is not CIFAR-10's",
            &counts[..CLASSES]
        )));
    }
    Ok(())
}

/// (p/255 − mean_c)/std_c for every pixel, channel-major, as network inputs.
pub fn preprocess(images: &Images) -> Samples {
    let mut x = Vec::with_capacity(images.pixels.len());
    for i in 0..images.len() {
        push_normalised(images.image(i), &mut x);
    }
    Samples { x, labels: images.labels.clone(), features: PIXELS }
}

fn push_normalised(image: &[u8], out: &mut Vec<f32>) {
    for (c, plane) in image.chunks_exact(SIDE * SIDE).enumerate() {
        out.extend(plane.iter().map(|&p| (p as f32 / 255.0 - MEAN[c]) / STD[c]));
    }
}

/// The training images of `epoch` under CIFAR's augmentation: each image padded by 4 zero pixels,
/// a random 32×32 crop of that, mirrored left-right with probability ½; drawn from
/// (seed, epoch, index), so any order or thread gives the same images.
pub fn crop_flip(images: &Images, seed: u64, epoch: usize) -> Samples {
    const PAD: usize = 4;
    let mut x = Vec::with_capacity(images.pixels.len());
    let mut moved = vec![0u8; PIXELS];
    for i in 0..images.len() {
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed ^ CROP_SALT, epoch, i));
        let (dy, dx) = (rng.gen_range(0..=2 * PAD), rng.gen_range(0..=2 * PAD));
        let flip = rng.gen_bool(0.5);
        let image = images.image(i);
        for c in 0..3 {
            for y in 0..SIDE {
                for xo in 0..SIDE {
                    let xs = if flip { SIDE - 1 - xo } else { xo };
                    // source pixel in the padded image: (y + dy, xs + dx) → original (− PAD)
                    let (sy, sx) = ((y + dy) as isize - PAD as isize, (xs + dx) as isize - PAD as isize);
                    let inside = (0..SIDE as isize).contains(&sy) && (0..SIDE as isize).contains(&sx);
                    moved[(c * SIDE + y) * SIDE + xo] =
                        if inside { image[(c * SIDE + sy as usize) * SIDE + sx as usize] } else { 0 };
                }
            }
        }
        push_normalised(&moved, &mut x);
    }
    Samples { x, labels: images.labels.clone(), features: PIXELS }
}

/// Seed salt of the crop-and-flip stream, so it draws independently of batch mixing.
const CROP_SALT: u64 = 0x6372_6f70_666c;
