//! hone: runs LLM fine-tuning pipelines written as YAML recipes.
//!
//! `recipe` (language, loading, validation) -> `plan` (DAG, action keys, statuses) ->
//! `exec` (runs stale stages through `stages`, commits to the `store`, writes the lockfile).

pub mod backend;
pub mod cli;
pub mod data;
pub mod diag;
pub mod exec;
pub mod kernels;
pub mod model;
pub mod plan;
pub mod recipe;
pub mod rng;
pub mod stages;
pub mod store;
pub mod train;
