//! One run of a recipe as a value: [`Run`] holds what the walk over the stages keeps (the
//! evaluator, what is known of each stage, the remote's hits, the run directory, the lockfile,
//! the reports) and has one method per step: [`Run::resolve`] finds how a selected stage's
//! result is had (cached, taken from another process, pulled, left on the remote, or computed
//! here), [`Run::compute`] computes it, [`Run::record`] records it (events, write-through,
//! publishing, run directory, lockfile).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::inputs::{protected_paths, resolve_inputs};
use super::mlflow::{self, RunStatus};
use super::observer::{Event, Observer};
use super::tracking::StageTrackers;
use super::{Outcome, RunOptions, RunReport, StageReport, remote_hits, rundir, tensorboard};
use crate::HONE_VERSION;
use crate::backend::BackendKind;
use crate::plan::dag::Dag;
use crate::plan::status::{Action, Evaluator, Known};
use crate::recipe::Recipe;
use crate::spec::context::{self, SettingError, StageContext};
use crate::spec::settings::Input;
use crate::store::lockfile::{LockedStage, Lockfile};
use crate::store::remote::{Pushed, Remote, Transfer};
use crate::store::{CACHE_FORMAT, LockGuard, Manifest, Store};

/// A selected stage's result and how this run had it.
pub(super) struct Resolved {
    pub outcome: Outcome,
    pub manifest: Manifest,
    /// What a pull downloaded.
    pub pulled: Option<Transfer>,
}

/// The state of one run over a recipe's stages.
pub(super) struct Run<'a> {
    pub recipe: &'a Recipe,
    pub dag: &'a Dag,
    store: &'a Store,
    backend: BackendKind,
    opts: &'a RunOptions,
    observer: &'a mut dyn Observer,
    pub eval: Evaluator<'a>,
    /// The stages the selection covers.
    pub selected: BTreeSet<usize>,
    /// What each stage produced or found, once known: the keys downstream come from it.
    pub known: BTreeMap<usize, Known>,
    remote: Option<&'a Remote>,
    /// What the remote's look-ahead found for the stages not cached here.
    from_remote: remote_hits::RemoteHits,
    /// Remote hits recorded without their files: pulled if a stage that runs reads them.
    remote_only: BTreeMap<usize, Manifest>,
    rundir: rundir::RunDir,
    lockfile: Lockfile,
    lockfile_changed: bool,
    reports: Vec<StageReport>,
    /// What a publishing stage must not replace: the recipe and its data.
    protected: Vec<(String, std::path::PathBuf)>,
    started: Instant,
    /// The recipe's MLflow server (`logging.mlflow`), connected when the first stage runs;
    /// `None` inside when it is not set or could not be reached (warned about once).
    mlflow: std::cell::OnceCell<Option<std::sync::Arc<mlflow::Tracker>>>,
    _store_lock: LockGuard,
}

impl<'a> Run<'a> {
    /// Opens the run: locks the store (shared), resolves the selection, checks `--locked`
    /// before anything runs, asks the remote what it has, creates the run directory and
    /// announces the stages.
    pub fn start(
        recipe: &'a Recipe,
        dag: &'a Dag,
        store: &'a Store,
        backend: BackendKind,
        opts: &'a RunOptions,
        observer: &'a mut dyn Observer,
    ) -> Result<Run<'a>> {
        let started = Instant::now();
        let store_lock = store.lock_shared()?;
        let selected = opts.selection.resolve(recipe, dag)?;
        let mut eval = Evaluator::new(recipe, dag, store, backend, opts.rehash)?;
        if opts.locked {
            super::check_locked(&mut eval, &selected)?;
        }
        let remote = opts.remote.as_deref();
        let from_remote = match remote.filter(|r| r.read) {
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
        let rundir = rundir::RunDir::create(store, recipe, opts)?;
        let mut lockfile = eval.lockfile.clone().unwrap_or_else(|| Lockfile {
            version: 1,
            recipe: recipe.header.name.clone(),
            stages: BTreeMap::new(),
        });
        lockfile.recipe = recipe.header.name.clone();
        lockfile
            .stages
            .retain(|name, _| recipe.stage(name).is_some());
        observer.event(&Event::RunStarted {
            recipe: &recipe.header.name,
            stages: dag
                .order
                .iter()
                .map(|&i| super::observer::StageHead {
                    name: &recipe.stages[i].name,
                    kind: recipe.stages[i].spec.kind_name(),
                })
                .collect(),
            run_dir: rundir.path(),
        });
        Ok(Run {
            recipe,
            dag,
            store,
            backend,
            opts,
            observer,
            eval,
            selected,
            known: BTreeMap::new(),
            remote,
            from_remote,
            remote_only: BTreeMap::new(),
            rundir,
            lockfile,
            lockfile_changed: false,
            reports: Vec::new(),
            protected: protected_paths(recipe),
            started,
            mlflow: std::cell::OnceCell::new(),
            _store_lock: store_lock,
        })
    }

