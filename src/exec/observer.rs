//! What the engine reports while it runs a recipe. [`crate::exec::run`] prints nothing: it
//! tells an [`Observer`] what happens, and the observer decides how it looks. The command line
//! has two (`cli::output`): aligned lines with progress bars for a terminal, and JSON lines
//! (`hone run --log-format json`) for tools and CI logs; a program that uses hone as a library
//! writes its own or passes [`Silent`].

use std::path::Path;

use serde::Serialize;

use super::Outcome;
use crate::spec::context::Progress;
use crate::store::remote::Transfer;

/// One thing that happened during a run. Serialized (tag `event`), it is one line of
/// `hone run --log-format json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// The run starts: the recipe's name, its stages (name and kind) in run order, and the
    /// directory that keeps the run's resolved recipe, metrics and log.
    RunStarted {
        recipe: &'a str,
        stages: Vec<StageHead<'a>>,
        run_dir: &'a Path,
    },
    /// Another hone process holds this stage's action; the run waits for it.
    Waiting { stage: &'a str },
    /// The stage starts running (it was not cached).
    StageStarted {
        stage: &'a str,
        kind: &'a str,
        action: &'a str,
    },
    /// The stage is done: it ran, was cached, or another process ran it.
    StageFinished {
        stage: &'a str,
        kind: &'a str,
        outcome: Outcome,
        action: &'a str,
        wall_time_s: f64,
        metrics: &'a serde_json::Map<String, serde_json::Value>,
        warnings: &'a [String],
        /// A table the kind renders from its summary (evaluation results), for people.
        #[serde(skip_serializing_if = "Option::is_none")]
        table: Option<String>,
        /// What was downloaded, when the outcome is `pulled`.
        #[serde(skip_serializing_if = "Option::is_none")]
        pulled: Option<&'a Transfer>,
    },
    /// What a stage committed was uploaded to the remote cache (write-through). `created` is
    /// false when the remote had the action already.
    Pushed {
        stage: &'a str,
        to: &'a str,
        created: bool,
        transfer: &'a Transfer,
    },
    /// The remote cache could not serve or take something; the run goes on without it.
    RemoteWarning {
        #[serde(skip_serializing_if = "Option::is_none")]
        stage: Option<&'a str>,
        message: &'a str,
    },
    /// The stage wrote its artifact outside the store (an export).
    Published { stage: &'a str, to: &'a Path },
    /// The run is over.
    RunFinished {
        recipe: &'a str,
        ran: usize,
        /// Stages downloaded from the remote cache.
        #[serde(skip_serializing_if = "is_zero")]
        pulled: usize,
        cached: usize,
        not_selected: usize,
        wall_time_s: f64,
        /// The lockfile the run wrote, when it changed.
        #[serde(skip_serializing_if = "Option::is_none")]
        lockfile: Option<&'a Path>,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A stage as [`Event::RunStarted`] lists it.
#[derive(Debug, Clone, Serialize)]
pub struct StageHead<'a> {
    pub name: &'a str,
    pub kind: &'a str,
}

/// Follows a run.
pub trait Observer {
    fn event(&mut self, event: &Event<'_>);

    /// Where stage `stage` reports its progress while it runs.
    fn progress(&mut self, _stage: &str) -> Progress {
        Progress::hidden()
    }
}

/// Reports nothing.
pub struct Silent;

impl Observer for Silent {
    fn event(&mut self, _: &Event<'_>) {}
}
