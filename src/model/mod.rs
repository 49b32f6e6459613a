//! Transformer models on burn: GPT-2, Llama and BERT families, loaded from and saved to
//! Hugging Face directories (`config.json`, `model.safetensors`, `tokenizer.json`), with LoRA.
//! Nothing here depends on the runner.

pub mod chat;
pub mod decoder;
pub mod family;
pub mod ggml_quantize;
pub mod ggml_quants;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gguf_write;
pub mod heads;
pub mod hub;
pub mod layered;
pub mod layers;
pub mod lora;
pub mod moe;
pub mod nf4;
pub mod precision;
pub mod probe;
pub mod quantized;
pub mod rope;
pub mod sampling;
pub mod serving;
pub mod weights;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::prelude::*;

pub use family::Family;
pub use heads::Model;
pub use weights::ModelError;
use weights::{WeightMap, WeightWriter};

/// Reads a tensor back as `f32` values (tests, export, sampling).
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>()
        .expect("tensor reads back as f32")
}

/// Every family hone runs, one line each: `module: Variant(its model) by its Family`. The line
/// declares the family's module (its folder), its [`Backbone`] variant and its entry in
/// [`FAMILIES`]; no loader, writer or dispatch elsewhere lists the families. They are matched in this order
/// (by `model_type` and GGUF architecture, each claimed by one).
macro_rules! families {
    ($($module:ident: $variant:ident($model:ty) by $family:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// The transformer body of a model, whatever its family.
        // One backbone per model, moved rarely: the size difference between variants costs
        // nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Module, Debug)]
        pub enum Backbone {
            $($variant($model)),*
        }

        $(impl From<$model> for Backbone {
            fn from(m: $model) -> Backbone {
                Backbone::$variant(m)
            }
        })*

        impl Backbone {
            pub fn family(&self) -> &'static dyn Family {
                match self {
                    $(Backbone::$variant(_) => &$module::$family),*
                }
            }

            /// The model as any body: what every family answers.
            pub fn body(&self) -> &dyn decoder::Body {
                match self {
                    $(Backbone::$variant(m) => m),*
                }
            }

            fn body_mut(&mut self) -> &mut dyn decoder::Body {
                match self {
                    $(Backbone::$variant(m) => m),*
                }
            }
        }

        /// Every family hone runs (see [`families!`]).
        pub static FAMILIES: &[&dyn Family] = &[$(&$module::$family),*];
    };
}

families! {
    gpt2: Gpt2(gpt2::Gpt2) by Gpt2Family,
    llama: Llama(llama::Llama) by LlamaFamily,
    gemma3: Gemma3(gemma3::Gemma3) by Gemma3Family,
    phi3: Phi3(phi3::Phi3) by Phi3Family,
    starcoder2: Starcoder2(starcoder2::Starcoder2) by Starcoder2Family,
    gpt_oss: GptOss(gpt_oss::GptOss) by GptOssFamily,
    bert: Bert(bert::Bert) by BertFamily,
}

impl Backbone {
    /// The model as a decoder; `None` for an encoder.
    pub fn decoder(&self) -> Option<&dyn decoder::Decoder> {
        self.body().as_decoder()
    }

    /// Hidden states `[b, s, d]`; `padding` `[b, s]` is true at real tokens.
    pub fn hidden(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.body().hidden(ids, padding)
    }

    pub fn hidden_size(&self) -> usize {
        self.body().hidden_size()
    }

    /// The longest sequence its position embeddings cover.
    pub fn max_positions(&self) -> usize {
        self.body().max_positions()
    }

    /// Whether the model generates text (has an LM head).
    pub fn is_decoder(&self) -> bool {
        self.language_model().is_some()
    }

