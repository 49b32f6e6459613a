//! `hone validate`: checks a recipe whole (syntax, types, keys, references, cycles, files,
//! contracts) and runs nothing.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::args::{Globals, RecipeArgs};
use crate::spec::settings::Input;

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
}

pub fn run(g: &Globals, args: &ValidateArgs) -> Result<ExitCode> {
    let (recipe, dag) = args.recipe.load(g.kinds)?;
    let files = recipe
        .stages
        .iter()
        .flat_map(|s| s.spec.inputs())
        .filter(|(_, i)| matches!(i, Input::Source(_)))
        .count();
    println!(
        "{}: valid ({} stages, {} edges, {} source inputs)",
        recipe.path.display(),
        recipe.stages.len(),
        dag.graph.edge_count(),
        files
    );
    Ok(ExitCode::SUCCESS)
}
