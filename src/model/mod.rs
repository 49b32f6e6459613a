//! Transformer models on burn: GPT-2, Llama and BERT families, loaded from and saved to
//! Hugging Face directories (`config.json`, `model.safetensors`, `tokenizer.json`), with LoRA.
//! Nothing here depends on the runner.

pub mod bert;
pub mod chat;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gpt2;
pub mod layers;
pub mod llama;
pub mod lora;
pub mod sampling;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;

pub use weights::ModelError;
use weights::{WeightMap, WeightWriter};

/// Reads a tensor back as `f32` values (tests, export, sampling).
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>()
        .expect("tensor reads back as f32")
}

/// Model families hone implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Gpt2,
    Llama,
    Bert,
}

impl Family {
    /// From HF's `model_type`.
    pub fn from_model_type(t: &str) -> Option<Family> {
        match t {
            "gpt2" => Some(Family::Gpt2),
            "llama" | "mistral" => Some(Family::Llama),
            "bert" => Some(Family::Bert),
            _ => None,
        }
    }
    pub const SUPPORTED: &'static str = "gpt2, llama (and mistral-style), bert";
}

/// The transformer body of a model, whatever its family.
#[derive(Module, Debug)]
pub enum Backbone {
    Gpt2(gpt2::Gpt2),
    Llama(llama::Llama),
    Bert(bert::Bert),
}

impl Backbone {
    pub fn family(&self) -> Family {
        match self {
            Backbone::Gpt2(_) => Family::Gpt2,
            Backbone::Llama(_) => Family::Llama,
            Backbone::Bert(_) => Family::Bert,
        }
    }

    /// Hidden states `[b, s, d]`; `padding` `[b, s]` is true at real tokens.
    pub fn hidden(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        match self {
            Backbone::Gpt2(m) => m.forward(ids, padding),
            Backbone::Llama(m) => m.forward(ids, padding),
            Backbone::Bert(m) => m.forward(ids, None, padding),
        }
    }

    /// Decoder forward with explicit positions, mask `[b, 1, s, t]` and a KV cache.
    pub fn hidden_with(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: &mut layers::KvCache,
    ) -> Tensor<3> {
        match self {
            Backbone::Gpt2(m) => m.forward_with(ids, positions, mask, Some(cache)),
            Backbone::Llama(m) => m.forward_with(ids, positions, mask, Some(cache)),
            Backbone::Bert(_) => panic!("BERT is an encoder: it has no incremental decoding"),
        }
    }

    /// Whether the model generates text (has an LM head).
    pub fn is_decoder(&self) -> bool {
        !matches!(self, Backbone::Bert(_))
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Backbone::Gpt2(m) => m.h.len(),
            Backbone::Llama(m) => m.layers.len(),
            Backbone::Bert(m) => m.layers.len(),
        }
    }

    /// LM logits for decoders; `None` for encoders.
    pub fn lm_logits(&self, hidden: Tensor<3>) -> Option<Tensor<3>> {
        match self {
            Backbone::Gpt2(m) => Some(m.logits(hidden)),
            Backbone::Llama(m) => Some(m.logits(hidden)),
            Backbone::Bert(_) => None,
        }
    }

    /// Projections by HF module path, for LoRA.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut layers::Proj)> {
        match self {
            Backbone::Gpt2(m) => m.projections_mut(),
            Backbone::Llama(m) => m.projections_mut(),
            Backbone::Bert(m) => m.projections_mut(),
        }
    }

    fn write_weights(&self, w: &mut WeightWriter) {
        match self {
            Backbone::Gpt2(m) => m.write_weights(w),
            Backbone::Llama(m) => m.write_weights(w),
            Backbone::Bert(m) => m.write_weights(w, ""),
        }
    }

    /// The HF class a saved directory declares in `architectures`.
    fn hf_class(&self) -> &'static str {
        match self {
            Backbone::Gpt2(_) => "GPT2LMHeadModel",
            Backbone::Llama(_) => "LlamaForCausalLM",
            Backbone::Bert(_) => "BertModel",
        }
    }
}

/// A model read from a Hugging Face directory.
pub struct HfModel {
    pub backbone: Backbone,
    /// `config.json` as read (kept whole, so saving preserves fields hone does not use).
    pub config: serde_json::Value,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// The Jinja chat template shipped with the model (tokenizer_config.json or GGUF metadata).
    pub chat_template: Option<String>,
    /// Weights in the file that no part of the model took (e.g. a head hone did not build).
    pub unused_weights: Vec<String>,
}

