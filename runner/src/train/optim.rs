//! Optimizers on plain slices (Adam, AdamW, SGD with momentum). dfdx's `AdamConfig::try_update`
//! needs dfdx tensors and gradients; our gradients come back from the quantizers'
//! straight-through backward as host slices, so the update runs here, once per parameter buffer,
//! with exactly PyTorch's arithmetic.

use serde::{Deserialize, Serialize};

/// Optimizer hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Which update rule.
    pub kind: qatlab_core::config::OptimizerKind,
    /// SGD momentum.
    pub momentum: f32,
    /// SGD with Nesterov momentum.
    pub nesterov: bool,
    /// β₁, β₂.
    pub betas: [f32; 2],
    /// ε added to √v̂.
    pub eps: f32,
    /// L2 weight decay added to the gradient (PyTorch `Adam(weight_decay=…)`).
    pub weight_decay: f32,
}

/// Moments of one parameter buffer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdamState {
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
    /// Steps taken.
    pub t: u64,
}

impl AdamState {
    /// True before the first step (checkpoints then omit it).
    pub fn is_empty(&self) -> bool {
        self.m.is_empty() && self.v.is_empty() && self.t == 0
    }

    /// One optimizer step of `params` with gradient `grad` at learning rate `lr`.
    /// `decay` turns weight decay on for this buffer (off for scales and norms).
    pub fn step(&mut self, cfg: &AdamConfig, lr: f32, params: &mut [f32], grad: &[f32], decay: bool) {
        use qatlab_core::config::OptimizerKind;
        match cfg.kind {
            OptimizerKind::Adam => {
                self.adam(cfg, lr, params, grad, if decay { cfg.weight_decay } else { 0.0 })
            }
            OptimizerKind::Adamw => {
                if decay {
                    params.iter_mut().for_each(|p| *p -= lr * cfg.weight_decay * *p);
                }
                self.adam(cfg, lr, params, grad, 0.0)
            }
            OptimizerKind::Sgd => self.sgd(cfg, lr, params, grad, if decay { cfg.weight_decay } else { 0.0 }),
        }
    }

    /// SGD with momentum as PyTorch: b ← μ·b + g (b = g at the first step); the step is b, or
    /// g + μ·b with Nesterov.
    fn sgd(&mut self, cfg: &AdamConfig, lr: f32, params: &mut [f32], grad: &[f32], wd: f32) {
        if self.m.len() != params.len() {
            self.m = vec![0.0; params.len()];
            self.t = 0;
        }
        let first = self.t == 0;
        self.t += 1;
        for i in 0..params.len() {
            let g = grad[i] + wd * params[i];
            self.m[i] = if first { g } else { cfg.momentum * self.m[i] + g };
            let update = if cfg.nesterov { g + cfg.momentum * self.m[i] } else { self.m[i] };
            params[i] -= lr * update;
        }
    }

    fn adam(&mut self, cfg: &AdamConfig, lr: f32, params: &mut [f32], grad: &[f32], wd: f32) {
        if self.m.len() != params.len() {
            self.m = vec![0.0; params.len()];
            self.v = vec![0.0; params.len()];
            self.t = 0;
        }
        self.t += 1;
        let [b1, b2] = cfg.betas;
        let bias1 = 1.0 - b1.powi(self.t as i32);
        let bias2_sqrt = (1.0 - b2.powi(self.t as i32)).sqrt();
        let step_size = lr / bias1;
        for i in 0..params.len() {
            let g = grad[i] + wd * params[i];
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            let denom = self.v[i].sqrt() / bias2_sqrt + cfg.eps;
            params[i] -= step_size * self.m[i] / denom;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qatlab_core::config::OptimizerKind;

    fn adam(weight_decay: f32) -> AdamConfig {
        AdamConfig {
            kind: OptimizerKind::Adam,
            momentum: 0.9,
            nesterov: false,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay,
        }
    }

    #[test]
    fn sgd_momentum_and_nesterov_follow_pytorch() {
        let sgd = AdamConfig { kind: OptimizerKind::Sgd, ..adam(0.0) };
        let mut state = AdamState::default();
        let mut p = vec![1.0f32];
        state.step(&sgd, 0.1, &mut p, &[1.0], true); // b = 1, p = 0.9
        state.step(&sgd, 0.1, &mut p, &[1.0], true); // b = 1.9, p = 0.71
        assert!((p[0] - 0.71).abs() < 1e-6, "{p:?}");
        let nesterov = AdamConfig { nesterov: true, ..sgd };
        let mut state = AdamState::default();
        let mut p = vec![1.0f32];
        state.step(&nesterov, 0.1, &mut p, &[1.0], true); // b = 1, step 1 + 0.9 = 1.9
        assert!((p[0] - 0.81).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn adamw_decays_the_weights_not_the_gradient() {
        let adamw = AdamConfig { kind: OptimizerKind::Adamw, ..adam(0.5) };
        let mut state = AdamState::default();
        let mut p = vec![2.0f32];
        state.step(&adamw, 0.1, &mut p, &[0.0], true);
        // decoupled: p ← p − lr·wd·p = 1.9; the zero gradient moves nothing
        assert!((p[0] - 1.9).abs() < 1e-6, "{p:?}");
        let mut p = vec![2.0f32];
        AdamState::default().step(&adamw, 0.1, &mut p, &[0.0], false);
        assert_eq!(p[0], 2.0, "no decay on scales");
    }

    #[test]
    fn first_step_moves_by_lr_against_the_gradient_sign() {
        let cfg = adam(0.0);
        let mut state = AdamState::default();
        let mut p = vec![1.0, -1.0];
        state.step(&cfg, 0.1, &mut p, &[0.5, -2.0], true);
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn minimises_a_quadratic() {
        let cfg = adam(0.0);
        let mut state = AdamState::default();
        let mut p = vec![3.0f32];
        for _ in 0..2000 {
            let g = [2.0 * (p[0] - 1.5)];
            state.step(&cfg, 0.01, &mut p, &g, true);
        }
        assert!((p[0] - 1.5).abs() < 1e-2, "{p:?}");
    }
}
