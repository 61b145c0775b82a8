//! Normalisation of a layer's input: RMS, layer or batch norm, with an optional learned gain and
//! bias (`model.norm_affine`).
//!
//! On host values (the network input, a convolution's output) the norm runs on the host and,
//! when an op upstream needs it, its backward is computed here; on the tape dfdx differentiates
//! it. Batch norm normalises with the batch's statistics in training passes (recording them so
//! the running statistics follow, with PyTorch's momentum) and with the running ones otherwise.

use dfdx::prelude::*;
use qatlab_core::config::Norm;
use qatlab_deploy::format::NormKind;
use qatlab_deploy::graph;

use crate::nn::deploy::{Deployment, Node};
use crate::nn::model::{
    layer_norm_row, rms_norm_row, BatchStats, RunningStats, Sums, BATCH_NORM_EPS, LAYER_NORM_EPS, RMS_EPS,
};
use crate::nn::op::{host, Back, Cx, Forward, Host, Mat, Mode, Op, Pass, Row, Value};
use crate::nn::params::{Param, ParamKind, ParamMut};

/// A norm op over `features` values per sample.
pub struct NormOp {
    /// Which norm (never `Norm::None`: a preset leaves the op out instead).
    pub kind: Norm,
    /// The learned gain (empty without an affine).
    pub gain: Vec<f32>,
    /// The learned bias (empty without an affine).
    pub bias: Vec<f32>,
    /// ∂L/∂gain.
    pub grad_gain: Vec<f32>,
    /// ∂L/∂bias.
    pub grad_bias: Vec<f32>,
    /// Running statistics (batch norm).
    pub running: RunningStats,
}

impl NormOp {
    /// A norm of `features` inputs, with a learned gain (initialised to 1) and bias (to 0) when
    /// asked for.
    pub fn new(kind: Norm, features: usize, gain: bool, bias: bool) -> Self {
        let init = |on: bool, v: f32| if on { vec![v; features] } else { Vec::new() };
        Self {
            kind,
            gain: init(gain, 1.0),
            bias: init(bias, 0.0),
            grad_gain: Vec::new(),
            grad_bias: Vec::new(),
            running: RunningStats::new(features),
        }
    }
}

/// What the backward pass needs.
enum Saved {
    /// Host input: the input before the norm (when upstream wants ∂L/∂x), the normalised values
    /// before the affine (when there is one), and the batch statistics used (batch norm).
    Host { x: Option<Vec<f32>>, normalised: Option<Vec<f32>>, cols: usize, stats: Option<BatchStats> },
    /// Graph input: the gain and bias leaves (those it has).
    Graph { gain: Option<Row>, bias: Option<Row> },
    /// Host input to an RMS or layer norm: the normalised rows y, each row's factor
    /// r = 1/sqrt(mean square + ε), and whether upstream wants ∂L/∂x (which y and r give).
    Rows { y: Vec<f32>, inv: Vec<f32>, cols: usize, wants_x: bool, sums: Sums },
}

impl<T: Mode> Forward<T> for NormOp {
    fn forward(&self, cx: &mut Cx, inputs: Vec<Value<T>>) -> Value<T> {
        match inputs.into_iter().next().expect("a norm reads one value") {
            Value::Host(h) => self.forward_host::<T>(cx, h),
            Value::Graph(x) => {
                let mut h = match (self.kind, cx.pass) {
                    (Norm::Batch, Pass::Train { .. }) => {
                        cx.batch_stats.push(BatchStats::of(&host(&x), x.shape().1));
                        x.normalize::<Axis<0>>(BATCH_NORM_EPS)
                    }
                    (Norm::Batch, Pass::Eval) => self.normalize_with_running(cx.dev, x),
                    (Norm::Layer, _) => x.normalize::<Axis<1>>(LAYER_NORM_EPS),
                    (Norm::Rms, _) => {
                        let shape = *x.shape();
                        let mean_square = x.retaped::<T>().square().mean::<(usize,), Axis<1>>();
                        let inv_rms = (mean_square + RMS_EPS).sqrt().recip();
                        x * inv_rms.broadcast_like::<_, Axis<1>>(&shape)
                    }
                    (Norm::None, _) => x,
                };
                let shape = *h.shape();
                let row =
                    |v: &Vec<f32>| (!v.is_empty()).then(|| cx.dev.tensor_from_vec(v.clone(), (shape.1,)));
                let (gain, bias) = (row(&self.gain), row(&self.bias));
                if let Some(gain) = &gain {
                    h = h * T::leaf1(gain.clone()).broadcast_like::<_, Axis<0>>(&shape);
                }
                if let Some(bias) = &bias {
                    h = h + T::leaf1(bias.clone()).broadcast_like::<_, Axis<0>>(&shape);
                }
                if gain.is_some() || bias.is_some() {
                    cx.save::<T>(Saved::Graph { gain, bias });
                }
                Value::Graph(h)
            }
        }
    }
}

