//! `hone run`: runs the stale stages of a recipe, here or (`--executor slurm`) as Slurm jobs.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::args::{Globals, RecipeArgs, SelectArgs};
use super::{cache, output};
use crate::backend::{self, BackendKind};
use crate::exec::{self, RunOptions};
use crate::plan::dag::Dag;
use crate::plan::status::Evaluator;
use crate::recipe::Recipe;
use crate::recipe::types::ExecutorKind;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Fail, before running anything, if the run would change the lockfile.
    #[arg(long)]
    pub locked: bool,
    /// With --set: record this run in the recipe's lockfile and publish its exports. A run
    /// with --set is otherwise an experiment: its artifacts land in the store and its run
    /// directory (`hone runs`), and the lockfile and `dist/` keep the recipe's own.
    #[arg(long, conflicts_with = "locked")]
    pub update_lock: bool,
    /// A name for this run, shown by `hone runs` (e.g. `ipo-beta-0.3`).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Re-read every input file instead of trusting the (size, mtime, inode) digest cache.
    #[arg(long)]
    pub rehash: bool,
    /// How the run is shown: `text` (lines and progress bars) or `json` (one event a line
    /// on stdout, for tools and CI logs).
    #[arg(long, value_enum, default_value_t, value_name = "FORMAT")]
    pub log_format: output::LogFormat,
    #[command(flatten)]
    pub remote: cache::RemoteArgs,
    /// Where the stages run: `local` (here) or `slurm` (each stale stage a Slurm job,
    /// chained by dependencies); overrides the recipe's `executor.kind`.
    #[arg(long, value_enum, value_name = "local|slurm")]
    pub executor: Option<ExecutorKind>,
    /// With --executor slurm: follow the jobs until the pipeline ends, and exit with its
    /// result (failed jobs' logs are named).
    #[arg(long)]
    pub wait: bool,
    /// Inside a Slurm job: run the selected stage and leave the lockfile and exports to the
    /// final job.
    #[arg(long, hide = true)]
    pub stage_job: bool,
}

