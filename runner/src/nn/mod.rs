//! The network: its host-side state ([`model`]: layers, latent weights, quantizers, norm
//! statistics) and its parameters by path ([`params`]), the convolutional front-end on the host ([`conv`]), the losses ([`loss`]), and the
//! dfdx engine ([`engine`]), the only module that names a dfdx type.

pub mod conv;
pub mod engine;
pub mod loss;
pub mod model;
pub mod params;
