//! `sweep.search`: random, quasi-random (Sobol') and Bayesian (TPE) search over a space of config
//! values, with successive-halving (ASHA) or median pruning. This module holds what a search
//! *is* (its settings, its space, how the next point is chosen, when a trial stops); the
//! ledger that records it and the loop that runs it live in `launch::search`.

pub mod ledger;
pub mod schedule;
pub mod sobol;
pub mod space;
pub mod tpe;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

pub use space::Space;
use tpe::Observation;

/// The `sweep.search` section.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SearchSpec {
    /// How points are chosen.
    pub method: Method,
    /// How many trials the search runs (raise it and rerun to continue a finished search).
    pub trials: usize,
    /// Seed of the proposals (not of training: that is `train.seed` / `sweep.seeds`).
    #[serde(default)]
    pub seed: u64,
    /// A per-evaluation metric of `metrics.csv`: `val_loss`, `val_acc` (a language model's
    /// validation windows, or the images `data.validation` holds out), `test_loss`, `test_acc`,
    /// `train_loss`, `train_acc`.
    pub metric: String,
    /// Which evaluation of a trial counts.
    #[serde(default, rename = "use")]
    pub use_: Use,
    /// Whether lower or higher is better (default: lower for losses, higher for accuracies).
    #[serde(default)]
    pub goal: Option<Goal>,
    /// Dotted config path → distribution.
    pub space: Mapping,
    /// Stopping hopeless trials early.
    #[serde(default)]
    pub prune: Option<PruneSpec>,
    /// A cap on the compute the search trains, in whole runs (one run of the base config from
    /// start to end; a trial with three seeds trains three runs): the search ends before a job
    /// that could take it past the cap. Like `trials`, raise it and rerun to continue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<f64>,
}

/// Search methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Independent uniform draws.
    Random,
    /// A scrambled Sobol' sequence.
    Sobol,
    /// The tree-structured Parzen estimator.
    Tpe,
}

/// Which evaluation of a trial gives its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Use {
    /// The last evaluation.
    #[default]
    Last,
    /// The best evaluation so far.
    Best,
}

/// Direction of the metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Lower is better.
    Minimize,
    /// Higher is better.
    Maximize,
}

/// `sweep.search.prune`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PruneSpec {
    /// ASHA or the median rule.
    pub method: PruneMethod,
    /// Evaluations before the first rung.
    #[serde(default = "one")]
    pub min_resource: usize,
    /// η: each rung is η times the one before, and ASHA promotes the top 1/η.
    #[serde(default = "three")]
    pub reduction: usize,
    /// Median rule: trials that must have reached a rung before it prunes there.
    #[serde(default = "five")]
    pub startup: usize,
}

fn one() -> usize {
    1
}
fn three() -> usize {
    3
}
fn five() -> usize {
    5
}

/// Pruning rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PruneMethod {
    /// Asynchronous successive halving (Li et al. 2020): a trial stops at each rung and goes on
    /// when it is in the top 1/η of the trials that reached that rung.
    Asha,
    /// A trial stops for good at a rung where it is worse than the median of the others there.
    Median,
}

/// Metrics a search may use, and whether lower is better.
const METRICS: [(&str, Goal); 6] = [
    ("val_loss", Goal::Minimize),
    ("val_acc", Goal::Maximize),
    ("test_loss", Goal::Minimize),
    ("test_acc", Goal::Maximize),
    ("train_loss", Goal::Minimize),
    ("train_acc", Goal::Maximize),
];

impl SearchSpec {
    /// Check the settings and parse the space; errors start with the key. `validated`: the runs
    /// have a validation set (a language model's, or `data.validation` images).
    pub fn space(&self, validated: bool) -> Result<Space, String> {
        let space = Space::parse(&self.space)?;
        if self.trials == 0 {
            return Err("trials: must be at least 1".into());
        }
        let names: Vec<&str> = METRICS.iter().map(|(m, _)| *m).collect();
        if !names.contains(&self.metric.as_str()) {
            return Err(format!(
                "metric: unknown metric `{}`; one of {}{}",
                self.metric,
                names.join(", "),
                qatlab_core::registry::did_you_mean(&self.metric, &names)
            ));
        }
        if self.metric.starts_with("val_") && !validated {
            return Err(format!(
                "metric: {}: this image dataset has no validation split; hold out training images with data.validation: 5000 (or search on test_acc / test_loss, which tunes on the test set)",
                self.metric
            ));
        }
        if self.method == Method::Sobol && space.dims.len() > sobol::MAX_DIMENSIONS {
            return Err(format!(
                "method: sobol supports up to {} dimensions, the space has {}; use random or tpe",
                sobol::MAX_DIMENSIONS,
                space.dims.len()
            ));
        }
        if let Some(size) = space.size().filter(|&n| n < self.trials as u64) {
            return Err(format!(
                "trials: {} trials in a space of only {size} distinct points; lower trials or use a grid",
                self.trials
            ));
        }
        if let Some(b) = self.budget.filter(|b| !(b.is_finite() && *b > 0.0)) {
            return Err(format!(
                "budget: {b} whole runs; give a positive number (e.g. 10.8 for 40 % of 27 runs)"
            ));
        }
        if let Some(p) = &self.prune {
            if p.min_resource == 0 {
                return Err("prune.min_resource: must be at least 1 evaluation".into());
            }
            if p.reduction < 2 {
                return Err(format!("prune.reduction: must be at least 2, found {}", p.reduction));
            }
        }
        Ok(space)
    }

