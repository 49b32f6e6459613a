//! `hone run`: walks the plan in order, reuses cached actions, runs stale ones, commits their
//! outputs and keeps the lockfile current after every stage, so an interrupted run loses only
//! the stage it was in.

pub mod observer;
pub mod remote_hits;
pub mod rundir;
pub mod slurm;
pub mod tensorboard;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::backend::BackendKind;
use crate::plan::Selection;
use crate::plan::dag::{Dag, EdgeKind};
use crate::plan::key::HONE_VERSION;
use crate::plan::status::{Evaluator, Known};
use crate::recipe::Recipe;
use crate::recipe::types::Input;
use crate::stages::context::{
    self, ArtifactView, CANCELLED, OutputView, ResolvedInput, SettingError, StageContext,
};
use crate::store::lockfile::{LockedStage, Lockfile};
use crate::store::remote::{Pushed, Remote, Transfer};
use crate::store::{CACHE_FORMAT, Manifest, Store};
use observer::{Event, Observer};

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
    let started = Instant::now();
    let _store_lock = store.lock_shared()?;
    let selected = opts.selection.resolve(recipe, dag)?;
    let mut eval = Evaluator::new(recipe, dag, store, backend, opts.rehash)?;
    if opts.locked {
        check_locked(&mut eval, &selected)?;
    }
    let remote = opts.remote.as_deref();
    let mut from_remote = match remote.filter(|r| r.read) {
        Some(r) => remote_hits::find(
            recipe,
            dag,
            store,
            &mut eval,
            &selected,
            &|s| opts.selection.forced(s),
            r,
            observer,
        )?,
        None => remote_hits::RemoteHits::default(),
    };
    // Remote hits recorded without their files: pulled if a stage that runs reads them.
    let mut remote_only: BTreeMap<usize, Manifest> = BTreeMap::new();
    let mut rundir = rundir::RunDir::create(store, recipe, opts)?;
    let mut lockfile = eval.lockfile.clone().unwrap_or_else(|| Lockfile {
        version: 1,
        recipe: recipe.header.name.clone(),
        stages: BTreeMap::new(),
    });
    lockfile.recipe = recipe.header.name.clone();
    lockfile
        .stages
        .retain(|name, _| recipe.stage(name).is_some());
    let mut lockfile_changed = false;
    let mut known: BTreeMap<usize, Known> = BTreeMap::new();
    let mut reports = Vec::new();
    let protected = protected_paths(recipe);
    observer.event(&Event::RunStarted {
        recipe: &recipe.header.name,
        stages: dag
            .order
            .iter()
            .map(|&i| observer::StageHead {
                name: &recipe.stages[i].name,
                kind: recipe.stages[i].spec.kind_name(),
            })
            .collect(),
        run_dir: rundir.path(),
    });

    for &i in &dag.order {
        let stage = &recipe.stages[i];
        let kind = stage.spec.kind_name().to_string();
        if CANCELLED.load(Ordering::SeqCst) {
            bail!(context::Cancelled);
        }
        let action = eval.action(i, &known)?;
        if !selected.contains(&i) {
            // Not selected: usable only if cached, and only needed if something selected reads it.
            let m = match &action {
                Some(a) => store.manifest(&a.key)?,
                None => None,
            };
            if let Some(m) = m {
                known.insert(i, Known::Done(Box::new(m)));
            } else if let Some(a) = &action
                && let Some(m) = from_remote.hits.remove(&i).filter(|m| m.action == a.key)
            {
                known.insert(i, Known::Done(Box::new(m.clone())));
                remote_only.insert(i, m);
            }
            observer.event(&Event::StageFinished {
                stage: &stage.name,
                kind: &kind,
                outcome: Outcome::NotSelected,
                action: action.as_ref().map_or("", |a| a.key.as_str()),
                wall_time_s: 0.0,
                metrics: &serde_json::Map::new(),
                warnings: &[],
                table: None,
                pulled: None,
            });
            reports.push(StageReport {
                stage: stage.name.clone(),
                kind,
                outcome: Outcome::NotSelected,
                action: action.map(|a| a.key),
                wall_time_s: 0.0,
                warnings: vec![],
                pulled: None,
            });
            continue;
        }
        let Some(action) = action else {
            let missing: Vec<&str> = dag
                .upstream(i)
                .into_iter()
                .filter(|u| !known.contains_key(u))
                .map(|u| recipe.stages[u].name.as_str())
                .collect();
            bail!(
                "stage `{}` needs {} which {} not cached and not selected; run without --only/--from, or add them to the selection",
                stage.name,
                missing
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() == 1 { "is" } else { "are" }
            );
        };
        let forced = opts.selection.forced(&stage.name);
        let stage_started = Instant::now();
        let mut outcome = Outcome::Cached;
        let mut pulled = None;
        let manifest = match store.manifest(&action.key)?.filter(|_| !forced) {
            Some(m) => m,
            None => {
                let mut waited = false;
                let _lock = store.lock_action(&action.key, || {
                    waited = true;
                    observer.event(&Event::Waiting { stage: &stage.name });
                })?;
                match store.manifest(&action.key)?.filter(|_| !forced || waited) {
                    Some(m) => {
                        outcome = Outcome::RanElsewhere;
                        m
                    }
                    None => match take_from_remote(
                        remote,
                        &mut from_remote,
                        i,
                        &action.key,
                        forced,
                        store,
                        &stage.name,
                        observer,
                    ) {
                        Some((o, m, t)) => {
                            outcome = o;
                            pulled = t;
                            if o == Outcome::OnRemote {
                                remote_only.insert(i, m.clone());
                            }
                            m
                        }
                        None => {
                            outcome = Outcome::Ran;
                            let lost = pull_inputs(
                                dag,
                                store,
                                remote,
                                &mut remote_only,
                                i,
                                &stage.name,
                                observer,
                            );
                            for up in lost {
                                let theirs = match known.get(&up) {
                                    Some(Known::Done(m)) => Some(m.artifact_digest()),
                                    _ => None,
                                };
                                let m = compute_here(
                                    recipe,
                                    dag,
                                    store,
                                    &mut eval,
                                    &known,
                                    up,
                                    backend,
                                    observer,
                                    &mut rundir,
                                )?;
                                if theirs.is_some_and(|d| d != m.artifact_digest()) {
                                    observer.event(&Event::RemoteWarning {
                                        stage: Some(&recipe.stages[up].name),
                                        message: "computed here with other outputs than the remote's result of the same action (is the stage deterministic?)",
                                    });
                                }
                                known.insert(up, Known::Done(Box::new(m)));
                            }
                            run_stage(
                                recipe,
                                dag,
                                store,
                                &known,
                                i,
                                &action,
                                backend,
                                observer,
                                &mut rundir,
                            )?
                        }
                    },
                }
            }
        };
        if opts.locked
            && let Some(l) = eval.locked(&stage.name)
            && l.artifact != manifest.artifact_digest()
        {
            bail!(
                "--locked: stage `{}` produced output {} but the lockfile records {}; the stage is not reproducible here (backend, hardware or nondeterminism?)",
                stage.name,
                &manifest.artifact_digest()[..16],
                &l.artifact[..16]
            );
        }
        let wall = if outcome == Outcome::Ran {
            stage_started.elapsed().as_secs_f64()
        } else {
            0.0
        };
        observer.event(&Event::StageFinished {
            stage: &stage.name,
            kind: &kind,
            outcome,
            action: &action.key,
            wall_time_s: wall,
            metrics: &manifest.metrics,
            warnings: &manifest.warnings,
            table: stage.spec.summary_table(&manifest.summary),
            pulled: pulled.as_ref(),
        });
        if outcome == Outcome::Ran
            && let Some(r) = remote.filter(|r| r.write && !r.is_down())
        {
            push_one(r, store, &manifest, observer);
        }
        // Some kinds (export) land files outside the store, also when the stage was cached.
        let recipe_dir = recipe
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        // A stage left on the remote has no files here to lay out.
        let published = if opts.no_publish || outcome == Outcome::OnRemote {
            None
        } else {
            stage.spec.publish(&crate::stages::kind::Publish {
                store,
                manifest: &manifest,
                recipe_dir,
                protected: &protected,
            })?
        };
        if let Some(dest) = published {
            observer.event(&Event::Published {
                stage: &stage.name,
                to: &dest,
            });
        }
        rundir.stage_done(&stage.name, outcome, &manifest)?;
        let mut entry = LockedStage::from_manifest(&manifest);
        for (rel, input) in stage.spec.inputs() {
            if let Input::Source(src) = input
                && let (Some(repo), Some(Ok(commit))) = (&src.hub, &src.hub_commit)
            {
                entry.hub.insert(rel, format!("{repo}@{commit}"));
            }
        }
        // A stage that reproduced the recorded action and output keeps its entry (and the wall
        // time of the run that first produced it), so a fresh clone's first run does not churn
        // a committed lockfile.
        let reproduced = lockfile.stages.get(&stage.name).is_some_and(|old| {
            old.action == entry.action && old.artifact == entry.artifact && old.hub == entry.hub
        });
        if !reproduced {
            lockfile.stages.insert(stage.name.clone(), entry);
            if !opts.locked && !opts.no_lockfile {
                lockfile_changed |= lockfile.write(&recipe.lockfile_path())?;
            }
        }
        reports.push(StageReport {
            stage: stage.name.clone(),
            kind,
            outcome,
            action: Some(action.key.clone()),
            wall_time_s: wall,
            warnings: manifest.warnings.clone(),
            pulled,
        });
        known.insert(i, Known::Done(Box::new(manifest)));
    }
    // Stages removed from the recipe leave the lockfile even when nothing ran.
    if !opts.locked && !opts.no_lockfile {
        lockfile_changed |= lockfile.write(&recipe.lockfile_path())?;
    }
    eval.hashes.save().ok();
    let report = RunReport {
        stages: reports,
        lockfile_changed,
        run_dir: rundir.path().to_path_buf(),
        wall_time_s: started.elapsed().as_secs_f64(),
    };
    rundir.finish(&report)?;
    observer.event(&Event::RunFinished {
        recipe: &recipe.header.name,
        ran: report.count(Outcome::Ran),
        pulled: report.count(Outcome::Pulled),
        cached: report.count(Outcome::Cached)
            + report.count(Outcome::RanElsewhere)
            + report.count(Outcome::OnRemote),
        not_selected: report.count(Outcome::NotSelected),
        wall_time_s: report.wall_time_s,
        lockfile: report
            .lockfile_changed
            .then(|| recipe.lockfile_path())
            .as_deref(),
    });
    Ok(report)
}

