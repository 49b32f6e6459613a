//! Arguments several commands share: the recipe to load (`RecipeArgs`) and the stages to cover
//! (`SelectArgs`); and [`Globals`], what every command gets besides its own arguments.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use crate::plan::Selection;
use crate::plan::dag::Dag;
use crate::recipe::{self, Recipe, types::BackendChoice};
use crate::spec::Registry;

/// What every command gets: the global flags and the stage kinds recipes may use.
pub struct Globals<'a> {
    /// `--store`.
    pub store: Option<&'a Path>,
    /// `--quiet`.
    pub quiet: bool,
    /// The built-in kinds and any a program registered.
    pub kinds: &'a Registry,
}

#[derive(Debug, Args)]
pub struct RecipeArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Override any key, YAML-typed: --set stages.sft.train.lr=1e-4, --set vars.lr=1e-4.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Tensor backend, overriding the recipe's `backend:`.
    #[arg(long, value_name = "auto|cpu|wgpu|cuda")]
    pub backend: Option<BackendChoice>,
}

impl RecipeArgs {
    /// Loads and validates; exits with the diagnostics (code 2) on failure.
    pub fn load(&self, kinds: &Registry) -> Result<(Recipe, Dag)> {
        let mut recipe = recipe::load(&self.recipe, &self.set, kinds)?;
        if let Some(b) = self.backend {
            recipe.header.backend = b;
        }
        let dag = crate::plan::validate(&recipe)?;
        Ok((recipe, dag))
    }
}

#[derive(Debug, Args, Default)]
pub struct SelectArgs {
    /// Only these stages (repeatable); their inputs must be cached.
    #[arg(long, value_name = "STAGE")]
    pub only: Vec<String>,
    /// This stage and everything downstream of it.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,
    /// This stage and everything it depends on.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,
    /// Rerun this stage even if cached (repeatable); downstream reruns only if its output changes.
    #[arg(long, value_name = "STAGE")]
    pub force: Vec<String>,
}

impl SelectArgs {
    pub fn selection(&self) -> Selection {
        Selection {
            only: self.only.clone(),
            from: self.from.clone(),
            until: self.until.clone(),
            force: self.force.clone(),
        }
    }
}
