//! The schedule trait: a pure function of where training stands.

/// Where training stands. Schedules read only this, never a hidden counter, so a resumed run
/// sees exactly the values an uninterrupted run would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Current epoch, from 0.
    pub epoch: usize,
    /// Optimizer step within the whole run, from 0.
    pub step: usize,
    /// Total epochs of the run.
    pub epochs: usize,
    /// Total optimizer steps of the run.
    pub steps: usize,
}

/// A schedule maps training progress to a value: a learning-rate multiplier, a temperature,
/// a probability, ...
pub trait Schedule: Send + Sync {
    /// The value at `p`.
    fn value(&self, p: Progress) -> f64;
}