/// Stage `i`'s result from the remote cache, when this run may take one: downloaded now
/// (`Pulled`), or only recorded (`OnRemote`) when nothing here needs its files. `None`: the
/// stage runs here (forced, not on the remote, or the pull failed: a warning says why).
#[allow(clippy::too_many_arguments)]
fn take_from_remote(
    remote: Option<&Remote>,
    hits: &mut remote_hits::RemoteHits,
    i: usize,
    key: &str,
    forced: bool,
    store: &Store,
    stage: &str,
    observer: &mut dyn Observer,
) -> Option<(Outcome, Manifest, Option<Transfer>)> {
    let r = remote.filter(|_| !forced)?;
    let (m, pull_now) = match hits.hits.remove(&i).filter(|m| m.action == key) {
        Some(m) => (m, hits.pull.contains(&i)),
        None => (late_hit(r, hits, key)?, true),
    };
    if !pull_now {
        return Some((Outcome::OnRemote, m, None));
    }
    if r.is_down() {
        return None; // warned once already; computed here
    }
    crate::store::fault_point("before-pull");
    match r.pull(store, &m) {
        Ok(t) => Some((Outcome::Pulled, m, Some(t))),
        Err(e) => {
            observer.event(&Event::RemoteWarning {
                stage: Some(stage),
                message: &format!("not pulled from {}: {e}; it runs here", r.label),
            });
            None
        }
    }
}

