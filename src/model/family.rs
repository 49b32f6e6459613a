//! Model families as entries of one list, [`FAMILIES`], as `BUILTIN` lists stage kinds: what
//! each is called in HF's `model_type`, how its config and weights become a [`Backbone`], and
//! what the rest of hone asks of a family by name (LoRA's default targets, PEFT's adapter
//! settings, a chat template when a checkpoint ships none, the name of a score head). The
//! loaders look families up here instead of matching on them, so a family's knowledge sits in
//! its own file, next to its model.

use serde_json::Value;

use burn::prelude::Device;

use super::gguf::Gguf;
use super::gguf_write::{ArchPlan, GgufWriteError, unsupported};
use super::weights::{ModelError, WeightMap};
use super::{Backbone, Frozen};

/// Why a family could not build a model: its config does not parse or check (the loader adds
/// the config's path), or a weight is missing or misshapen.
#[derive(Debug)]
pub enum BuildError {
    Config(String),
    Model(ModelError),
}

impl From<ModelError> for BuildError {
    fn from(e: ModelError) -> BuildError {
        BuildError::Model(e)
    }
}

/// `config` as a family's typed config.
pub fn parse<C: serde::de::DeserializeOwned>(config: &Value) -> Result<C, BuildError> {
    serde_json::from_value(config.clone()).map_err(|e| BuildError::Config(e.to_string()))
}

/// The score head a classifier or reward model of the family carries on top of its backbone.
pub struct ScoreHead {
    /// The tensors' prefix in HF files (`score`, BERT's `classifier`).
    pub name: &'static str,
    /// Whether it has a bias.
    pub bias: bool,
}

/// The shape of a new model (a recipe's `init`), its vocabulary a tokenizer's.
#[derive(Debug, Clone, Copy)]
pub struct NewModel {
    pub vocab: usize,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Key/value heads where the family has grouped-query attention; else `heads`.
    pub kv_heads: Option<usize>,
    /// Longest sequence (positions).
    pub context: usize,
    /// MLP width, where not the family's default.
    pub intermediate: Option<usize>,
    /// The tokenizer's end of text, for decoders' BOS/EOS.
    pub eos: Option<u32>,
    /// The tokenizer's padding token, for encoders.
    pub pad: Option<u32>,
}

/// One model family.
pub trait Family: Sync {
    /// The family's name, in messages.
    fn name(&self) -> &'static str;

    /// The HF `model_type`s it loads, each with what it is (for the list of supported ones).
    fn model_types(&self) -> &'static [(&'static str, &'static str)];

    /// The config as the family reads it, from the `config.json` of `model_type` (a multimodal
    /// checkpoint's text part, say).
    fn text_config(&self, _model_type: &str, config: Value) -> Value {
        config
    }

    /// The model of `config` (as [`Family::text_config`] gave it), its weights taken from
    /// `weights`.
    fn build(
        &self,
        model_type: &str,
        config: &Value,
        weights: &mut WeightMap,
    ) -> Result<Backbone, BuildError>;

    /// The GGUF architectures (`general.architecture`) it loads.
    fn gguf_archs(&self) -> &'static [&'static str] {
        &[]
    }

    /// The model and its HF-style config from a GGUF of architecture `arch` (one of
    /// [`Family::gguf_archs`]), frozen weights held as `frozen` says.
    fn load_gguf(
        &self,
        g: &Gguf,
        arch: &str,
        _device: &Device,
        _frozen: &Frozen,
    ) -> Result<(Backbone, Value), ModelError> {
        Err(ModelError::UnknownArchitecture {
            path: g.path.clone(),
            found: arch.to_owned(),
            supported: format!("{} (GGUF)", super::gguf::architectures()),
        })
    }

    /// A new model of this family shaped as `shape` asks, randomly initialised, with its HF
    /// `config.json`; `None` where the family has no such constructor.
    fn init(
        &self,
        _shape: &NewModel,
        _device: &Device,
    ) -> Option<Result<(Backbone, Value), BuildError>> {
        None
    }

    /// How llama.cpp holds `backbone`, a model of this family with HF config `config`: the GGUF
    /// architecture, metadata and tensor names export writes; an error for a family or a
    /// model llama.cpp cannot run.
    fn gguf_plan(&self, _backbone: &Backbone, _config: &Value) -> Result<ArchPlan, GgufWriteError> {
        Err(unsupported(format!(
            "GGUF export writes decoders ({}); a {} model has no llama.cpp form hone writes",
            super::gguf::architectures(),
            self.name()
        )))
    }

    /// PEFT's default `target_modules` for the family.
    fn default_lora_targets(&self) -> &'static [&'static str];

    /// Whether the family is an encoder (no LM head; PEFT's `task_type` is unset for it).
    fn is_encoder(&self) -> bool {
        false
    }

    /// Whether its linear layers store weights `[in, out]` (GPT-2's Conv1D), which PEFT needs
    /// to know when it merges an adapter.
    fn fan_in_fan_out(&self) -> bool {
        false
    }

    /// The chat template (Jinja) of a checkpoint that ships none, where the family has one.
    fn default_chat_template(&self) -> Option<&'static str> {
        None
    }

    /// Its classifier or reward head.
    fn score_head(&self) -> ScoreHead {
        ScoreHead {
            name: "score",
            bias: false,
        }
    }
}

/// Every family hone runs, listed with their modules and [`Backbone`] variants in
/// `model/mod.rs` (`families!`).
pub use super::FAMILIES;

/// The family that loads HF `model_type` `t`.
pub fn by_model_type(t: &str) -> Option<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.model_types().iter().any(|(name, _)| *name == t))
}

/// The error of a family asked about a model of another: a bug, reported rather than panicked.
pub fn not_this_family(family: &dyn Family, model: &Backbone) -> GgufWriteError {
    unsupported(format!(
        "the {} family was asked about a {} model",
        family.name(),
        model.family().name()
    ))
}

/// The family that loads GGUF architecture `arch`.
pub fn by_gguf_arch(arch: &str) -> Option<&'static dyn Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.gguf_archs().contains(&arch))
}

/// The `model_type`s hone loads, for messages: `gpt2, llama (Llama 2 and 3.x), ...`.
pub fn supported() -> String {
    FAMILIES
        .iter()
        .flat_map(|f| f.model_types())
        .map(|(name, what)| {
            if what.is_empty() {
                (*name).to_owned()
            } else {
                format!("{name} ({what})")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_type_belongs_to_one_family() {
        let mut seen = std::collections::BTreeSet::new();
        for f in FAMILIES {
            for (t, _) in f.model_types() {
                assert!(seen.insert(*t), "`{t}` listed twice");
                assert_eq!(by_model_type(t).map(|g| g.name()), Some(f.name()));
            }
        }
        assert!(by_model_type("mixtral").is_none());
        for f in FAMILIES {
            for a in f.gguf_archs() {
                assert_eq!(by_gguf_arch(a).map(|g| g.name()), Some(f.name()));
            }
        }
        assert_eq!(
            crate::model::gguf::architectures(),
            "gpt2, llama, qwen2, qwen3, qwen3moe, smollm3, olmo2, gemma2, gemma3, phi3, gpt-oss"
        );
        assert_eq!(
            supported(),
            "gpt2, llama (Llama 2 and 3.x), mistral, qwen2, qwen3, smollm3, olmo2, qwen3_moe (Qwen3-MoE), gemma2, \
             gemma3_text, gemma3 (its text decoder), phi3 (Phi-3, Phi-4-mini), starcoder2 (StarCoder2), gpt_oss (gpt-oss), bert"
        );
    }
}
