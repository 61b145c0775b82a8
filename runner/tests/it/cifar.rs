//! CIFAR-10 on a synthetic archive written in the real binary format (the real one cannot be
//! downloaded here): shapes, labels and channel order, member and class-count checks, and a
//! one-epoch CNN run with crop-and-flip augmentation through the `qat` binary.

use std::io::Write;
use std::path::Path;

use qatlab_runner::data::cifar;

use crate::cli::{record_of, run_dirs, text};

/// The label of record `i` of any batch: each batch holds 1,000 of every class, as CIFAR's do.
fn label(i: usize) -> u8 {
    (i % 10) as u8
}

/// A pixel that says its class (25 per class step) plus a little pattern.
fn pixel(batch: usize, i: usize, channel: usize, p: usize) -> u8 {
    (label(i) as usize * 25 + (i + 31 * channel + 7 * p + 13 * batch) % 8) as u8
}

fn member(batch: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(cifar::RECORDS * (1 + cifar::PIXELS));
    for i in 0..cifar::RECORDS {
        bytes.push(label(i));
        for c in 0..3 {
            bytes.extend((0..1024).map(|p| pixel(batch, i, c, p)));
        }
    }
    bytes
}

/// `<root>/cifar10/cifar-10-binary.tar.gz` with the real member names and sizes.
fn write_archive(root: &Path) {
    let dir = root.join("cifar10");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::File::create(dir.join(cifar::ARCHIVE)).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    let names: Vec<&str> = cifar::TRAIN_MEMBERS.iter().copied().chain([cifar::TEST_MEMBER]).collect();
    for (b, name) in names.iter().enumerate() {
        let bytes = member(b);
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("cifar-10-batches-bin/{name}"), bytes.as_slice()).unwrap();
    }
    let meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(meta.len() as u64);
    header.set_cksum();
    tar.append_data(&mut header, "cifar-10-batches-bin/batches.meta.txt", &meta[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

#[test]
fn a_synthetic_archive_loads_verifies_and_trains_a_cnn_for_one_epoch() {
    let root = tempfile::tempdir().unwrap();
    write_archive(root.path());
    let data = cifar::load(&root.path().join("cifar10")).unwrap();
    assert_eq!((data.train.len(), data.test.len()), (50_000, 10_000));
    assert_eq!(data.train.pixels.len(), 50_000 * 3072);
    assert_eq!(&data.train.labels[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // record 3 of data_batch_2 (batch 1), green plane, pixel (2, 5): known bytes, channel-major
    let i = 10_000 + 3;
    assert_eq!(data.train.image(i)[1024 + 2 * 32 + 5], pixel(1, 3, 1, 2 * 32 + 5));
    let samples = cifar::preprocess(&data.test);
    assert_eq!(samples.features, 3072);
    let expected = (pixel(5, 7, 2, 100) as f32 / 255.0 - 0.4465) / 0.2616;
    assert_eq!(
        samples.x[7 * 3072 + 2 * 1024 + 100],
        expected,
        "blue plane, normalised with its own mean and std"
    );

    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("c.yaml"),
        "name: c\ndata: {dataset: cifar10, image_size: 32, crop_flip: true}\nquantizer: {name: int, bits: 4}\n\
         model: {conv: [{channels: 4, pool: true}, {channels: 4, depthwise: true, pool: true}], hidden: [16], \
         activation_bits: 8}\ntrain: {epochs: 1}\n",
    )
    .unwrap();
    let qat = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_qat"))
            .args(args)
            .current_dir(work.path())
            .env("QAT_DATA_DIR", root.path())
            .env("QAT_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let out = qat(&["run", "c.yaml", "-q"]);
    assert!(out.status.success(), "{}", text(&out));
    let run = run_dirs(work.path(), "c").remove(0);
    let record = record_of(&run);
    assert_eq!(record["status"], "success");
    let accuracy = record["final_scores"]["test_acc"].as_f64().unwrap();
    // chance is 0.1; one epoch of this 4-bit CNN reads the class off the brightness (0.40)
    assert!(accuracy > 0.3, "the pixels say the class: {accuracy}");
    let out = qat(&["export", run.to_str().unwrap(), "-o", "c.qat"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("cannot deploy: data.dataset cifar10"), "{}", text(&out));
}

#[test]
fn wrong_member_sizes_and_class_counts_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join(cifar::FOLDER);
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("data_batch_1.bin"), [0u8; 100]).unwrap();
    let err = cifar::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("data_batch_1.bin holds 100 bytes, not 30730000"), "{err}");
    let full = vec![0u8; cifar::RECORDS * (1 + cifar::PIXELS)];
    for name in cifar::TRAIN_MEMBERS.iter().chain([&cifar::TEST_MEMBER]) {
        std::fs::write(folder.join(name), &full).unwrap();
    }
    let err = cifar::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("the training batches have class counts [50000, 0, 0"), "{err}");
    std::fs::remove_file(folder.join(cifar::TEST_MEMBER)).unwrap();
    let err = cifar::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("no member test_batch.bin"), "{err}");
}

#[test]
fn crop_and_flip_move_pixels_within_the_padding_and_are_seeded() {
    let images = cifar::Images { pixels: vec![200u8; 4 * 3072], labels: vec![0, 1, 2, 3] };
    let a = cifar::crop_flip(&images, 5, 0);
    assert_eq!(a, cifar::crop_flip(&images, 5, 0), "same (seed, epoch): same images");
    assert_ne!(a, cifar::crop_flip(&images, 5, 1), "a new epoch draws anew");
    let inside = (200.0 / 255.0 - cifar::MEAN[0]) / cifar::STD[0];
    let padding = (0.0 - cifar::MEAN[0]) / cifar::STD[0];
    for sample in a.x.chunks_exact(3072) {
        let red = &sample[..1024];
        let kept = red.iter().filter(|&&v| v == inside).count();
        assert!(red.iter().all(|&v| v == inside || v == padding));
        assert!(kept >= 28 * 28, "a crop shifts by at most 4 pixels each way: {kept}");
    }
}
