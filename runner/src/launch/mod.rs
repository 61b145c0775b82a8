//! Running a plan: on this machine, several runs in parallel with progress bars and exact
//! resume ([`local`]); a search, proposing trials as they finish ([`search`]); or as a Slurm job
//! array ([`slurm`]).

pub mod local;
pub mod search;
pub mod slurm;
