//! `hone run`: walks the plan in order, reuses cached actions, runs stale ones, commits their
//! outputs and keeps the lockfile current after every stage, so an interrupted run loses only
//! the stage it was in.

pub mod context;
pub mod rundir;

use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::backend::BackendKind;
use crate::plan::Selection;
use crate::plan::dag::{Dag, EdgeKind};
use crate::plan::key::HONE_VERSION;
use crate::plan::status::{Evaluator, Known};
use crate::recipe::Recipe;
use crate::recipe::types::Input;
use crate::store::lockfile::{LockedStage, Lockfile};
use crate::store::{CACHE_FORMAT, Manifest, Store};
use context::{ArtifactView, CANCELLED, OutputView, ResolvedInput, StageContext};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub selection: Selection,
    /// Fail before running anything if the run would change the lockfile.
    pub locked: bool,
    /// Distrust the (size, mtime, inode) digest cache.
    pub rehash: bool,
    /// No progress bars and no per-stage lines.
    pub quiet: bool,
    /// Leave the recipe's lockfile alone (experiments and sweeps run from code).
    pub no_lockfile: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ran,
    Cached,
    /// Another process ran it while this one waited for the action's lock.
    RanElsewhere,
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

/// Installs the Ctrl-C handler: the first press stops after cleaning up, the second exits now
/// (still safe: commits are atomic).
pub fn install_ctrlc_handler() {
    let _ = ctrlc::set_handler(|| {
        if CANCELLED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after cleaning up (press Ctrl-C again to exit at once)");
    });
}

