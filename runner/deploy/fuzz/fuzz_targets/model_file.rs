//! Any bytes given to the model reader give a model or an error, never a panic; a model that
//! reads writes back as the same model and runs on every kernel path without panicking (a
//! language model: a window of tokens on the decoder, then one more token on its cache).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qatlab_deploy::decoder::Decoder;
use qatlab_deploy::format::ModelFile;
use qatlab_deploy::kernel::Path;
use qatlab_deploy::runtime::Runtime;

fuzz_target!(|data: &[u8]| {
    // The checksum would stop almost every mutation at the door; fuzz with a valid one too, so
    // the header and payload validation behind it is exercised.
    for bytes in [data.to_vec(), with_valid_checksum(data)] {
        if let Ok(model) = ModelFile::read(&bytes) {
            assert_eq!(ModelFile::read(&model.to_bytes().unwrap()).unwrap(), model, "a model read back writes the same model");
            if let Some(text) = &model.header.text {
                let tokens: Vec<u8> = (0..text.context.min(16)).map(|i| (i % model.header.classes) as u8).collect();
                for path in Path::available() {
                    let decoder = Decoder::new(&model, path, 1).expect("available paths load");
                    let mut state = decoder.state(1);
                    let _ = decoder.forward(&mut state, &tokens[..tokens.len().saturating_sub(1).max(1)]);
                    let _ = decoder.forward(&mut state, &tokens[..1]);
                }
                continue;
            }
            let inputs = model.header.input.as_ref().map_or(0, |i| i.image_size.pow(2));
            if inputs > 1 << 16 {
                continue;
            }
            for path in Path::available() {
                let runtime = Runtime::new(&model, path, false).expect("available paths load");
                let x: Vec<f32> = (0..inputs).map(|i| (i % 7) as f32 - 3.0).collect();
                let _ = runtime.predict(&x, 1);
            }
        }
    }
});

fn with_valid_checksum(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    out.extend_from_slice(&crc32fast_hash(data).to_le_bytes());
    out
}

/// CRC-32 (IEEE), bit by bit: the fuzz target stays free of extra dependencies.
fn crc32fast_hash(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