/// The remote's manifest of an action the look-ahead did not ask for (its key depends on a
/// stage that ran here); failures are left to the look-ahead's single warning.
fn late_hit(r: &Remote, looked: &remote_hits::RemoteHits, key: &str) -> Option<Manifest> {
    if !r.read || r.is_down() {
        return None;
    }
    if looked.looked_up.contains(key) {
        return None;
    }
    r.manifest(key).ok().flatten()
}

/// Pulls the remote-only results (see [`remote_hits`]) that stage `i` reads, directly or
/// through the training data it checks, before it runs. Returns those that could not be
/// pulled (a warning says why), in dependency order: they are computed here instead, since
/// a remote that fails never fails a run that can compute.
fn pull_inputs(
    dag: &Dag,
    store: &Store,
    remote: Option<&Remote>,
    remote_only: &mut BTreeMap<usize, Manifest>,
    i: usize,
    stage: &str,
    observer: &mut dyn Observer,
) -> Vec<usize> {
    let Some(r) = remote else {
        return Vec::new();
    };
    let mut lost = Vec::new();
    let ancestors = dag.ancestors(i);
    for &up in dag.order.iter().filter(|u| ancestors.contains(u)) {
        let Some(m) = remote_only.remove(&up) else {
            continue;
        };
        let pulled = if r.is_down() {
            Err(None)
        } else {
            r.pull(store, &m).map_err(Some)
        };
        if let Err(e) = pulled {
            observer.event(&Event::RemoteWarning {
                stage: Some(stage),
                message: &format!(
                    "reads `{}`, whose result stayed on {}{}; it is computed here first",
                    m.stage,
                    r.label,
                    e.map(|e| format!(" and could not be pulled ({e})"))
                        .unwrap_or_default()
                ),
            });
            lost.push(up);
        }
    }
    lost
}

