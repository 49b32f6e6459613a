//! The stage contract: one trait, [`Kind`], for every stage kind, built-in and custom alike. A
//! kind says, in its own file, what recipes write after `kind:`, its
//! typed settings, its inputs (declared once, with the artifact types each accepts), its outputs,
//! whether it depends on the tensor backend, its checks, the version that enters its action key,
//! and how it runs. Recipe loading, validation, the DAG's type checks, action keys, exec, status,
//! show, report and the lockfile all go through [`StageSpec`], which holds a kind and its
//! settings; nothing outside a kind's file matches on kinds.
//!
//! A program that uses hone as a library adds a kind the same way the built-ins are written:
//! implement [`Kind`], add it to the registry (`stages::registry()` then
//! [`super::Registry::register`]), and hand that registry to `recipe::load`, or to the whole
//! command line (`cli::main_with`). `examples/custom_stage/` is a complete kind and program.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::context::StageContext;
use crate::spec::settings::Input;
use crate::store::{ArtifactType, Manifest, Store};

/// One input of a kind: the settings key that holds it (`{ from: stage }` or `{ path: file }`;
/// dotted for a nested key, `*` for every entry of a mapping, as in `models.*`) and the artifact
/// types it accepts. Declare each as a `const` and read it with [`StageContext::input`], so the
/// name is written once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputSlot {
    pub key: &'static str,
    pub accepts: &'static [ArtifactType],
}

impl InputSlot {
    pub const fn new(key: &'static str, accepts: &'static [ArtifactType]) -> InputSlot {
        InputSlot { key, accepts }
    }

    /// Whether input path `rel` (`data`, `models.base`) is this slot.
    pub fn matches(&self, rel: &str) -> bool {
        let mut want = self.key.split('.');
        let mut got = rel.split('.');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(g)) if w == "*" || w == g => {}
                _ => return false,
            }
        }
    }
}

/// What a data input accepts: a whole dataset or one of its splits.
pub const DATA_INPUT: &[ArtifactType] = &[ArtifactType::Dataset, ArtifactType::Table];

/// Where a [`Problem`] points: the value of its key, or the key itself (for a key that should
/// not be there, or a whole section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Value,
    Key,
}

/// A problem [`Kind::check`] found in a stage's settings, before anything runs.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The settings key at fault (dotted for nested keys; empty for the stage itself), for the
    /// file and line of the error.
    pub key: String,
    pub place: Place,
    pub message: String,
    pub help: Option<String>,
}

/// A problem for each of `names` (the keys under the setting `setting`) that is not a plain
/// name, letters, digits, `_` and `-`: names that become column or metric names. `what` says
/// what a name is (`model name`), `names` what it names (for the help).
pub fn plain_name_problems<'n>(
    names: impl IntoIterator<Item = &'n String>,
    setting: &str,
    what: &str,
    names_what: &str,
) -> Vec<Problem> {
    names
        .into_iter()
        .filter(|name| {
            name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
        .map(|name| {
            Problem::at_key(
                format!("{setting}.{name}"),
                format!("{what} `{name}` is not a plain name"),
            )
            .help(format!(
                "use letters, digits, `_` and `-`: it names {names_what}"
            ))
        })
        .collect()
}

impl Problem {
    /// A problem with the value at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            place: Place::Value,
            message: message.into(),
            help: None,
        }
    }

    /// A problem with `key` itself (it should not be set, or names a whole section).
    pub fn at_key(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            place: Place::Key,
            ..Problem::new(key, message)
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }
}

/// What a finished stage hands to the store.
#[derive(Debug, Default)]
pub struct StageResult {
    /// Headline numbers for the lockfile, `hone show` and `hone status`.
    pub metrics: serde_json::Map<String, Value>,
    /// Pitfalls worth a person's attention (leakage under `on_leak: warn`, ...).
    pub warnings: Vec<String>,
    /// The detailed summary `hone show` prints.
    pub summary: Value,
}

/// Whether a dataset is for training or held out for evaluation (then every training dataset
/// of the recipe is checked against it for leakage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRole {
    Train,
    Eval,
}

