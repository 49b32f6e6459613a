//! Logging: `RUST_LOG`-filtered tracing on stderr (warnings by default), and an info-level copy
//! into the current run directory's `log.txt` once a run has one.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub fn init(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(stderr_filter);
    let file = tracing_subscriber::fmt::layer()
        .with_writer(crate::exec::rundir::RunLog)
        .with_ansi(false)
        .with_filter(EnvFilter::new("hone=info"));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}