    /// A stage the selection leaves out: usable only if cached (here, or on the remote), and
    /// only needed if something selected reads it.
    pub fn pass_over(&mut self, i: usize, action: Option<Action>) -> Result<()> {
        let recipe = self.recipe;
        let stage = &recipe.stages[i];
        let m = match &action {
            Some(a) => self.store.manifest(&a.key)?,
            None => None,
        };
        if let Some(m) = m {
            self.known.insert(i, Known::Done(Box::new(m)));
        } else if let Some(a) = &action
            && let Some(m) = self
                .from_remote
                .hits
                .remove(&i)
                .filter(|m| m.action == a.key)
        {
            self.known.insert(i, Known::Done(Box::new(m.clone())));
            self.remote_only.insert(i, m);
        }
        self.observer.event(&Event::StageFinished {
            stage: &stage.name,
            kind: stage.spec.kind_name(),
            outcome: Outcome::NotSelected,
            action: action.as_ref().map_or("", |a| a.key.as_str()),
            wall_time_s: 0.0,
            metrics: &serde_json::Map::new(),
            warnings: &[],
            table: None,
            pulled: None,
        });
        self.reports.push(StageReport {
            stage: stage.name.clone(),
            kind: stage.spec.kind_name().to_owned(),
            outcome: Outcome::NotSelected,
            action: action.map(|a| a.key),
            wall_time_s: 0.0,
            warnings: vec![],
            pulled: None,
        });
        Ok(())
    }

    /// Stage `i`'s action, which a selected stage needs: `None` means an input is neither
    /// cached nor selected, which the user must fix.
    pub fn require(&self, i: usize, action: Option<Action>) -> Result<Action> {
        if let Some(a) = action {
            return Ok(a);
        }
        let missing: Vec<String> = self
            .dag
            .upstream(i)
            .into_iter()
            .filter(|u| !self.known.contains_key(u))
            .map(|u| format!("`{}`", self.recipe.stages[u].name))
            .collect();
        bail!(
            "stage `{}` needs {} which {} not cached and not selected; run without --only/--from, or add them to the selection",
            self.recipe.stages[i].name,
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        )
    }

    /// How selected stage `i`'s result is had: cached here; committed by another process
    /// while this one waited for the action's lock; from the remote (pulled, or left there
    /// when nothing here reads it); else computed here, under the action's lock.
    pub fn resolve(&mut self, i: usize, action: &Action) -> Result<Resolved> {
        let recipe = self.recipe;
        let name = &recipe.stages[i].name;
        let forced = self.opts.selection.forced(name);
        let found = |outcome, manifest| Resolved {
            outcome,
            manifest,
            pulled: None,
        };
        if let Some(m) = self.store.manifest(&action.key)?.filter(|_| !forced) {
            return Ok(found(Outcome::Cached, m));
        }
        let mut waited = false;
        let observer = &mut *self.observer;
        let _lock = self.store.lock_action(&action.key, || {
            waited = true;
            observer.event(&Event::Waiting { stage: name });
        })?;
        if let Some(m) = self
            .store
            .manifest(&action.key)?
            .filter(|_| !forced || waited)
        {
            return Ok(found(Outcome::RanElsewhere, m));
        }
        if let Some(taken) = self.take_from_remote(i, &action.key, forced) {
            if taken.outcome == Outcome::OnRemote {
                self.remote_only.insert(i, taken.manifest.clone());
            }
            return Ok(taken);
        }
        self.compute(i, action).map(|m| found(Outcome::Ran, m))
    }