/// Runs stage `up`, whose result this run left on the remote, here after all: a stage that
/// reads it is about to run and the remote could not deliver it.
#[allow(clippy::too_many_arguments)]
fn compute_here(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    eval: &mut Evaluator,
    known: &BTreeMap<usize, Known>,
    up: usize,
    backend: BackendKind,
    observer: &mut dyn Observer,
    rundir: &mut rundir::RunDir,
) -> Result<Manifest> {
    let stage = &recipe.stages[up];
    let action = eval
        .action(up, known)?
        .with_context(|| format!("stage `{}`: its inputs are not known here", stage.name))?;
    let _lock = store.lock_action(&action.key, || {})?;
    if let Some(m) = store.manifest(&action.key)? {
        return Ok(m);
    }
    let started = Instant::now();
    let m = run_stage(
        recipe, dag, store, known, up, &action, backend, observer, rundir,
    )?;
    observer.event(&Event::StageFinished {
        stage: &stage.name,
        kind: stage.spec.kind_name(),
        outcome: Outcome::Ran,
        action: &action.key,
        wall_time_s: started.elapsed().as_secs_f64(),
        metrics: &m.metrics,
        warnings: &m.warnings,
        table: stage.spec.summary_table(&m.summary),
        pulled: None,
    });
    rundir.stage_done(&stage.name, Outcome::Ran, &m)?;
    Ok(m)
}

/// Write-through: uploads what a stage just committed. A failure is a warning: the result is
/// safe in the local store, and `hone cache push` can publish it later.
fn push_one(remote: &Remote, store: &Store, m: &Manifest, observer: &mut dyn Observer) {
    match remote.push(store, m) {
        Ok((pushed, t)) => {
            if let Pushed::Conflict { remote: theirs, local } = &pushed {
                observer.event(&Event::RemoteWarning {
                    stage: Some(&m.stage),
                    message: &format!(
                        "{} already records output {} for this action, this run produced {} (the first writer wins; is the stage deterministic?)",
                        remote.label,
                        &theirs[..16],
                        &local[..16]
                    ),
                });
            }
            observer.event(&Event::Pushed {
                stage: &m.stage,
                to: &remote.label,
                created: pushed == Pushed::Created,
                transfer: &t,
            });
        }
        Err(e) => observer.event(&Event::RemoteWarning {
            stage: Some(&m.stage),
            message: &format!(
                "not pushed to {}: {e} (it is in the local store; `hone cache push` publishes it later)",
                remote.label
            ),
        }),
    }
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
    bail!(
        "--locked: this run would change {}:\n{}\nrun without --locked to update it",
        eval.recipe.lockfile_path().display(),
        problems.join("\n")
    )
}

