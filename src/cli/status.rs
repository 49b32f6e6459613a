//! `hone status`: each stage of a recipe, cached or stale and why (and `hone plan`'s report).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::args::{Globals, RecipeArgs};
use super::{cache, output, render};
use crate::backend::{self, BackendKind};
use crate::exec;
use crate::plan::Selection;
use crate::plan::dag::Dag;
use crate::plan::status::Evaluator;
use crate::recipe::Recipe;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub rehash: bool,
    #[command(flatten)]
    pub remote: cache::RemoteArgs,
}

pub fn run(g: &Globals, args: &StatusArgs) -> Result<ExitCode> {
    let (recipe, dag) = args.recipe.load(g.kinds)?;
    let selected = (0..recipe.stages.len()).collect();
    report(
        g,
        &recipe,
        &dag,
        &selected,
        &Selection::default(),
        args.json,
        args.rehash,
        false,
        &args.remote,
    )
}

/// What `plan` and `status` print: each selected stage, cached or stale and why, what a run
/// would pull from the remote, and (`status`) the Slurm jobs and lockfile drift.
#[allow(clippy::too_many_arguments)]
pub(super) fn report(
    g: &Globals,
    recipe: &Recipe,
    dag: &Dag,
    selected: &std::collections::BTreeSet<usize>,
    selection: &Selection,
    json: bool,
    rehash: bool,
    is_plan: bool,
    remote: &cache::RemoteArgs,
) -> Result<ExitCode> {
    let root = Store::location(g.store, Some(&recipe.path));
    // Planning never creates a store: an absent one is planned against as an empty one.
    let empty = tempfile::tempdir()?;
    let store = Store::open(if root.join("FORMAT").is_file() {
        &root
    } else {
        empty.path()
    })?;
    let backend: BackendKind = backend::resolve(recipe.header.backend);
    let mut eval = Evaluator::new(recipe, dag, &store, backend, rehash)?;
    let mut statuses = eval.statuses(selected, &|s| selection.forced(s))?;
    eval.hashes.save().ok();
    // What a run would pull, found as the run finds it (keys downstream of a remote hit come
    // from its manifest). Only stages missing here are looked up, so a fully cached recipe
    // costs the remote nothing.
    let missing = statuses
        .iter()
        .any(|s| s.selected && s.state != crate::plan::status::State::Cached);
    if missing && let Some(remote) = cache::open(remote, Some(recipe))?.filter(|r| r.read) {
        let hits = exec::remote_hits::find(
            recipe,
            dag,
            &store,
            &mut eval,
            selected,
            &|s| selection.forced(s),
            &remote,
            &mut output::StderrWarnings,
        )?;
        for i in hits.hits.keys() {
            if let Some(s) = statuses
                .iter_mut()
                .find(|s| s.stage == recipe.stages[*i].name)
                && s.selected
            {
                s.on_remote = true;
                s.action = Some(hits.hits[i].action.clone());
                s.pull_bytes = hits.pull.contains(i).then(|| hits.hits[i].total_bytes());
            }
        }
    }
    if !is_plan {
        slurm_jobs(&store, recipe, &mut statuses);
    }
    let drift = (!is_plan).then(|| eval.lockfile_drift(&statuses));
    if json {
        // Each stage says whether `run --locked` would pass for it, as the text's last line does.
        for (stage, why) in drift.iter().flatten() {
            if let Some(s) = statuses.iter_mut().find(|s| &s.stage == stage) {
                s.lockfile_drift = Some(why.clone());
            }
        }
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        render::statuses(recipe, &statuses, is_plan, drift.as_deref());
    }
    Ok(ExitCode::SUCCESS)
}

/// `hone status` after `run --executor slurm`: the job of each stage not cached yet.
fn slurm_jobs(store: &Store, recipe: &Recipe, statuses: &mut [crate::plan::status::StageStatus]) {
    use crate::exec::slurm;
    use crate::plan::status::{JobView, State};
    let Some(submission) = slurm::last_submission(store, &recipe.path) else {
        return;
    };
    let pending: Vec<&slurm::Job> = submission
        .jobs
        .iter()
        .filter(|j| {
            statuses
                .iter()
                .any(|s| s.stage == j.stage && s.state != State::Cached)
        })
        .collect();
    if pending.is_empty() {
        return;
    }
    let states = match slurm::states(&pending) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot ask Slurm about the recipe's jobs: {e:#}");
            return;
        }
    };
    for job in pending {
        if let (Some(s), Some(st)) = (
            statuses.iter_mut().find(|s| s.stage == job.stage),
            states.get(&job.id),
        ) {
            s.job = Some(JobView {
                id: job.id.clone(),
                state: st.state.clone(),
                reason: st.reason.clone(),
                description: st.describe(),
                log: job.log.clone(),
            });
        }
    }
}