/// What a kind that lands files outside the store (`export`) gets after its action is
/// committed or found cached.
pub struct Publish<'a> {
    pub store: &'a Store,
    pub manifest: &'a Manifest,
    /// The directory of the recipe file, which relative destinations are resolved against.
    pub recipe_dir: &'a Path,
    /// What a destination must not contain, described: the recipe file and its data.
    pub protected: &'a [(String, PathBuf)],
}

/// A stage kind.
pub trait Kind: Send + Sync + 'static {
    /// Every key of the stage except `kind`. Use `#[serde(deny_unknown_fields)]` so a typo is
    /// an error that names the key and its line; declare inputs as [`Input`] fields, and read
    /// them in [`Kind::run`] through [`StageContext::input`] (resolved paths, verified
    /// artifacts), not from these fields.
    type Settings: DeserializeOwned + Serialize + Send + Sync + 'static;

    /// The name recipes write after `kind:` (lowercase letters, digits and `_`).
    const NAME: &'static str;

    /// Enters every action key of this kind when set: cached results are reused only while it
    /// is the same. A kind defined outside hone must set it ([`register`] refuses `None`) and
    /// change it whenever a code change alters what the stage produces (hone cannot see that
    /// code). Built-in kinds start at `None` (hone's version and cache format are in every key
    /// already) and set it when a change alters the outputs of that kind alone: the kind's
    /// stages are re-keyed while every other cached artifact stays valid, where a cache format
    /// bump would re-key them all.
    const VERSION: Option<&'static str>;

    /// One line for `hone schema` (editors show it).
    const DESCRIPTION: &'static str = "";

    /// The settings keys that are inputs. A key missing from a stage's settings, or holding
    /// something other than `{ from }` / `{ path }` (such as `{ init }`), is an input it does
    /// not use.
    fn input_slots(&self) -> &'static [InputSlot];

    /// The stage's named outputs and their types (`{ from: stage.output }` picks one).
    fn outputs(&self, settings: &Self::Settings) -> Vec<(&'static str, ArtifactType)>;

    /// The type of the whole artifact (`{ from: stage }`): the output's type when there is one,
    /// a dataset when every output is a table, else a model.
    fn artifact_type(&self, settings: &Self::Settings) -> ArtifactType {
        match self.outputs(settings).as_slice() {
            [(_, t)] => *t,
            many if many.iter().all(|(_, t)| *t == ArtifactType::Table) => ArtifactType::Dataset,
            _ => ArtifactType::Model,
        }
    }

    /// Whether the results depend on the tensor backend (then the backend is part of the key).
    fn uses_backend(&self) -> bool {
        false
    }

    /// The JSON Schema of [`Self::Settings`] for `hone schema` (editors complete and check the
    /// stage's keys): `Some(generator.root_schema_for::<Settings>())` when Settings derives
    /// `schemars::JsonSchema`. Without it the schema accepts the kind with any keys, and hone
    /// still checks them when it loads the recipe.
    fn settings_schema(&self, _generator: &mut schemars::SchemaGenerator) -> Option<Value> {
        None
    }

    /// Checks across settings that types cannot express, run by `hone validate` and before
    /// every run. `stage` is the stage's name, for messages.
    fn check(&self, _settings: &Self::Settings, _stage: &str) -> Vec<Problem> {
        Vec::new()
    }

    /// The inputs that hold data the stage's model trains on (what evaluation data is checked
    /// against for leakage).
    fn trains_on(&self, _settings: &Self::Settings) -> &'static [InputSlot] {
        &[]
    }

    /// The input whose models' training data this stage wants in
    /// [`StageContext::training_data`] (evaluation checks its data against it).
    fn checks_training_data_of(&self) -> Option<InputSlot> {
        None
    }

    /// For a dataset kind: whether it is training data or held out for evaluation.
    fn data_role(&self, _settings: &Self::Settings) -> Option<DataRole> {
        None
    }

    /// Settings (dotted paths, list items by index: `reward.command.1`) whose text may name a
    /// file relative to the recipe's directory (a verifier program's script): each that does
    /// enters the action key by the file's content, as a `{ path }` input does.
    fn argument_files(&self, _settings: &Self::Settings) -> Vec<String> {
        Vec::new()
    }

    /// Files read through a file a setting names (a benchmark's task file, and the data files
    /// that task file lists), each with the dotted setting it comes from: each enters the
    /// action key by content, as a `{ path }` input does. A problem (a task file missing or
    /// not parsing) is a recipe error at its setting.
    fn referenced_files(
        &self,
        _settings: &Self::Settings,
        _recipe_dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>, Problem> {
        Ok(Vec::new())
    }

    /// The names of registered rewards ([`super::rewards::Reward`]) the settings use, in their
    /// order (`reward.custom`): the registry checks each exists and attaches it.
    fn custom_rewards(&self, _settings: &Self::Settings) -> Vec<String> {
        Vec::new()
    }

    /// The prompt template a model from this stage was trained with, or the input whose
    /// model's template it keeps (an export), for `hone generate` on `RECIPE:STAGE`.
    fn prompt_template<'s>(
        &self,
        _settings: &'s Self::Settings,
    ) -> Option<TemplateOf<'s, crate::spec::settings::PromptTemplate>> {
        None
    }

    /// Lays the artifact out somewhere outside the store after it was committed, also when the
    /// stage was cached (an export). Returns where, when it wrote anything.
    fn publish(
        &self,
        _settings: &Self::Settings,
        _to: &Publish<'_>,
    ) -> anyhow::Result<Option<PathBuf>> {
        Ok(None)
    }

    /// A table of the stage's summary to print under its line (evaluation results).
    fn summary_table(&self, _summary: &Value) -> Option<String> {
        None
    }

    /// The first `n` training examples exactly as the stage would encode them (template,
    /// special tokens, truncation), with what the loss covers marked (`hone show --examples`).
    /// `None`: the kind trains on no text examples.
    fn examples(
        &self,
        _settings: &Self::Settings,
        _ctx: &mut StageContext,
        _n: usize,
    ) -> Option<anyhow::Result<Vec<EncodedExample>>> {
        None
    }

    /// Produces the outputs: read inputs with [`StageContext::input`] (paths already resolved,
    /// artifacts verified), write each output under [`StageContext::output_dir`], return the
    /// headline metrics. Nothing is committed unless this returns `Ok`.
    fn run(&self, settings: &Self::Settings, ctx: &mut StageContext)
    -> anyhow::Result<StageResult>;
}

