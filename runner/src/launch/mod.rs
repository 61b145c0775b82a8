//! Running a plan: on this machine, several runs in parallel with progress bars and exact
//! resume ([`local`]), or as a Slurm job array ([`slurm`]).

pub mod local;
pub mod slurm;
