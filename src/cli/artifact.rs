//! Where a command-line `--model` comes from: a path (HF directory or .gguf), or
//! `RECIPE:STAGE`, the model a recipe's stage last produced (through its lockfile and the
//! store), laid out in a temporary directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::store::Store;

/// A model on disk; `_tmp` keeps a laid-out artifact alive while it is used.
pub struct ModelPath {
    pub path: PathBuf,
    pub label: String,
    /// For `RECIPE:STAGE`, the prompt template the stage trained with: a model tuned on
    /// `plain` prompts answers garbage through a chat template, and the other way round.
    pub template: Option<crate::spec::settings::PromptTemplate>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn resolve_model(
    arg: &str,
    store: Option<&Path>,
    kinds: &crate::spec::Registry,
) -> Result<ModelPath> {
    if Path::new(arg).exists() {
        return Ok(ModelPath {
            path: PathBuf::from(arg),
            label: arg.to_owned(),
            template: None,
            _tmp: None,
        });
    }
    let Some((recipe_path, stage)) = arg.rsplit_once(':') else {
        bail!("{arg} does not exist; give an HF model directory, a .gguf file, or RECIPE:STAGE");
    };
    let recipe = crate::recipe::load(Path::new(recipe_path), &[], kinds)?;
    let lock =
        crate::store::lockfile::Lockfile::read(&recipe.lockfile_path())?.with_context(|| {
            format!("{recipe_path} has no lockfile yet: run it first (`hone run {recipe_path}`)")
        })?;
    let Some(locked) = lock.stages.get(stage) else {
        let names: Vec<&str> = recipe.stages.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "stage `{stage}` of {recipe_path} has not run{}",
            crate::diag::did_you_mean(stage, names.iter().copied())
                .map_or(String::new(), |d| format!(" ({d})"))
        );
    };
    let store = Store::open_existing(&Store::location(store, Some(&recipe.path)))?;
    let manifest = store.manifest(&locked.action)?.with_context(|| {
        format!("the store has no artifact of `{stage}` (gc'd?); rerun `hone run {recipe_path}`")
    })?;
    let Some(out) = manifest.outputs.get("model") else {
        bail!("stage `{stage}` produced no model");
    };
    if !out.files.contains_key("config.json") {
        bail!("stage `{stage}` produced no model");
    }
    let tmp = tempfile::tempdir()?;
    store.checkout(&manifest, "model", tmp.path())?;
    Ok(ModelPath {
        path: tmp.path().to_path_buf(),
        label: arg.to_owned(),
        template: trained_template(&recipe, stage),
        _tmp: Some(tmp),
    })
}

/// The prompt template `stage` trained its model with; an export takes its model's.
fn trained_template(
    recipe: &crate::recipe::Recipe,
    stage: &str,
) -> Option<crate::spec::settings::PromptTemplate> {
    use crate::spec::kind::TemplateOf;
    use crate::spec::settings::Input;
    match recipe.stage(stage)?.spec.prompt_template()? {
        TemplateOf::Own(t) => Some(t.clone()),
        TemplateOf::Input(Input::Stage(r)) => trained_template(recipe, r.stage()),
        TemplateOf::Input(Input::Source(_)) => None,
    }
}