/// Where a model's prompt template comes from: its own stage's settings, or the stage an input
/// points at.
pub enum TemplateOf<'a, T> {
    Own(&'a T),
    Input(&'a Input),
}

/// [`Kind`] without its associated types, for the registry and [`StageSpec`].
pub(super) trait DynKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> Option<&'static str>;
    fn description(&self) -> &'static str;
    fn slots(&self) -> &'static [InputSlot];
    fn parse(&self, v: serde_yaml::Value) -> Result<(Arc<dyn Any + Send + Sync>, Value), Parsed>;
    fn outputs(&self, s: &dyn Any) -> Vec<(&'static str, ArtifactType)>;
    fn artifact_type(&self, s: &dyn Any) -> ArtifactType;
    fn uses_backend(&self) -> bool;
    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<Value>;
    fn check(&self, s: &dyn Any, stage: &str) -> Vec<Problem>;
    fn trains_on(&self, s: &dyn Any) -> &'static [InputSlot];
    fn checks_training_data_of(&self) -> Option<InputSlot>;
    fn data_role(&self, s: &dyn Any) -> Option<DataRole>;
    fn argument_files(&self, s: &dyn Any) -> Vec<String>;
    fn referenced_files(
        &self,
        s: &dyn Any,
        recipe_dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>, Problem>;
    fn custom_rewards(&self, s: &dyn Any) -> Vec<String>;
    fn prompt_template<'a>(
        &self,
        s: &'a dyn Any,
    ) -> Option<TemplateOf<'a, crate::spec::settings::PromptTemplate>>;
    fn publish(&self, s: &dyn Any, to: &Publish<'_>) -> anyhow::Result<Option<PathBuf>>;
    fn summary_table(&self, summary: &Value) -> Option<String>;
    fn examples(
        &self,
        s: &dyn Any,
        ctx: &mut StageContext,
        n: usize,
    ) -> Option<anyhow::Result<Vec<EncodedExample>>>;
    fn run(&self, s: &dyn Any, ctx: &mut StageContext) -> anyhow::Result<StageResult>;
}

/// Why a stage's settings did not parse: serde's error and the path of keys to it.
pub type ParseError = serde_path_to_error::Error<serde_yaml::Error>;

/// Typed settings that do not serialize back to JSON.
pub(super) struct SerializeError(String);

/// A training example as a stage encodes it: its text in stretches, each marked with whether
/// the loss covers it, and its token counts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodedExample {
    /// Which example (`train 1`, `pair 2, chosen`).
    pub label: String,
    pub pieces: Vec<(String, bool)>,
    pub tokens: usize,
    pub target_tokens: usize,
    /// Tokens cut off by `max_length` (per `truncation`).
    pub cut: usize,
}

/// Why [`DynKind::parse`] failed.
pub(super) enum Parsed {
    Settings(ParseError),
    Serialize(SerializeError),
}

fn typed<K: Kind>(s: &dyn Any) -> &K::Settings {
    // A StageSpec pairs a kind with the settings that kind parsed, so this always holds.
    s.downcast_ref::<K::Settings>()
        .expect("a stage's settings are of its kind's type")
}

impl<K: Kind> DynKind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn version(&self) -> Option<&'static str> {
        K::VERSION
    }
    fn description(&self) -> &'static str {
        K::DESCRIPTION
    }
    fn slots(&self) -> &'static [InputSlot] {
        Kind::input_slots(self)
    }
    fn parse(&self, v: serde_yaml::Value) -> Result<(Arc<dyn Any + Send + Sync>, Value), Parsed> {
        let settings: K::Settings =
            serde_path_to_error::deserialize(v).map_err(Parsed::Settings)?;
        let json = serde_json::to_value(&settings)
            .map_err(|e| Parsed::Serialize(SerializeError(e.to_string())))?;
        Ok((Arc::new(settings), json))
    }
    fn outputs(&self, s: &dyn Any) -> Vec<(&'static str, ArtifactType)> {
        Kind::outputs(self, typed::<K>(s))
    }
    fn artifact_type(&self, s: &dyn Any) -> ArtifactType {
        Kind::artifact_type(self, typed::<K>(s))
    }
    fn uses_backend(&self) -> bool {
        Kind::uses_backend(self)
    }
    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<Value> {
        Kind::settings_schema(self, generator)
    }
    fn check(&self, s: &dyn Any, stage: &str) -> Vec<Problem> {
        Kind::check(self, typed::<K>(s), stage)
    }
    fn trains_on(&self, s: &dyn Any) -> &'static [InputSlot] {
        Kind::trains_on(self, typed::<K>(s))
    }
    fn checks_training_data_of(&self) -> Option<InputSlot> {
        Kind::checks_training_data_of(self)
    }
    fn data_role(&self, s: &dyn Any) -> Option<DataRole> {
        Kind::data_role(self, typed::<K>(s))
    }
    fn argument_files(&self, s: &dyn Any) -> Vec<String> {
        Kind::argument_files(self, typed::<K>(s))
    }
    fn referenced_files(
        &self,
        s: &dyn Any,
        recipe_dir: &Path,
    ) -> Result<Vec<(String, PathBuf)>, Problem> {
        Kind::referenced_files(self, typed::<K>(s), recipe_dir)
    }
    fn custom_rewards(&self, s: &dyn Any) -> Vec<String> {
        Kind::custom_rewards(self, typed::<K>(s))
    }
    fn prompt_template<'a>(
        &self,
        s: &'a dyn Any,
    ) -> Option<TemplateOf<'a, crate::spec::settings::PromptTemplate>> {
        Kind::prompt_template(self, typed::<K>(s))
    }
    fn publish(&self, s: &dyn Any, to: &Publish<'_>) -> anyhow::Result<Option<PathBuf>> {
        Kind::publish(self, typed::<K>(s), to)
    }
    fn summary_table(&self, summary: &Value) -> Option<String> {
        Kind::summary_table(self, summary)
    }
    fn examples(
        &self,
        s: &dyn Any,
        ctx: &mut StageContext,
        n: usize,
    ) -> Option<anyhow::Result<Vec<EncodedExample>>> {
        Kind::examples(self, typed::<K>(s), ctx, n)
    }
    fn run(&self, s: &dyn Any, ctx: &mut StageContext) -> anyhow::Result<StageResult> {
        Kind::run(self, typed::<K>(s), ctx)
    }
}