/// Fills `ctx` with stage `i`'s inputs (files, and upstream artifacts from `known`), the eval
/// datasets it is checked against, and the training data of the models it evaluates.
fn resolve_inputs(
    ctx: &mut StageContext,
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    known: &BTreeMap<usize, Known>,
    i: usize,
) -> Result<()> {
    let stage = &recipe.stages[i];
    for (rel, input) in stage.spec.inputs() {
        let resolved = match input {
            Input::Source(src) => ResolvedInput::File {
                path: src.resolved.clone(),
                label: src.label(),
                format: src.format,
            },
            Input::Stage(r) => {
                let up = recipe
                    .stages
                    .iter()
                    .position(|s| s.name == r.stage())
                    .expect("validated");
                ResolvedInput::Artifact(view(store, known, up, r.output(), &r.from)?)
            }
        };
        ctx.inputs.insert(rel, resolved);
    }
    for (up, edge) in dag.incoming(i) {
        if *edge == EdgeKind::LeakageCheck {
            let name = recipe.stages[up].name.clone();
            ctx.checked_against
                .insert(name.clone(), view(store, known, up, None, &name)?);
        }
    }
    for (name, input) in stage.spec.checks_training_data_of() {
        if let Input::Stage(r) = input {
            let data = training_data(recipe, dag, store, known, r.stage())?;
            ctx.training_data.insert(name, data);
        }
    }
    Ok(())
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
) -> Result<Vec<crate::stages::kind::EncodedExample>> {
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
        crate::stages::context::Progress::hidden(),
    );
    ctx.recipe_name = recipe.header.name.clone();
    resolve_inputs(&mut ctx, recipe, dag, store, &known, i)?;
    spec.examples(&mut ctx, n).unwrap_or_else(|| {
        bail!(
            "`{stage}` is a {} stage, which trains on no text examples to show (sft, dpo do)",
            spec.kind_name()
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn run_stage(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    known: &BTreeMap<usize, Known>,
    i: usize,
    action: &crate::plan::status::Action,
    backend: BackendKind,
    observer: &mut dyn Observer,
    rundir: &mut rundir::RunDir,
) -> Result<Manifest> {
    let stage = &recipe.stages[i];
    let scratch = store.scratch(&action.key)?;
    observer.event(&Event::StageStarted {
        stage: &stage.name,
        kind: stage.spec.kind_name(),
        action: &action.key,
    });
    let progress = observer.progress(&stage.name);
    let mut ctx = StageContext::new(
        stage.name.clone(),
        scratch.dir.clone(),
        recipe.header.seed,
        backend,
        progress.clone(),
    );
    ctx.recipe_name = recipe.header.name.clone();
    ctx.frozen_base_dtypes = crate::stages::frozen_base_dtypes(&stage.spec.key_config(), backend);
    ctx.checkpoint_dir = Some(store.checkpoint_dir(&action.key));
    ctx.token_cache = Some(store.root().join("tokenized"));
    let tensorboard = recipe.header.logging.tensorboard.as_ref().map(|dir| {
        let base = recipe
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::sync::Arc::new(tensorboard::StageLog::new(
            base.join(dir).join(rundir.name()).join(&stage.name),
        ))
    });
    if let Some(log) = &tensorboard {
        let log = log.clone();
        ctx.live = Some(std::sync::Arc::new(move |r: &serde_json::Value| {
            log.record(r)
        }));
    }
    resolve_inputs(&mut ctx, recipe, dag, store, known, i)?;
    tracing::info!(stage = %stage.name, action = %action.key, "running");
    crate::store::fault_point("before-stage");
    let started = Instant::now();
    let result = stage.spec.run(&mut ctx);
    progress.finish();
    // A setting that only the data shows to be wrong is located in the recipe, like any
    // other invalid input.
    let result = result.map_err(|e| match e.downcast::<SettingError>() {
        Ok(bad) => {
            let key = format!("stages.{}.{}", stage.name, bad.key);
            let d = crate::diag::Diagnostic::new(bad.message).at(recipe
                .value_location(&key)
                .or_else(|| recipe.key_location(&key)));
            crate::diag::input_error(match bad.help {
                Some(h) => d.help(h),
                None => d,
            })
        }
        Err(e) => e,
    });
    let result = match result {
        // Stopped by Ctrl-C is not a failure: the stage says what it kept, and the run ends as
        // interrupted.
        Err(e) if e.chain().any(|c| c.is::<context::Cancelled>()) => return Err(e),
        r => r.with_context(|| format!("stage `{}` failed; nothing was committed", stage.name))?,
    };
    ctx.check_cancelled()?;
    let manifest = Manifest {
        format: CACHE_FORMAT,
        action: action.key.clone(),
        stage: stage.name.clone(),
        kind: stage.spec.kind_name().to_string(),
        material: action.material.clone(),
        input_labels: action.input_labels.clone(),
        outputs: BTreeMap::new(),
        metrics: result.metrics,
        summary: result.summary,
        warnings: result.warnings,
        wall_time_s: started.elapsed().as_secs_f64(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        hone_version: HONE_VERSION.to_owned(),
    };
    for event in std::mem::take(&mut ctx.events) {
        if let serde_json::Value::Object(m) = event {
            rundir.log_metrics(&stage.name, &m)?;
        }
    }
    rundir.log_metrics(&stage.name, &manifest.metrics)?;
    if let Some(log) = &tensorboard {
        log.finish(&manifest.metrics);
    }
    let produced = ctx.take_produced();
    let manifest = store.commit(&produced, manifest)?;
    drop(scratch);
    // Committed: the checkpoints of this action have served their purpose.
    let _ = std::fs::remove_dir_all(store.checkpoint_dir(&action.key));
    Ok(manifest)
}

/// The training data of model stage `model` and of every training stage upstream of it: the
/// `train` split of each dataset they trained on (files as they are). Stages whose artifacts
/// are not at hand (not cached, not run) are skipped: the check is a guard, not a gate.
fn training_data(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    known: &BTreeMap<usize, Known>,
    model: &str,
) -> Result<Vec<ResolvedInput>> {
    let Some(m) = recipe.stages.iter().position(|s| s.name == model) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for a in dag.ancestors(m) {
        let s = &recipe.stages[a];
        for (_, input) in s.spec.training_inputs() {
            match input {
                Input::Source(src) => out.push(ResolvedInput::File {
                    path: src.resolved.clone(),
                    label: src.label(),
                    format: src.format,
                }),
                Input::Stage(d) => {
                    let Some(di) = recipe.stages.iter().position(|x| x.name == d.stage()) else {
                        continue;
                    };
                    if known.contains_key(&di) {
                        let split = d.output().unwrap_or("train");
                        out.push(ResolvedInput::Artifact(view(
                            store,
                            known,
                            di,
                            Some(split),
                            &format!("{}.{split}", d.stage()),
                        )?));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What a stage that writes outside the store (export) must never replace: the recipe file
/// and every file it reads.
fn protected_paths(recipe: &Recipe) -> Vec<(String, std::path::PathBuf)> {
    let mut out = vec![("the recipe".to_owned(), recipe.path.clone())];
    for stage in &recipe.stages {
        for (_, input) in stage.spec.inputs() {
            if let crate::recipe::types::Input::Source(src) = input {
                out.push((
                    format!("the data of stage `{}`", stage.name),
                    src.resolved.clone(),
                ));
            }
        }
    }
    out
}

/// An upstream artifact's outputs at their blob paths, each blob verified against its digest.
fn view(
    store: &Store,
    known: &BTreeMap<usize, Known>,
    up: usize,
    output: Option<&str>,
    label: &str,
) -> Result<ArtifactView> {
    let Some(Known::Done(m)) = known.get(&up) else {
        bail!("internal: upstream `{label}` has not been produced");
    };
    let problems = store.verify_manifest(m);
    if !problems.is_empty() {
        bail!(
            "the store is damaged: {}\nrun `hone cache verify --repair`, then run again to recompute it",
            problems.join("; ")
        );
    }
    let outputs = m
        .outputs
        .iter()
        .filter(|(name, _)| output.is_none_or(|o| o == name.as_str()))
        .map(|(name, o)| {
            let files = o
                .files
                .iter()
                .map(|(rel, f)| (rel.clone(), store.blob_path(&f.digest)))
                .collect();
            (
                name.clone(),
                OutputView {
                    artifact_type: o.artifact_type,
                    files,
                },
            )
        })
        .collect();
    Ok(ArtifactView {
        label: label.to_owned(),
        outputs,
    })
}
