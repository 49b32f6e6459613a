//! `hone show`: a stage's artifact (metrics, warnings, rows, first rows), or the first training
//! examples exactly as the stage encodes them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;

use super::args::{Globals, RecipeArgs};
use super::render;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// [RECIPE] STAGE
    #[arg(num_args = 1..=2, required = true, value_name = "[RECIPE] STAGE")]
    pub args: Vec<String>,
    #[arg(long, value_name = "K=V")]
    pub set: Vec<String>,
    /// The full manifest as JSON.
    #[arg(long)]
    pub json: bool,
    /// Instead of the stage's result: its first N training examples exactly as it encodes
    /// them (template, special tokens, truncation), the text the loss covers in [[ ]]
    /// (sft, dpo; what the stage reads must have run); then, once the stage has run, its
    /// answers to the first N held-out questions with every score and the judge's reply
    /// (evaluate; sft's validation answers before and after training).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "3")]
    pub examples: Option<usize>,
}

pub fn run(g: &Globals, args: &ShowArgs) -> Result<ExitCode> {
    let (recipe_path, stage) = match args.args.as_slice() {
        [stage] => (find_recipe()?, stage.clone()),
        [r, stage] => (PathBuf::from(r), stage.clone()),
        _ => unreachable!("clap enforces 1..=2 arguments"),
    };
    let rargs = RecipeArgs {
        recipe: recipe_path,
        set: args.set.clone(),
        backend: None,
    };
    let (recipe, dag) = rargs.load(g.kinds)?;
    let store = Store::open_existing(&Store::location(g.store, Some(&recipe.path)))?;
    match args.examples {
        Some(n) => {
            let backend = crate::backend::resolve(recipe.header.backend);
            let shown = crate::exec::preview_examples(&recipe, &dag, &store, backend, &stage, n);
            let answers = render::stage_manifest(&recipe, &dag, &store, &stage)
                .ok()
                .and_then(|(m, _)| m.summary.get("answers").and_then(Value::as_array).cloned())
                .filter(|a| !a.is_empty());
            match (shown, answers) {
                (Ok(shown), answers) => {
                    if args.json {
                        println!("{}", serde_json::to_string_pretty(&shown)?);
                        return Ok(ExitCode::SUCCESS);
                    }
                    print!("{}", render::examples(&stage, &shown));
                    if let Some(a) = answers {
                        print!("\n{}", render::answer_examples(&stage, &a, n));
                    }
                }
                // A stage that trains on nothing (evaluate) shows its answers alone.
                (Err(_), Some(a)) if args.json => {
                    println!("{}", serde_json::to_string_pretty(&a)?);
                }
                (Err(_), Some(a)) => print!("{}", render::answer_examples(&stage, &a, n)),
                (Err(e), None) => return Err(e),
            }
        }
        None => render::show(&recipe, &dag, &store, &stage, args.json)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The recipe of `hone show STAGE`: `$HONE_RECIPE`, else the one recipe in the working
/// directory that has a lockfile.
fn find_recipe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HONE_RECIPE") {
        return Ok(PathBuf::from(p));
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(".")? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && p.with_extension("lock").is_file()
        {
            found.push(p);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no recipe with a lockfile in this directory: use `hone show RECIPE STAGE`"),
        many => bail!(
            "several recipes here ({}): use `hone show RECIPE STAGE`",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