impl HfModel {
    /// Token ids that end a reply: `eos_token_id` (one or several) and `<|im_end|>` if known.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut out: Vec<u32> = match &self.config["eos_token_id"] {
            serde_json::Value::Number(n) => n.as_u64().map(|v| v as u32).into_iter().collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as u32)
                .collect(),
            _ => Vec::new(),
        };
        if let Some(id) = self
            .tokenizer
            .as_ref()
            .and_then(|t| t.token_to_id("<|im_end|>"))
            && !out.contains(&id)
        {
            out.push(id);
        }
        out
    }

    /// The model's chat template, or ChatML when it ships none.
    pub fn chat(&self) -> chat::ChatTemplate {
        let token = |key: &str| {
            self.config[key]
                .as_u64()
                .and_then(|id| self.tokenizer.as_ref()?.id_to_token(id as u32))
                .unwrap_or_default()
        };
        match &self.chat_template {
            Some(src) => {
                chat::ChatTemplate::new(src.clone(), &token("bos_token_id"), &token("eos_token_id"))
            }
            None => chat::ChatTemplate::chatml(),
        }
    }
}

/// Loads a model from an HF directory or a `.gguf` file.
pub fn load(path: &Path, device: &Device) -> Result<HfModel, ModelError> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let (llama, config, tokenizer, chat_template) = gguf::load_llama(path, device)?;
        return Ok(HfModel {
            backbone: Backbone::Llama(llama),
            config,
            tokenizer,
            chat_template,
            unused_weights: vec![],
        });
    }
    load_hf_dir(path, device)
}

fn bad_config(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::BadConfig {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Loads `dir/config.json`, `dir/model.safetensors` and, when present, `dir/tokenizer.json`.
pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<HfModel, ModelError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
        path: config_path.clone(),
        source,
    })?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad_config(&config_path, format!("invalid JSON: {e}")))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let family =
        Family::from_model_type(model_type).ok_or_else(|| ModelError::UnknownArchitecture {
            path: config_path.clone(),
            found: if model_type.is_empty() {
                "(no model_type)".into()
            } else {
                model_type.into()
            },
            supported: Family::SUPPORTED.into(),
        })?;
    let mut weights = WeightMap::from_safetensors(&dir.join("model.safetensors"), device)?;
    let parse = |what| bad_config(&config_path, what);
    let backbone = match family {
        Family::Gpt2 => {
            let c: gpt2::Gpt2Config =
                serde_json::from_value(config.clone()).map_err(|e| parse(e.to_string()))?;
            Backbone::Gpt2(gpt2::Gpt2::from_weights(&c, &mut weights)?)
        }
        Family::Llama => {
            let c: llama::LlamaConfig =
                serde_json::from_value(config.clone()).map_err(|e| parse(e.to_string()))?;
            c.check().map_err(parse)?;
            Backbone::Llama(llama::Llama::from_weights(&c, &mut weights)?)
        }
        Family::Bert => {
            let c: bert::BertConfig =
                serde_json::from_value(config.clone()).map_err(|e| parse(e.to_string()))?;
            Backbone::Bert(bert::Bert::from_weights(&c, &mut weights)?)
        }
    };
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        let mut t = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| bad_config(&tokenizer_path, e))?;
        // hone batches, pads and truncates itself (with masks); a tokenizer.json that pads every
        // text to a fixed length would hand it padding as if it were text.
        t.with_padding(None);
        t.with_truncation(None)
            .map_err(|e| bad_config(&tokenizer_path, e))?;
        Some(t)
    } else {
        None
    };
    let chat_template = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("chat_template")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    Ok(HfModel {
        backbone,
        config,
        tokenizer,
        chat_template,
        unused_weights: weights.remaining(),
    })
}

/// Writes a directory transformers loads: `config.json`, `model.safetensors` (LoRA merged in),
/// and `tokenizer.json` when there is a tokenizer.
pub fn save_hf_dir(
    backbone: &Backbone,
    config: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut config = config.clone();
    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!([backbone.hf_class()]),
        );
        obj.insert("dtype".into(), "float32".into());
    }
    crate::store::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    let mut w = WeightWriter::default();
    backbone.write_weights(&mut w);
    w.write(&dir.join("model.safetensors"))?;
    if let Some(t) = tokenizer {
        t.save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow::anyhow!("cannot save tokenizer: {e}"))?;
    }
    Ok(dir.to_path_buf())
}
