//! hone: runs LLM fine-tuning pipelines written as YAML recipes.
//!
//! `recipe` (language, loading) -> `plan` (validation, DAG, action keys, statuses) -> `exec`
//! (runs stale stages through `stages`, commits to the `store`, writes the lockfile), driven by
//! `cli`. Layers look down only, ranked `cli > exec > plan > {recipe, stages} > spec > the
//! libraries (model, train, data, store, kernels, backend, diag, rng, yaml)`; recipe and stages never
//! name each other, and `tests/it/layers.rs` holds every module to its rank.

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
pub mod spec;
pub mod stages;
pub mod store;
pub mod train;
pub mod yaml;

/// Recorded in manifests and lockfiles (who produced an artifact), never hashed into a key.
pub const HONE_VERSION: &str = env!("CARGO_PKG_VERSION");
