//! Presets: `model.kind` names one, and it expands the model config into a graph of ops
//! ([`super::model::Network`]). A new model family is one new file here and its line in
//! [`build`].

pub mod mlp;
pub mod transformer;

use qatlab_core::config::{ModelKind, RunConfig};
use qatlab_core::Registry;

use super::model::{Network, Node, INPUT_NODE};
use super::op::Op;
use crate::data::Task;
use crate::error::Result;

/// Build the network `config.model` describes for `task`.
pub fn build(registry: &Registry, config: &RunConfig, task: &Task) -> Result<Network> {
    match config.model.kind {
        ModelKind::Mlp => mlp::build(registry, config, task),
        ModelKind::Transformer => match &config.model.transformer {
            Some(t) => transformer::build(registry, config, task, t),
            None => Err(crate::error::Error::Config("model.kind transformer without its shape".into())),
        },
    }
}

/// Layer `i` of the model's layer names with latent weights `weight` and the quantizer (and
/// input bits) the config resolves for it, by name, index or position.
pub fn weight_layer(
    registry: &Registry,
    config: &RunConfig,
    i: usize,
    shape: qatlab_core::Shape,
    weight: Vec<f32>,
) -> Result<(crate::nn::model::Layer, Option<u32>)> {
    let names = config.model.layer_names();
    let (spec, bits) = config.model.layer(i, names.len(), &config.quantizer);
    let quantizer = registry
        .quantizers
        .build(&spec.name, &spec.params)
        .map_err(|e| crate::error::Error::Config(format!("quantizer of {}: {e}", names[i])))?;
    Ok((crate::nn::model::Layer::new(names[i].clone(), shape, weight, quantizer), bits))
}

/// A graph under construction: nodes are appended in evaluation order and named by path.
pub struct GraphBuilder {
    nodes: Vec<Node>,
}

impl GraphBuilder {
    /// An empty graph reading the network input.
    pub fn new() -> Self {
        Self { nodes: Vec::new() }
    }

    /// The network input, as a node reference.
    pub fn input(&self) -> usize {
        INPUT_NODE
    }

    /// Append `op` named `name` reading `inputs`; returns its reference.
    pub fn push(&mut self, name: impl Into<String>, inputs: &[usize], op: impl Op + 'static) -> usize {
        self.push_boxed(name.into(), inputs, Box::new(op))
    }

    /// The same for a boxed op.
    pub fn push_boxed(&mut self, name: String, inputs: &[usize], op: Box<dyn Op>) -> usize {
        self.nodes.push(Node { name, inputs: inputs.to_vec(), op });
        self.nodes.len() - 1
    }

    /// The finished network with its logits at `output` and penultimate features at `features`.
    pub fn finish(self, output: usize, features: Option<usize>) -> Network {
        Network { nodes: self.nodes, output, features, host: false }
    }
}

impl Default for GraphBuilder {
    fn default() -> Self {
        Self::new()
    }
}