    /// Stage `i`'s result from the remote cache, when this run may take one: downloaded now
    /// (`Pulled`), or only recorded (`OnRemote`) when nothing here needs its files. `None`:
    /// the stage runs here (forced, not on the remote, or the pull failed: a warning says
    /// why).
    fn take_from_remote(&mut self, i: usize, key: &str, forced: bool) -> Option<Resolved> {
        let r = self.remote.filter(|_| !forced)?;
        let hits = &mut self.from_remote;
        let (m, pull_now) = match hits.hits.remove(&i).filter(|m| m.action == key) {
            Some(m) => (m, hits.pull.contains(&i)),
            None => (late_hit(r, hits, key)?, true),
        };
        let name = &self.recipe.stages[i].name;
        if let Some(why) = self.eval.locked(name).and_then(|l| l.contradicts(&m)) {
            self.observer.event(&Event::RemoteWarning {
                stage: Some(name),
                message: &format!("not taken from {}: {why}; it runs here", r.label),
            });
            return None;
        }
        if !pull_now {
            return Some(Resolved {
                outcome: Outcome::OnRemote,
                manifest: m,
                pulled: None,
            });
        }
        if r.is_down() {
            return None; // warned once already; computed here
        }
        crate::store::fault_point("before-pull");
        match r.pull(self.store, &m) {
            Ok(t) => Some(Resolved {
                outcome: Outcome::Pulled,
                manifest: m,
                pulled: Some(t),
            }),
            Err(e) => {
                self.observer.event(&Event::RemoteWarning {
                    stage: Some(&self.recipe.stages[i].name),
                    message: &format!("not pulled from {}: {e}; it runs here", r.label),
                });
                None
            }
        }
    }

    /// Computes stage `i` here: first the inputs this run left on the remote that cannot be
    /// pulled now (computed here too), then the stage itself.
    pub fn compute(&mut self, i: usize, action: &Action) -> Result<Manifest> {
        for up in self.pull_inputs(i) {
            let theirs = match self.known.get(&up) {
                Some(Known::Done(m)) => Some(m.artifact_digest()),
                _ => None,
            };
            let m = self.compute_lost(up)?;
            if theirs.is_some_and(|d| d != m.artifact_digest()) {
                self.observer.event(&Event::RemoteWarning {
                    stage: Some(&self.recipe.stages[up].name),
                    message: "computed here with other outputs than the remote's result of the same action (is the stage deterministic?)",
                });
            }
            self.known.insert(up, Known::Done(Box::new(m)));
        }
        self.run_stage(i, action)
    }

