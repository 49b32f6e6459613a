//! What a running stage gets: its inputs (files, or verified artifacts from the store), a
//! scratch directory for outputs, the seed, progress reporting and cancellation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Result, bail};
use indicatif::ProgressBar;

use crate::recipe::types::FileFormat;
use crate::stages::{ArtifactType, ProducedOutput};

/// Set by Ctrl-C; stages poll it through [`StageContext::check_cancelled`].
pub static CANCELLED: AtomicBool = AtomicBool::new(false);

/// The error a stage returns when Ctrl-C stopped it.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Cancelled;

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

#[derive(Debug, Clone)]
pub enum ResolvedInput {
    File {
        path: PathBuf,
        label: String,
        format: Option<FileFormat>,
    },
    Artifact(ArtifactView),
}

pub struct StageContext {
    pub stage: String,
    /// Inputs by their path in the stage config (`source`, `models.0`).
    pub inputs: BTreeMap<String, ResolvedInput>,
    /// `eval` datasets this stage is checked against for leakage, by stage name.
    pub checked_against: BTreeMap<String, ArtifactView>,
    pub seed: u64,
    pub progress: ProgressBar,
    scratch: PathBuf,
    produced: Vec<ProducedOutput>,
}

impl StageContext {
    pub fn new(stage: String, scratch: PathBuf, seed: u64, progress: ProgressBar) -> StageContext {
        StageContext {
            stage,
            inputs: BTreeMap::new(),
            checked_against: BTreeMap::new(),
            seed,
            progress,
            scratch,
            produced: Vec::new(),
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
