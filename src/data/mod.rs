//! Data: tables (JSONL, CSV, Parquet through arrow), deterministic splits, leakage checks.

pub mod layouts;
pub mod leakage;
pub mod masking;
pub mod split;
pub mod table;
pub mod tokenized;
