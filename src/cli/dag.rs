//! `hone dag`: the stage graph, as text, Mermaid or Graphviz.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};

use super::args::{Globals, RecipeArgs};
use super::render;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DagFormat {
    Ascii,
    Mermaid,
    Dot,
}

#[derive(Debug, Args)]
pub struct DagArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[arg(long, value_enum, default_value_t = DagFormat::Ascii)]
    pub format: DagFormat,
}

pub fn run(g: &Globals, args: &DagArgs) -> Result<ExitCode> {
    let (recipe, dag) = args.recipe.load(g.kinds)?;
    let text = match args.format {
        DagFormat::Ascii => render::dag_ascii(&recipe, &dag),
        DagFormat::Mermaid => render::dag_mermaid(&recipe, &dag),
        DagFormat::Dot => render::dag_dot(&recipe, &dag),
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