/// A stage as a recipe wrote it: its kind, its typed settings, the settings as they serialize
/// (defaults filled in: what the action key hashes) and its inputs by path in the settings.
#[derive(Clone)]
pub struct StageSpec {
    kind: Arc<dyn DynKind>,
    settings: Arc<dyn Any + Send + Sync>,
    json: Value,
    inputs: BTreeMap<String, Input>,
    /// The registered rewards the stage names (`reward.custom`), in its order.
    rewards: Vec<Arc<dyn super::rewards::Reward>>,
}

impl std::fmt::Debug for StageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSpec")
            .field("kind", &self.kind.name())
            .field("settings", &self.json)
            .finish()
    }
}

/// Why a stage did not parse.
#[derive(Debug)]
pub enum SpecError {
    /// No kind of that name is registered.
    UnknownKind,
    /// The settings did not deserialize.
    Settings(ParseError),
    /// The settings do not serialize as a mapping (a custom kind's mistake).
    NotAMapping,
    /// The settings do not serialize at all (a custom kind's mistake).
    Serialize(String),
    /// The input at settings key `key` is malformed.
    Input { key: String, message: String },
    /// The reward at settings key `key` is not one this program registered.
    UnknownReward {
        key: String,
        name: String,
        known: Vec<&'static str>,
    },
}

