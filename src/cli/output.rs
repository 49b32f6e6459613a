//! How `hone run` shows a run: the engine's events ([`crate::exec::observer`]) rendered as
//! aligned lines with progress bars for a person (`--log-format text`, the default), or as one
//! JSON object a line for tools and CI logs (`--log-format json`).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::exec::Outcome;
use crate::exec::observer::{Event, Observer};
use crate::spec::context::{Progress, ProgressSink};

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Aligned lines for people, with progress bars on a terminal.
    #[default]
    Text,
    /// One JSON event a line on stdout (`event`: run_started, stage_started, progress,
    /// resumed, stage_finished, published, pushed, remote_warning, waiting, run_finished);
    /// `--quiet` does not apply.
    Json,
}

/// The width of the kind column: the longest kind name, and at least the header's.
pub fn kind_width<'a>(kinds: impl Iterator<Item = &'a str>) -> usize {
    kinds.map(str::len).max().unwrap_or(0).max(9)
}

/// Only the remote cache's warnings, on stderr (`hone status`, which prints its own table).
pub struct StderrWarnings;

impl Observer for StderrWarnings {
    fn event(&mut self, event: &Event<'_>) {
        if let Event::RemoteWarning { stage, message } = event {
            match stage {
                Some(stage) => eprintln!("warning: {stage}: {message}"),
                None => eprintln!("warning: {message}"),
            }
        }
    }
}

/// Lines on stdout (`ran`, `cached`, warnings, tables, the closing count) and, on a terminal,
/// a progress bar per running stage on stderr. `quiet` keeps only errors.
pub struct Terminal {
    quiet: bool,
    bars: bool,
    kind_width: usize,
    /// Without a terminal, the time between two progress lines of a stage (and before its
    /// first).
    line_interval: Duration,
}

/// Seconds between progress lines when stderr is not a terminal (CI, nohup, Slurm logs).
pub const PROGRESS_INTERVAL_ENV: &str = "HONE_PROGRESS_INTERVAL";
const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(10);

impl Terminal {
    pub fn new(quiet: bool) -> Terminal {
        let line_interval = std::env::var(PROGRESS_INTERVAL_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(DEFAULT_PROGRESS_INTERVAL, Duration::from_secs_f64);
        Terminal {
            quiet,
            bars: !quiet && std::io::stderr().is_terminal(),
            kind_width: 9,
            line_interval,
        }
    }
}

impl Observer for Terminal {
    fn event(&mut self, event: &Event<'_>) {
        if self.quiet {
            return;
        }
        match event {
            Event::RunStarted { stages, .. } => {
                self.kind_width = kind_width(stages.iter().map(|s| s.kind));
            }
            Event::Waiting { stage } => {
                eprintln!("  waiting   {stage:<20} another hone process is running this action");
            }
            Event::StageStarted { .. } => {}
            Event::StageFinished {
                stage,
                kind,
                outcome,
                wall_time_s,
                metrics,
                warnings,
                table,
                pulled,
                ..
            } => {
                let (word, detail) = match outcome {
                    Outcome::Ran => ("ran", format!("{wall_time_s:.2}s")),
                    Outcome::Cached => ("cached", String::new()),
                    Outcome::RanElsewhere => ("cached", "by another process".to_owned()),
                    Outcome::Pulled => (
                        "pulled",
                        pulled.map_or(String::new(), |t| {
                            format!("{} {:.2}s", crate::cli::render::bytes(t.bytes), t.seconds)
                        }),
                    ),
                    Outcome::OnRemote => ("remote", "not needed here".to_owned()),
                    Outcome::NotSelected => return,
                };
                let headline: Vec<String> = metrics
                    .iter()
                    .take(4)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let kw = self.kind_width;
                println!(
                    "  {word:<7} {stage:<20} {kind:<kw$} {detail:<18} {}",
                    headline.join(" ")
                );
                for w in warnings.iter() {
                    println!("  warning {stage:<20} {w}");
                }
                if let Some(table) = table {
                    print!("{table}");
                }
            }
            Event::Pushed {
                stage,
                to,
                created,
                transfer,
            } => {
                if *created {
                    println!(
                        "  pushed  {stage:<20} {} in {:.2}s to {to}",
                        crate::cli::render::bytes(transfer.bytes),
                        transfer.seconds
                    );
                }
            }
            Event::RemoteWarning { stage, message } => match stage {
                Some(stage) => println!("  warning {stage:<20} {message}"),
                None => println!("  warning {message}"),
            },
            Event::Published { stage, to } => {
                println!("  exported {stage:<20} to {}", to.display());
            }
            Event::RunFinished {
                recipe,
                ran,
                pulled,
                cached,
                not_selected,
                wall_time_s,
                lockfile,
            } => {
                let mut line = format!("{recipe}: {ran} ran, ");
                if *pulled > 0 {
                    line.push_str(&format!("{pulled} pulled, "));
                }
                line.push_str(&format!("{cached} cached"));
                if *not_selected > 0 {
                    line.push_str(&format!(", {not_selected} not selected"));
                }
                line.push_str(&format!(" in {wall_time_s:.2}s"));
                if let Some(lock) = lockfile {
                    line.push_str(&format!("; wrote {}", lock.display()));
                }
                println!("{line}");
            }
        }
    }

