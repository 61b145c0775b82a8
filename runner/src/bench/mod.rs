//! Benchmarks behind `qat bench`: training throughput ([`train`]) and the deployment kernels
//! and runtime ([`kernels`]). Speed is measured here, never in tests.

pub mod generate;
pub mod kernels;
pub mod train;