    /// Pulls the remote-only results (see [`remote_hits`]) that stage `i` reads, directly or
    /// through the training data it checks, before it runs. Returns those that could not be
    /// pulled (a warning says why), in dependency order: they are computed here instead,
    /// since a remote that fails never fails a run that can compute.
    fn pull_inputs(&mut self, i: usize) -> Vec<usize> {
        let Some(r) = self.remote else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        let ancestors = self.dag.ancestors(i);
        for &up in self.dag.order.iter().filter(|u| ancestors.contains(u)) {
            let Some(m) = self.remote_only.remove(&up) else {
                continue;
            };
            let pulled = if r.is_down() {
                Err(None)
            } else {
                r.pull(self.store, &m).map_err(Some)
            };
            if let Err(e) = pulled {
                self.observer.event(&Event::RemoteWarning {
                    stage: Some(&self.recipe.stages[i].name),
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

    /// Runs stage `up`, whose result this run left on the remote, here after all: a stage
    /// that reads it is about to run and the remote could not deliver it.
    fn compute_lost(&mut self, up: usize) -> Result<Manifest> {
        let recipe = self.recipe;
        let stage = &recipe.stages[up];
        let action = self
            .eval
            .action(up, &self.known)?
            .with_context(|| format!("stage `{}`: its inputs are not known here", stage.name))?;
        let _lock = self.store.lock_action(&action.key, || {})?;
        if let Some(m) = self.store.manifest(&action.key)? {
            return Ok(m);
        }
        let started = Instant::now();
        let m = self.run_stage(up, &action)?;
        self.observer.event(&Event::StageFinished {
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
        self.rundir.stage_done(&stage.name, Outcome::Ran, &m)?;
        Ok(m)
    }

    /// What stage `i` logs to as it runs (`logging:`): TensorBoard when it runs a model (a
    /// data-only run leaves no run directory there), MLflow whenever it runs.
    fn trackers(&self, i: usize, action: &Action, config: &serde_json::Value) -> StageTrackers {
        let recipe = self.recipe;
        let stage = &recipe.stages[i];
        let logging = &recipe.header.logging;
        let tensorboard = logging
            .tensorboard
            .as_ref()
            .filter(|_| stage.spec.uses_backend())
            .map(|dir| {
                std::sync::Arc::new(tensorboard::StageLog::new(
                    recipe
                        .dir()
                        .join(dir)
                        .join(self.rundir.name())
                        .join(&stage.name),
                ))
            });
        let tracker = logging
            .mlflow
            .as_ref()
            .and_then(|uri| self.mlflow_tracker(uri));
        let run = self.rundir.name();
        let mlflow = tracker.and_then(|t| {
            let info = mlflow::StageInfo {
                stage: &stage.name,
                kind: stage.spec.kind_name(),
                action: &action.key,
                recipe: &recipe.header.name,
                run: &run,
            };
            t.start(&info, config).map(std::sync::Arc::new)
        });
        StageTrackers {
            tensorboard,
            mlflow,
        }
    }

    /// The recipe's MLflow server, connected to on first use; `None` when it could not be
    /// reached (warned about once, for the whole run).
    fn mlflow_tracker(&self, uri: &str) -> Option<std::sync::Arc<mlflow::Tracker>> {
        self.mlflow
            .get_or_init(
                || match mlflow::Tracker::connect(uri, &self.recipe.header.name) {
                    Ok(t) => Some(std::sync::Arc::new(t)),
                    Err(e) => {
                        tracing::warn!(
                            "MLflow at {uri}: {e:#}; not logging there for the rest of this run"
                        );
                        None
                    }
                },
            )
            .clone()
    }

    /// Runs stage `i` in a scratch directory of the store and commits what it produced.
    fn run_stage(&mut self, i: usize, action: &Action) -> Result<Manifest> {
        let (recipe, store) = (self.recipe, self.store);
        let stage = &recipe.stages[i];
        let scratch = store.scratch(&action.key)?;
        self.observer.event(&Event::StageStarted {
            stage: &stage.name,
            kind: stage.spec.kind_name(),
            action: &action.key,
        });
        let progress = self.observer.progress(&stage.name);
        let mut ctx = StageContext::new(
            stage.name.clone(),
            scratch.dir.clone(),
            recipe.header.seed,
            self.backend,
            progress.clone(),
        );
        ctx.recipe_name = recipe.header.name.clone();
        ctx.recipe_dir = recipe.dir().to_path_buf();
        ctx.rewards = stage.spec.rewards().to_vec();
        let key_config = stage.spec.key_config();
        ctx.frozen_base_dtypes =
            crate::stages::training::frozen_base_dtypes(&key_config, self.backend);
        ctx.frozen_base_quant = crate::stages::training::frozen_base_quant(&key_config);
        ctx.frozen_reference_dtypes =
            crate::stages::training::frozen_dtypes(&key_config, self.backend);
        ctx.checkpoint_dir = Some(store.checkpoint_dir(&action.key));
        ctx.token_cache = Some(store.root().join("tokenized"));
        // Ends the stage's MLflow run as FAILED if this returns early.
        let trackers = std::sync::Arc::new(self.trackers(i, action, &key_config));
        if !trackers.is_empty() {
            let live = trackers.clone();
            ctx.live = Some(std::sync::Arc::new(move |r: &serde_json::Value| {
                live.record(r)
            }));
        }
        resolve_inputs(&mut ctx, recipe, self.dag, store, &self.known, i)?;
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
            // Stopped by Ctrl-C is not a failure: the stage says what it kept, and the run
            // ends as interrupted.
            Err(e) if e.chain().any(|c| c.is::<context::Cancelled>()) => {
                trackers.end(RunStatus::Killed);
                return Err(e);
            }
            r => {
                r.with_context(|| format!("stage `{}` failed; nothing was committed", stage.name))?
            }
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
                self.rundir.log_metrics(&stage.name, &m)?;
            }
        }
        self.rundir.log_metrics(&stage.name, &manifest.metrics)?;
        trackers.finish(&manifest.metrics);
        let produced = ctx.take_produced();
        let manifest = store.commit(&produced, manifest)?;
        trackers.end(RunStatus::Finished);
        drop(scratch);
        // Committed: the checkpoints of this action have served their purpose.
        let _ = std::fs::remove_dir_all(store.checkpoint_dir(&action.key));
        Ok(manifest)
    }

    /// Records selected stage `i`'s result: checks it against `--locked`, tells the observer,
    /// pushes what ran (write-through), lays out what the kind publishes, notes it in the run
    /// directory and the lockfile, and makes it known to the stages downstream.
    pub fn record(
        &mut self,
        i: usize,
        action: &Action,
        resolved: Resolved,
        started: Instant,
    ) -> Result<()> {
        let (recipe, opts) = (self.recipe, self.opts);
        let stage = &recipe.stages[i];
        let Resolved {
            outcome,
            manifest,
            pulled,
        } = resolved;
        if opts.locked
            && let Some(l) = self.eval.locked(&stage.name)
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
            started.elapsed().as_secs_f64()
        } else {
            0.0
        };
        self.observer.event(&Event::StageFinished {
            stage: &stage.name,
            kind: stage.spec.kind_name(),
            outcome,
            action: &action.key,
            wall_time_s: wall,
            metrics: &manifest.metrics,
            warnings: &manifest.warnings,
            table: stage.spec.summary_table(&manifest.summary),
            pulled: pulled.as_ref(),
        });
        if outcome == Outcome::Ran
            && let Some(r) = self.remote.filter(|r| r.write && !r.is_down())
        {
            push_one(r, self.store, &manifest, &mut *self.observer);
        }
        // Some kinds (export) land files outside the store, also when the stage was cached;
        // a stage left on the remote has no files here to lay out.
        let published = if opts.no_publish || outcome == Outcome::OnRemote {
            None
        } else {
            stage.spec.publish(&crate::spec::Publish {
                store: self.store,
                manifest: &manifest,
                recipe_dir: recipe.dir(),
                protected: &self.protected,
            })?
        };
        if let Some(dest) = published {
            self.observer.event(&Event::Published {
                stage: &stage.name,
                to: &dest,
            });
        }
        self.rundir.stage_done(&stage.name, outcome, &manifest)?;
        let mut entry = LockedStage::from_manifest(&manifest);
        for (rel, input) in stage.spec.inputs() {
            if let Input::Source(src) = input
                && let (Some(repo), Some(Ok(commit))) = (&src.hub, &src.hub_commit)
            {
                entry.hub.insert(rel, format!("{repo}@{commit}"));
            }
        }
        // A stage that reproduced the recorded action, output and metrics keeps its entry (and
        // the wall time of the run that first produced it), so a fresh clone's first run does
        // not churn a committed lockfile. Metrics a newer hone reports for the same output are
        // recorded: a remote result whose metrics differ from the lockfile's is refused.
        let reproduced = self.lockfile.stages.get(&stage.name).is_some_and(|old| {
            old.action == entry.action
                && old.artifact == entry.artifact
                && old.hub == entry.hub
                && old.metrics == entry.metrics
        });
        if !reproduced {
            self.lockfile.stages.insert(stage.name.clone(), entry);
            if !opts.locked && !opts.no_lockfile {
                self.lockfile_changed |= self.lockfile.write(&recipe.lockfile_path())?;
            }
        }
        self.reports.push(StageReport {
            stage: stage.name.clone(),
            kind: stage.spec.kind_name().to_owned(),
            outcome,
            action: Some(action.key.clone()),
            wall_time_s: wall,
            warnings: manifest.warnings.clone(),
            pulled,
        });
        self.known.insert(i, Known::Done(Box::new(manifest)));
        Ok(())
    }

    /// Closes the run: the lockfile (stages removed from the recipe leave it even when
    /// nothing ran), the digest cache, the run directory's summary, the last event.
    pub fn finish(mut self) -> Result<RunReport> {
        let (recipe, opts) = (self.recipe, self.opts);
        if !opts.locked && !opts.no_lockfile {
            self.lockfile_changed |= self.lockfile.write(&recipe.lockfile_path())?;
        }
        self.eval.hashes.save().ok();
        let report = RunReport {
            stages: self.reports,
            lockfile_changed: self.lockfile_changed,
            run_dir: self.rundir.path().to_path_buf(),
            wall_time_s: self.started.elapsed().as_secs_f64(),
        };
        self.rundir.finish(&report)?;
        self.observer.event(&Event::RunFinished {
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