impl StageSpec {
    /// Parses the settings of a stage of kind `kind` (`v` without its `kind` key); see
    /// [`super::Registry::parse`].
    pub(super) fn parse(
        kind: Arc<dyn DynKind>,
        v: serde_yaml::Value,
    ) -> Result<StageSpec, SpecError> {
        let (settings, json) = kind.parse(v).map_err(|e| match e {
            Parsed::Settings(e) => SpecError::Settings(e),
            Parsed::Serialize(SerializeError(e)) => SpecError::Serialize(e),
        })?;
        // The action key puts the kind beside the settings' keys and finds inputs by key.
        if !json.is_object() {
            return Err(SpecError::NotAMapping);
        }
        let mut inputs = BTreeMap::new();
        for slot in kind.slots() {
            for (key, value) in at_slot(&json, slot.key) {
                // Input paths are dotted and become JSON pointers in the action key: an entry
                // name with `.`, `/` or `~` would be an input the key never sees.
                let dotted_entry =
                    slot.key.contains('*') && key.split('.').count() != slot.key.split('.').count();
                if dotted_entry || key.contains(['/', '~']) {
                    return Err(SpecError::Input {
                        key,
                        message: "an entry name here may not contain `.`, `/` or `~`".into(),
                    });
                }
                // `{ init: ... }` and other non-inputs under an input key are not edges.
                let is_input = value
                    .as_object()
                    .is_some_and(|m| ["from", "path", "hub"].iter().any(|k| m.contains_key(*k)));
                if !is_input {
                    continue;
                }
                let input: Input =
                    serde_json::from_value(value.clone()).map_err(|e| SpecError::Input {
                        key: key.clone(),
                        message: e.to_string(),
                    })?;
                inputs.insert(key, input);
            }
        }
        Ok(StageSpec {
            kind,
            settings,
            json,
            inputs,
            rewards: Vec::new(),
        })
    }

