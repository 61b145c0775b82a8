//! The runtime's 3×3 convolutions (stride 1, zero padding 1) over HWC maps of int8 codes, and
//! 2×2 max-pooling. A full convolution is a matrix product of its filters with every pixel's
//! 3×3 neighbourhood ([`patches`]), so it runs on the same integer kernels as a fully connected
//! layer; a depthwise one reads nine values per output and runs as a plain loop.

use std::ops::{AddAssign, Mul};

/// The 3×3 taps as (dy, dx), row-major: tap k = (k / 3 − 1, k % 3 − 1). Training's convolution
/// uses this too, so both read the weights in one order.
pub fn tap(k: usize) -> (isize, isize) {
    (k as isize / 3 - 1, k as isize % 3 - 1)
}

/// Every pixel's 3×3 neighbourhood of one `side × side × channels` map, one row of
/// `9 · channels` codes per pixel (tap-major, then channel; zero outside the map), each row
/// `stride` long (the rest zero, as the kernels' padded layout wants). Appended to `out`.
pub fn patches(map: &[i8], side: usize, channels: usize, stride: usize, out: &mut Vec<i8>) {
    let start = out.len();
    out.resize(start + side * side * stride, 0);
    let rows = &mut out[start..];
    for y in 0..side {
        for x in 0..side {
            let row = &mut rows[(y * side + x) * stride..][..9 * channels];
            for (k, taps) in row.chunks_exact_mut(channels).enumerate() {
                let (dy, dx) = tap(k);
                let (sy, sx) = (y as isize + dy, x as isize + dx);
                if (0..side as isize).contains(&sy) && (0..side as isize).contains(&sx) {
                    let at = (sy as usize * side + sx as usize) * channels;
                    taps.copy_from_slice(&map[at..at + channels]);
                }
            }
        }
    }
}

/// A depthwise convolution from patch rows of `stride` (see [`patches`]; any number of pixels
/// of any number of maps): `out[p·C + c] = Σ_k taps[c·9 + k] · patch[p][k·C + c]`, with `taps`
/// each channel's nine weights (integer levels, or dequantized floats).
pub fn depthwise<T>(patches: &[i8], stride: usize, channels: usize, taps: &[T]) -> Vec<T>
where
    T: Copy + Default + AddAssign + Mul<Output = T> + From<i8>,
{
    let mut out = vec![T::default(); patches.len() / stride * channels];
    for (patch, o) in patches.chunks_exact(stride).zip(out.chunks_exact_mut(channels)) {
        for (c, o) in o.iter_mut().enumerate() {
            let mut sum = T::default();
            for k in 0..9 {
                sum += taps[c * 9 + k] * T::from(patch[k * channels + c]);
            }
            *o = sum;
        }
    }
    out
}

/// 2×2 max-pooling, stride 2, of one `side × side × channels` map (side even).
pub fn max_pool<T: Copy + PartialOrd>(map: &[T], side: usize, channels: usize) -> Vec<T> {
    let half = side / 2;
    let mut out = Vec::with_capacity(half * half * channels);
    for i in 0..half {
        for j in 0..half {
            let at = |dy: usize, dx: usize| ((2 * i + dy) * side + 2 * j + dx) * channels;
            for c in 0..channels {
                let window = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)].map(|a| map[a + c]);
                out.push(window.into_iter().fold(window[0], |m, v| if v > m { v } else { m }));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution written out as its definition, for one channel pair.
    fn direct(map: &[i8], side: usize, channels: usize, w: &[i32], c_in: usize, y: usize, x: usize) -> i32 {
        (0..9)
            .map(|k| {
                let (dy, dx) = tap(k);
                let (sy, sx) = (y as isize + dy, x as isize + dx);
                if sy < 0 || sx < 0 || sy >= side as isize || sx >= side as isize {
                    return 0;
                }
                w[k] * map[(sy as usize * side + sx as usize) * channels + c_in] as i32
            })
            .sum()
    }

    #[test]
    fn patches_hold_each_neighbourhood_with_zero_padding() {
        // 3×3 map, 2 channels: value = 10·pixel + channel.
        let map: Vec<i8> = (0..9).flat_map(|p| [10 * p as i8, 10 * p as i8 + 1]).collect();
        let mut out = Vec::new();
        patches(&map, 3, 2, 20, &mut out);
        assert_eq!(out.len(), 9 * 20);
        // The centre pixel sees the whole map in order; the padding past 18 values is zero.
        assert_eq!(&out[4 * 20..4 * 20 + 18], &map[..]);
        assert!(out[4 * 20 + 18..5 * 20].iter().all(|&v| v == 0));
        // The top-left pixel: taps 0, 1, 2, 3 and 6 fall outside; tap 4 is itself.
        assert_eq!(&out[..18], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 10, 11, 0, 0, 30, 31, 40, 41]);
    }

    #[test]
    fn depthwise_matches_the_definition() {
        let (side, channels) = (4, 3);
        let map: Vec<i8> = (0..side * side * channels).map(|v| (v as i32 * 37 % 255 - 127) as i8).collect();
        let taps: Vec<i32> = (0..9 * channels).map(|v| v as i32 % 5 - 2).collect();
        let mut p = Vec::new();
        patches(&map, side, channels, 9 * channels, &mut p);
        let out = depthwise(&p, 9 * channels, channels, &taps);
        for y in 0..side {
            for x in 0..side {
                for c in 0..channels {
                    let expected = direct(&map, side, channels, &taps[c * 9..c * 9 + 9], c, y, x);
                    assert_eq!(out[(y * side + x) * channels + c], expected, "pixel ({y}, {x}) channel {c}");
                }
            }
        }
    }

    #[test]
    fn pooling_takes_each_window_maximum_per_channel() {
        // 2×2 map, 2 channels → 1×1.
        let map = [1, -4, 7, 2, -3, 9, 5, 0];
        assert_eq!(max_pool(&map, 2, 2), vec![7, 9]);
        let floats = [0.5f32, 0.25, -1.0, 0.75];
        assert_eq!(max_pool(&floats, 2, 1), vec![0.75]);
    }
}