pub fn run(g: &Globals, args: &RunArgs) -> Result<ExitCode> {
    let (recipe, dag) = args.recipe.load(g.kinds)?;
    let remote = cache::open(&args.remote, Some(&recipe))?;
    let executor = args.executor.unwrap_or(recipe.header.executor.kind);
    if executor == ExecutorKind::Slurm && !args.stage_job {
        if !args.select.force.is_empty() {
            bail!(
                "--force is not supported with --executor slurm: run the forced stage with --executor local"
            );
        }
        if let Some(code) = slurm_submit(g, args, &recipe, &dag)? {
            return Ok(code);
        }
    } else if args.wait {
        bail!("--wait follows Slurm jobs: use it with --executor slurm");
    }
    let store = Store::open(&Store::location(g.store, Some(&recipe.path)))?;
    install_ctrlc_handler();
    let experiment = (!recipe.overrides.is_empty() && !args.update_lock) || args.stage_job;
    let opts = RunOptions {
        selection: args.select.selection(),
        locked: args.locked,
        rehash: args.rehash,
        no_lockfile: experiment,
        no_publish: experiment,
        name: args.name.clone(),
        remote,
    };
    let mut observer: Box<dyn exec::observer::Observer> = match args.log_format {
        output::LogFormat::Text => Box::new(output::Terminal::new(g.quiet)),
        output::LogFormat::Json => Box::new(output::JsonLines::new()),
    };
    exec::run(
        &recipe,
        &dag,
        &store,
        backend::resolve(recipe.header.backend),
        &opts,
        observer.as_mut(),
    )?;
    if experiment && !g.quiet {
        eprintln!(
            "experiment (--set): {} and exports left as they were; `hone runs {}` lists it, --update-lock records it",
            recipe.lockfile_path().display(),
            recipe.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Installs the Ctrl-C handler: the first press stops after cleaning up, the second exits now
/// (still safe: commits are atomic).
fn install_ctrlc_handler() {
    use std::sync::atomic::Ordering;
    let _ = ctrlc::set_handler(|| {
        if crate::spec::context::CANCELLED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after cleaning up (press Ctrl-C again to exit at once)");
    });
}

/// What `run` was asked to do with the lockfile, which the Slurm executor's final job does.
struct LockfileArgs {
    locked: bool,
    update_lock: bool,
    name: Option<String>,
}

/// `run --executor slurm`: submits the stale stages as jobs (see `exec::slurm`). `None` when
/// every stage is cached: the run then goes on here (it only writes the lockfile).
fn slurm_submit(
    g: &Globals,
    args: &RunArgs,
    recipe: &Recipe,
    dag: &Dag,
) -> Result<Option<ExitCode>> {
    use crate::exec::slurm;
    let (select, remote, wait) = (&args.select, &args.remote, args.wait);
    let lockfile = LockfileArgs {
        locked: args.locked,
        update_lock: args.update_lock,
        name: args.name.clone(),
    };
    let store = Store::open(&Store::location(g.store, Some(&recipe.path)))?;
    let backend: BackendKind = backend::resolve(recipe.header.backend);
    let selection = select.selection();
    let selected = selection.resolve(recipe, dag)?;
    let mut eval = Evaluator::new(recipe, dag, &store, backend, false)?;
    if lockfile.locked {
        // Before anything is submitted, as a local run checks before anything runs.
        crate::exec::check_locked(&mut eval, &selected)?;
    }
    let statuses = eval.statuses(&selected, &|_| false)?;
    eval.hashes.save().ok();
    let mut final_args = Vec::new();
    for s in &select.only {
        final_args.extend(["--only".to_owned(), s.clone()]);
    }
    if let Some(s) = &select.from {
        final_args.extend(["--from".to_owned(), s.clone()]);
    }
    if let Some(s) = &select.until {
        final_args.extend(["--until".to_owned(), s.clone()]);
    }
    if lockfile.locked {
        final_args.push("--locked".into());
    }
    if lockfile.update_lock {
        final_args.push("--update-lock".into());
    }
    if let Some(n) = &lockfile.name {
        final_args.extend(["--name".to_owned(), n.clone()]);
    }
    let mut forward = Vec::new();
    for s in &args.recipe.set {
        forward.extend(["--set".to_owned(), s.clone()]);
    }
    if args.recipe.backend.is_some() {
        // The backend this run resolved: every job computes on it.
        forward.extend(["--backend".to_owned(), backend.name().to_owned()]);
    }
    if let Some(url) = &remote.remote {
        forward.extend(["--remote".to_owned(), url.clone()]);
    }
    if remote.no_remote {
        forward.push("--no-remote".into());
    }
    let opts = slurm::SlurmOptions {
        hone: std::env::current_exe().context("cannot find this hone's path for the jobs")?,
        forward,
        final_args,
        gpu_backend: backend != BackendKind::Cpu,
    };
    let quiet = g.quiet;
    let mut say = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    let Some(submission) = slurm::submit(recipe, dag, &store, &statuses, &opts, &mut say)? else {
        say(&format!(
            "{}: every stage is cached; nothing to submit",
            recipe.path.display()
        ));
        return Ok(None);
    };
    let submitted = submission.jobs.iter().filter(|j| !j.found).count();
    say(&format!(
        "{}: {submitted} jobs submitted, {} already queued; `hone status {}` follows them",
        recipe.path.display(),
        submission.jobs.len() - submitted,
        recipe.path.display()
    ));
    if !wait {
        return Ok(Some(ExitCode::SUCCESS));
    }
    let poll = std::env::var("HONE_SLURM_POLL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs_f64,
        );
    let ok = slurm::wait(&submission, poll, &mut say)?;
    say(&format!(
        "{}: {}",
        recipe.path.display(),
        if ok {
            "every job completed; the lockfile is written"
        } else {
            "the pipeline did not complete (see the failed jobs above)"
        }
    ));
    Ok(Some(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }))
}