    /// The registered rewards the stage names, each with its settings key
    /// (`reward.custom.0`); see [`Kind::custom_rewards`].
    pub fn custom_rewards(&self) -> Vec<(String, String)> {
        self.kind
            .custom_rewards(self.settings.as_ref())
            .into_iter()
            .enumerate()
            .map(|(i, name)| (format!("reward.custom.{i}"), name))
            .collect()
    }

    /// The stage with the rewards it names attached, their versions in its action key.
    pub(super) fn with_rewards(mut self, rewards: Vec<Arc<dyn super::rewards::Reward>>) -> Self {
        if !rewards.is_empty()
            && let Some(map) = self.json.as_object_mut()
        {
            let versions: serde_json::Map<String, Value> = rewards
                .iter()
                .map(|r| (r.name().to_owned(), Value::from(r.version())))
                .collect();
            map.insert("reward_versions".into(), Value::Object(versions));
        }
        self.rewards = rewards;
        self
    }

    /// The registered rewards the stage names (what `reward.custom` resolved to).
    pub fn rewards(&self) -> &[Arc<dyn super::rewards::Reward>] {
        &self.rewards
    }

    /// The `kind:` as the recipe wrote it.
    pub fn kind_name(&self) -> &'static str {
        self.kind.name()
    }

    /// Every input of the stage with its path inside the stage (`source`, `models.base`).
    pub fn inputs(&self) -> Vec<(String, &Input)> {
        self.inputs.iter().map(|(k, i)| (k.clone(), i)).collect()
    }

    pub fn inputs_mut(&mut self) -> Vec<(String, &mut Input)> {
        self.inputs
            .iter_mut()
            .map(|(k, i)| (k.clone(), i))
            .collect()
    }

    /// The artifact types the input at `rel` (its path inside the stage) accepts; none for a
    /// path that is not an input of the kind.
    pub fn accepts(&self, rel: &str) -> &'static [ArtifactType] {
        self.kind
            .slots()
            .iter()
            .find(|s| s.matches(rel))
            .map_or(&[], |s| s.accepts)
    }

    /// Settings whose text may name a file that enters the action key by content (see
    /// [`Kind::argument_files`]), with that text.
    pub fn argument_files(&self) -> Vec<(String, String)> {
        self.kind
            .argument_files(self.settings.as_ref())
            .into_iter()
            .filter_map(|rel| {
                let pointer: String = rel.split('.').map(|p| format!("/{p}")).collect();
                let text = self.json.pointer(&pointer)?.as_str()?.to_owned();
                Some((rel, text))
            })
            .collect()
    }

    /// See [`Kind::referenced_files`].
    pub fn referenced_files(&self, recipe_dir: &Path) -> Result<Vec<(String, PathBuf)>, Problem> {
        self.kind
            .referenced_files(self.settings.as_ref(), recipe_dir)
    }

    /// The stage's named outputs and their types.
    pub fn outputs(&self) -> Vec<(&'static str, ArtifactType)> {
        self.kind.outputs(self.settings.as_ref())
    }

    pub fn artifact_type(&self) -> ArtifactType {
        self.kind.artifact_type(self.settings.as_ref())
    }

    /// Whether this kind's result depends on the tensor backend (then the backend is part of
    /// its action key; data preparation is the same on every backend, so it is not).
    pub fn uses_backend(&self) -> bool {
        self.kind.uses_backend()
    }

    /// What the action key hashes besides inputs: the settings and the kind (and its version,
    /// for a kind that has one).
    pub fn key_config(&self) -> Value {
        let mut config = self.json.clone();
        if let Some(m) = config.as_object_mut() {
            m.insert("kind".into(), self.kind.name().into());
            if let Some(v) = self.kind.version() {
                m.insert("kind_version".into(), v.into());
            }
        }
        config
    }

    pub fn check(&self, stage: &str) -> Vec<Problem> {
        self.kind.check(self.settings.as_ref(), stage)
    }

    /// The inputs holding data this stage's model trains on.
    pub fn training_inputs(&self) -> Vec<(String, &Input)> {
        let slots = self.kind.trains_on(self.settings.as_ref());
        self.inputs
            .iter()
            .filter(|(k, _)| slots.iter().any(|s| s.matches(k)))
            .map(|(k, i)| (k.clone(), i))
            .collect()
    }

    /// The inputs whose models' training data the stage wants (by entry name), see
    /// [`Kind::checks_training_data_of`].
    pub fn checks_training_data_of(&self) -> Vec<(String, &Input)> {
        let Some(slot) = self.kind.checks_training_data_of() else {
            return Vec::new();
        };
        self.inputs
            .iter()
            .filter(|(k, _)| slot.matches(k))
            .map(|(k, i)| (k.rsplit('.').next().unwrap_or(k).to_owned(), i))
            .collect()
    }

    pub fn data_role(&self) -> Option<DataRole> {
        self.kind.data_role(self.settings.as_ref())
    }

    pub fn prompt_template(&self) -> Option<TemplateOf<'_, crate::spec::settings::PromptTemplate>> {
        self.kind.prompt_template(self.settings.as_ref())
    }

    pub fn publish(&self, to: &Publish<'_>) -> anyhow::Result<Option<PathBuf>> {
        self.kind.publish(self.settings.as_ref(), to)
    }

    pub fn summary_table(&self, summary: &Value) -> Option<String> {
        self.kind.summary_table(summary)
    }

    /// See [`Kind::examples`].
    pub fn examples(
        &self,
        ctx: &mut StageContext,
        n: usize,
    ) -> Option<anyhow::Result<Vec<EncodedExample>>> {
        self.kind.examples(self.settings.as_ref(), ctx, n)
    }

    /// Runs the stage. Inputs, scratch space, seed and cancellation come from `ctx`.
    pub fn run(&self, ctx: &mut StageContext) -> anyhow::Result<StageResult> {
        self.kind.run(self.settings.as_ref(), ctx)
    }
}