impl NormOp {
    fn forward_host<T: Mode>(&self, cx: &mut Cx, h: Host) -> Value<T> {
        let cols = h.cols;
        let affine = !self.gain.is_empty() || !self.bias.is_empty();
        if matches!(self.kind, Norm::Rms | Norm::Layer) {
            let mut data = h.data;
            // the transformer's host graph sums in lanes; the MLP presets keep the recorded order
            let sums = if cx.host { Sums::Lanes } else { Sums::InOrder };
            let inv: Vec<f32> =
                data.chunks_exact_mut(cols)
                    .map(|row| {
                        if self.kind == Norm::Rms {
                            rms_norm_row(row, sums)
                        } else {
                            layer_norm_row(row, sums)
                        }
                    })
                    .collect();
            if T::RECORDS && (h.wants_grad || affine) {
                cx.save::<T>(Saved::Rows { y: data.clone(), inv, cols, wants_x: h.wants_grad, sums });
            }
            self.apply_affine(&mut data, cols);
            return Value::Host(Host { data, cols, wants_grad: h.wants_grad || affine });
        }
        let x = h.wants_grad.then(|| h.data.clone());
        let mut data = h.data;
        let mut stats = None;
        match (self.kind, cx.pass) {
            (Norm::Batch, Pass::Eval) => {
                BatchStats::normalise(&mut data, &self.running.mean, &self.running.var)
            }
            (Norm::Batch, Pass::Train { .. }) => {
                let b = BatchStats::of(&data, cols);
                BatchStats::normalise(&mut data, &b.mean, &b.var);
                stats = Some(b.clone());
                cx.batch_stats.push(b);
            }
            (Norm::Rms | Norm::Layer | Norm::None, _) => {}
        }
        let normalised = affine.then(|| data.clone());
        self.apply_affine(&mut data, cols);
        let wants_grad = h.wants_grad || normalised.is_some();
        cx.save::<T>(Saved::Host { x, normalised, cols, stats });
        Value::Host(Host { data, cols, wants_grad })
    }

    /// The learned gain and bias, on each row of normalised values.
    fn apply_affine(&self, data: &mut [f32], cols: usize) {
        for row in data.chunks_exact_mut(cols) {
            match (self.gain.is_empty(), self.bias.is_empty()) {
                (false, false) => {
                    row.iter_mut().zip(&self.gain).zip(&self.bias).for_each(|((v, g), b)| *v = *v * g + b)
                }
                (false, true) => row.iter_mut().zip(&self.gain).for_each(|(v, g)| *v *= g),
                (true, false) => row.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b),
                (true, true) => break,
            }
        }
    }

    /// Gradients of the gain and bias from ∂L/∂output `grad` and the normalised values.
    fn affine_grads(&mut self, normalised: &[f32], grad: &[f32], cols: usize) {
        let (mut gain, mut bias) = (vec![0.0f32; cols], vec![0.0f32; cols]);
        for (row, g) in normalised.chunks_exact(cols).zip(grad.chunks_exact(cols)) {
            gain.iter_mut().zip(row).zip(g).for_each(|((s, y), g)| *s += y * g);
            bias.iter_mut().zip(g).for_each(|(s, g)| *s += g);
        }
        if !self.gain.is_empty() {
            self.grad_gain = gain;
        }
        if !self.bias.is_empty() {
            self.grad_bias = bias;
        }
    }

    /// ∂L/∂x of a host RMS or layer norm from ∂L/∂y (`grad`, before the gain), the normalised
    /// rows y and their factors r: RMS r·(g − y·mean(g·y)), layer r·(g − mean g − y·mean(g·y)).
    fn rows_input_grad(
        &self,
        y: &[f32],
        inv: &[f32],
        mut grad: Vec<f32>,
        cols: usize,
        sums: Sums,
    ) -> Vec<f32> {
        let n = cols as f32;
        for ((y, g), &r) in y.chunks_exact(cols).zip(grad.chunks_exact_mut(cols)).zip(inv) {
            let mean_gy = sums.dot(y, g) / n;
            let mean_g = if self.kind == Norm::Layer { sums.sum(g) / n } else { 0.0 };
            g.iter_mut().zip(y).for_each(|(d, y)| *d = r * (*d - mean_g - y * mean_gy));
        }
        grad
    }

    /// (x − mean)/sqrt(var + ε) per feature with the running statistics.
    fn normalize_with_running<T: Mode>(&self, dev: &Cpu, x: Mat<T>) -> Mat<T> {
        let shape = *x.shape();
        let inv: Vec<f32> = self.running.var.iter().map(|v| 1.0 / (v + BATCH_NORM_EPS).sqrt()).collect();
        let shift: Vec<f32> = self.running.mean.iter().zip(&inv).map(|(m, i)| -m * i).collect();
        let inv = dev.tensor_from_vec(inv, (shape.1,)).broadcast_like::<_, Axis<0>>(&shape);
        let shift = dev.tensor_from_vec(shift, (shape.1,)).broadcast_like::<_, Axis<0>>(&shape);
        x * inv + shift
    }

    /// ∂L/∂x of the host batch norm from ∂L/∂y (before the affine), `x` the input.
    fn input_grad(&self, x: &[f32], mut grad: Vec<f32>, cols: usize, stats: Option<&BatchStats>) -> Vec<f32> {
        match self.kind {
            // the same per feature over the batch, with the batch's statistics (training)
            Norm::Batch => {
                let Some(stats) = stats else { return grad };
                let rows = x.len() / cols;
                for j in 0..cols {
                    let r = 1.0 / (stats.var[j] + BATCH_NORM_EPS).sqrt();
                    let (mut mean_g, mut mean_gy) = (0.0f32, 0.0f32);
                    for i in 0..rows {
                        mean_g += grad[i * cols + j] / rows as f32;
                        mean_gy += grad[i * cols + j] * (x[i * cols + j] - stats.mean[j]) * r / rows as f32;
                    }
                    for i in 0..rows {
                        let y = (x[i * cols + j] - stats.mean[j]) * r;
                        grad[i * cols + j] = r * (grad[i * cols + j] - mean_g - y * mean_gy);
                    }
                }
            }
            Norm::Rms | Norm::Layer | Norm::None => {}
        }
        grad
    }
}

