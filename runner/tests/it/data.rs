//! IDX parsing, checksums, resize, normalisation and seeded augmentation.

use qatlab_core::config::Dataset;
use qatlab_runner::data::{augment, idx, normalise, read_verified, resize, sha256_hex, Split};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn image_file(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for v in [0x0803, n, rows, cols] {
        bytes.extend(v.to_be_bytes());
    }
    bytes.extend(pixels);
    bytes
}

#[test]
fn idx_images_parse_header_and_pixels() {
    let bytes = image_file(2, 1, 3, &[1, 2, 3, 4, 5, 6]);
    assert_eq!(idx::parse_images(&bytes).unwrap(), (2, 1, 3, vec![1, 2, 3, 4, 5, 6]));
}

#[test]
fn idx_errors_say_what_is_wrong() {
    let mut bad_magic = image_file(1, 1, 1, &[0]);
    bad_magic[3] = 0x01;
    assert_eq!(
        idx::parse_images(&bad_magic).unwrap_err(),
        "bad IDX magic 0x00000801, expected 0x00000803 for an image file"
    );
    assert_eq!(
        idx::parse_images(&[0, 0, 8, 3, 0, 0]).unwrap_err(),
        "truncated IDX header: 6 bytes, needs at least 8"
    );
    assert_eq!(
        idx::parse_images(&image_file(2, 2, 2, &[0; 5])).unwrap_err(),
        "header says 2 images of 2×2 (8 bytes) but the file holds 5"
    );
    let labels = [0, 0, 8, 1, 0, 0, 0, 2, 3, 12];
    assert_eq!(idx::parse_labels(&labels).unwrap_err(), "label 12 out of range 0..=9");
    assert_eq!(idx::parse_labels(&labels[..9]).unwrap_err(), "header says 2 labels but the file holds 1");
}

#[test]
fn gzip_errors_are_reported() {
    assert!(idx::gunzip(b"not gzip").unwrap_err().starts_with("not a valid gzip file"));
}

#[test]
fn checksum_mismatch_names_the_file_and_both_sums() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    std::fs::write(&path, b"tampered").unwrap();
    let expected = "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609";
    let err = read_verified(&path, expected).unwrap_err().to_string();
    assert!(err.contains("train-images-idx3-ubyte.gz is corrupt"), "{err}");
    assert!(err.contains(&sha256_hex(b"tampered")) && err.contains(expected), "{err}");
    assert!(err.ends_with("replace it with the original file"), "{err}");
}

#[test]
fn a_missing_dataset_file_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mnist")).unwrap();
    let err = qatlab_runner::data::load(Dataset::Mnist, dir.path()).err().unwrap().to_string();
    assert!(err.starts_with("cannot read "), "{err}");
    assert!(err.contains("mnist/train-images-idx3-ubyte.gz"), "{err}");
}

#[test]
fn sha256_of_a_known_string() {
    assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn resize_matches_hand_computed_triangle_filter() {
    // 4 → 2 columns: support 2, weights (0.75, 0.75, 0.25)/1.75 and (0.25, 0.75, 0.75)/1.75
    // (0·.75 + 100·.75 + 200·.25)/1.75 = 71.43 → 71; (100·.25 + 200·.75 + 255·.75)/1.75 = 209.29 → 209
    assert_eq!(resize::resize_u8(&[0, 100, 200, 255], 1, 4, 1, 2), vec![71, 209]);
}

#[test]
fn resize_keeps_a_constant_image_constant() {
    assert_eq!(resize::resize_u8(&[77; 784], 28, 28, 16, 16), vec![77; 256]);
}

#[test]
fn normalisation_uses_mnist_mean_and_std() {
    assert!((normalise(0) - (-0.424_212_9)).abs() < 1e-6);
    assert!((normalise(255) - 2.821_486_5).abs() < 1e-5);
}

fn digit_like_split() -> Split {
    let mut images = vec![0u8; 3 * 784];
    for (i, p) in images.iter_mut().enumerate() {
        let (y, x) = ((i % 784) / 28, i % 28);
        if (8..20).contains(&y) && (12..16).contains(&x) {
            *p = 255;
        }
    }
    Split { images, labels: vec![1, 1, 1], rows: 28, cols: 28 }
}

#[test]
fn augmentation_is_seeded() {
    let split = digit_like_split();
    let a = augment::augmented_copy(&split, 16, 7, 3, false);
    let b = augment::augmented_copy(&split, 16, 7, 3, false);
    assert_eq!(a, b, "same seed and epoch, same images");
    let other_epoch = augment::augmented_copy(&split, 16, 7, 4, false);
    let other_seed = augment::augmented_copy(&split, 16, 8, 3, false);
    assert_ne!(a.x, other_epoch.x);
    assert_ne!(a.x, other_seed.x);
    assert_eq!(a.x.len(), 3 * 256);
}

#[test]
fn augmentation_moves_pixels_but_keeps_the_ink() {
    let split = digit_like_split();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let out = augment::augment_image(split.image(0), 28, 28, &mut rng, false);
    assert_ne!(out, split.image(0));
    let ink = |img: &[u8]| img.iter().filter(|&&p| p > 0).count() as f64;
    let ratio = ink(&out) / ink(split.image(0));
    assert!((0.7..1.3).contains(&ratio), "ink ratio {ratio}");
    let elastic = augment::augment_image(split.image(0), 28, 28, &mut ChaCha8Rng::seed_from_u64(1), true);
    assert_ne!(elastic, out);
}
