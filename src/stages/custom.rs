//! Stage kinds defined outside hone. A program that uses hone as a library implements
//! [`CustomStage`] and calls [`register`] before it loads a recipe; from then on recipes use the
//! new `kind:` like a built-in one: its settings are typed and checked before anything runs
//! (errors point at file and line), its inputs are edges of the DAG and checked for type, its
//! result is cached by content under an action key and recorded in the lockfile.
//!
//! The registry is process-wide, like a table of plugins: register once at start-up, then use
//! [`crate::recipe::load`], [`crate::exec::run`] or the whole command line ([`crate::cli::main`])
//! as usual. `examples/custom_stage/` is a complete stage and program.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ArtifactType, StageResult};
use crate::diag::Diagnostic;
use crate::exec::context::StageContext;
use crate::recipe::source_map::{SourceMap, join};
use crate::recipe::types::{Input, StageKind};

/// One input of a custom stage: the settings key that holds it (`{ from: stage }` or
/// `{ path: file }`; dotted for a nested key) and the artifact types it accepts.
#[derive(Debug, Clone, Copy)]
pub struct InputSlot {
    pub key: &'static str,
    pub accepts: &'static [ArtifactType],
}

/// A problem [`CustomStage::check`] found in a stage's settings, before anything runs.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The settings key at fault (dotted for nested keys), for the file and line of the error.
    pub key: String,
    pub message: String,
    pub help: Option<String>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
            help: None,
        }
    }
    pub fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }
}

/// A stage kind of your own.
pub trait CustomStage: Send + Sync + 'static {
    /// Every key of the stage except `kind`. Use `#[serde(deny_unknown_fields)]` so a typo is
    /// an error that names the key and its line, as for built-in kinds; declare inputs as
    /// [`Input`] fields.
    type Settings: DeserializeOwned + Serialize;

    /// The name recipes write after `kind:` (letters, digits, `_`; not a built-in kind).
    const KIND: &'static str;

    /// Part of every action key of this kind: cached results are reused only while it is the
    /// same. Change it whenever a code change alters what the stage produces (hone cannot see
    /// your code).
    const VERSION: &'static str;

    /// The settings keys that are inputs. A key missing from a stage's settings is an input it
    /// does not use.
    fn inputs(&self) -> Vec<InputSlot>;

    /// The stage's named outputs and their types (`{ from: stage.output }` picks one).
    fn outputs(&self, settings: &Self::Settings) -> Vec<(&'static str, ArtifactType)>;

    /// Whether the results depend on the tensor backend (then the backend is part of the key).
    fn uses_backend(&self) -> bool {
        false
    }

    /// The JSON Schema of [`Self::Settings`] for `hone schema` (editors complete and check the
    /// stage's keys): `Some(serde_json::to_value(schemars::schema_for!(Settings)).unwrap())`
    /// when Settings derives `schemars::JsonSchema`. Without it the schema accepts the kind
    /// with any keys, and hone still checks them when it loads the recipe.
    fn settings_schema(&self) -> Option<serde_json::Value> {
        None
    }

    /// Checks across settings that types cannot express, run by `hone validate` and before
    /// every run.
    fn check(&self, _settings: &Self::Settings) -> Vec<Problem> {
        Vec::new()
    }

    /// Produces the outputs: read inputs with [`StageContext::input`] (paths already resolved,
    /// artifacts verified), write each output under [`StageContext::output_dir`], return the
    /// headline metrics. Nothing is committed unless this returns `Ok`.
    fn run(&self, settings: &Self::Settings, ctx: &mut StageContext)
    -> anyhow::Result<StageResult>;
}

