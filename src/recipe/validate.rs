//! Checks of a loaded recipe on its own, before anything runs: header values, per-stage
//! settings and source files. The checks that need the stage graph (references, artifact
//! contracts, cycles) are the planner's: `plan::validate` runs these and then builds the DAG,
//! so all problems are reported at once.

use crate::backend;
use crate::diag::{Diagnostic, Diagnostics};
use crate::recipe::Recipe;
use crate::recipe::source_map::join;
use crate::spec::Place;
use crate::spec::settings::{FileFormat, Input};

/// Every problem of `recipe` that the stage graph is not needed to see.
pub fn check(recipe: &Recipe) -> Diagnostics {
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
    let name = &recipe.header.name;
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        diags.push(
            Diagnostic::new("`name` must be 1 to 100 characters, without control characters")
                .at(recipe.value_location("name"))
                .help("a short name such as `car-assistant`: it names run directories and reports"),
        );
    }
    check_cache(recipe, &mut diags);
    check_logging(recipe, &mut diags);
    if let Err(e) = backend::check_available(recipe.header.backend) {
        diags.push(Diagnostic::new(e.to_string()).at(recipe.value_location("backend")));
    }
    for stage in &recipe.stages {
        let at = join("stages", &stage.name);
        for (rel, input) in stage.spec.inputs() {
            if let Input::Source(src) = input {
                use crate::store::ArtifactType;
                let accepts = stage.spec.accepts(&rel);
                let table = accepts.contains(&ArtifactType::Table);
                check_source(recipe, &join(&at, &rel), src, table, &mut diags);
                // A checkpoint hone cannot load fails here, from its headers, not in the stage.
                // (A tokenizer slot also takes a model, or a tokenizer.json that is none.)
                let model = (accepts.contains(&ArtifactType::Model)
                    || accepts.contains(&ArtifactType::RewardModel))
                    && !accepts.contains(&ArtifactType::Tokenizer);
                let key = if src.hub.is_some() { "hub" } else { "path" };
                if model
                    && !table
                    && src.resolved.exists()
                    && let Err(e) = crate::model::probe::probe(&src.resolved)
                {
                    diags.push(
                        Diagnostic::new(format!("cannot load `{}`: {e}", src.label()))
                            .at(recipe.value_location(&join(&join(&at, &rel), key)))
                            .help("hone loads HF directories (config.json, safetensors) and GGUF files of the architectures above, in f32, f16, bf16 or the GGUF quantisations llama.cpp writes"),
                    );
                }
            }
        }
        let referenced = stage.spec.referenced_files(recipe.dir()).err();
        for p in stage.spec.check(&stage.name).into_iter().chain(referenced) {
            let key = if p.key.is_empty() {
                at.clone()
            } else {
                join(&at, &p.key)
            };
            let loc = match p.place {
                Place::Value => recipe.value_location(&key),
                Place::Key => recipe.key_location(&key),
            }
            .or_else(|| recipe.key_location(&at));
            let d = Diagnostic::new(p.message).at(loc);
            diags.push(match p.help {
                Some(h) => d.help(h),
                None => d,
            });
        }
    }
    diags
}

/// `logging.mlflow`: a tracking server hone can reach over HTTP, without credentials in the
/// recipe (they come from `MLFLOW_TRACKING_TOKEN` or `MLFLOW_TRACKING_USERNAME` and
/// `MLFLOW_TRACKING_PASSWORD`).
fn check_logging(recipe: &Recipe, diags: &mut Diagnostics) {
    let Some(uri) = recipe.header.logging.mlflow.as_deref() else {
        return;
    };
    let at = recipe.value_location("logging.mlflow");
    match url::Url::parse(uri) {
        Ok(u) if !u.username().is_empty() || u.password().is_some() => diags.push(
            Diagnostic::new("logging.mlflow: the address has a user or password in it")
                .help("set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the environment instead")
                .at(at)
                .without_line(),
        ),
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
        _ => diags.push(
            Diagnostic::new(format!(
                "logging.mlflow: `{uri}` is not the http:// or https:// address of an MLflow tracking server"
            ))
            .help("e.g. `mlflow: http://127.0.0.1:5000` (what `mlflow server` listens on)")
            .at(at),
        ),
    }
}

/// The `cache:` block: a URL hone can use, and no credentials in the recipe.
fn check_cache(recipe: &Recipe, diags: &mut Diagnostics) {
    use crate::store::remote;
    let cache = &recipe.header.cache;
    let scheme = match cache.remote.as_deref().map(remote::parse_url) {
        Some(Ok(url)) => Some(url.scheme().to_owned()),
        Some(Err(e)) => {
            let d = Diagnostic::new(format!("cache.remote: {e}"))
                .at(recipe.value_location("cache.remote"));
            // A URL with a user or password in it is not shown again.
            let credentials = cache
                .remote
                .as_deref()
                .and_then(|u| url::Url::parse(u).ok())
                .is_some_and(|u| !u.username().is_empty() || u.password().is_some());
            diags.push(if credentials { d.without_line() } else { d });
            None
        }
        None => None,
    };
    for key in cache.options.keys() {
        if let Some(scheme) = &scheme
            && !remote::is_secret_option(key)
            && let Err(why) = remote::check_option(scheme, key)
        {
            diags.push(
                Diagnostic::new(format!("cache.options: {why}"))
                    .at(recipe.key_location(&join("cache.options", key))),
            );
        }
        if remote::is_secret_option(key) {
            diags.push(
                Diagnostic::new(format!("cache.options.{key} would put a credential in the recipe"))
                    .at(recipe.key_location(&join("cache.options", key)))
                    .without_line()
                    .help("credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT_KEY) or the provider's files; remove it here"),
            );
        }
    }
    if cache.remote.is_none() && (cache.write || !cache.options.is_empty()) {
        diags.push(
            Diagnostic::new("cache: `write` and `options` need a `remote`")
                .at(recipe.key_location("cache"))
                .help("add `remote: s3://bucket/prefix` (or give one with --remote / HONE_REMOTE)"),
        );
    }
}

fn check_source(
    recipe: &Recipe,
    at: &str,
    src: &crate::spec::settings::SourceFile,
    table: bool,
    diags: &mut Diagnostics,
) {
    if src.hub.is_some() {
        if let Some(Err(e)) = &src.hub_commit {
            let (message, help) = e.split_once('\n').unwrap_or((e, ""));
            diags.push(
                Diagnostic::new(message)
                    .at(recipe.value_location(&join(at, "hub")))
                    .help(help),
            );
        }
        return;
    }
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
    // A FIFO or a device (`/dev/zero`) would hang hashing and reading; a table is a file.
    let kind = std::fs::metadata(&src.resolved).map(|m| m.file_type());
    let usable = kind.is_ok_and(|t| t.is_file() || (!table && t.is_dir()));
    if !usable {
        diags.push(
            Diagnostic::new(format!(
                "source `{}` is not a regular file{}",
                src.path,
                if table { "" } else { " or a model directory" }
            ))
            .at(loc)
            .help(
                "point the source at a data file (JSONL, CSV, Parquet, ...) or a model directory",
            ),
        );
        return;
    }
    if table && src.format.is_none() && FileFormat::from_extension(&src.path).is_none() {
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
