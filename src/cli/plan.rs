//! `hone plan`: what `run` would do with the same arguments: each stage, cached or stale, and
//! why.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::args::{Globals, RecipeArgs, SelectArgs};
use super::cache;

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    #[arg(long)]
    pub rehash: bool,
    #[command(flatten)]
    pub remote: cache::RemoteArgs,
}

pub fn run(g: &Globals, args: &PlanArgs) -> Result<ExitCode> {
    let (recipe, dag) = args.recipe.load(g.kinds)?;
    let selection = args.select.selection();
    let selected = selection.resolve(&recipe, &dag)?;
    super::status::report(
        g,
        &recipe,
        &dag,
        &selected,
        &selection,
        args.json,
        args.rehash,
        true,
        &args.remote,
    )
}