pub fn run(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    backend: BackendKind,
    opts: &RunOptions,
) -> Result<RunReport> {
    let started = Instant::now();
    let _store_lock = store.lock_shared()?;
    let selected = opts.selection.resolve(recipe, dag)?;
    let mut eval = Evaluator::new(recipe, dag, store, backend, opts.rehash)?;
    if opts.locked {
        check_locked(&mut eval, &selected)?;
    }
    let mut rundir = rundir::RunDir::create(store, recipe)?;
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
    let show_progress = !opts.quiet && std::io::stderr().is_terminal();
    let kind_width =
        crate::cli::render::kind_width(recipe.stages.iter().map(|s| s.spec.kind_name()));

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
            }
            reports.push(StageReport {
                stage: stage.name.clone(),
                kind,
                outcome: Outcome::NotSelected,
                action: action.map(|a| a.key),
                wall_time_s: 0.0,
                warnings: vec![],
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
        let manifest = match store.manifest(&action.key)?.filter(|_| !forced) {
            Some(m) => m,
            None => {
                let mut waited = false;
                let _lock = store.lock_action(&action.key, || {
                    waited = true;
                    if !opts.quiet {
                        eprintln!(
                            "  waiting   {:<20} another hone process is running this action",
                            stage.name
                        );
                    }
                })?;
                match store.manifest(&action.key)?.filter(|_| !forced || waited) {
                    Some(m) => {
                        outcome = Outcome::RanElsewhere;
                        m
                    }
                    None => {
                        outcome = Outcome::Ran;
                        run_stage(
                            recipe,
                            dag,
                            store,
                            &known,
                            i,
                            &action,
                            backend,
                            show_progress,
                            &mut rundir,
                        )?
                    }
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
        if !opts.quiet {
            print_stage_line(&stage.name, (&kind, kind_width), outcome, wall, &manifest);
        }
        // An export lands outside the store, also when the stage itself was cached.
        if let crate::recipe::types::StageSpec::Export(e) = &stage.spec {
            let base = recipe
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let dest = crate::stages::export::tidy(&base.join(&e.to));
            if crate::stages::export::publish(store, &manifest, &dest)? && !opts.quiet {
                println!("  exported {:<20} to {}", stage.name, dest.display());
            }
        }
        rundir.stage_done(&stage.name, outcome, &manifest)?;
        let entry = LockedStage::from_manifest(&manifest);
        // A stage that reproduced the recorded action and output keeps its entry (and the wall
        // time of the run that first produced it), so a fresh clone's first run does not churn
        // a committed lockfile.
        let reproduced = lockfile
            .stages
            .get(&stage.name)
            .is_some_and(|old| old.action == entry.action && old.artifact == entry.artifact);
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
    Ok(report)
}

/// `--locked`: every selected stage must be recorded in the lockfile under the action key it
/// would have now (upstream outputs taken from the lockfile), before anything runs.
fn check_locked(eval: &mut Evaluator, selected: &BTreeSet<usize>) -> Result<()> {
    let statuses = eval.statuses(selected, &|_| false)?;
    let mut problems = Vec::new();
    for s in statuses.iter().filter(|s| s.selected) {
        let locked = eval.locked(&s.stage);
        let ok = matches!((locked, &s.action), (Some(l), Some(a)) if &l.action == a);
        if !ok {
            // "waits for upstream" is not a change; without an earlier run in this store the
            // diff is unknown, but the key still differs from the lockfile's.
            let why: Vec<String> = s
                .reasons
                .iter()
                .filter(|r| !matches!(r, crate::plan::status::Reason::WaitsFor { .. }))
                .map(ToString::to_string)
                .collect();
            let why = match (locked, why.is_empty()) {
                (None, _) => "not in the lockfile".to_owned(),
                (Some(_), true) => "its action key differs from the lockfile's (config, inputs or hone changed; `hone status` against the store that wrote the lockfile shows which)".to_owned(),
                (Some(_), false) => why.join("; "),
            };
            problems.push(format!("  {}: {why}", s.stage));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    bail!(
        "--locked: this run would change {}:\n{}\nrun without --locked to update it",
        eval.recipe.lockfile_path().display(),
        problems.join("\n")
    )
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
    show_progress: bool,
    rundir: &mut rundir::RunDir,
) -> Result<Manifest> {
    let stage = &recipe.stages[i];
    let scratch = store.scratch(&action.key)?;
    let progress = if show_progress {
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("  {spinner} running   {prefix:<20} {msg} [{elapsed}]")
                .expect("valid template"),
        );
        pb.set_prefix(stage.name.clone());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut ctx = StageContext::new(
        stage.name.clone(),
        scratch.dir.clone(),
        recipe.header.seed,
        backend,
        progress.clone(),
    );
    ctx.recipe_name = recipe.header.name.clone();
    ctx.checkpoint_dir = Some(store.checkpoint_dir(&action.key));
    ctx.token_cache = Some(store.root().join("tokenized"));
    for (rel, input) in stage.spec.inputs() {
        let resolved = match input {
            Input::Source(src) => ResolvedInput::File {
                path: src.resolved.clone(),
                label: src.path.clone(),
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
    if let crate::recipe::types::StageSpec::Evaluate(e) = &stage.spec {
        for (name, input) in &e.models {
            if let Input::Stage(r) = input {
                let data = training_data(recipe, dag, store, known, r.stage())?;
                ctx.training_data.insert(name.clone(), data);
            }
        }
    }
    tracing::info!(stage = %stage.name, action = %action.key, "running");
    crate::store::fault_point("before-stage");
    let started = Instant::now();
    let result = crate::stages::run(&stage.spec, &mut ctx);
    progress.finish_and_clear();
    let result =
        result.with_context(|| format!("stage `{}` failed; nothing was committed", stage.name))?;
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
    use crate::recipe::types::StageKind;
    let Some(m) = recipe.stages.iter().position(|s| s.name == model) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for a in dag.ancestors(m) {
        let s = &recipe.stages[a];
        if !matches!(
            s.spec.builtin_kind(),
            Some(StageKind::Pretrain | StageKind::Sft)
        ) {
            continue;
        }
        for (rel, input) in s.spec.inputs() {
            if rel != "data" && rel != "replay.data" {
                continue;
            }
            match input {
                Input::Source(src) => out.push(ResolvedInput::File {
                    path: src.resolved.clone(),
                    label: src.path.clone(),
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

/// `kind` with the width of the kind column (the longest kind name in the recipe, custom
/// kinds included).
fn print_stage_line(
    name: &str,
    (kind, kind_width): (&str, usize),
    outcome: Outcome,
    wall: f64,
    m: &Manifest,
) {
    let (word, detail) = match outcome {
        Outcome::Ran => ("ran", format!("{wall:.2}s")),
        Outcome::Cached => ("cached", String::new()),
        Outcome::RanElsewhere => ("cached", "by another process".to_owned()),
        Outcome::NotSelected => return,
    };
    let headline: Vec<String> = m
        .metrics
        .iter()
        .take(4)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "  {word:<7} {name:<20} {kind:<kind_width$} {detail:<18} {}",
        headline.join(" ")
    );
    for w in &m.warnings {
        println!("  warning {name:<20} {w}");
    }
    if let Some(table) = crate::stages::evaluate::format_table(&m.summary) {
        print!("{table}");
    }
}
