//! A stage kind of your own: `hone` plus `kind: ngram_filter` (see `ngram_filter.rs`).
//!
//!     cargo run --release --example custom_stage -- run examples/decontaminate.yaml
//!
//! Add the kind to a registry of the built-in kinds, then hand that registry to hone's command
//! line: `validate`, `plan`, `status`, `run`, `show` and the rest work on recipes that use it,
//! with the same checks, caching and lockfile as the built-in kinds.

mod ngram_filter;

fn main() -> std::process::ExitCode {
    let mut kinds = hone::stages::registry();
    if let Err(e) = kinds.register(ngram_filter::NgramFilter) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    hone::cli::main_with(&kinds)
}
