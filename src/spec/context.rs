//! What a running stage gets: its inputs (files, or verified artifacts from the store), a
//! scratch directory for outputs, the seed, progress reporting and cancellation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use std::sync::Arc;

use crate::data::table::FileFormat;
use crate::store::{ArtifactType, ProducedOutput};

/// Where a running stage reports how far it is: the engine's observer decides what that looks
/// like (a bar on a terminal, JSON lines, nothing).
pub trait ProgressSink: Send + Sync {
    /// The work now has `len` units (steps, models, prompts).
    fn set_length(&self, len: u64);
    fn set_position(&self, pos: u64);
    /// What the stage is doing now (`reading`, `loss 1.23  lr 3.0e-4`).
    fn set_message(&self, message: &str);
    /// Training resumed from a checkpoint at `step`.
    fn resumed(&self, _step: u64) {}
    /// The stage is done: take the bar (if any) off the screen.
    fn finish(&self) {}
}

/// A stage's progress reporter; cloning shares it.
#[derive(Clone)]
pub struct Progress(Arc<dyn ProgressSink>);

impl Progress {
    pub fn new(sink: Arc<dyn ProgressSink>) -> Progress {
        Progress(sink)
    }

    /// Reports nowhere.
    pub fn hidden() -> Progress {
        struct Hidden;
        impl ProgressSink for Hidden {
            fn set_length(&self, _: u64) {}
            fn set_position(&self, _: u64) {}
            fn set_message(&self, _: &str) {}
        }
        Progress(Arc::new(Hidden))
    }

    pub fn set_length(&self, len: u64) {
        self.0.set_length(len);
    }
    pub fn set_position(&self, pos: u64) {
        self.0.set_position(pos);
    }
    pub fn set_message(&self, message: impl AsRef<str>) {
        self.0.set_message(message.as_ref());
    }
    pub fn resumed(&self, step: u64) {
        self.0.resumed(step);
    }
    pub fn finish(&self) {
        self.0.finish();
    }
}

/// Set by Ctrl-C; stages poll it through [`StageContext::check_cancelled`].
pub static CANCELLED: AtomicBool = AtomicBool::new(false);

/// The error a stage returns when Ctrl-C stopped it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Cancelled;

/// A setting of the stage that only the data shows to be wrong (a split that leaves no rows
/// to train on). The runner locates it at `key` (under the stage) in the recipe, and it exits
/// as invalid input does.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SettingError {
    pub key: String,
    pub message: String,
    pub help: Option<String>,
}

impl SettingError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> SettingError {
        SettingError {
            key: key.into(),
            message: message.into(),
            help: None,
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> SettingError {
        self.help = Some(help.into());
        self
    }
}

/// One output of an upstream stage, its files at their (verified, read-only) blob paths.
#[derive(Debug, Clone)]
pub struct OutputView {
    pub artifact_type: ArtifactType,
    pub files: BTreeMap<String, PathBuf>,
}

/// An upstream artifact as a stage sees it: the outputs it asked for.
#[derive(Debug, Clone)]
pub struct ArtifactView {
    /// `stage` or `stage.output`, as the recipe wrote it.
    pub label: String,
    pub outputs: BTreeMap<String, OutputView>,
}

impl ArtifactView {
    /// The file `name` of output `output` (any output when `None`).
    pub fn file(&self, output: Option<&str>, name: &str) -> Option<&PathBuf> {
        self.outputs
            .iter()
            .filter(|(o, _)| output.is_none_or(|w| w == o.as_str()))
            .find_map(|(_, v)| v.files.get(name))
    }