    /// The metric's direction.
    pub fn goal(&self) -> Goal {
        self.goal.unwrap_or_else(|| {
            METRICS.iter().find(|(m, _)| *m == self.metric).map_or(Goal::Minimize, |(_, g)| *g)
        })
    }

    /// `value` signed so that lower is better.
    pub fn loss(&self, value: f64) -> f64 {
        match self.goal() {
            Goal::Minimize => value,
            Goal::Maximize => -value,
        }
    }

    /// What identifies a search in its ledger: everything but `trials` and `budget` (raising
    /// them continues the search), as one line of YAML.
    pub fn identity(&self, seeds: &[u64]) -> String {
        let resolved = Self { goal: Some(self.goal()), ..self.clone() };
        let mut v = serde_yaml::to_value(resolved).expect("a search spec serialises");
        if let Some(m) = v.as_mapping_mut() {
            m.remove("trials");
            m.remove("budget");
            m.insert(Value::from("seeds"), serde_yaml::to_value(seeds).expect("seeds serialise"));
        }
        crate::experiment::sweep::inline(&v)
    }
}

/// Salt of the proposal streams, so they never coincide with a training stream of the same seed.
const PROPOSAL_SALT: u64 = 0x5EA2_C4ED;

/// The coordinates of trial `trial`, given the observations of earlier trials and the values
/// already taken (a proposal equal to an earlier trial is drawn again, at random).
pub fn propose(
    spec: &SearchSpec,
    space: &Space,
    trial: usize,
    history: &[Observation],
    taken: &[Vec<f64>],
) -> Vec<f64> {
    let seed = crate::data::augment::stream_seed(spec.seed ^ PROPOSAL_SALT, trial, 0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = space.dims.len();
    let first = match spec.method {
        Method::Random => None,
        Method::Sobol => Some(space.from_unit(
            &sobol::Sobol::new(d, spec.seed).expect("dimensions checked at planning").point(trial as u64),
        )),
        Method::Tpe => tpe::propose(space, history, &mut rng),
    };
    let fresh = |x: &Vec<f64>| !taken.contains(&space.values(x).1);
    if let Some(x) = first.filter(fresh) {
        return space.values(&x).1;
    }
    for _ in 0..1000 {
        let u: Vec<f64> = (0..d).map(|_| rng.gen()).collect();
        let x = space.from_unit(&u);
        if fresh(&x) {
            return space.values(&x).1;
        }
    }
    // a nearly exhausted finite space: the first point not taken, in order
    let sizes: Vec<u64> = space.dims.iter().map(|dim| dim.distribution.size().unwrap_or(1)).collect();
    let total: u64 = sizes.iter().product();
    (0..total)
        .map(|mut k| {
            let u: Vec<f64> = sizes
                .iter()
                .map(|&n| {
                    let i = k % n;
                    k /= n;
                    (i as f64 + 0.5) / n as f64
                })
                .collect();
            space.values(&space.from_unit(&u)).1
        })
        .find(|x| !taken.contains(x))
        .unwrap_or_else(|| space.values(&space.from_unit(&vec![0.5; d])).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(method: &str, seed: u64, space: &str) -> (SearchSpec, Space) {
        spec_of(method, seed, space, 30)
    }

    fn spec_of(method: &str, seed: u64, space: &str, trials: usize) -> (SearchSpec, Space) {
        let yaml =
            format!("method: {method}\ntrials: {trials}\nseed: {seed}\nmetric: val_loss\nspace: {space}");
        let spec: SearchSpec = serde_yaml::from_str(&yaml).unwrap();
        let space = spec.space(true).unwrap();
        (spec, space)
    }

    /// The best value `method` finds on `objective` in `trials` trials (coordinates → value).
    fn best_of(
        method: &str,
        seed: u64,
        space: &str,
        trials: usize,
        objective: &dyn Fn(&[f64]) -> f64,
    ) -> f64 {
        let (spec, space) = spec(method, seed, space);
        let mut history = Vec::new();
        let mut taken = Vec::new();
        for t in 0..trials {
            let x = propose(&spec, &space, t, &history, &taken);
            history.push(Observation { point: x.clone(), value: objective(&x), level: 0 });
            taken.push(x);
        }
        history.iter().map(|o| o.value).fold(f64::INFINITY, f64::min)
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        0.5 * (v[(v.len() - 1) / 2] + v[v.len() / 2])
    }

    /// Over 20 seeds at 30 trials, TPE's median best value is below random search's.
    fn tpe_beats_random(space: &str, objective: &dyn Fn(&[f64]) -> f64) -> (f64, f64) {
        let tpe: Vec<f64> = (0..20).map(|s| best_of("tpe", s, space, 30, objective)).collect();
        let random: Vec<f64> = (0..20).map(|s| best_of("random", s, space, 30, objective)).collect();
        let (tpe, random) = (median(tpe), median(random));
        eprintln!("median best of 20 seeds at 30 trials: tpe {tpe:.4}, random {random:.4}");
        assert!(tpe < random, "median best: tpe {tpe} random {random}");
        (tpe, random)
    }

    /// Branin on [-5, 10] × [0, 15]; its minimum is 0.397887 (three places).
    fn branin(x: &[f64]) -> f64 {
        let (a, b, c) = (1.0, 5.1 / (4.0 * std::f64::consts::PI.powi(2)), 5.0 / std::f64::consts::PI);
        let (r, s, t) = (6.0, 10.0, 1.0 / (8.0 * std::f64::consts::PI));
        a * (x[1] - b * x[0] * x[0] + c * x[0] - r).powi(2) + s * (1.0 - t) * x[0].cos() + s
    }

    #[test]
    fn tpe_beats_random_on_branin() {
        assert!((branin(&[std::f64::consts::PI, 2.275]) - 0.397887).abs() < 1e-5);
        tpe_beats_random("{x: {uniform: [-5, 10]}, y: {uniform: [0, 15]}}", &branin);
    }

    #[test]
    fn tpe_beats_random_on_a_shifted_quadratic_with_a_log_dimension() {
        // the minimum at lr = 1e-3 (a log-uniform coordinate), a = 0.3, b = -1.2
        let quadratic =
            |x: &[f64]| (x[0] - 1e-3f64.ln()).powi(2) + (x[1] - 0.3).powi(2) + (x[2] + 1.2).powi(2);
        tpe_beats_random(
            "{lr: {log_uniform: [1.0e-5, 1.0e-1]}, a: {uniform: [-2, 2]}, b: {uniform: [-2, 2]}}",
            &quadratic,
        );
    }

    #[test]
    fn tpe_beats_random_on_a_mixed_space() {
        // a continuous, an integer and a categorical dimension; the best choice is the third
        let mixed = |x: &[f64]| {
            (x[0] - 0.7).powi(2) + 0.05 * (x[1] - 6.0).abs() + [1.0, 0.5, 0.0, 0.8][x[2] as usize]
        };
        tpe_beats_random(
            "{a: {uniform: [0, 1]}, n: {int_uniform: [0, 10]}, q: {choice: [sgd, adam, adamw, lion]}}",
            &mixed,
        );
    }

    #[test]
    fn proposals_are_reproducible_and_never_repeat() {
        let space = "{n: {int_uniform: [0, 3]}, q: {choice: [a, b]}}";
        let run = |method: &str| {
            let (spec, space) = spec_of(method, 3, space, 8);
            let mut taken: Vec<Vec<f64>> = Vec::new();
            for t in 0..8 {
                let x = propose(&spec, &space, t, &[], &taken);
                assert!(!taken.contains(&x), "{method}: trial {t} repeats {x:?}");
                taken.push(x);
            }
            taken
        };
        for method in ["random", "sobol", "tpe"] {
            assert_eq!(run(method), run(method));
            assert_eq!(run(method).len(), 8);
        }
    }

    #[test]
    fn settings_are_checked() {
        let err = |extra: &str| {
            let yaml = format!(
                "method: random\ntrials: 4\nmetric: val_loss\nspace: {{a: {{uniform: [0, 1]}}}}\n{extra}"
            );
            serde_yaml::from_str::<SearchSpec>(&yaml)
                .map_err(|e| e.to_string())
                .and_then(|s| s.space(true).map(|_| ()))
        };
        assert!(err("").is_ok());
        assert!(err("goal: up").unwrap_err().contains("unknown variant `up`"));
        assert!(err("prune: {method: asha, reduction: 1}")
            .unwrap_err()
            .contains("prune.reduction: must be at least 2"));
        assert!(err("budget: 3").is_ok());
        assert!(err("budget: 0").unwrap_err().contains("budget: 0 whole runs; give a positive number"));
        assert!(err("budget: .nan").unwrap_err().contains("budget: NaN whole runs"));
        assert!(err("budgets: 3").unwrap_err().contains("unknown field `budgets`"));
        let spec: SearchSpec =
            serde_yaml::from_str("method: random\ntrials: 9\nmetric: val_los\nspace: {a: {choice: [1, 2]}}")
                .unwrap();
        assert!(spec.space(true).unwrap_err().contains("did you mean `val_loss`"));
        let spec = SearchSpec { metric: "val_loss".into(), ..spec };
        assert!(spec.space(true).unwrap_err().contains("9 trials in a space of only 2 distinct points"));
        assert!(spec.space(false).unwrap_err().contains("no validation split"));
        assert_eq!(spec.goal(), Goal::Minimize);
        assert_eq!(SearchSpec { metric: "test_acc".into(), ..spec }.goal(), Goal::Maximize);
    }
}
