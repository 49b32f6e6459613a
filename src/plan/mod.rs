//! From a validated recipe to what a run would do: the DAG, the selected stages, each stage's
//! action key and whether it is cached, with reasons when it is not.

pub mod dag;
pub mod key;
pub mod status;

use std::collections::BTreeSet;

use crate::diag::{Diagnostic, Diagnostics, did_you_mean};
use crate::recipe::Recipe;
use dag::Dag;

/// Validates `recipe` whole, before anything runs: the recipe's own checks (header values,
/// per-stage settings, source files) and those across stages (references, artifact contracts,
/// cycles), all problems at once; returns its stage graph.
pub fn validate(recipe: &Recipe) -> Result<Dag, Diagnostics> {
    let mut diags = crate::recipe::check(recipe);
    match Dag::build(recipe) {
        Ok(dag) => diags.into_result(dag),
        Err(more) => {
            diags.0.extend(more.0);
            Err(diags)
        }
    }
}

/// Which stages a command covers (`--only`, `--from`, `--until`) and which it reruns regardless
/// of the cache (`--force`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub only: Vec<String>,
    pub from: Option<String>,
    pub until: Option<String>,
    pub force: Vec<String>,
}

impl Selection {
    /// The selected stage indices. Unknown names are errors, with the closest name suggested.
    pub fn resolve(&self, recipe: &Recipe, dag: &Dag) -> Result<BTreeSet<usize>, Diagnostics> {
        let mut diags = Diagnostics::default();
        let mut find = |flag: &str, name: &str| -> Option<usize> {
            let i = recipe.stages.iter().position(|s| s.name == name);
            if i.is_none() {
                diags.push(
                    Diagnostic::new(format!(
                        "{flag} {name}: no stage `{name}` in {}",
                        recipe.path.display()
                    ))
                    .help(
                        did_you_mean(name, recipe.stage_names()).unwrap_or_else(|| {
                            format!(
                                "stages: {}",
                                recipe.stage_names().collect::<Vec<_>>().join(", ")
                            )
                        }),
                    ),
                );
            }
            i
        };
        let only: Vec<Option<usize>> = self.only.iter().map(|s| find("--only", s)).collect();
        let from = self.from.as_deref().map(|s| find("--from", s));
        let until = self.until.as_deref().map(|s| find("--until", s));
        for f in &self.force {
            find("--force", f);
        }
        if !diags.is_empty() {
            return Err(diags);
        }
        let mut selected: BTreeSet<usize> = (0..recipe.stages.len()).collect();
        if !only.is_empty() {
            selected = only.into_iter().flatten().collect();
        }
        if let Some(Some(f)) = from {
            selected = selected
                .intersection(&dag.descendants(f))
                .copied()
                .collect();
        }
        if let Some(Some(u)) = until {
            selected = selected.intersection(&dag.ancestors(u)).copied().collect();
        }
        Ok(selected)
    }

    pub fn forced(&self, name: &str) -> bool {
        self.force.iter().any(|f| f == name)
    }
}
