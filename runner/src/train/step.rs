//! The optimizer step: gradient accumulation, global-norm clipping, the update of every
//! parameter buffer, and the weight averages (EMA, SWA).

use super::Trainer;
use crate::nn::model::Network;

impl Trainer {
    /// Take the optimizer step for gradients still being accumulated (at the end of an epoch).
    pub fn flush_accumulated(&mut self, lr: f32) {
        if self.accumulator.pending() > 0 {
            self.accumulator.take_mean_into(&mut self.net);
            self.optimizer_step(lr);
        }
    }

    /// Clip, update every parameter buffer from its gradient (optimizer state by path), update
    /// the EMA.
    pub(super) fn optimizer_step(&mut self, lr: f32) {
        if let Some(max_norm) = self.config.train.grad_clip {
            clip_global_norm(&mut self.net, max_norm as f32);
        }
        for p in self.net.params_mut() {
            let moments = self.moments.entry(p.path).or_default();
            moments.step(&self.adam, lr, p.values, p.grad, p.kind.decayed());
        }
        if let Some(decay) = self.config.train.ema {
            self.averages.update_ema(decay as f32, &self.net);
        }
        self.step += 1;
    }

    /// Fold this epoch's final parameters into the stochastic weight average.
    pub fn add_to_swa(&mut self) {
        self.averages.add_to_swa(&self.net);
    }
}

/// Scale every parameter's gradient (weights, quantizer parameters, residual scales, norm gains
/// and biases) so that their joint L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`); returns the norm before.
pub fn clip_global_norm(net: &mut Network, max_norm: f32) -> f32 {
    let host = net.host;
    let mut params = net.params_mut();
    let square = |g: &f32| (*g as f64) * (*g as f64);
    // in f64; a transformer's (host graph) in eight independent lanes so that it vectorises, the
    // MLP presets' in the order their recorded runs used
    let lanes = |grad: &[f32]| {
        let mut lanes = [0.0f64; 8];
        let chunks = grad.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(square).sum();
        chunks.for_each(|chunk| lanes.iter_mut().zip(chunk).for_each(|(l, g)| *l += square(g)));
        lanes.iter().sum::<f64>() + tail
    };
    let squares: f64 = if host {
        params.iter().map(|p| lanes(p.grad)).sum()
    } else {
        params.iter().flat_map(|p| p.grad.iter()).map(square).sum()
    };
    let norm = squares.sqrt() as f32;
    if norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        params.iter_mut().flat_map(|p| p.grad.iter_mut()).for_each(|g| *g *= factor);
    }
    norm
}