    /// The model as a language model: a decoder with its LM head. `None` for an encoder, and
    /// for a decoder saved without its head (a classifier's body).
    pub fn language_model(&self) -> Option<decoder::LanguageModel<'_>> {
        decoder::LanguageModel::of(self.decoder()?)
    }

    pub fn num_layers(&self) -> usize {
        self.body().num_layers()
    }

    /// Masked-LM logits (BERT with its `cls.predictions` head); `None` otherwise.
    pub fn mlm_logits(&self, hidden: Tensor<3>) -> Option<Tensor<3>> {
        match self {
            Backbone::Bert(m) => m.mlm_logits(hidden),
            _ => None,
        }
    }

    /// LM logits; `None` without an LM head (see [`language_model`](Self::language_model)).
    pub fn lm_logits(&self, hidden: Tensor<3>) -> Option<Tensor<3>> {
        Some(self.language_model()?.logits(hidden))
    }

    /// The token embedding table `[vocab, d]`.
    pub fn token_table(&self) -> &burn::module::Param<Tensor<2>> {
        self.body().token_table()
    }

    /// The token embedding table and the LM head where the model has its own.
    pub fn tables_mut(
        &mut self,
    ) -> (
        &mut burn::module::Param<Tensor<2>>,
        Option<&mut layers::Proj>,
    ) {
        self.body_mut().tables_mut()
    }

    /// Projections by HF module path, for LoRA.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut layers::Proj)> {
        self.body_mut().projections_mut()
    }

    fn write_weights(&self, w: &mut WeightWriter) {
        self.body().write_weights(w)
    }
}

/// A model read from a Hugging Face directory.
pub struct HfModel {
    /// The backbone and, for `*ForSequenceClassification` checkpoints, its score head.
    pub model: Model,
    /// `config.json` as read (kept whole, so saving preserves fields hone does not use).
    pub config: serde_json::Value,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    /// The chat template shipped with the model (tokenizer_config.json or GGUF metadata), or
    /// its family's own turns where it ships none (see [`chat_template`]).
    pub chat_template: Option<chat::ChatTemplate>,
    /// Weights in the file that no part of the model took (e.g. a head hone did not build).
    pub unused_weights: Vec<String>,
    /// For a model a hone stage trained, the recipe's `template:` it trained with
    /// (`serving::TRAINED_TEMPLATE_KEY`).
    pub trained_template: Option<serde_json::Value>,
}

/// The config key under which a model saved by hone (always in f32) remembers the dtype its
/// weights came in (`bfloat16`, `float16`; absent for float32), for exports.
pub const SOURCE_DTYPE: &str = "hone_source_dtype";

/// End of text: separates documents and ends every training sequence of hone's own tokenizers.
pub const EOS: &str = "<|endoftext|>";

