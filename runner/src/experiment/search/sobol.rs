//! Sobol' points in up to [`MAX_DIMENSIONS`] dimensions, Gray-code order (Antonov–Saleev),
//! scrambled by a random digital shift drawn from the search's seed (each coordinate's bits
//! XORed with a per-dimension word; the shifted points stay a (t, s)-sequence in base 2).
//!
//! Direction numbers: Joe & Kuo's `new-joe-kuo-6.21201` table (S. Joe and F. Y. Kuo,
//! "Constructing Sobol sequences with better two-dimensional projections", SIAM J. Sci.
//! Comput. 30, 2008), its first rows: degree s, polynomial coefficients a, initial m_1..m_s.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Rows for dimensions 2, 3, …: (s, a, m_1..m_s). Dimension 1 is the van der Corput sequence.
const JOE_KUO: [(u32, u32, &[u32]); 20] = [
    (1, 0, &[1]),
    (2, 1, &[1, 3]),
    (3, 1, &[1, 3, 1]),
    (3, 2, &[1, 1, 1]),
    (4, 1, &[1, 1, 3, 3]),
    (4, 4, &[1, 3, 5, 13]),
    (5, 2, &[1, 1, 5, 5, 17]),
    (5, 4, &[1, 1, 5, 5, 5]),
    (5, 7, &[1, 1, 7, 11, 19]),
    (5, 11, &[1, 1, 5, 1, 1]),
    (5, 13, &[1, 1, 1, 3, 11]),
    (5, 14, &[1, 3, 5, 5, 31]),
    (6, 1, &[1, 3, 3, 9, 7, 49]),
    (6, 13, &[1, 1, 1, 15, 21, 21]),
    (6, 16, &[1, 3, 1, 13, 27, 49]),
    (6, 19, &[1, 1, 1, 15, 7, 5]),
    (6, 22, &[1, 3, 1, 15, 13, 25]),
    (6, 25, &[1, 1, 5, 5, 19, 61]),
    (7, 1, &[1, 3, 7, 11, 23, 15, 103]),
    (7, 4, &[1, 3, 7, 13, 13, 15, 69]),
];

/// The most dimensions the table gives.
pub const MAX_DIMENSIONS: usize = JOE_KUO.len() + 1;

/// Bits per coordinate.
const BITS: usize = 32;

/// A scrambled Sobol' sequence.
pub struct Sobol {
    /// Per dimension, direction numbers v_1..v_32 scaled by 2^32.
    directions: Vec<[u32; BITS]>,
    /// Per dimension, the digital shift.
    shift: Vec<u32>,
}

impl Sobol {
    /// The sequence in `dimensions` dimensions, shifted by words drawn from `seed`.
    pub fn new(dimensions: usize, seed: u64) -> Result<Self, String> {
        if dimensions == 0 || dimensions > MAX_DIMENSIONS {
            return Err(format!(
                "sobol: {dimensions} dimensions; it supports 1 to {MAX_DIMENSIONS} (use random or tpe for larger spaces)"
            ));
        }
        let mut directions = vec![std::array::from_fn(|k| 1u32 << (BITS - 1 - k))];
        for &(s, a, m) in &JOE_KUO[..dimensions - 1] {
            let s = s as usize;
            let mut v = [0u32; BITS];
            for k in 0..BITS {
                v[k] = if k < s {
                    m[k] << (BITS - 1 - k)
                } else {
                    // v_k = a_1 v_{k-1} ^ … ^ a_{s-1} v_{k-s+1} ^ v_{k-s} ^ (v_{k-s} >> s)
                    let mut x = v[k - s] ^ (v[k - s] >> s);
                    for j in 1..s {
                        if (a >> (s - 1 - j)) & 1 == 1 {
                            x ^= v[k - j];
                        }
                    }
                    x
                };
            }
            directions.push(v);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shift = (0..dimensions).map(|_| rng.gen()).collect();
        Ok(Self { directions, shift })
    }

    /// Point `index` (from 0) in [0, 1)^d.
    pub fn point(&self, index: u64) -> Vec<f64> {
        let gray = index ^ (index >> 1);
        self.directions
            .iter()
            .zip(&self.shift)
            .map(|(v, &shift)| {
                let word = (0..BITS).filter(|&k| (gray >> k) & 1 == 1).fold(shift, |x, k| x ^ v[k]);
                word as f64 / (1u64 << BITS) as f64
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Warnock's formula for the L2-star discrepancy of points in [0, 1)^d.
    pub(crate) fn l2_star_discrepancy(points: &[Vec<f64>]) -> f64 {
        let n = points.len() as f64;
        let d = points[0].len() as i32;
        let single: f64 = points.iter().map(|p| p.iter().map(|x| 1.0 - x * x).product::<f64>()).sum();
        let mut pairs = 0.0;
        for p in points {
            for q in points {
                pairs += p.iter().zip(q).map(|(x, y)| 1.0 - x.max(*y)).product::<f64>();
            }
        }
        (3f64.powi(-d) - 2f64.powi(1 - d) / n * single + pairs / (n * n)).sqrt()
    }

    #[test]
    fn unscrambled_first_points_are_the_known_ones() {
        // shift 0: the classic sequence 0, 1/2, then (3/4, 1/4), (1/4, 3/4) in the first two dims
        let mut s = Sobol::new(3, 0).unwrap();
        s.shift.iter_mut().for_each(|w| *w = 0);
        assert_eq!(s.point(0), [0.0, 0.0, 0.0]);
        assert_eq!(s.point(1), [0.5, 0.5, 0.5]);
        assert_eq!(s.point(2)[..2], [0.75, 0.25]);
        assert_eq!(s.point(3)[..2], [0.25, 0.75]);
    }

    #[test]
    fn every_dyadic_interval_gets_one_point_per_dimension() {
        // the first 2^k points put exactly one point in each interval [j/2^k, (j+1)/2^k), in every
        // dimension, scrambled or not
        let s = Sobol::new(MAX_DIMENSIONS, 7).unwrap();
        let points: Vec<Vec<f64>> = (0..64).map(|i| s.point(i)).collect();
        for d in 0..MAX_DIMENSIONS {
            let mut cells: Vec<usize> = points.iter().map(|p| (p[d] * 64.0) as usize).collect();
            cells.sort();
            assert_eq!(cells, (0..64).collect::<Vec<_>>(), "dimension {d}");
        }
    }

    #[test]
    fn discrepancy_is_below_random_points() {
        for (d, n) in [(2, 32), (4, 64), (6, 100)] {
            let mut sobol = Vec::new();
            let mut random = Vec::new();
            for seed in 0..10 {
                let s = Sobol::new(d, seed).unwrap();
                sobol.push(l2_star_discrepancy(&(0..n).map(|i| s.point(i)).collect::<Vec<_>>()));
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let points: Vec<Vec<f64>> = (0..n).map(|_| (0..d).map(|_| rng.gen()).collect()).collect();
                random.push(l2_star_discrepancy(&points));
            }
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            assert!(mean(&sobol) < 0.7 * mean(&random), "d {d}: sobol {:?} random {:?}", sobol, random);
        }
    }

    #[test]
    fn too_many_dimensions_is_an_error() {
        assert!(Sobol::new(MAX_DIMENSIONS + 1, 0).err().unwrap().contains("supports 1 to 21"));
    }
}