/// The JSON Schema of settings type `T`, its nested types left as definitions in `generator`:
/// what [`Kind::settings_schema`] returns for settings that derive `schemars::JsonSchema`.
pub fn schema_of<T: schemars::JsonSchema>(generator: &mut schemars::SchemaGenerator) -> Value {
    serde_json::to_value(T::json_schema(generator)).unwrap_or(Value::Null)
}

/// The values under `pattern` (`data`, `reward.model`, `models.*`) with their dotted paths.
fn at_slot(v: &Value, pattern: &str) -> Vec<(String, Value)> {
    let mut found = vec![(String::new(), v.clone())];
    for seg in pattern.split('.') {
        let mut next = Vec::new();
        for (path, value) in found {
            let join = |k: &str| {
                if path.is_empty() {
                    k.to_owned()
                } else {
                    format!("{path}.{k}")
                }
            };
            match (seg, &value) {
                ("*", Value::Object(m)) => {
                    next.extend(m.iter().map(|(k, v)| (join(k), v.clone())));
                }
                (key, Value::Object(m)) => {
                    if let Some(v) = m.get(key).filter(|v| !v.is_null()) {
                        next.push((join(key), v.clone()));
                    }
                }
                _ => {}
            }
        }
        found = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_their_paths_and_wildcards() {
        let models = InputSlot::new("models.*", &[ArtifactType::Model]);
        assert!(models.matches("models.base"));
        assert!(!models.matches("models"));
        assert!(!models.matches("models.base.x"));
        let data = InputSlot::new("replay.data", DATA_INPUT);
        assert!(data.matches("replay.data"));
        assert!(!data.matches("data"));
    }

    #[test]
    fn values_are_found_under_patterns() {
        let v = serde_json::json!({ "models": { "a": { "from": "x" }, "b": { "from": "y" } }, "reward": { "model": { "from": "rm" } }, "none": null });
        let got: Vec<String> = at_slot(&v, "models.*")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(got, ["models.a", "models.b"]);
        assert_eq!(at_slot(&v, "reward.model").len(), 1);
        assert!(at_slot(&v, "none").is_empty());
        assert!(at_slot(&v, "missing.deeper").is_empty());
    }
}