/// The one rule for the tokens that end a generated answer: the config's `eos_token_id` (one
/// id or several), end-of-text and the end-of-turn markers of the common chat formats
/// ([`chat::TURN_ENDS`]) where the tokenizer has them.
pub fn stop_tokens(
    config: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Vec<u32> {
    let mut stops: Vec<u32> = match &config["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        _ => Vec::new(),
    };
    if let Some(t) = tokenizer {
        stops.extend(
            std::iter::once(EOS)
                .chain(chat::TURN_ENDS)
                .filter_map(|s| t.token_to_id(s)),
        );
    }
    stops.sort_unstable();
    stops.dedup();
    stops
}

impl HfModel {
    /// Token ids that end a reply (see [`stop_tokens`]).
    pub fn stop_tokens(&self) -> Vec<u32> {
        stop_tokens(&self.config, self.tokenizer.as_ref())
    }

    /// The model's chat template, or ChatML when it has none.
    pub fn chat(&self) -> chat::ChatTemplate {
        self.chat_template
            .clone()
            .unwrap_or_else(chat::ChatTemplate::chatml)
    }
}

/// The chat template a model speaks: the Jinja source it ships, else its family's own turns
/// (Gemma's); its `bos_token` / `eos_token` are the config's ids spelled by the tokenizer.
/// `None` where neither exists (callers then use ChatML).
pub fn chat_template(
    shipped: Option<String>,
    family: &dyn Family,
    config: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Option<chat::ChatTemplate> {
    let source = shipped.or_else(|| family.default_chat_template().map(str::to_owned))?;
    let token = |key: &str| {
        let id = match &config[key] {
            serde_json::Value::Array(ids) => ids.first()?.as_u64()?,
            v => v.as_u64()?,
        };
        tokenizer?.id_to_token(id as u32)
    };
    Some(chat::ChatTemplate::new(
        source,
        &token("bos_token_id").unwrap_or_default(),
        &token("eos_token_id").unwrap_or_default(),
    ))
}

/// The one `.gguf` file of a directory without `config.json` (a GGUF export), if that is
/// what `path` is.
pub fn lone_gguf(path: &Path) -> Option<PathBuf> {
    if !path.is_dir() || path.join("config.json").exists() {
        return None;
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf") && p.is_file())
        .collect();
    match <[PathBuf; 1]>::try_from(ggufs) {
        Ok([one]) => Some(one),
        Err(_) => None,
    }
}

/// Loads a model from an HF directory, a `.gguf` file, or a directory holding one `.gguf` file
/// and no `config.json` (a GGUF export).
pub fn load(path: &Path, device: &Device) -> Result<HfModel, ModelError> {
    load_keeping(path, device, &Frozen::default())
}

/// How a stage that trains adapters on a frozen base wants that base held.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Frozen {
    /// The projection weights, token table and LM head of a safetensors checkpoint that
    /// stores them in one of these dtypes stay in it ([`WeightMap::keep_as_stored`]): for a
    /// stage that trains in that precision.
    pub keep: Vec<burn::tensor::DType>,
    /// The block projections are held quantised (QLoRA), read and quantised one at a time
    /// ([`WeightMap::quantize_projections`]).
    pub quantize: Option<quantized::QuantFormat>,
}

/// [`load`], holding the frozen weights as `frozen` says.
pub fn load_keeping(path: &Path, device: &Device, frozen: &Frozen) -> Result<HfModel, ModelError> {
    if let Some(one) = lone_gguf(path) {
        return load_keeping(&one, device, frozen);
    }
    if layered::is_layered(path) {
        return layered::load(path, device, frozen);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        let g = gguf::load(path, device, frozen)?;
        let chat_template = chat_template(
            g.chat_template,
            g.backbone.family(),
            &g.config,
            g.tokenizer.as_ref(),
        );
        return Ok(HfModel {
            model: Model::new(g.backbone),
            config: g.config,
            tokenizer: g.tokenizer,
            chat_template,
            unused_weights: vec![],
            trained_template: None,
        });
    }
    load_hf_dir_keeping(path, device, frozen)
}

fn bad_config(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::BadConfig {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Reads a `tokenizer.json` with its own padding and truncation turned off: hone batches,
/// pads and truncates itself (with masks), and a tokenizer.json that pads every text to a
/// fixed length would hand it padding as if it were text.
pub fn load_tokenizer_file(path: &Path) -> Result<tokenizers::Tokenizer, ModelError> {
    // `tokenizers` panics on some malformed files (a decoder of unknown shape, a merge
    // shorter than the subword prefix) instead of returning an error.
    let mut t = crate::diag::without_panic(|| tokenizers::Tokenizer::from_file(path))
        .map_err(|e| bad_config(path, format!("the tokenizer cannot be built: {e}")))?
        .map_err(|e| bad_config(path, e))?;
    t.with_padding(None);
    t.with_truncation(None).map_err(|e| bad_config(path, e))?;
    Ok(t)
}

/// Loads `dir/config.json`, `dir/model.safetensors` and, when present, `dir/tokenizer.json`.
pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<HfModel, ModelError> {
    load_hf_dir_keeping(dir, device, &Frozen::default())
}

/// [`load_hf_dir`], holding the frozen weights as `frozen` says ([`load_keeping`]).
pub fn load_hf_dir_keeping(
    dir: &Path,
    device: &Device,
    frozen: &Frozen,
) -> Result<HfModel, ModelError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|error| ModelError::Io {
        path: config_path.clone(),
        error,
    })?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| bad_config(&config_path, format!("invalid JSON: {e}")))?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_owned();
    let model_type = model_type.as_str();
    // The dtype the weights came in, kept through training (hone computes in f32) so an export
    // can write them back in it.
    let declared = config
        .get(SOURCE_DTYPE)
        .or(config.get("dtype"))
        .or(config.get("torch_dtype"))
        .and_then(|v| v.as_str())
        .filter(|d| matches!(*d, "bfloat16" | "float16"))
        .map(str::to_owned);
    let family =
        family::by_model_type(model_type).ok_or_else(|| ModelError::UnknownArchitecture {
            path: config_path.clone(),
            found: if model_type.is_empty() {
                "(no model_type)".into()
            } else {
                model_type.into()
            },
            supported: family::supported(),
        })?;
    let mut config = family.text_config(model_type, config);
    if let (Some(d), Some(obj)) = (declared, config.as_object_mut()) {
        obj.insert(SOURCE_DTYPE.into(), d.into());
    }
    let mut weights = WeightMap::from_hf_dir(dir, device)?;
    weights.hold_frozen(frozen);
    let backbone = family
        .build(model_type, &config, &mut weights)
        .map_err(|e| match e {
            family::BuildError::Config(what) => bad_config(&config_path, what),
            family::BuildError::Model(e) => e,
        })?;
    let d = backbone.hidden_size();
    let head = family.score_head();
    let (weight, bias) = (
        format!("{}.weight", head.name),
        format!("{}.bias", head.name),
    );
    let score = match weights.shape(&weight) {
        Some(shape) => {
            let n = shape[0];
            let bias = match head.bias {
                true => Some(weights.take(&bias, [n])?),
                false => None,
            };
            Some(layers::Proj::new(weights.take_linear(&weight, d, n)?, bias))
        }
        None => None,
    };
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = if tokenizer_path.is_file() {
        let t = load_tokenizer_file(&tokenizer_path)?;
        Some(t)
    } else {
        None
    };
    let (chat_template, trained_template) =
        dir_chat_template(dir, family, &config, tokenizer.as_ref());
    Ok(HfModel {
        model: Model { backbone, score },
        config,
        tokenizer,
        chat_template,
        unused_weights: weights.remaining(),
        trained_template,
    })
}

/// The chat template of model directory `dir` (shipped in `tokenizer_config.json` or
/// `chat_template.jinja`, else the family's own turns; see [`chat_template`]) and, for a model
/// a hone stage trained, the recipe's `template:` it trained with.
fn dir_chat_template(
    dir: &Path,
    family: &dyn Family,
    config: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> (Option<chat::ChatTemplate>, Option<serde_json::Value>) {
    let shipped = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.get("chat_template")
                .and_then(|c| c.as_str())
                .map(str::to_owned)
        })
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    let trained_template = serving::trained_template(dir);
    // A model trained on plain prompts carries a template for other tools that spells them
    // out; to hone it has no chat format of its own (`template: model` means ChatML there,
    // as for any model without one).
    let shipped = shipped.filter(|_| trained_template.as_ref().is_none_or(|t| t != "plain"));
    (
        chat_template(shipped, family, config, tokenizer),
        trained_template,
    )
}

