//! A stage kind of your own: `hone` plus `kind: ngram_filter` (see `ngram_filter.rs`).
//!
//!     cargo run --release --example custom_stage -- run examples/decontaminate.yaml
//!
//! Register the kind, then hand over to hone's command line: `validate`, `plan`, `status`,
//! `run`, `show` and the rest work on recipes that use it, with the same checks, caching and
//! lockfile as the built-in kinds.

mod ngram_filter;

fn main() -> std::process::ExitCode {
    if let Err(e) = hone::stages::kind::register(ngram_filter::NgramFilter) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    hone::cli::main()
}
