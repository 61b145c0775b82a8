//! Antialiased resize with a triangle (bilinear) filter, as PIL's `Image.resize(BILINEAR)` does
//! it for 8-bit images: separable, horizontal pass then vertical, the filter support widened by
//! the downscale factor, each pass rounded back to u8. Torchvision's `Resize` on the PIL images
//! of `datasets.MNIST` (the reference's pipeline) runs exactly this.

/// Per output pixel: first input index and normalised weights.
fn coefficients(input: usize, output: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // triangle support 1, widened when downscaling
    (0..output)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).trunc().max(0.0)) as usize;
            let hi = ((center + support + 0.5).trunc() as usize).min(input);
            let mut w: Vec<f64> =
                (lo..hi).map(|j| (1.0 - ((j as f64 - center + 0.5) / filter_scale).abs()).max(0.0)).collect();
            let sum: f64 = w.iter().sum();
            w.iter_mut().for_each(|v| *v /= sum);
            (lo, w.into_iter().map(|v| v as f32).collect())
        })
        .collect()
}

/// Round half up to u8, as PIL's fixed-point resampler does.
fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 255.0) + 0.5) as u8
}

/// A resize from one image size to another, with its filter coefficients computed once.
pub struct Resizer {
    rows: usize,
    cols: usize,
    out_rows: usize,
    out_cols: usize,
    horizontal: Vec<(usize, Vec<f32>)>,
    vertical: Vec<(usize, Vec<f32>)>,
}

impl Resizer {
    /// A resize from `rows × cols` to `out_rows × out_cols`.
    pub fn new(rows: usize, cols: usize, out_rows: usize, out_cols: usize) -> Self {
        Self {
            rows,
            cols,
            out_rows,
            out_cols,
            horizontal: coefficients(cols, out_cols),
            vertical: coefficients(rows, out_rows),
        }
    }

    /// Resize one image.
    pub fn apply(&self, image: &[u8]) -> Vec<u8> {
        let (cols, out_cols) = (self.cols, self.out_cols);
        let mut mid = vec![0u8; self.rows * out_cols];
        for (r, row) in image.chunks_exact(cols).enumerate() {
            for (c, (lo, w)) in self.horizontal.iter().enumerate() {
                let v: f32 = w.iter().zip(&row[*lo..]).map(|(w, &p)| w * p as f32).sum();
                mid[r * out_cols + c] = to_u8(v);
            }
        }
        let mut out = vec![0u8; self.out_rows * out_cols];
        for (r, (lo, w)) in self.vertical.iter().enumerate() {
            for c in 0..out_cols {
                let v: f32 = w.iter().enumerate().map(|(k, w)| w * mid[(lo + k) * out_cols + c] as f32).sum();
                out[r * out_cols + c] = to_u8(v);
            }
        }
        out
    }
}

/// Resize a `rows × cols` u8 image to `out_rows × out_cols` (one-off; use [`Resizer`] in loops).
pub fn resize_u8(image: &[u8], rows: usize, cols: usize, out_rows: usize, out_cols: usize) -> Vec<u8> {
    Resizer::new(rows, cols, out_rows, out_cols).apply(image)
}