/// Models that can train with per-layer recomputation (`train.gradient_checkpointing`): each
/// transformer layer's forward is recomputed in backward instead of its activations kept. A
/// no-op outside autodiff and off the CPU backend.
pub trait GradientCheckpointing {
    fn set_gradient_checkpointing(&mut self, on: bool);
}

impl GradientCheckpointing for Backbone {
    fn set_gradient_checkpointing(&mut self, on: bool) {
        let trains_router = self
            .language_model()
            .is_some_and(|lm| lm.router_aux_loss_coef().is_some());
        if on && trains_router {
            // A recomputed block's forward runs untracked, so its routing has no gradient to
            // give (moe::with_routings).
            tracing::warn!(
                "the routers' load-balancing loss (router_aux_loss_coef) is left out under \
                 train.gradient_checkpointing: the experts' routing trains on the LM loss alone"
            );
        }
        self.body_mut().set_gradient_checkpointing(on);
    }
}

impl GradientCheckpointing for Model {
    fn set_gradient_checkpointing(&mut self, on: bool) {
        self.backbone.set_gradient_checkpointing(on);
    }
}

/// Writes a directory transformers loads: `config.json`, `model.safetensors` (LoRA merged in),
/// and with a tokenizer `tokenizer.json` and the files a serving stack reads beside it
/// (`serving`: the chat template of `prompting`, special tokens, generation defaults).
pub fn save_hf_dir(
    model: &Model,
    config: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
    prompting: Option<&serving::Prompting>,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    write_hf_metadata(model, config, tokenizer, prompting, dir)?;
    let mut w = WeightWriter::default();
    match (&model.backbone, &model.score) {
        (Backbone::Bert(b), Some(head)) => {
            b.write_weights(&mut w, "bert.");
            w.put_linear("classifier.weight", head.merged_weight());
            if let Some(bias) = &head.bias {
                w.put("classifier.bias", bias.val());
            }
        }
        (backbone, Some(head)) => {
            backbone.write_weights(&mut w);
            w.put_linear("score.weight", head.merged_weight());
        }
        (backbone, None) => backbone.write_weights(&mut w),
    }
    w.write(&dir.join("model.safetensors"))?;
    Ok(dir.to_path_buf())
}

