//! What runs are turned into for people: the terminal summary and listings ([`summary`]),
//! `results.csv` and `qat table` ([`results`]), a search's ledger ([`search`]) and plots ([`search_plots`]), plots ([`plots`]), TensorBoard event files
//! ([`tensorboard`]) and reproduction reports against published tables ([`repro`]).

pub mod plots;
pub mod repro;
pub mod results;
pub mod search;
pub mod search_plots;
pub mod summary;
pub mod tensorboard;
