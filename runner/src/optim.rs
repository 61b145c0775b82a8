//! Adam on plain slices. dfdx's `AdamConfig::try_update` needs dfdx tensors and gradients;
//! our gradients come back from the quantizers' straight-through backward as host slices, so
//! the update runs here, once per parameter buffer, with exactly PyTorch's arithmetic.

use serde::{Deserialize, Serialize};

/// Adam hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
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
    /// One Adam step of `params` with gradient `grad` at learning rate `lr`.
    /// `decay` turns weight decay on for this buffer (off for scales and norms).
    pub fn step(&mut self, cfg: &AdamConfig, lr: f32, params: &mut [f32], grad: &[f32], decay: bool) {
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
        let wd = if decay { cfg.weight_decay } else { 0.0 };
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

    #[test]
    fn first_step_moves_by_lr_against_the_gradient_sign() {
        let cfg = AdamConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 };
        let mut state = AdamState::default();
        let mut p = vec![1.0, -1.0];
        state.step(&cfg, 0.1, &mut p, &[0.5, -2.0], true);
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 0.9).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn minimises_a_quadratic() {
        let cfg = AdamConfig { betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.0 };
        let mut state = AdamState::default();
        let mut p = vec![3.0f32];
        for _ in 0..2000 {
            let g = [2.0 * (p[0] - 1.5)];
            state.step(&cfg, 0.01, &mut p, &g, true);
        }
        assert!((p[0] - 1.5).abs() < 1e-2, "{p:?}");
    }
}