impl Op for NormOp {
    fn tag(&self) -> &'static str {
        "norm"
    }

    fn params(&self) -> Vec<Param<'_>> {
        let mut out = Vec::new();
        for (name, values) in [("gain", &self.gain), ("bias", &self.bias)] {
            if !values.is_empty() {
                out.push(Param::vector(name, ParamKind::NormParam, values));
            }
        }
        out
    }

    fn params_mut(&mut self) -> Vec<ParamMut<'_>> {
        let mut out = Vec::new();
        for (name, values, grad) in
            [("gain", &mut self.gain, &mut self.grad_gain), ("bias", &mut self.bias, &mut self.grad_bias)]
        {
            if !values.is_empty() {
                out.push(ParamMut::of(name, ParamKind::NormParam, values, grad));
            }
        }
        out
    }

    fn backward(&mut self, mut back: Back) -> Vec<Option<Vec<f32>>> {
        match back.take::<Saved>() {
            Some(Saved::Graph { gain, bias }) => {
                if let Some(gain) = gain {
                    self.grad_gain = back.grads.get(&gain).as_vec();
                }
                if let Some(bias) = bias {
                    self.grad_bias = back.grads.get(&bias).as_vec();
                }
                vec![None]
            }
            Some(Saved::Rows { y, inv, cols, wants_x, sums }) => {
                let Some(mut grad) = back.grad_out.take() else { return vec![None] };
                if !self.gain.is_empty() || !self.bias.is_empty() {
                    self.affine_grads(&y, &grad, cols);
                }
                if !wants_x {
                    return vec![None];
                }
                if !self.gain.is_empty() {
                    grad.chunks_exact_mut(cols)
                        .for_each(|g| g.iter_mut().zip(&self.gain).for_each(|(d, a)| *d *= a));
                }
                vec![Some(self.rows_input_grad(&y, &inv, grad, cols, sums))]
            }
            Some(Saved::Host { x, normalised, cols, stats }) => {
                let Some(mut grad) = back.grad_out.take() else { return vec![None] };
                if let Some(normalised) = normalised {
                    self.affine_grads(&normalised, &grad, cols);
                    if x.is_some() && !self.gain.is_empty() {
                        grad.chunks_exact_mut(cols)
                            .for_each(|g| g.iter_mut().zip(&self.gain).for_each(|(d, a)| *d *= a));
                    }
                }
                vec![x.map(|x| self.input_grad(&x, grad, cols, stats.as_ref()))]
            }
            None => vec![None],
        }
    }

    fn running_stats(&self) -> Option<&RunningStats> {
        (self.kind == Norm::Batch).then_some(&self.running)
    }

    fn running_stats_mut(&mut self) -> Option<&mut RunningStats> {
        (self.kind == Norm::Batch).then_some(&mut self.running)
    }

    fn deploy<'a>(&'a self, node: &Node, out: &mut Deployment<'a>) -> Result<(), String> {
        if out.text && (!self.gain.is_empty() || self.kind == Norm::Layer) && self.bias.is_empty() {
            // a language model's block or final norm: a norm op, its gain a tensor
            let kind = match self.kind {
                Norm::Layer => graph::RowNorm::Layer,
                Norm::Rms => graph::RowNorm::Rms,
                other => {
                    return Err(format!("{other:?} norm does not deploy; the runtime has layer and rms"))
                }
            };
            let gain = (!self.gain.is_empty())
                .then(|| out.tensor(&format!("{}.gain", node.name), 1, self.gain.len(), &self.gain));
            let input = out.value(node, 0);
            return out.push_op(node, graph::Op::Norm { name: node.name.to_string(), input, kind, gain });
        }
        if !self.gain.is_empty() || !self.bias.is_empty() {
            return Err("a learned gain and bias do not deploy".into());
        }
        match self.kind {
            Norm::Rms => out.annotate_norm(node, NormKind::Rms),
            Norm::None => {
                out.alias(node);
                Ok(())
            }
            other => Err(format!("{other:?} norm does not deploy; the kernels support rms and none")),
        }
    }
}
