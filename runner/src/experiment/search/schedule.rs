//! What runs next in a search, and what happens to a trial at a rung: the rungs of
//! successive halving, ASHA's promotions, the median rule. Pure functions of the ledger, so
//! a replayed ledger makes the same decisions.

use super::ledger::{Trial, TrialState};
use super::{PruneMethod, PruneSpec};

/// The evaluation counts at which trials stop to be compared: min_resource · η^k below the
/// run's `total` evaluations, then `total` (no pruning: `total` alone).
pub fn rungs(prune: Option<&PruneSpec>, total: usize) -> Vec<usize> {
    let mut rungs = Vec::new();
    if let Some(p) = prune {
        let mut r = p.min_resource;
        while r < total {
            rungs.push(r);
            r = r.saturating_mul(p.reduction);
        }
    }
    rungs.push(total.max(1));
    rungs
}

/// The next thing to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Train trial `trial` on to `budget` evaluations (None: to the end).
    Resume {
        /// Its index.
        trial: usize,
        /// Evaluations it may reach (None: all).
        budget: Option<usize>,
    },
    /// Propose a new trial.
    Propose,
    /// Nothing can start until a running trial reports.
    Wait,
    /// The search is over.
    Done,
}

/// How far a search may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Trials it may hold.
    pub trials: usize,
    /// Evaluations its trials may train in all (counting a trial's once, whatever its seeds);
    /// None: no cap.
    pub evaluations: Option<usize>,
}

/// The next job, given the ledger's trials, those a worker is running now, the search's limit,
/// and the rungs. Order: a trial left running by an interrupted invocation, then ASHA's
/// promotions (from the highest rung down), then a new proposal. Under a compute cap the
/// search ends when that job would train past the cap: a cap is a promise, so nothing starts
/// that could break it, and the search does not fall back to cheaper jobs the schedule ranks
/// lower (new trials that could never be promoted).
pub fn next(
    trials: &[Trial],
    in_flight: &[usize],
    limit: Limit,
    rungs: &[usize],
    prune: Option<&PruneSpec>,
    loss: &dyn Fn(f64) -> f64,
) -> Next {
    if let Some(t) = trials.iter().find(|t| t.state == TrialState::Running && !in_flight.contains(&t.trial)) {
        return Next::Resume { trial: t.trial, budget: t.budget };
    }
    let total = *rungs.last().expect("the whole run is a rung");
    let fits = |cost: usize| limit.evaluations.is_none_or(|cap| committed(trials, total) + cost <= cap);
    let end = if in_flight.is_empty() { Next::Done } else { Next::Wait };
    if prune.is_some_and(|p| p.method == PruneMethod::Asha) {
        let eta = prune.map_or(3, |p| p.reduction);
        for k in (0..rungs.len().saturating_sub(1)).rev() {
            if let Some(trial) = promotable(trials, k, eta, loss) {
                let budget = budget_after(rungs, k);
                return if fits(budget.unwrap_or(total) - rungs[k]) {
                    Next::Resume { trial, budget }
                } else {
                    end
                };
            }
        }
    }
    if trials.len() < limit.trials && fits(rungs[0]) {
        Next::Propose
    } else {
        end
    }
}

/// Evaluations the trials have trained or may train now: what each reached, or for a running
/// trial its budget (the whole run when it has none).
pub fn committed(trials: &[Trial], total: usize) -> usize {
    trials
        .iter()
        .map(|t| match t.state {
            TrialState::Running => t.budget.unwrap_or(total).max(t.evaluations),
            _ => t.evaluations,
        })
        .sum()
}

/// The budget of a trial that goes on past rung `k`: the next rung, or the end.
fn budget_after(rungs: &[usize], k: usize) -> Option<usize> {
    (k + 2 < rungs.len()).then(|| rungs[k + 1])
}

/// ASHA: a trial stopped at rung `k` that is among the top ⌊n/η⌋ of the n trials that reached
/// rung `k`.
fn promotable(trials: &[Trial], k: usize, eta: usize, loss: &dyn Fn(f64) -> f64) -> Option<usize> {
    let mut reached: Vec<&Trial> = trials.iter().filter(|t| t.rungs.len() > k).collect();
    reached.sort_by(|a, b| loss(a.rungs[k]).total_cmp(&loss(b.rungs[k])).then(a.trial.cmp(&b.trial)));
    let top = reached.len() / eta;
    reached[..top].iter().find(|t| t.state == TrialState::Pruned && t.rungs.len() == k + 1).map(|t| t.trial)
}

