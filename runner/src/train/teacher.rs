//! A finished run used as a distillation teacher.

use qatlab_core::{config::RunConfig, Registry};

use super::checkpoint::load_finished;
use crate::data::Task;
use crate::error::{Error, Result};
use crate::nn::engine::Engine;
use crate::nn::model::Network;

/// A finished run used as a distillation teacher, with its loss.
pub(super) struct Teacher {
    pub(super) net: Network,
    pub(super) engine: Engine,
    pub(super) loss: Box<dyn qatlab_core::Distiller>,
    /// Width of the teacher's last hidden layer (its penultimate features).
    pub(super) feature_width: usize,
}

impl Teacher {
    /// Load the teacher named in `config` (its resolved config and last checkpoint).
    pub(super) fn load(
        spec: &qatlab_core::config::DistillConfig,
        registry: &Registry,
        task: Task,
    ) -> Result<Self> {
        let dir = std::path::Path::new(spec.teacher_dir());
        let bad = |what: String| Error::Config(format!("train.distill.teacher: {}: {what}", dir.display()));
        let run = load_finished(dir, registry).map_err(|e| bad(e.to_string()))?;
        let theirs = run.trainer.task();
        if theirs != task {
            return Err(bad(format!(
                "it was trained on {}×{}×{} inputs and {} classes, this run has {}×{}×{} and {}",
                theirs.channels,
                theirs.side,
                theirs.side,
                theirs.classes,
                task.channels,
                task.side,
                task.side,
                task.classes
            )));
        }
        let loss =
            registry.distillers.build(&spec.loss.name, &spec.loss.params).map_err(|e| bad(e.to_string()))?;
        let feature_width = run.config.model.hidden.last().copied().unwrap_or(0);
        Ok(Self { net: run.trainer.net, engine: Engine::new(), loss, feature_width })
    }
}

impl Teacher {
    /// Check that a feature distiller compares features of one width.
    pub(super) fn matching_features(self, student: &RunConfig) -> Result<Self> {
        let width = student.model.hidden.last().copied().unwrap_or(0);
        if self.loss.uses_features() && (width == 0 || width != self.feature_width) {
            return Err(Error::Config(format!(
                "train.distill: this loss compares penultimate features, so the teacher's last hidden width \
                 ({}) must equal the student's ({width}); use `kd`, or a teacher of that width",
                self.feature_width
            )));
        }
        Ok(self)
    }
}
