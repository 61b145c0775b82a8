//! A search's ledger for people: trials ranked by their value (`qat run`'s closing table and
//! `qat list` of a search file).

use std::fmt::Write;

use crate::experiment::search::ledger::{Ledger, TrialState};
use crate::experiment::search::SearchSpec;
use crate::experiment::sweep::inline;

/// Trials ranked: finished by value, then stopped ones by how far they got and their value,
/// then running and failed ones; each with its state, evaluations, value and values.
pub fn ledger_table(ledger: &Ledger, spec: &SearchSpec) -> String {
    let mut order: Vec<usize> = (0..ledger.trials.len()).collect();
    let rank = |state: TrialState| match state {
        TrialState::Finished => 0,
        TrialState::Pruned => 1,
        TrialState::Running => 2,
        TrialState::Failed => 3,
    };
    order.sort_by(|&a, &b| {
        let (a, b) = (&ledger.trials[a], &ledger.trials[b]);
        let value =
            |t: &crate::experiment::search::ledger::Trial| t.value.map_or(f64::INFINITY, |v| spec.loss(v));
        rank(a.state)
            .cmp(&rank(b.state))
            .then(b.evaluations.cmp(&a.evaluations))
            .then(value(a).total_cmp(&value(b)))
            .then(a.trial.cmp(&b.trial))
    });
    let mut out = String::new();
    let counts: Vec<String> =
        [TrialState::Finished, TrialState::Pruned, TrialState::Running, TrialState::Failed]
            .iter()
            .map(|&s| (s, ledger.trials.iter().filter(|t| t.state == s).count()))
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{n} {}", state_name(s, 0)))
            .collect();
    let _ = writeln!(
        out,
        "search: {} of {} trials ({}); {} {:?}, {:?} evaluation",
        ledger.trials.len(),
        spec.trials,
        if counts.is_empty() { "none yet".to_string() } else { counts.join(", ") },
        spec.metric,
        spec.goal(),
        spec.use_
    );
    let _ = writeln!(
        out,
        "{:>5}  {:>5}  {:<9}  {:>5}  {:>10}  values",
        "rank", "trial", "state", "evals", spec.metric
    );
    for (rank, &i) in order.iter().enumerate() {
        let t = &ledger.trials[i];
        let values: Vec<String> = t.pairs().iter().map(|(k, v)| format!("{k}={}", inline(v))).collect();
        let value = t.value.map_or("-".to_string(), |v| format!("{v:.4}"));
        let _ = writeln!(
            out,
            "{:>5}  {:>5}  {:<9}  {:>5}  {value:>10}  {}",
            rank + 1,
            t.trial,
            state_name(t.state, t.evaluations),
            t.evaluations,
            values.join(" ")
        );
    }
    out
}

/// A state as `qat list` names it: a running trial with no evaluation yet is `proposed`.
fn state_name(state: TrialState, evaluations: usize) -> &'static str {
    match state {
        TrialState::Running if evaluations == 0 => "proposed",
        TrialState::Running => "running",
        TrialState::Pruned => "pruned",
        TrialState::Finished => "finished",
        TrialState::Failed => "failed",
    }
}
