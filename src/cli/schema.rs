//! `hone schema`: the JSON Schema of recipe files, or the recipe reference in Markdown, with
//! every kind of this program's registry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::args::Globals;
use super::docs;

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Write to this file instead of stdout.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// The recipe reference as Markdown (docs/recipe-reference.md) instead of JSON Schema.
    #[arg(long)]
    pub markdown: bool,
}

pub fn run(g: &Globals, args: &SchemaArgs) -> Result<ExitCode> {
    let schema = crate::recipe::json_schema(g.kinds);
    let text = if args.markdown {
        docs::markdown(&schema)
    } else {
        format!("{}\n", serde_json::to_string_pretty(&schema)?)
    };
    match &args.output {
        Some(p) => crate::store::write_atomic(p, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
