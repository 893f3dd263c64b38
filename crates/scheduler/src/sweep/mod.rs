//! Hyperparameter sweeps, the pure parts: which parameters the next trial runs with ([`searcher`]), whether a
//! running trial is pruned ([`pruner`]), and one round of a sweep ([`plan`]). The replicated record is
//! `crate::state::sweeps`; the leader's loop that proposes what [`plan::plan`] decides is `crate::leader::sweeps`.

pub mod plan;
pub mod pruner;
pub mod searcher;
