//! `hone run`: walks the plan in order, reuses cached actions, runs stale ones, commits their
//! outputs and keeps the lockfile current after every stage, so an interrupted run loses only
//! the stage it was in. The walk's state and steps are a [`run::Run`]; [`inputs`] finds what
//! a stage reads; [`observer`] is how a run reports what happens.

mod inputs;
pub mod mlflow;
pub mod observer;
pub mod remote_hits;
mod run;
pub mod rundir;
pub mod slurm;
pub mod tensorboard;
pub mod tracking;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::backend::BackendKind;
use crate::plan::Selection;
use crate::plan::dag::Dag;
use crate::plan::status::{Evaluator, Known};
use crate::recipe::Recipe;
use crate::spec::context::{self, CANCELLED, StageContext};
use crate::store::Store;
use crate::store::remote::{Remote, Transfer};
use observer::Observer;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub selection: Selection,
    /// Fail before running anything if the run would change the lockfile.
    pub locked: bool,
    /// Distrust the (size, mtime, inode) digest cache.
    pub rehash: bool,
    /// Leave the recipe's lockfile alone (experiments: `--set` without `--update-lock`, and
    /// sweeps run from code).
    pub no_lockfile: bool,
    /// Leave what stages lay out beside the recipe (exports in `dist/`) alone, for the same
    /// reason: an experiment's artifacts stay in the store.
    pub no_publish: bool,
    /// The run's name (`hone run --name`), recorded in its run directory for `hone runs`.
    pub name: Option<String>,
    /// The remote cache behind the store (`--remote`, `HONE_REMOTE`, the recipe's `cache:`):
    /// stages missing here are pulled from it when it has them, and with `write` what ran is
    /// pushed to it.
    pub remote: Option<std::sync::Arc<Remote>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ran,
    Cached,
    /// Another process ran it while this one waited for the action's lock.
    RanElsewhere,
    /// Downloaded from the remote cache (checked), not computed.
    Pulled,
    /// The remote cache has it and nothing in this run needs its files (the stages that read
    /// it are cached here): recorded, not downloaded.
    OnRemote,
    NotSelected,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub kind: String,
    pub outcome: Outcome,
    pub action: Option<String>,
    pub wall_time_s: f64,
    pub warnings: Vec<String>,
    /// What a pull downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled: Option<Transfer>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub stages: Vec<StageReport>,
    pub lockfile_changed: bool,
    pub run_dir: std::path::PathBuf,
    pub wall_time_s: f64,
}

impl RunReport {
    pub fn count(&self, o: Outcome) -> usize {
        self.stages.iter().filter(|s| s.outcome == o).count()
    }
}

/// Runs the selected stale stages of `recipe` in dependency order, telling `observer` what
/// happens (see [`observer::Event`]).
pub fn run(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    backend: BackendKind,
    opts: &RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunReport> {
    let mut run = run::Run::start(recipe, dag, store, backend, opts, observer)?;
    for &i in &dag.order {
        if CANCELLED.load(Ordering::SeqCst) {
            bail!(context::Cancelled);
        }
        let action = run.eval.action(i, &run.known)?;
        if !run.selected.contains(&i) {
            run.pass_over(i, action)?;
            continue;
        }
        let action = run.require(i, action)?;
        let started = Instant::now();
        let resolved = run.resolve(i, &action)?;
        run.record(i, &action, resolved, started)?;
    }
    run.finish()
}

/// `--locked`: every selected stage must be recorded in the lockfile under the action key it
/// would have now (upstream outputs taken from the lockfile), before anything runs.
pub fn check_locked(eval: &mut Evaluator, selected: &BTreeSet<usize>) -> Result<()> {
    let statuses = eval.statuses(selected, &|_| false)?;
    let problems: Vec<String> = eval
        .lockfile_drift(&statuses)
        .into_iter()
        .map(|(stage, why)| format!("  {stage}: {why}"))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let recipe = &eval.recipe;
    if !recipe.overrides.is_empty() {
        // An experiment never writes the lockfile, so "update it" is no way out here.
        let sets: Vec<String> = recipe
            .overrides
            .iter()
            .map(|s| format!("--set {s}"))
            .collect();
        bail!(
            "--locked: with {}, these stages differ from what {} records:\n{}\na --set run is an experiment: it never writes the lockfile, so --locked can only fail for what the settings change; drop --locked to run the experiment, or the --set to check the recipe as written",
            sets.join(" "),
            recipe.lockfile_path().display(),
            problems.join("\n")
        )
    }
    bail!(
        "--locked: this run would change {}:\n{}\nrun without --locked to update it",
        recipe.lockfile_path().display(),
        problems.join("\n")
    )
}

/// The first `n` training examples of `stage` as it would encode them (`hone show --examples`),
/// from the cached results of the stages it reads. Nothing runs and nothing is written.
pub fn preview_examples(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    backend: BackendKind,
    stage: &str,
    n: usize,
) -> Result<Vec<crate::spec::kind::EncodedExample>> {
    let i = recipe
        .stages
        .iter()
        .position(|s| s.name == stage)
        .with_context(|| format!("no stage `{stage}` in {}", recipe.path.display()))?;
    let mut eval = Evaluator::new(recipe, dag, store, backend, false)?;
    let mut known: BTreeMap<usize, Known> = BTreeMap::new();
    for &j in &dag.order {
        if j == i {
            break;
        }
        if let Some(a) = eval.action(j, &known)?
            && let Some(m) = store.manifest(&a.key)?
        {
            known.insert(j, Known::Done(Box::new(m)));
        }
    }
    let missing: Vec<&str> = dag
        .upstream(i)
        .into_iter()
        .filter(|u| !known.contains_key(u))
        .map(|u| recipe.stages[u].name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "stage `{stage}` reads {}, which {} no result in the store yet: run {} first (`hone run {} --until {}`)",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if missing.len() == 1 { "has" } else { "have" },
            if missing.len() == 1 { "it" } else { "them" },
            recipe.path.display(),
            missing[missing.len() - 1],
        );
    }
    let spec = &recipe.stages[i].spec;
    let scratch = tempfile::tempdir()?;
    let mut ctx = StageContext::new(
        stage.to_owned(),
        scratch.path().to_path_buf(),
        recipe.header.seed,
        backend,
        crate::spec::context::Progress::hidden(),
    );
    ctx.recipe_name = recipe.header.name.clone();
    ctx.recipe_dir = recipe.dir().to_path_buf();
    ctx.rewards = spec.rewards().to_vec();
    inputs::resolve_inputs(&mut ctx, recipe, dag, store, &known, i)?;
    spec.examples(&mut ctx, n).unwrap_or_else(|| {
        bail!(
            "`{stage}` is a {} stage, which trains on no text examples to show (sft, dpo do)",
            spec.kind_name()
        )
    })
}
