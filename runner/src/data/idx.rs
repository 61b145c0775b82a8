//! The IDX file format of MNIST (big-endian header, then raw bytes) and its gzip wrapper.

use std::io::Read;

/// Decompress a gzip member.
pub fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| format!("not a valid gzip file: {e}"))?;
    Ok(out)
}

fn be_u32(bytes: &[u8], at: usize) -> Result<u32, String> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated IDX header: {} bytes, needs at least {}", bytes.len(), at + 4))
}

/// Parse an image file (magic 2051): returns (count, rows, cols, pixels).
pub fn parse_images(bytes: &[u8]) -> Result<(usize, usize, usize, Vec<u8>), String> {
    let magic = be_u32(bytes, 0)?;
    if magic != 0x0803 {
        return Err(format!("bad IDX magic {magic:#010x}, expected 0x00000803 for an image file"));
    }
    let (n, rows, cols) =
        (be_u32(bytes, 4)? as usize, be_u32(bytes, 8)? as usize, be_u32(bytes, 12)? as usize);
    let body = &bytes[16..];
    if body.len() != n * rows * cols {
        return Err(format!(
            "header says {n} images of {rows}×{cols} ({} bytes) but the file holds {}",
            n * rows * cols,
            body.len()
        ));
    }
    Ok((n, rows, cols, body.to_vec()))
}

/// Parse a label file (magic 2049).
pub fn parse_labels(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let magic = be_u32(bytes, 0)?;
    if magic != 0x0801 {
        return Err(format!("bad IDX magic {magic:#010x}, expected 0x00000801 for a label file"));
    }
    let n = be_u32(bytes, 4)? as usize;
    let body = &bytes[8..];
    if body.len() != n {
        return Err(format!("header says {n} labels but the file holds {}", body.len()));
    }
    if let Some(bad) = body.iter().find(|&&l| l > 9) {
        return Err(format!("label {bad} out of range 0..=9"));
    }
    Ok(body.to_vec())
}