/// What a model directory holds besides its weights: `config.json` (with the architecture
/// class transformers builds and the label names of a classifier) and, with a tokenizer,
/// `tokenizer.json` and the serving files ([`save_hf_dir`]; a layered model's top level).
pub fn write_hf_metadata(
    model: &Model,
    config: &serde_json::Value,
    tokenizer: Option<&tokenizers::Tokenizer>,
    prompting: Option<&serving::Prompting>,
    dir: &Path,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut config = config.clone();
    let backbone = &model.backbone;
    if let Some(obj) = config.as_object_mut() {
        let class = backbone.body().hf_class(model.num_labels().is_some());
        obj.insert("architectures".into(), serde_json::json!([class]));
        obj.insert("dtype".into(), "float32".into());
        let named = obj
            .get("id2label")
            .and_then(|v| v.as_object())
            .is_some_and(|m| Some(m.len()) == model.num_labels());
        if let Some(n) = model.num_labels().filter(|_| !named) {
            // transformers reads the number of labels from id2label.
            let id2label: serde_json::Map<String, serde_json::Value> = (0..n)
                .map(|i| (i.to_string(), serde_json::Value::from(format!("LABEL_{i}"))))
                .collect();
            let label2id: serde_json::Map<String, serde_json::Value> =
                (0..n).map(|i| (format!("LABEL_{i}"), i.into())).collect();
            obj.insert("id2label".into(), id2label.into());
            obj.insert("label2id".into(), label2id.into());
        }
    }
    crate::store::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    if let Some(t) = tokenizer {
        t.save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow::anyhow!("cannot save tokenizer: {e}"))?;
        let generates = backbone.is_decoder() && model.num_labels().is_none();
        serving::write_serving_files(dir, t, &config, prompting, generates)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_tokens_take_one_or_several_eos_ids_and_the_end_tokens_the_tokenizer_knows() {
        use tokenizers::models::wordlevel::WordLevel;
        let vocab = [("a", 0), (EOS, 1), ("<|im_end|>", 2)]
            .into_iter()
            .map(|(t, i)| (t.to_owned(), i))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("a".into())
            .build()
            .unwrap();
        let tok = tokenizers::Tokenizer::new(model);
        let one = serde_json::json!({ "eos_token_id": 7 });
        assert_eq!(stop_tokens(&one, Some(&tok)), [1, 2, 7]);
        let several = serde_json::json!({ "eos_token_id": [9, 1] });
        assert_eq!(stop_tokens(&several, None), [1, 9]);
        assert_eq!(stop_tokens(&serde_json::json!({}), Some(&tok)), [1, 2]);
    }
}