/// A custom stage as written in a recipe: its settings (as its type serialized them, so the
/// action key sees defaults filled in) and its inputs.
#[derive(Clone)]
pub struct CustomSpec {
    pub kind: &'static str,
    pub version: &'static str,
    pub settings: serde_json::Value,
    /// Inputs by settings key; the loader resolves their paths.
    pub inputs: BTreeMap<String, Input>,
    pub accepts: BTreeMap<String, &'static [ArtifactType]>,
    pub outputs: Vec<(&'static str, ArtifactType)>,
    pub uses_backend: bool,
    handler: Arc<dyn Erased>,
}

impl std::fmt::Debug for CustomSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomSpec")
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("settings", &self.settings)
            .finish()
    }
}

impl CustomSpec {
    /// The type of the whole artifact (`{ from: stage }`): the output's type when there is one,
    /// else a dataset when every output is a table.
    pub fn artifact_type(&self) -> ArtifactType {
        match self.outputs.as_slice() {
            [(_, t)] => *t,
            many if many.iter().all(|(_, t)| *t == ArtifactType::Table) => ArtifactType::Dataset,
            _ => ArtifactType::Model,
        }
    }

    /// What the action key hashes besides inputs: the settings, the kind and its version.
    pub fn key_config(&self) -> serde_json::Value {
        let mut config = self.settings.clone();
        if let Some(m) = config.as_object_mut() {
            m.insert("kind".into(), self.kind.into());
            m.insert("kind_version".into(), self.version.into());
        }
        config
    }

    pub fn check(&self) -> Vec<Problem> {
        self.handler.check(&self.settings)
    }

    pub fn run(&self, ctx: &mut StageContext) -> anyhow::Result<StageResult> {
        self.handler.run(&self.settings, ctx)
    }
}

/// [`CustomStage`] without its associated types, for the registry.
trait Erased: Send + Sync {
    fn settings_schema(&self) -> Option<serde_json::Value>;
    fn check(&self, settings: &serde_json::Value) -> Vec<Problem>;
    fn run(
        &self,
        settings: &serde_json::Value,
        ctx: &mut StageContext,
    ) -> anyhow::Result<StageResult>;
    fn parse(
        self: Arc<Self>,
        v: serde_yaml::Value,
        path: &str,
        sources: &SourceMap,
    ) -> Result<CustomSpec, Diagnostic>;
}

impl<S: CustomStage> Erased for S {
    fn settings_schema(&self) -> Option<serde_json::Value> {
        CustomStage::settings_schema(self)
    }

    fn check(&self, settings: &serde_json::Value) -> Vec<Problem> {
        match serde_json::from_value::<S::Settings>(settings.clone()) {
            Ok(s) => CustomStage::check(self, &s),
            Err(e) => vec![Problem::new("", e.to_string())],
        }
    }

    fn run(
        &self,
        settings: &serde_json::Value,
        ctx: &mut StageContext,
    ) -> anyhow::Result<StageResult> {
        let s: S::Settings = serde_json::from_value(settings.clone())?;
        CustomStage::run(self, &s, ctx)
    }

    fn parse(
        self: Arc<Self>,
        v: serde_yaml::Value,
        path: &str,
        sources: &SourceMap,
    ) -> Result<CustomSpec, Diagnostic> {
        let typed: S::Settings = crate::recipe::load::from_value(v, path, sources)?;
        let settings = serde_json::to_value(&typed).map_err(|e| {
            Diagnostic::new(format!(
                "stage kind `{}`: settings do not serialize: {e}",
                S::KIND
            ))
        })?;
        // The action key puts the kind beside the settings' keys and finds inputs by key.
        if !settings.is_object() {
            return Err(Diagnostic::new(format!(
                "stage kind `{}`: its Settings must serialize as a mapping of keys (a struct)",
                S::KIND
            ))
            .at(sources.value(path)));
        }
        let mut inputs = BTreeMap::new();
        let mut accepts = BTreeMap::new();
        for slot in CustomStage::inputs(self.as_ref()) {
            accepts.insert(slot.key.to_owned(), slot.accepts);
            let pointer: String = slot.key.split('.').map(|s| format!("/{s}")).collect();
            let Some(value) = settings.pointer(&pointer).filter(|v| !v.is_null()) else {
                continue;
            };
            let input: Input = serde_json::from_value(value.clone()).map_err(|e| {
                Diagnostic::new(format!("`{}`: {e}", join(path, slot.key)))
                    .at(sources.value(&join(path, slot.key)))
                    .help("an input is `{ from: stage }`, `{ from: stage.output }` or `{ path: file }`")
            })?;
            inputs.insert(slot.key.to_owned(), input);
        }
        let outputs = CustomStage::outputs(self.as_ref(), &typed);
        Ok(CustomSpec {
            kind: S::KIND,
            version: S::VERSION,
            settings,
            inputs,
            accepts,
            outputs,
            uses_backend: CustomStage::uses_backend(self.as_ref()),
            handler: self,
        })
    }
}

