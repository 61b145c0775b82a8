//! The tree-structured Parzen estimator (Bergstra, Bardenet, Bengio & Kégl, "Algorithms for
//! Hyper-Parameter Optimization", NeurIPS 2011), independent per dimension as in the paper.
//!
//! Settings: the first [`STARTUP_TRIALS`] trials are random; then the observed trials are split
//! into the best γ = [`GAMMA`] (at least one) and the rest; each part gives, per dimension, a
//! Parzen estimator: a truncated Gaussian at every observation plus one prior Gaussian at the
//! middle of the range with σ = the range, bandwidths from the distance to the neighbouring
//! observations clipped to [range / min(100, n + 1), range] (hyperopt's rule), integers
//! scored by the mass of their unit interval; choices by counts plus one. [`CANDIDATES`] points
//! drawn from the good estimator are scored by Σ log l(x) − log g(x) and the best is proposed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution as _, StandardNormal};

use super::space::{Distribution, Space};

/// Share of the observations that form the good estimator l(x).
pub const GAMMA: f64 = 0.25;
/// Random trials before the estimators take over.
pub const STARTUP_TRIALS: usize = 10;
/// Candidates drawn from l(x) per proposal.
pub const CANDIDATES: usize = 24;

/// A finished (or stopped) trial as TPE sees it.
#[derive(Clone, Debug)]
pub struct Observation {
    /// Its coordinates.
    pub point: Vec<f64>,
    /// Its value, lower is better (maximised metrics are negated).
    pub value: f64,
    /// How far it got: trials that reached a later rung rank before those stopped earlier.
    pub level: usize,
}

/// The next point after `history`, drawn with `rng`; None while there are too few observations
/// (the caller draws a random point).
pub fn propose(space: &Space, history: &[Observation], rng: &mut ChaCha8Rng) -> Option<Vec<f64>> {
    if history.len() < STARTUP_TRIALS {
        return None;
    }
    let mut ranked: Vec<&Observation> = history.iter().collect();
    ranked.sort_by(|a, b| b.level.cmp(&a.level).then(a.value.total_cmp(&b.value)));
    let n_good = ((GAMMA * ranked.len() as f64).ceil() as usize).clamp(1, ranked.len() - 1);
    let (good, bad) = ranked.split_at(n_good);
    let estimators: Vec<(Parzen, Parzen)> = space
        .dims
        .iter()
        .enumerate()
        .map(|(d, dim)| {
            let column = |part: &[&Observation]| part.iter().map(|o| o.point[d]).collect::<Vec<_>>();
            (Parzen::fit(&dim.distribution, &column(good)), Parzen::fit(&dim.distribution, &column(bad)))
        })
        .collect();
    (0..CANDIDATES)
        .map(|_| {
            let x: Vec<f64> = estimators.iter().map(|(l, _)| l.sample(rng)).collect();
            let score: f64 =
                estimators.iter().zip(&x).map(|((l, g), &x)| l.log_density(x) - g.log_density(x)).sum();
            (x, score)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(x, _)| x)
}

/// One dimension's estimator.
enum Parzen {
    /// A mixture of truncated Gaussians on [low, high] (`integer`: scored per unit interval).
    Gaussians { low: f64, high: f64, mus: Vec<f64>, sigmas: Vec<f64>, integer: bool },
    /// Probabilities of the choices.
    Categorical(Vec<f64>),
}

impl Parzen {
    fn fit(distribution: &Distribution, xs: &[f64]) -> Self {
        if let Distribution::Choice(items) = distribution {
            let mut counts = vec![1.0; items.len()];
            xs.iter().for_each(|&x| counts[x.round() as usize] += 1.0);
            let total: f64 = counts.iter().sum();
            return Self::Categorical(counts.into_iter().map(|c| c / total).collect());
        }
        let (low, high) = distribution.coordinate_bounds();
        let range = high - low;
        let mut mus: Vec<f64> = xs.to_vec();
        mus.push(0.5 * (low + high));
        mus.sort_by(f64::total_cmp);
        let floor = range / (100f64).min(mus.len() as f64);
        let sigmas = (0..mus.len())
            .map(|i| {
                let left = if i == 0 { mus[i] - low } else { mus[i] - mus[i - 1] };
                let right = if i + 1 == mus.len() { high - mus[i] } else { mus[i + 1] - mus[i] };
                left.max(right).clamp(floor, range)
            })
            .collect::<Vec<_>>();
        // the prior component keeps σ = range
        let prior = mus.iter().position(|&m| m == 0.5 * (low + high)).unwrap_or(0);
        let mut sigmas = sigmas;
        sigmas[prior] = range;
        let integer = matches!(distribution, Distribution::IntUniform { .. });
        Self::Gaussians { low, high, mus, sigmas, integer }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        match self {
            Self::Categorical(p) => {
                let mut u: f64 = rng.gen();
                for (i, &pi) in p.iter().enumerate() {
                    if u < pi {
                        return i as f64;
                    }
                    u -= pi;
                }
                (p.len() - 1) as f64
            }
            Self::Gaussians { low, high, mus, sigmas, integer } => {
                let k = rng.gen_range(0..mus.len());
                let mut x = mus[k];
                for _ in 0..100 {
                    let z: f64 = StandardNormal.sample(rng);
                    let candidate = mus[k] + sigmas[k] * z;
                    if (*low..=*high).contains(&candidate) {
                        x = candidate;
                        break;
                    }
                }
                if *integer {
                    x.round()
                } else {
                    x
                }
            }
        }
    }

    fn log_density(&self, x: f64) -> f64 {
        match self {
            Self::Categorical(p) => p[x.round() as usize].ln(),
            Self::Gaussians { low, high, mus, sigmas, integer } => {
                let weight = 1.0 / mus.len() as f64;
                let density: f64 = mus
                    .iter()
                    .zip(sigmas)
                    .map(|(&mu, &sigma)| {
                        let mass = normal_cdf((high - mu) / sigma) - normal_cdf((low - mu) / sigma);
                        let p = if *integer {
                            normal_cdf((x + 0.5 - mu) / sigma) - normal_cdf((x - 0.5 - mu) / sigma)
                        } else {
                            (-0.5 * ((x - mu) / sigma).powi(2)).exp()
                                / (sigma * (2.0 * std::f64::consts::PI).sqrt())
                        };
                        weight * p / mass.max(1e-12)
                    })
                    .sum();
                density.max(1e-300).ln()
            }
        }
    }
}

/// Φ(z), the standard normal CDF.
fn normal_cdf(z: f64) -> f64 {
    0.5 * (1.0 + qatlab_deploy::math::erf((z / std::f64::consts::SQRT_2) as f32) as f64)
}
