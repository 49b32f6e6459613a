//! The recipe language's header as Rust types: name, seed, backend, vars, defaults, logging,
//! the remote cache, the executor. What several stage kinds' settings share lives in
//! `spec::settings`, each kind's own settings in its file under `stages/`. Together they are
//! what parsing, `schemas/recipe.schema.json` (`hone schema`) and action keys are made from.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::backend::BackendChoice;

/// A recipe file: a DAG of stages plus the settings they share.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hone recipe")]
pub struct RecipeFile {
    /// Version of the recipe language. Only `1` exists.
    pub version: u32,
    /// Name of the pipeline; names the run directories.
    pub name: String,
    /// Free text for people reading the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seed for every random choice (splits, init, sampling). Part of every action key.
    #[serde(default)]
    pub seed: u64,
    /// Where tensors live: `auto` picks a GPU backend when one was compiled in and found.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Values for `${name}` anywhere in the recipe. Override with `--set vars.name=value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Settings merged under every stage of a kind, keyed by kind: `defaults: { dataset: { dedup: false } }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "defaults_schema")]
    pub defaults: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// Where metrics go besides each run's `metrics.jsonl`: `logging: { tensorboard: runs/tb,
    /// mlflow: http://127.0.0.1:5000 }`.
    #[serde(default, skip_serializing_if = "Logging::is_empty")]
    pub logging: Logging,
    /// A remote cache behind the local store, shared between teams:
    /// `cache: { remote: s3://bucket/hone, write: false }`. Not part of any action key.
    #[serde(default, skip_serializing_if = "CacheSettings::is_empty")]
    pub cache: CacheSettings,
    /// Where stages run: here (`local`, the default) or as Slurm jobs
    /// (`executor: { kind: slurm, resources: { partition: gpu } }`). Not part of any action key.
    #[serde(default, skip_serializing_if = "ExecutorSettings::is_default")]
    pub executor: ExecutorSettings,
    /// Base recipe(s) to deep-merge under this one (paths relative to this file); this file wins,
    /// and `key: null` removes an inherited key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<Extends>,
    /// The stages by name (letters, digits, `_`, `-`). Their order in the file breaks ties in
    /// the run order; the DAG comes from `{ from: ... }` references.
    // The loader types each stage by its kind (`spec::Registry`); this field is for the schema.
    #[serde(default)]
    #[schemars(schema_with = "stages_schema")]
    pub stages: BTreeMap<String, serde_json::Value>,
}

/// `stages`: every value one of the kinds' settings, tagged by `kind` (`$defs.StageSpec`, which
/// `recipe::json_schema` fills from the registry it is given).
fn stages_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": { "$ref": "#/$defs/StageSpec" },
    })
}

/// `defaults` keys: any name (`recipe::json_schema` lists the registry's kinds for editors to
/// complete); the loader checks names against the registry.
fn defaults_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": { "type": "object" },
    })
}

/// Where metrics go besides each run's `metrics.jsonl`. Not part of any action key: logging
/// changes no artifact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// A directory (relative to the recipe) for TensorBoard event files: per run and stage
    /// that ran a model (training, evaluation, generation; data stages log none),
    /// `<dir>/<run>/<stage>/events.out.tfevents.*`, written as training goes (`train/loss`,
    /// `train/lr`, `train/grad_norm`, throughput, DPO's `rewards/*` and `logps/*`,
    /// `eval/loss`), and each stage's final metrics under `metrics/`. View with
    /// `tensorboard --logdir <dir>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorboard: Option<String>,
    /// An MLflow tracking server (`http://host:5000`, `https://...`), reached through its REST
    /// API: one MLflow run per stage that runs (cached stages log nothing), in the experiment
    /// named after the recipe (created when missing), named after the stage and tagged
    /// `hone.action` (its action key), `hone.stage`, `hone.kind`, `hone.recipe`, `hone.run`;
    /// the stage's settings as params (`train.lr`, `peft.r`), the per-step scalars TensorBoard
    /// gets as metric histories, the final metrics under their own names; the run ends
    /// FINISHED, FAILED or KILLED with the stage. A server that is down or refuses a request
    /// costs one warning, and the run goes on without it. Credentials from the environment:
    /// `MLFLOW_TRACKING_TOKEN`, or `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlflow: Option<String>,
}

impl Logging {
    fn is_empty(&self) -> bool {
        self.tensorboard.is_none() && self.mlflow.is_none()
    }
}

/// The remote cache (object storage) behind the local store. Settings here apply when the
/// remote comes from the recipe; `--remote URL` / `HONE_REMOTE` replace it (with their own
/// provider settings from the environment), `--no-remote` turns it off, and
/// `HONE_REMOTE_WRITE=1` / `=0` overrides `write` (CI publishes, laptops read). Credentials
/// never go here: they come from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `GOOGLE_APPLICATION_CREDENTIALS`, ...) or the provider's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Where: `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`,
    /// `https://host/path` (WebDAV) or `file:///shared/dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Take stages missing from the local store from the remote (checked on arrival).
    #[serde(default = "yes")]
    pub read: bool,
    /// Upload what this machine computes (write-through).
    #[serde(default)]
    pub write: bool,
    /// Provider settings, as `object_store` names them: `endpoint`, `region`, `allow_http`,
    /// `timeout`, ... (no credentials).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            remote: None,
            read: true,
            write: false,
            options: BTreeMap::new(),
        }
    }
}

impl CacheSettings {
    fn is_empty(&self) -> bool {
        *self == CacheSettings::default()
    }
}

/// Where a recipe's stages run. `hone run --executor slurm|local` overrides `kind`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSettings {
    #[serde(default)]
    pub kind: ExecutorKind,
    /// What every stage's job asks for unless the stage says otherwise (`resources:` in a
    /// stage, or under `defaults: { <kind>: ... }`).
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// More `sbatch` options for every job, as written (`--account=ml`, `--qos=high`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sbatch_args: Vec<String>,
}

impl ExecutorSettings {
    fn is_default(&self) -> bool {
        *self == ExecutorSettings::default()
    }
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Stages run in this process, one after another.
    #[default]
    Local,
    /// Each stale stage is a Slurm job (`sbatch`), chained by `afterok` dependencies; the
    /// store must be on a filesystem every node reaches (or behind a remote cache).
    Slurm,
}

/// What a stage's Slurm job asks for. Unset fields take the executor's `resources`, then
/// Slurm's defaults; a stage that computes with tensors asks for one GPU when the backend is a
/// GPU one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs (`sbatch --gpus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// CPUs (`--cpus-per-task`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory, as Slurm writes it: `16G`, `4000M` (`--mem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// Time limit, as Slurm writes it: `2:00:00`, `1-00:00:00` (`--time`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The partition (`--partition`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// These resources, each unset field taken from `base`.
    pub fn over(&self, base: &Resources) -> Resources {
        Resources {
            gpus: self.gpus.or(base.gpus),
            cpus: self.cpus.or(base.cpus),
            mem: self.mem.clone().or_else(|| base.mem.clone()),
            time: self.time.clone().or_else(|| base.time.clone()),
            partition: self.partition.clone().or_else(|| base.partition.clone()),
        }
    }
}

/// One base recipe or several, merged in order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Extends {
    One(String),
    Many(Vec<String>),
}
