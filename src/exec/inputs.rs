//! What a stage reads, found for it before it runs: its inputs (files, and upstream artifacts
//! at their verified blob paths), the evaluation datasets it is checked against, and the
//! training data of the models it evaluates; and what a publishing stage must never replace.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::plan::dag::{Dag, EdgeKind};
use crate::plan::status::Known;
use crate::recipe::Recipe;
use crate::spec::context::{ArtifactView, OutputView, ResolvedInput, StageContext};
use crate::spec::settings::Input;
use crate::store::Store;

/// Fills `ctx` with stage `i`'s inputs (files, and upstream artifacts from `known`), the eval
/// datasets it is checked against, and the training data of the models it evaluates.
pub(super) fn resolve_inputs(
    ctx: &mut StageContext,
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    known: &BTreeMap<usize, Known>,
    i: usize,
) -> Result<()> {
    let stage = &recipe.stages[i];
    for (rel, input) in stage.spec.inputs() {
        let resolved = match input {
            Input::Source(src) => ResolvedInput::File {
                path: src.resolved.clone(),
                label: src.label(),
                format: src.format,
            },
            Input::Stage(r) => {
                let up = recipe
                    .stages
                    .iter()
                    .position(|s| s.name == r.stage())
                    .expect("validated");
                ResolvedInput::Artifact(view(store, known, up, r.output(), &r.from)?)
            }
        };
        ctx.inputs.insert(rel, resolved);
    }
    for (up, edge) in dag.incoming(i) {
        if *edge == EdgeKind::LeakageCheck {
            let name = recipe.stages[up].name.clone();
            ctx.checked_against
                .insert(name.clone(), view(store, known, up, None, &name)?);
        }
    }
    for (name, input) in stage.spec.checks_training_data_of() {
        if let Input::Stage(r) = input {
            let data = training_data(recipe, dag, store, known, r.stage())?;
            ctx.training_data.insert(name, data);
        }
    }
    Ok(())
}

/// The training data of model stage `model` and of every training stage upstream of it: the
/// `train` split of each dataset they trained on (files as they are). Stages whose artifacts
/// are not at hand (not cached, not run) are skipped: the check is a guard, not a gate.
fn training_data(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    known: &BTreeMap<usize, Known>,
    model: &str,
) -> Result<Vec<ResolvedInput>> {
    let Some(m) = recipe.stages.iter().position(|s| s.name == model) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for a in dag.ancestors(m) {
        let s = &recipe.stages[a];
        for (_, input) in s.spec.training_inputs() {
            match input {
                Input::Source(src) => out.push(ResolvedInput::File {
                    path: src.resolved.clone(),
                    label: src.label(),
                    format: src.format,
                }),
                Input::Stage(d) => {
                    let Some(di) = recipe.stages.iter().position(|x| x.name == d.stage()) else {
                        continue;
                    };
                    if known.contains_key(&di) {
                        let split = d.output().unwrap_or("train");
                        out.push(ResolvedInput::Artifact(view(
                            store,
                            known,
                            di,
                            Some(split),
                            &format!("{}.{split}", d.stage()),
                        )?));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// What a stage that writes outside the store (export) must never replace: the recipe file
/// and every file it reads.
pub(super) fn protected_paths(recipe: &Recipe) -> Vec<(String, std::path::PathBuf)> {
    let mut out = vec![("the recipe".to_owned(), recipe.path.clone())];
    for stage in &recipe.stages {
        for (_, input) in stage.spec.inputs() {
            if let Input::Source(src) = input {
                out.push((
                    format!("the data of stage `{}`", stage.name),
                    src.resolved.clone(),
                ));
            }
        }
    }
    out
}

/// An upstream artifact's outputs at their blob paths, each blob verified against its digest.
fn view(
    store: &Store,
    known: &BTreeMap<usize, Known>,
    up: usize,
    output: Option<&str>,
    label: &str,
) -> Result<ArtifactView> {
    let Some(Known::Done(m)) = known.get(&up) else {
        bail!("internal: upstream `{label}` has not been produced");
    };
    let problems = store.verify_manifest(m);
    if !problems.is_empty() {
        bail!(
            "the store is damaged: {}\nrun `hone cache verify --repair`, then run again to recompute it",
            problems.join("; ")
        );
    }
    let outputs = m
        .outputs
        .iter()
        .filter(|(name, _)| output.is_none_or(|o| o == name.as_str()))
        .map(|(name, o)| {
            let files = o
                .files
                .iter()
                .map(|(rel, f)| (rel.clone(), store.blob_path(&f.digest)))
                .collect();
            (
                name.clone(),
                OutputView {
                    artifact_type: o.artifact_type,
                    files,
                },
            )
        })
        .collect();
    Ok(ArtifactView {
        label: label.to_owned(),
        outputs,
    })
}
