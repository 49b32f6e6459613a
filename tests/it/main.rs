//! hone's integration tests: one binary (linking burn, arrow and parquet once), a module per
//! topic. `common` holds the scratch project and the helpers that drive the real `hone`
//! binary. (`tests/custom_stage.rs` is a binary of its own: it registers a stage kind in the
//! process-wide registry, which would change what every other test here sees.)

mod backends;
mod bad_input;
mod classification_stage;
mod cli_generate;
mod cli_snapshots;
mod common;
mod compare;
mod concat_stage;
mod data_layouts;
mod data_parallel;
mod dpo_parity;
mod dpo_stage;
mod experiments;
mod export_stage;
mod generate_stage;
mod ggml_quants;
mod gradient_checkpointing;
mod hub_cache;
mod judge;
mod layers;
mod lora_training;
mod model_parity;
mod pitfalls;
mod precision;
mod pretrain_stage;
mod quickstart;
mod real_checkpoints;
mod remote_cache;
mod report;
mod resume;
mod reward_stage;
mod run_cache;
mod sampling;
mod schema;
mod security;
mod services;
mod sft_stage;
mod show_examples;
mod slurm_executor;
mod store_safety;
mod tensorboard_log;
mod training;
