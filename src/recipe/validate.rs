//! Checks across the whole recipe, before anything runs: header values, per-stage settings,
//! source files, references, artifact contracts and cycles. All problems are reported at once.

use crate::backend;
use crate::diag::{Diagnostic, Diagnostics};
use crate::plan::dag::Dag;
use crate::recipe::Recipe;
use crate::recipe::source_map::join;
use crate::recipe::types::{DatasetRole, DatasetSpec, FileFormat, Input, StageSpec};

/// Validates `recipe` and returns its stage graph.
pub fn validate(recipe: &Recipe) -> Result<Dag, Diagnostics> {
    let mut diags = Diagnostics(recipe.broken.iter().map(|(_, d)| d.clone()).collect());
    if recipe.header.version != 1 {
        diags.push(
            Diagnostic::new(format!(
                "recipe language version {} is not supported",
                recipe.header.version
            ))
            .at(recipe.value_location("version"))
            .help("this hone reads `version: 1`"),
        );
    }
    if let Err(msg) = backend::check_available(recipe.header.backend) {
        diags.push(Diagnostic::new(msg).at(recipe.value_location("backend")));
    }
    for stage in &recipe.stages {
        let at = join("stages", &stage.name);
        for (rel, input) in stage.spec.inputs() {
            if let Input::Source(src) = input {
                check_source(recipe, &join(&at, &rel), src, &mut diags);
            }
        }
        match &stage.spec {
            StageSpec::Dataset(d) => check_dataset(recipe, &at, d, &mut diags),
        }
    }
    match Dag::build(recipe) {
        Ok(dag) => diags.into_result(dag),
        Err(more) => {
            diags.0.extend(more.0);
            Err(diags)
        }
    }
}

fn check_source(
    recipe: &Recipe,
    at: &str,
    src: &crate::recipe::types::SourceFile,
    diags: &mut Diagnostics,
) {
    let loc = recipe.value_location(&join(at, "path"));
    if !src.resolved.exists() {
        diags.push(
            Diagnostic::new(format!(
                "source file `{}` not found (looked for {})",
                src.path,
                src.resolved.display()
            ))
            .at(loc.clone())
            .help("source paths are relative to the recipe file that names them"),
        );
        return;
    }
    if src.format.is_none() && FileFormat::from_extension(&src.path).is_none() {
        let known: Vec<&str> = FileFormat::ALL.iter().map(|(e, _)| *e).collect();
        diags.push(
            Diagnostic::new(format!(
                "cannot tell the format of `{}` from its extension",
                src.path
            ))
            .at(loc)
            .help(format!(
                "add `format:` ({}) to the source",
                known.join(", ")
            )),
        );
    }
}

fn check_dataset(recipe: &Recipe, at: &str, d: &DatasetSpec, diags: &mut Diagnostics) {
    let mut total = 0.0;
    for (name, amount) in [("validation", d.split.validation), ("test", d.split.test)] {
        let Some(x) = amount else { continue };
        let valid = (x > 0.0 && x < 1.0) || (x >= 1.0 && x.fract() == 0.0) || x == 0.0;
        if !valid {
            diags.push(
                Diagnostic::new(format!(
                    "split size `{name}: {x}` is neither a fraction in (0, 1) nor a row count"
                ))
                .at(recipe.value_location(&join(&join(at, "split"), name)))
                .help("write 0.1 for 10% of the rows, or 50 for 50 rows"),
            );
        } else if x < 1.0 {
            total += x;
        }
    }
    if total >= 1.0 {
        diags.push(
            Diagnostic::new(format!(
                "held-out fractions add up to {total}, leaving no training rows"
            ))
            .at(recipe.value_location(&join(at, "split"))),
        );
    }
    if d.role == DatasetRole::Eval && (d.split.validation.is_some() || d.split.test.is_some()) {
        diags.push(
            Diagnostic::new("an `eval` dataset is held out whole and cannot be split")
                .at(recipe.key_location(&join(at, "split")))
                .help("remove `split`, or make it a `train` dataset and read its `test` output"),
        );
    }
    let mut targets: Vec<&str> = Vec::new();
    for (old, new) in &d.columns {
        if targets.contains(&new.as_str()) {
            diags.push(
                Diagnostic::new(format!("two columns are renamed to `{new}`"))
                    .at(recipe.value_location(&join(&join(at, "columns"), old))),
            );
        }
        targets.push(new);
    }
    for (key, list) in [("select", &d.select), ("leakage_key", &d.leakage_key)] {
        if list.as_ref().is_some_and(Vec::is_empty) {
            diags.push(
                Diagnostic::new(format!("`{key}` is empty"))
                    .at(recipe.value_location(&join(at, key)))
                    .help("list at least one column, or remove the key"),
            );
        }
    }
}
