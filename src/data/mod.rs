//! Data: tables (JSONL, CSV, Parquet through arrow), deterministic splits, leakage checks.

pub mod layouts;
pub mod leakage;
pub mod lm_eval;
pub mod masking;
pub mod python_random;
pub mod split;
pub mod table;
pub mod tokenized;