    fn progress(&mut self, stage: &str) -> Progress {
        if self.quiet {
            return Progress::new(Arc::new(Notes {
                stage: stage.to_owned(),
            }));
        }
        if !self.bars {
            return Progress::new(Arc::new(Lines {
                stage: stage.to_owned(),
                interval: self.line_interval,
                state: Mutex::new(LineState::new()),
            }));
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(spinner_style());
        bar.set_prefix(stage.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::new(Arc::new(Bar {
            bar,
            stage: stage.to_owned(),
        }))
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner} running   {prefix:<20} {msg} [{elapsed}]")
        .expect("valid template")
}

/// Once a stage knows how much work it has (training steps, prompts, models).
fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "  {spinner} running   {prefix:<20} {bar:24} {pos}/{len}  {msg}  [{elapsed}, ETA {eta}]",
    )
    .expect("valid template")
}

/// A stage's bar; cleared when the stage is done.
struct Bar {
    bar: ProgressBar,
    stage: String,
}

impl ProgressSink for Bar {
    fn set_length(&self, len: u64) {
        self.bar.set_style(bar_style());
        self.bar.set_length(len);
    }
    fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }
    fn set_message(&self, message: &str) {
        self.bar.set_message(message.to_owned());
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
    fn resumed(&self, step: u64) {
        self.bar.suspend(|| {
            eprintln!(
                "  resuming  {:<20} from its checkpoint at step {step}",
                self.stage
            )
        });
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Progress as plain lines on stderr, for logs that are not a terminal (a redirected run, CI,
/// nohup, Slurm): at most one a stage every `interval` (`HONE_PROGRESS_INTERVAL` seconds,
/// default 10), each with the position, the stage's message (for training: loss, learning
/// rate, throughput), the time so far and the time left at the rate seen so far. A stage done
/// within the first interval prints none.
struct Lines {
    stage: String,
    interval: Duration,
    state: Mutex<LineState>,
}

struct LineState {
    started: Instant,
    pos: u64,
    len: Option<u64>,
    message: String,
    /// The first position seen with a length, and when: the rate for the ETA counts from
    /// there (a resumed stage starts at its checkpoint's step, not at 0).
    first: Option<(u64, Instant)>,
    last_line: Option<Instant>,
}

impl LineState {
    fn new() -> LineState {
        LineState {
            started: Instant::now(),
            pos: 0,
            len: None,
            message: String::new(),
            first: None,
            // The first line comes one interval in: a stage quicker than that prints none.
            last_line: Some(Instant::now()),
        }
    }

    /// The line for the state now: `12/320 (4%)  loss 2.1 ...  [1m02s, ETA 4m10s]`.
    fn line(&self, now: Instant) -> String {
        let elapsed = now - self.started;
        let mut parts = Vec::new();
        if let Some(len) = self.len {
            let pct = (self.pos * 100).checked_div(len).unwrap_or(0);
            parts.push(format!("{}/{len} ({pct}%)", self.pos));
        }
        if !self.message.is_empty() {
            parts.push(self.message.clone());
        }
        let mut line = parts.join("  ");
        let eta = match (self.len, self.first) {
            (Some(len), Some((p0, t0))) if self.pos > p0 && len >= self.pos => {
                let per = (now - t0).as_secs_f64() / (self.pos - p0) as f64;
                Some(Duration::from_secs_f64(per * (len - self.pos) as f64))
            }
            _ => None,
        };
        match eta {
            Some(eta) => line.push_str(&format!(
                "  [{}, ETA {}]",
                short_duration(elapsed),
                short_duration(eta)
            )),
            None => line.push_str(&format!("  [{}]", short_duration(elapsed))),
        }
        line
    }
}

/// `42s`, `3m05s`, `2h07m`.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

impl Lines {
    /// Applies `change`, then writes a line if one is due. A message alone does not write
    /// once the stage counts steps: the position that follows it does, so the line shows
    /// the step and its message together.
    fn update(&self, change: impl FnOnce(&mut LineState), message_only: bool) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        change(&mut s);
        if message_only && s.len.is_some() {
            return;
        }
        let now = Instant::now();
        if s.last_line.is_some_and(|t| now - t < self.interval) {
            return;
        }
        s.last_line = Some(now);
        eprintln!("  progress  {:<20} {}", self.stage, s.line(now));
    }
}

impl ProgressSink for Lines {
    fn set_length(&self, len: u64) {
        self.update(
            |s| {
                s.len = Some(len);
                s.first = None;
            },
            false,
        );
    }
    fn set_position(&self, pos: u64) {
        self.update(
            |s| {
                s.pos = pos;
                if s.len.is_some() && s.first.is_none() {
                    s.first = Some((pos, Instant::now()));
                }
            },
            false,
        );
    }
    fn set_message(&self, message: &str) {
        self.update(|s| s.message = message.to_owned(), true);
    }
    fn resumed(&self, step: u64) {
        eprintln!(
            "  resuming  {:<20} from its checkpoint at step {step}",
            self.stage
        );
    }
}

/// `--quiet`: no progress, only the notes a person must see.
struct Notes {
    stage: String,
}

impl ProgressSink for Notes {
    fn set_length(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn set_message(&self, _: &str) {}
    fn resumed(&self, step: u64) {
        eprintln!(
            "  resuming  {:<20} from its checkpoint at step {step}",
            self.stage
        );
    }
}

/// One JSON object a line on stdout, flushed as it is written.
pub struct JsonLines {
    out: Arc<Mutex<std::io::Stdout>>,
}

impl JsonLines {
    pub fn new() -> JsonLines {
        JsonLines {
            out: Arc::new(Mutex::new(std::io::stdout())),
        }
    }
}

impl Default for JsonLines {
    fn default() -> Self {
        JsonLines::new()
    }
}

fn write_line(out: &Mutex<std::io::Stdout>, value: &impl serde::Serialize) {
    if let (Ok(line), Ok(mut out)) = (serde_json::to_string(value), out.lock()) {
        // A closed stdout (a pipe whose reader left) is not the run's failure.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}

impl Observer for JsonLines {
    fn event(&mut self, event: &Event<'_>) {
        write_line(&self.out, event);
    }

    fn progress(&mut self, stage: &str) -> Progress {
        Progress::new(Arc::new(JsonProgress {
            out: self.out.clone(),
            stage: stage.to_owned(),
            state: Mutex::new(ProgressState::default()),
        }))
    }
}

#[derive(Default)]
struct ProgressState {
    pos: u64,
    len: Option<u64>,
    message: String,
    last: Option<Instant>,
}

/// `progress` events, at most one a second (and always the first), so a log stays readable.
struct JsonProgress {
    out: Arc<Mutex<std::io::Stdout>>,
    stage: String,
    state: Mutex<ProgressState>,
}

impl JsonProgress {
    fn update(&self, change: impl FnOnce(&mut ProgressState)) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        change(&mut s);
        if s.last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        s.last = Some(Instant::now());
        write_line(
            &self.out,
            &serde_json::json!({
                "event": "progress",
                "stage": self.stage,
                "position": s.pos,
                "length": s.len,
                "message": s.message,
            }),
        );
    }
}

impl ProgressSink for JsonProgress {
    fn set_length(&self, len: u64) {
        self.update(|s| s.len = Some(len));
    }
    fn set_position(&self, pos: u64) {
        self.update(|s| s.pos = pos);
    }
    fn set_message(&self, message: &str) {
        self.update(|s| s.message = message.to_owned());
    }
    fn resumed(&self, step: u64) {
        write_line(
            &self.out,
            &serde_json::json!({ "event": "resumed", "stage": self.stage, "step": step }),
        );
    }
}
