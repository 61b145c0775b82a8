//! Seeded augmentation of 28×28 u8 images, as the reference's torchvision pipeline does it:
//! `RandomRotation(10)` then `RandomAffine(10, translate=(0.1, 0.1), scale=(0.9, 1.1))`, both
//! with nearest-neighbour sampling and black fill, then the resize; optionally an elastic
//! deformation (Simard et al. 2003) after the affine. Each image's randomness comes from
//! (seed, epoch, index) alone, so the same seed gives the same images in any order or thread.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{push_normalised, Samples, Split};

/// A 2×3 affine map from output pixel coordinates to input coordinates.
type Inverse = [[f32; 3]; 2];

/// Mix (seed, epoch, index) into one 64-bit stream seed (SplitMix64 finaliser).
pub fn stream_seed(seed: u64, epoch: usize, index: usize) -> u64 {
    let mut z = seed
        ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Inverse of "rotate by `degrees` and scale by `scale` about the centre, then translate by
/// (tx, ty)", mapping output to input coordinates (pixel centres at +0.5).
fn inverse_affine(degrees: f32, scale: f32, tx: f32, ty: f32, rows: usize, cols: usize) -> Inverse {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let (cx, cy) = (cols as f32 / 2.0, rows as f32 / 2.0);
    // forward: p_out = s·R·(p_in − c) + c + t  ⇒  p_in = R⁻¹·(p_out − c − t)/s + c
    let (a, b, c, d) = (cos / scale, sin / scale, -sin / scale, cos / scale);
    let (ox, oy) = (-cx - tx, -cy - ty);
    [[a, b, a * ox + b * oy + cx], [c, d, c * ox + d * oy + cy]]
}

/// Resample with nearest neighbour, black outside.
fn warp_nearest(image: &[u8], rows: usize, cols: usize, m: &Inverse) -> Vec<u8> {
    let mut out = vec![0u8; rows * cols];
    for y in 0..rows {
        for x in 0..cols {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let sx = (m[0][0] * px + m[0][1] * py + m[0][2]).floor();
            let sy = (m[1][0] * px + m[1][1] * py + m[1][2]).floor();
            if sx >= 0.0 && sy >= 0.0 && (sx as usize) < cols && (sy as usize) < rows {
                out[y * cols + x] = image[sy as usize * cols + sx as usize];
            }
        }
    }
    out
}

/// Rotation ±10°, then affine (±10°, translate ±10 %, scale 0.9–1.1), nearest neighbour.
pub fn augment_image(image: &[u8], rows: usize, cols: usize, rng: &mut ChaCha8Rng, elastic: bool) -> Vec<u8> {
    let rotation = inverse_affine(rng.gen_range(-10.0..=10.0), 1.0, 0.0, 0.0, rows, cols);
    let rotated = warp_nearest(image, rows, cols, &rotation);
    let degrees = rng.gen_range(-10.0..=10.0);
    // torchvision draws translations in pixels and rounds them
    let tx = rng.gen_range(-0.1 * cols as f32..=0.1 * cols as f32).round();
    let ty = rng.gen_range(-0.1 * rows as f32..=0.1 * rows as f32).round();
    let scale = rng.gen_range(0.9..=1.1);
    let affine = warp_nearest(&rotated, rows, cols, &inverse_affine(degrees, scale, tx, ty, rows, cols));
    if elastic {
        elastic_deform(&affine, rows, cols, rng, ELASTIC_ALPHA, ELASTIC_SIGMA)
    } else {
        affine
    }
}

/// Displacement magnitude of the elastic deformation in pixels (torchvision's default 50).
pub const ELASTIC_ALPHA: f32 = 34.0;
/// Smoothing of the displacement field (Simard's σ = 4 for MNIST).
pub const ELASTIC_SIGMA: f32 = 4.0;

/// Elastic deformation: uniform random displacements, Gaussian-smoothed, scaled by `alpha`,
/// sampled bilinearly.
pub fn elastic_deform(
    image: &[u8],
    rows: usize,
    cols: usize,
    rng: &mut ChaCha8Rng,
    alpha: f32,
    sigma: f32,
) -> Vec<u8> {
    let field = |rng: &mut ChaCha8Rng| {
        let raw: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..=1.0)).collect();
        let mut smooth = gaussian_blur(&raw, rows, cols, sigma);
        smooth.iter_mut().for_each(|v| *v *= alpha);
        smooth
    };
    let (dx, dy) = (field(rng), field(rng));
    let mut out = vec![0u8; rows * cols];
    for y in 0..rows {
        for x in 0..cols {
            let i = y * cols + x;
            out[i] = bilinear(image, rows, cols, x as f32 + dx[i], y as f32 + dy[i]).round().clamp(0.0, 255.0)
                as u8;
        }
    }
    out
}

fn bilinear(image: &[u8], rows: usize, cols: usize, x: f32, y: f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let at = |xi: f32, yi: f32| -> f32 {
        if xi < 0.0 || yi < 0.0 || xi as usize >= cols || yi as usize >= rows {
            0.0
        } else {
            image[yi as usize * cols + xi as usize] as f32
        }
    };
    let top = at(x0, y0) * (1.0 - fx) + at(x0 + 1.0, y0) * fx;
    let bottom = at(x0, y0 + 1.0) * (1.0 - fx) + at(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

fn gaussian_blur(x: &[f32], rows: usize, cols: usize, sigma: f32) -> Vec<f32> {
    let radius = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> =
        (-radius..=radius).map(|k| (-(k * k) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let norm: f32 = kernel.iter().sum();
    let pass = |src: &[f32], along_rows: bool| -> Vec<f32> {
        let mut dst = vec![0.0; src.len()];
        for y in 0..rows as isize {
            for x in 0..cols as isize {
                let mut acc = 0.0;
                for (k, w) in (-radius..=radius).zip(&kernel) {
                    let (sx, sy) = if along_rows { (x + k, y) } else { (x, y + k) };
                    if sx >= 0 && sy >= 0 && sx < cols as isize && sy < rows as isize {
                        acc += w * src[(sy * cols as isize + sx) as usize];
                    }
                }
                dst[(y * cols as isize + x) as usize] = acc / norm;
            }
        }
        dst
    };
    pass(&pass(x, true), false)
}

/// A freshly augmented, preprocessed copy of every image of `split` for `epoch`.
pub fn augmented_copy(split: &Split, size: usize, seed: u64, epoch: usize, elastic: bool) -> Samples {
    let resizer = super::resize::Resizer::new(split.rows, split.cols, size, size);
    let mut x = Vec::with_capacity(split.len() * size * size);
    for i in 0..split.len() {
        let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, epoch, i));
        let image = augment_image(split.image(i), split.rows, split.cols, &mut rng, elastic);
        push_normalised(&image, &resizer, &mut x);
    }
    Samples { x, labels: split.labels.clone(), features: size * size }
}