/// What becomes of a trial that stopped at its budget, rung `k` (value `value`) but is not
/// finished: ASHA stops it (it may be promoted later); the median rule stops it for good when
/// it is worse than the median of the other trials at that rung (once `startup` have reached
/// it), and otherwise lets it go on to the next rung.
pub fn at_rung(
    trials: &[Trial],
    trial: usize,
    k: usize,
    value: f64,
    rungs: &[usize],
    prune: &PruneSpec,
    loss: &dyn Fn(f64) -> f64,
) -> (TrialState, Option<usize>) {
    match prune.method {
        PruneMethod::Asha => (TrialState::Pruned, Some(rungs[k])),
        PruneMethod::Median => {
            let mut others: Vec<f64> = trials
                .iter()
                .filter(|t| t.trial != trial && t.rungs.len() > k)
                .map(|t| loss(t.rungs[k]))
                .collect();
            if others.len() >= prune.startup.max(1) {
                others.sort_by(f64::total_cmp);
                let n = others.len();
                let median = 0.5 * (others[(n - 1) / 2] + others[n / 2]);
                if loss(value) > median {
                    return (TrialState::Pruned, Some(rungs[k]));
                }
            }
            (TrialState::Running, budget_after(rungs, k))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_yaml::Mapping;

    fn prune(method: &str) -> PruneSpec {
        serde_yaml::from_str(&format!("{{method: {method}, min_resource: 1, reduction: 3}}")).unwrap()
    }

    fn trial(index: usize) -> Trial {
        Trial {
            trial: index,
            values: Mapping::new(),
            runs: Vec::new(),
            state: TrialState::Running,
            budget: None,
            rungs: Vec::new(),
            value: None,
            evaluations: 0,
            error: None,
        }
    }

    #[test]
    fn rungs_grow_by_eta_up_to_the_whole_run() {
        assert_eq!(rungs(Some(&prune("asha")), 27), [1, 3, 9, 27]);
        assert_eq!(rungs(Some(&prune("asha")), 10), [1, 3, 9, 10]);
        assert_eq!(rungs(None, 10), [10]);
    }

    /// Run ASHA one job at a time (as `--jobs 1`) on trials whose value at every rung is fixed:
    /// trial i's value is `values[i]` (lower is better).
    /// Also returns each promotion: the trial, its rung and the values at that rung then.
    #[allow(clippy::type_complexity)]
    fn simulate(
        values: &[f64],
        total: usize,
        cap: Option<usize>,
    ) -> (Vec<Trial>, Vec<(usize, usize, Vec<f64>)>) {
        let p = prune("asha");
        let rungs = rungs(Some(&p), total);
        let loss = |v: f64| v;
        let mut trials: Vec<Trial> = Vec::new();
        let mut promotions = Vec::new();
        loop {
            let limit = Limit { trials: values.len(), evaluations: cap };
            let (index, budget) = match next(&trials, &[], limit, &rungs, Some(&p), &loss) {
                Next::Propose => {
                    let mut t = trial(trials.len());
                    t.budget = Some(rungs[0]);
                    trials.push(t);
                    (trials.len() - 1, Some(rungs[0]))
                }
                Next::Resume { trial, budget } => {
                    let k = trials[trial].rungs.len() - 1;
                    let at_k = trials.iter().filter(|t| t.rungs.len() > k).map(|t| t.rungs[k]).collect();
                    promotions.push((trial, k, at_k));
                    (trial, budget)
                }
                Next::Done => return (trials, promotions),
                Next::Wait => unreachable!("nothing is in flight"),
            };
            trials[index].state = TrialState::Running;
            trials[index].budget = budget;
            // train to the budget: every rung up to it reached with the trial's fixed value
            let reached = budget.unwrap_or(total);
            let k = rungs.iter().position(|&r| r == reached).unwrap();
            while trials[index].rungs.len() <= k {
                trials[index].rungs.push(values[index]);
            }
            trials[index].evaluations = reached;
            if budget.is_none() {
                trials[index].state = TrialState::Finished;
            } else {
                let (state, budget) = at_rung(&trials, index, k, values[index], &rungs, &p, &loss);
                trials[index].state = state;
                trials[index].budget = budget;
            }
        }
    }

    #[test]
    fn asha_keeps_the_top_third_at_each_rung() {
        // 27 trials, values a shuffled 0..27: rungs 1, 3, 9, 27
        let values: Vec<f64> = (0..27).map(|i| ((i * 11) % 27) as f64).collect();
        let (trials, promotions) = simulate(&values, 27, None);
        let count = |k: usize| trials.iter().filter(|t| t.rungs.len() > k).count();
        // every trial reaches rung 0, fewer each later rung (asynchronous promotions can take more
        // than a third in all: a trial promoted early may later fall out of the top third)
        assert_eq!(count(0), 27);
        for k in 1..4 {
            assert!(count(k) < count(k - 1) && count(k) >= 1, "rung {k}: {} of {}", count(k), count(k - 1));
        }
        // each promotion took a trial in the top third of those at its rung at the time
        assert_eq!(promotions.len(), count(1) + count(2) + count(3));
        for (t, k, at_k) in &promotions {
            let better = at_k.iter().filter(|&&v| v < values[*t]).count();
            assert!(
                better < at_k.len() / 3,
                "trial {t} promoted from rung {k} with {better} better of {}",
                at_k.len()
            );
        }
        // the best trial went all the way
        let best = values.iter().position(|&v| v == 0.0).unwrap();
        assert_eq!(trials[best].state, TrialState::Finished);
        // the rest end pruned at the rung they reached
        assert!(trials.iter().all(|t| t.state == TrialState::Finished || t.state == TrialState::Pruned));
    }

    #[test]
    fn median_rule_stops_trials_worse_than_the_median_after_startup() {
        let p = PruneSpec { startup: 2, ..prune("median") };
        let rungs = rungs(Some(&p), 9);
        let loss = |v: f64| v;
        let mut trials: Vec<Trial> = (0..3).map(trial).collect();
        trials[0].rungs = vec![1.0];
        // one other trial at the rung: too few to judge
        assert_eq!(at_rung(&trials, 2, 0, 5.0, &rungs, &p, &loss), (TrialState::Running, Some(3)));
        trials[1].rungs = vec![2.0];
        assert_eq!(at_rung(&trials, 2, 0, 5.0, &rungs, &p, &loss), (TrialState::Pruned, Some(1)));
        assert_eq!(at_rung(&trials, 2, 0, 1.2, &rungs, &p, &loss), (TrialState::Running, Some(3)));
        // maximised metrics compare through `loss`
        let gain = |v: f64| -v;
        assert_eq!(at_rung(&trials, 2, 0, 5.0, &rungs, &p, &gain).0, TrialState::Running);
        // the median rule never promotes: a pruned trial stays pruned
        trials[2].state = TrialState::Pruned;
        trials[2].rungs = vec![5.0];
        trials[0].state = TrialState::Finished;
        trials[1].state = TrialState::Finished;
        assert_eq!(
            next(&trials, &[], Limit { trials: 3, evaluations: None }, &rungs, Some(&p), &loss),
            Next::Done
        );
    }

    #[test]
    fn an_interrupted_trial_resumes_first_and_the_search_waits_for_running_ones() {
        let rungs = rungs(None, 5);
        let loss = |v: f64| v;
        let limit = |trials| Limit { trials, evaluations: None };
        let mut trials: Vec<Trial> = (0..2).map(trial).collect();
        trials[0].state = TrialState::Finished;
        assert_eq!(
            next(&trials, &[], limit(4), &rungs, None, &loss),
            Next::Resume { trial: 1, budget: None }
        );
        assert_eq!(next(&trials, &[1], limit(4), &rungs, None, &loss), Next::Propose);
        assert_eq!(next(&trials, &[1], limit(2), &rungs, None, &loss), Next::Wait);
        trials[1].state = TrialState::Finished;
        assert_eq!(next(&trials, &[], limit(2), &rungs, None, &loss), Next::Done);
        // a cap counts what running trials may still train: trial 1 (5 evaluations) fills it
        trials[0].evaluations = 5;
        trials[1].state = TrialState::Running;
        let capped = Limit { trials: 4, evaluations: Some(12) };
        assert_eq!(committed(&trials, 5), 10);
        assert_eq!(next(&trials, &[1], capped, &rungs, None, &loss), Next::Wait);
        trials[1].state = TrialState::Finished;
        trials[1].evaluations = 5;
        assert_eq!(next(&trials, &[], capped, &rungs, None, &loss), Next::Done);
    }

    #[test]
    fn a_compute_cap_ends_the_search_where_its_next_job_would_pass_it() {
        let values: Vec<f64> = (0..27).map(|i| ((i * 11) % 27) as f64).collect();
        let (whole, order) = simulate(&values, 27, None);
        let spent = |trials: &[Trial]| trials.iter().map(|t| t.evaluations).sum::<usize>();
        for cap in [1, 20, 45, 80, spent(&whole) - 1] {
            let (capped, promotions) = simulate(&values, 27, Some(cap));
            assert!(spent(&capped) <= cap, "cap {cap}: spent {}", spent(&capped));
            // the capped search is the uncapped one cut short: the same trials, the same promotions
            assert_eq!(promotions[..], order[..promotions.len()], "cap {cap}");
            assert!(capped.iter().zip(&whole).all(|(c, w)| w.rungs.starts_with(&c.rungs)), "cap {cap}");
            assert!(capped.len() < whole.len() || promotions.len() < order.len(), "cap {cap} cuts");
        }
        let (uncut, _) = simulate(&values, 27, Some(spent(&whole)));
        assert_eq!(spent(&uncut), spent(&whole), "a cap the search never reaches changes nothing");
    }
}