type Registry = BTreeMap<&'static str, Arc<dyn Erased>>;

static REGISTRY: RwLock<Registry> = RwLock::new(BTreeMap::new());

/// Why [`register`] refused a stage kind.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("`{0}` is a built-in stage kind; give yours another name")]
    Builtin(&'static str),
    #[error("stage kind `{0}` is already registered")]
    Taken(&'static str),
    #[error("stage kind `{0}` may use only lowercase letters, digits and `_`")]
    BadName(&'static str),
}

/// Makes `stage`'s kind available to every recipe this process loads from now on.
pub fn register<S: CustomStage>(stage: S) -> Result<(), RegisterError> {
    let kind = S::KIND;
    if kind.is_empty()
        || !kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(RegisterError::BadName(kind));
    }
    if StageKind::parse(kind).is_some() {
        return Err(RegisterError::Builtin(kind));
    }
    let mut registry = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if registry.contains_key(kind) {
        return Err(RegisterError::Taken(kind));
    }
    registry.insert(kind, Arc::new(stage));
    Ok(())
}

/// The registered kinds, sorted.
pub fn registered() -> Vec<&'static str> {
    let registry = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    registry.keys().copied().collect()
}

/// Parses a stage of registered kind `kind` (`v` without its `kind` key); `None` when no such
/// kind is registered.
pub(crate) fn parse(
    kind: &str,
    v: serde_yaml::Value,
    path: &str,
    sources: &SourceMap,
) -> Option<Result<CustomSpec, Diagnostic>> {
    let handler = {
        let registry = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
        registry.get(kind)?.clone()
    };
    Some(handler.parse(v, path, sources))
}

/// Adds every registered kind to a recipe schema's stage variants (`$defs.StageSpec.oneOf`):
/// its settings schema with `kind` fixed, its nested definitions hoisted to the root `$defs`.
pub(crate) fn add_to_schema(schema: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let registry = REGISTRY.read().unwrap_or_else(|e| e.into_inner());
    for (kind, handler) in registry.iter() {
        let mut variant = handler
            .settings_schema()
            .unwrap_or_else(|| json!({ "type": "object" }));
        let Some(v) = variant.as_object_mut() else {
            continue;
        };
        if let Some(Value::Object(defs)) = v.remove("$defs") {
            let root = schema.as_object_mut().and_then(|r| {
                r.entry("$defs")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
            });
            if let Some(root) = root {
                for (name, def) in defs {
                    root.entry(name).or_insert(def);
                }
            }
        }
        v.remove("$schema");
        v.remove("title");
        v.entry("description")
            .or_insert_with(|| format!("`{kind}`: a stage kind this program registered.").into());
        let props = v.entry("properties").or_insert_with(|| json!({}));
        if let Some(p) = props.as_object_mut() {
            p.insert("kind".into(), json!({ "const": kind, "type": "string" }));
        }
        let required = v.entry("required").or_insert_with(|| json!([]));
        if let Some(r) = required.as_array_mut() {
            r.push("kind".into());
        }
        if let Some(Value::Array(variants)) = schema.pointer_mut("/$defs/StageSpec/oneOf") {
            variants.push(variant);
        }
    }
}
