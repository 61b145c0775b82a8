//! `model.kind: mlp` (the default): optional 3×3 convolutions, then fully connected layers
//! `inputs → hidden… → classes`, each hidden one followed by the activation, with optional
//! input norms, input quantization and skip connections. Per layer, the graph is
//!
//! ```text
//! conv<i>:  [conv<i>.input_quant] → conv<i> → conv<i>.act → [conv<i>.pool]
//! fc<j>:    [fc<j>.norm] → [fc<j>.input_quant] → fc<j> → fc<j>.act (hidden layers)
//!           skip variants around a square hidden layer after the first (x its input):
//!             relu-sum, relu-scaled-sum:  fc<j>.residual = fc<j> + a·x;  fc<j>.act = act(that)
//!             sum-relu, scaled-sum-relu:  fc<j>.act = act(fc<j>);  fc<j>.residual = that + a·x
//! ```
//!
//! followed, after each hidden activation, by the ops of [`crate::nn::ops::AFTER_ACTIVATION`].
//! Weights are initialised as PyTorch's `nn.Linear`/`nn.Conv2d` (U(−1/√fan_in, 1/√fan_in)),
//! drawn layer by layer from one stream seeded by `train.seed`.

use qatlab_core::config::{Norm, Residual, RunConfig};
use qatlab_core::{Registry, Shape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{weight_layer, GraphBuilder};
use crate::data::Task;
use crate::error::{Error, Result};
use crate::nn::model::{Layer, Network};
use crate::nn::ops::{
    act_quant::ActQuant,
    activation::ActivationOp,
    add::Add,
    conv::{Conv, ConvGeom},
    linear::Linear,
    max_pool::MaxPool,
    norm::NormOp,
    AFTER_ACTIVATION,
};

/// Build the MLP (with its convolutional front-end) `config.model` describes.
pub fn build(registry: &Registry, config: &RunConfig, task: &Task) -> Result<Network> {
    let model = &config.model;
    let activation = || {
        ActivationOp::build(registry, &model.activation)
            .map_err(|e| Error::Config(format!("model.activation: {e}")))
    };
    let mut rng = ChaCha8Rng::seed_from_u64(config.train.seed ^ 0x1417_7e11);
    let names = model.layer_names();
    let count = names.len();
    let mut layer = |i: usize, shape: Shape| -> Result<(Layer, Option<u32>)> {
        let bound = 1.0 / (shape.cols as f32).sqrt();
        let weight = (0..shape.len()).map(|_| rng.gen_range(-bound..bound)).collect();
        weight_layer(registry, config, i, shape, weight)
    };
    let mut g = GraphBuilder::new();
    let mut x = g.input();
    let (mut channels, mut side) = (task.channels, task.side);
    for (i, c) in model.conv.iter().enumerate() {
        let name = &names[i];
        let taps = if c.depthwise { 9 } else { 9 * channels };
        let (weights, bits) = layer(i, Shape::new(c.channels, taps))?;
        if let Some(bits) = bits {
            x = g.push(format!("{name}.input_quant"), &[x], ActQuant { bits });
        }
        let geom = ConvGeom { side, in_channels: channels, channels: c.channels, depthwise: c.depthwise };
        let conv = Conv { layer: weights, geom, channel_major_input: i == 0 && channels > 1 };
        x = g.push(name.clone(), &[x], conv);
        x = g.push(format!("{name}.act"), &[x], activation()?);
        if c.pool {
            x = g.push(format!("{name}.pool"), &[x], MaxPool { side, channels: c.channels });
            side /= 2;
        }
        channels = c.channels;
    }
    let convs = model.conv.len();
    let mut widths = vec![if convs == 0 { task.features() } else { side * side * channels }];
    widths.extend(&model.hidden);
    widths.push(task.classes);
    let mut features = None;
    for (j, pair) in widths.windows(2).enumerate() {
        let (i, name) = (convs + j, &names[convs + j]);
        let (cols, rows) = (pair[0], pair[1]);
        let last = i + 1 == count;
        if last && j > 0 {
            features = Some(x);
        }
        let input = x;
        let (weights, bits) = layer(i, Shape::new(rows, cols))?;
        if model.norm != Norm::None {
            x = g.push(
                format!("{name}.norm"),
                &[x],
                NormOp::new(model.norm, cols, model.norm_affine, model.norm_affine),
            );
        }
        if let Some(bits) = bits {
            x = g.push(format!("{name}.input_quant"), &[x], ActQuant { bits });
        }
        x = g.push(name.clone(), &[x], Linear { layer: weights });
        if last {
            break;
        }
        let residual = (model.residual != Residual::None && j > 0 && rows == cols).then_some(model.residual);
        let add = || Add::new(model.residual.learned_scale());
        x = match residual {
            Some(Residual::ReluSum | Residual::ReluScaledSum) => {
                let sum = g.push(format!("{name}.residual"), &[x, input], add());
                g.push(format!("{name}.act"), &[sum], activation()?)
            }
            Some(_) => {
                let activated = g.push(format!("{name}.act"), &[x], activation()?);
                g.push(format!("{name}.residual"), &[activated, input], add())
            }
            None => g.push(format!("{name}.act"), &[x], activation()?),
        };
        for after in AFTER_ACTIVATION {
            if let Some((suffix, op)) = after(config, name) {
                x = g.push_boxed(format!("{name}.{suffix}"), &[x], op);
            }
        }
    }
    Ok(g.finish(x, features))
}
