//! Logging: `RUST_LOG`-filtered tracing on stderr (warnings by default), and an info-level copy
//! into the current run directory's `log.txt` once a run has one.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static RUN_LOG: OnceLock<Mutex<Option<File>>> = OnceLock::new();

/// Sends the info-level log to `file` from now on.
pub fn log_to_file(file: File) {
    if let Ok(mut slot) = RUN_LOG.get_or_init(|| Mutex::new(None)).lock() {
        *slot = Some(file);
    }
}

struct RunLogWriter;

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match RUN_LOG.get().and_then(|m| m.lock().ok()) {
            Some(mut slot) => match slot.as_mut() {
                Some(f) => f.write(buf),
                None => Ok(buf.len()),
            },
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct RunLog;

impl<'a> MakeWriter<'a> for RunLog {
    type Writer = RunLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RunLogWriter
    }
}

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
        .with_writer(RunLog)
        .with_ansi(false)
        .with_filter(EnvFilter::new("hone=info"));
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}