    /// Lays out output `output` as a directory under `dir` (hard links to the read-only blobs,
    /// copies where linking is impossible), for loaders that want a directory.
    pub fn materialize(&self, output: &str, dir: &Path) -> Result<PathBuf> {
        let Some(view) = self.outputs.get(output) else {
            bail!("`{}` has no output `{output}`", self.label)
        };
        std::fs::create_dir_all(dir)?;
        for (rel, blob) in &view.files {
            let dest = dir.join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !dest.exists() && std::fs::hard_link(blob, &dest).is_err() {
                std::fs::copy(blob, &dest)?;
            }
        }
        Ok(dir.to_path_buf())
    }
}

#[derive(Debug, Clone)]
pub enum ResolvedInput {
    File {
        path: PathBuf,
        label: String,
        format: Option<FileFormat>,
    },
    Artifact(ArtifactView),
}

/// A receiver of metric records as they happen.
pub type LiveMetrics = std::sync::Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

pub struct StageContext {
    pub stage: String,
    /// The recipe's `name`.
    pub recipe_name: String,
    /// The recipe file's directory: where a verifier program runs and its relative paths
    /// start.
    pub recipe_dir: PathBuf,
    /// Inputs by their path in the stage config (`source`, `models.base`).
    pub inputs: BTreeMap<String, ResolvedInput>,
    /// `eval` datasets this stage is checked against for leakage, by stage name.
    pub checked_against: BTreeMap<String, ArtifactView>,
    /// Evaluate stages: for each evaluated model (by its name in the stage), the data its
    /// training stages (and theirs, upstream) trained on, to check evaluation data against.
    pub training_data: BTreeMap<String, Vec<ResolvedInput>>,
    pub seed: u64,
    /// The tensor backend this stage runs on.
    pub backend: crate::backend::BackendKind,
    pub progress: Progress,
    /// The registered rewards the stage names (`reward.custom`), resolved with its recipe.
    pub rewards: Vec<std::sync::Arc<dyn super::rewards::Reward>>,
    /// Metric records (training steps, evaluations) for the run's metrics.jsonl.
    pub events: Vec<serde_json::Value>,
    /// Where training checkpoints of this action go (kept until the action commits).
    pub checkpoint_dir: Option<PathBuf>,
    /// The store's cache of tokenized examples (`data::tokenized`).
    pub token_cache: Option<PathBuf>,
    /// Receives metric records as training produces them (the runner's TensorBoard log),
    /// besides `events`, which are written when the stage ends.
    pub live: Option<LiveMetrics>,
    /// The dtype the checkpoint a training stage starts from was stored in, when it is not
    /// f32 (the default `train.precision` on GPU backends).
    pub source_precision: Option<crate::model::precision::Precision>,
    /// For a stage that trains a frozen base (LoRA) in a reduced precision (`train.precision`,
    /// or on a GPU backend the checkpoint's by default): the dtypes its `model` checkpoint's
    /// projections, token table and LM head are loaded in when stored in them, so they never
    /// exist in f32 (`stages::training::frozen_base_dtypes`).
    pub frozen_base_dtypes: Vec<burn::tensor::DType>,
    /// QLoRA: the `model` checkpoint's block projections load quantised to this
    /// (`stages::training::frozen_base_quant`).
    pub frozen_base_quant: Option<crate::model::quantized::QuantFormat>,
    /// The dtypes a frozen model input of its own (DPO's `reference`) keeps where its
    /// checkpoint stores them (`stages::training::frozen_dtypes`).
    pub frozen_reference_dtypes: Vec<burn::tensor::DType>,
    scratch: PathBuf,
    produced: Vec<ProducedOutput>,
}

impl StageContext {
    pub fn new(
        stage: String,
        scratch: PathBuf,
        seed: u64,
        backend: crate::backend::BackendKind,
        progress: Progress,
    ) -> StageContext {
        StageContext {
            stage,
            recipe_name: String::new(),
            recipe_dir: PathBuf::from("."),
            inputs: BTreeMap::new(),
            checked_against: BTreeMap::new(),
            training_data: BTreeMap::new(),
            seed,
            backend,
            progress,
            rewards: Vec::new(),
            events: Vec::new(),
            checkpoint_dir: None,
            token_cache: None,
            live: None,
            source_precision: None,
            frozen_base_dtypes: Vec::new(),
            frozen_base_quant: None,
            frozen_reference_dtypes: Vec::new(),
            scratch,
            produced: Vec::new(),
        }
    }

    /// Records a metrics event (written to the run's metrics.jsonl with the stage name).
    pub fn log(&mut self, record: impl serde::Serialize) {
        if let Ok(v) = serde_json::to_value(record) {
            self.events.push(v);
        }
    }

    pub fn input(&self, rel: &str) -> Result<&ResolvedInput> {
        self.inputs
            .get(rel)
            .ok_or_else(|| anyhow::anyhow!("stage {} has no input `{rel}`", self.stage))
    }

    /// A fresh directory for output `name`; everything written there is committed with it.
    pub fn output_dir(&mut self, name: &str, artifact_type: ArtifactType) -> Result<PathBuf> {
        let dir = self.scratch.join("out").join(name);
        std::fs::create_dir_all(&dir)?;
        self.produced.push(ProducedOutput {
            name: name.to_owned(),
            artifact_type,
            dir: dir.clone(),
        });
        Ok(dir)
    }

    /// Writes `table` as output `name` (a dataset split, or any table a stage produces).
    pub fn write_table(&mut self, name: &str, table: &crate::data::table::Table) -> Result<()> {
        let dir = self.output_dir(name, ArtifactType::Table)?;
        crate::data::table::write_parquet(table, &dir.join(crate::data::table::TABLE_FILE))
    }

    /// Private working space that is not committed (checkpoints, temp files).
    pub fn work_dir(&self) -> Result<PathBuf> {
        let dir = self.scratch.join("work");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    pub fn check_cancelled(&self) -> Result<()> {
        if CANCELLED.load(Ordering::SeqCst) {
            bail!(Cancelled);
        }
        Ok(())
    }

    pub fn take_produced(&mut self) -> Vec<ProducedOutput> {
        std::mem::take(&mut self.produced)
    }

    pub fn scratch(&self) -> &Path {
        &self.scratch
    }
}
