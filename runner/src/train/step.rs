//! The optimizer step: gradient accumulation, global-norm clipping, the update of every
//! parameter buffer, and the weight averages (EMA, SWA).

use super::Trainer;
use crate::nn::model::Network;

impl Trainer {
    /// Take the optimizer step for gradients still being accumulated (at the end of an epoch).
    pub fn flush_accumulated(&mut self, lr: f32) {
        if self.accumulator.pending() > 0 {
            self.accumulator.take_mean_into(&mut self.net.layers);
            self.optimizer_step(lr);
        }
    }

    /// Clip, update every parameter buffer from the layers' gradients, update the EMA.
    pub(super) fn optimizer_step(&mut self, lr: f32) {
        if let Some(max_norm) = self.config.train.grad_clip {
            clip_global_norm(&mut self.net, max_norm as f32);
        }
        for (i, layer) in self.net.layers.iter_mut().enumerate() {
            self.weight_state[i].step(&self.adam, lr, &mut layer.weight, &layer.grad_weight, true);
            if !layer.grad_params.is_empty() {
                let grads = std::mem::take(&mut layer.grad_params);
                self.param_state[i].step(&self.adam, lr, layer.quantizer.params_mut(), &grads, false);
                layer.grad_params = grads;
            }
            if !layer.residual_scale.is_empty() {
                self.residual_state[i].step(
                    &self.adam,
                    lr,
                    &mut layer.residual_scale,
                    &layer.grad_residual,
                    false,
                );
            }
        }
        for (i, layer) in self.net.layers.iter_mut().enumerate() {
            if !layer.norm_affine.is_empty() {
                self.affine_state[i].step(
                    &self.adam,
                    lr,
                    &mut layer.norm_affine,
                    &layer.grad_norm_affine,
                    false,
                );
            }
        }
        if let Some(decay) = self.config.train.ema {
            self.averages.update_ema(decay as f32, &self.net.layers);
        }
        self.step += 1;
    }

    /// Fold this epoch's final weights into the stochastic weight average.
    pub fn add_to_swa(&mut self) {
        self.averages.add_to_swa(&self.net.layers);
    }
}

/// Scale every gradient (latent weights, quantizer and residual parameters) so that their joint
/// L2 norm is at most `max_norm` (PyTorch's `clip_grad_norm_`); returns the norm before.
pub fn clip_global_norm(net: &mut Network, max_norm: f32) -> f32 {
    let squares: f64 = net
        .layers
        .iter()
        .flat_map(|l| {
            l.grad_weight.iter().chain(&l.grad_params).chain(&l.grad_residual).chain(&l.grad_norm_affine)
        })
        .map(|g| (*g as f64) * (*g as f64))
        .sum();
    let norm = squares.sqrt() as f32;
    if norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for l in &mut net.layers {
            l.grad_weight
                .iter_mut()
                .chain(l.grad_params.iter_mut())
                .chain(l.grad_residual.iter_mut())
                .chain(l.grad_norm_affine.iter_mut())
                .for_each(|g| *g *= factor);
        }
    }
    norm
}
