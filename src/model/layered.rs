//! Models stored as a base plus the adapter a stage trained on it, not as a merged copy.
//!
//! A LoRA/QLoRA stage's model directory holds its PEFT adapter (`adapter_config.json`,
//! `adapter_model.safetensors`), its `config.json`, tokenizer and serving files, [`LAYER_FILE`]
//! and, under [`BASE_DIR`], the checkpoint it started from: the files a load of that checkpoint
//! reads (an HF directory's config and weights, a `.gguf` file, or an upstream stage's model,
//! itself layered or not). In the store those files are the base's own blobs, so a chain of
//! adapter stages on one base holds the base once and an adapter per stage; the directory's
//! digest covers the base's bytes, which is the reference to it.
//!
//! Reading one ([`load`]) loads the base as the stage held it (quantised again for QLoRA, so
//! the adapter meets the weights it was trained against) and folds the adapter into f32
//! weights: the same values the merged model the stage used to save held.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::quantized::QuantFormat;
use super::{Frozen, HfModel, ModelError};

/// The directory of a layered model that holds its base.
pub const BASE_DIR: &str = "base";

/// Marks a layered model and says how its base was held while the adapter trained.
pub const LAYER_FILE: &str = "hone_layer.json";

/// How deep layered models may nest (one level per adapter stage of a chain): deeper is a
/// damaged or hostile artifact, not a pipeline.
const MAX_DEPTH: usize = 64;

/// The contents of [`LAYER_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// The format the base's block projections were quantised to while the adapter trained
    /// (QLoRA); absent: the base as stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_quant: Option<QuantFormat>,
}

/// Whether `path` is a layered model directory.
pub fn is_layered(path: &Path) -> bool {
    path.join(LAYER_FILE).is_file()
}

/// The files a load of checkpoint `path` reads, relative to where they go under a layered
/// model's [`BASE_DIR`]: a `.gguf` file; the one `.gguf` of a GGUF export; a layered model,
/// whole; an HF directory's `config.json` and weights (the shard index and its shards). Its
/// tokenizer and serving files are not among them: the layered model carries the stage's own.
pub fn checkpoint_files(path: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ModelError> {
    let io = |error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    };
    let one = |file: &Path| {
        let name = PathBuf::from(file.file_name().unwrap_or_default());
        vec![(file.to_path_buf(), name)]
    };
    if path.is_file() {
        return Ok(one(path));
    }
    if let Some(gguf) = super::lone_gguf(path) {
        return Ok(one(&gguf));
    }
    if is_layered(path) {
        let files = crate::store::hash::walk_files(path).map_err(io)?;
        return Ok(files.into_iter().map(|r| (path.join(&r), r)).collect());
    }
    let weights = super::weights::weight_files(path)?;
    let names = std::iter::once("config.json".to_owned()).chain(weights);
    Ok(names.map(|n| (path.join(&n), PathBuf::from(n))).collect())
}

/// How [`write_base`] places the base's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placing {
    /// Hard links (copies where linking fails): for files that are the store's own blobs
    /// (an upstream stage's model laid out from the store), which the commit then finds there.
    Link,
    /// Copies: for a user's files, so the store owns its bytes and no later edit of the
    /// user's file can reach them.
    Copy,
}

/// Lays out checkpoint `base` under `dir/`[`BASE_DIR`], its files placed as `placing` says,
/// and marks `dir` layered.
pub fn write_base(base: &Path, dir: &Path, layer: &Layer, placing: Placing) -> anyhow::Result<()> {
    use anyhow::Context;
    let to = dir.join(BASE_DIR);
    for (src, rel) in checkpoint_files(base)? {
        let dest = to.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if !(placing == Placing::Link && std::fs::hard_link(&src, &dest).is_ok()) {
            std::fs::copy(&src, &dest)
                .with_context(|| format!("cannot copy {} into the artifact", src.display()))?;
        }
    }
    crate::store::write_atomic(
        &dir.join(LAYER_FILE),
        serde_json::to_string_pretty(layer)?.as_bytes(),
    )
}

/// Loads layered model `dir`: its base as the adapter's stage held it (for QLoRA quantised
/// again, deterministically), the adapter folded into f32 weights, and the config, tokenizer
/// and chat template of `dir` itself. `frozen` is how the reading stage wants the frozen
/// weights held: the base's other weights stay in the dtypes it keeps, and with
/// `frozen.quantize` each projection is quantised once folded (one held in a format already
/// keeps it).
pub(super) fn load(dir: &Path, device: &Device, frozen: &Frozen) -> Result<HfModel, ModelError> {
    let mut depth = 0;
    let mut at = dir.join(BASE_DIR);
    while is_layered(&at) {
        depth += 1;
        if depth >= MAX_DEPTH {
            return Err(ModelError::BadConfig {
                path: dir.to_path_buf(),
                reason: format!("more than {MAX_DEPTH} adapters nested on one base"),
            });
        }
        at = at.join(BASE_DIR);
    }
    let layer_path = dir.join(LAYER_FILE);
    let text = std::fs::read_to_string(&layer_path).map_err(|error| ModelError::Io {
        path: layer_path.clone(),
        error,
    })?;
    let layer: Layer = serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
        path: layer_path,
        reason: e.to_string(),
    })?;
    let base_dir = dir.join(BASE_DIR);
    let base = super::load_keeping(
        &base_dir,
        device,
        &Frozen {
            keep: frozen.keep.clone(),
            quantize: layer.base_quant,
        },
    )?;
    let mut backbone = base.model.backbone;
    super::lora::load_peft(&mut backbone, dir, device)?;
    for (path, proj) in backbone.projections_mut() {
        proj.fold_adapter();
        // One projection at a time, so folded f32 weights never all exist at once.
        if let Some(format) = frozen.quantize {
            proj.quantize(format).map_err(|e| ModelError::BadConfig {
                path: dir.to_path_buf(),
                reason: format!("cannot quantise `{path}`: {e}"),
            })?;
        }
    }
    let config_path = dir.join("config.json");
    let config = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
            path: config_path,
            reason: format!("invalid JSON: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => base.config,
        Err(error) => {
            return Err(ModelError::Io {
                path: config_path,
                error,
            });
        }
    };
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = match tokenizer_path.is_file() {
        true => Some(super::load_tokenizer_file(&tokenizer_path)?),
        false => base.tokenizer,
    };
    let (chat_template, trained_template) =
        super::dir_chat_template(dir, backbone.family(), &config, tokenizer.as_ref());
    Ok(HfModel {
        model: super::Model {
            backbone,
            score: base.model.score,
        },
        config,
        tokenizer,
        chat_template,
        unused_weights: base.unused_weights,
        trained_template,
    })
}

/// Writes `model` (adapters unmerged) as layered model `dir` on checkpoint `base`: its
/// metadata as [`super::save_hf_dir`] writes it, its PEFT adapter, and the base's files.
#[allow(clippy::too_many_arguments)]
pub fn save(
    model: &mut super::Model,
    lora: &super::lora::LoraConfig,
    (base, placing): (&Path, Placing),
    layer: &Layer,
    config: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
    prompting: Option<&super::serving::Prompting>,
    dir: &Path,
) -> anyhow::Result<()> {
    // A head trained whole is no adapter: such a model is saved merged.
    anyhow::ensure!(
        model.score.is_none(),
        "internal: a model with a score head cannot be stored as a base plus an adapter"
    );
    super::write_hf_metadata(model, config, tokenizer, prompting, dir)?;
    super::lora::save_peft(&mut model.backbone, lora, "model", dir)?;
    write_base(base, dir, layer, placing)
}
