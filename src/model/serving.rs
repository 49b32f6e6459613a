//! What a serving stack reads beside the weights: `tokenizer_config.json` (the chat template
//! the model was trained with and its special tokens) and `generation_config.json` (the tokens
//! that end a reply, greedy decoding), as transformers, vLLM and TGI read them. Every model
//! hone saves carries both, so an export answers through `apply_chat_template` + `generate`
//! as it does through `hone generate`, and a later stage's `template: model` sees the template
//! the model learnt, not its base model's.

use std::path::Path;

use anyhow::Result;
use serde_json::{Map, Value, json};
use tokenizers::Tokenizer;

use super::chat::ChatTemplate;

pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";
/// The key of `tokenizer_config.json` holding the recipe's `template:` setting a hone stage
/// trained the model with (`"plain"`, `"chatml"`, `"model"`, or a custom template).
pub const TRAINED_TEMPLATE_KEY: &str = "hone_prompt_template";

/// `hone generate`'s default reply length, written as the model's generation default.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 64;

/// How a model is prompted: the chat template other tools render (Jinja with Hugging Face's
/// conventions), and for a model a hone stage trained, that stage's `template:` setting.
#[derive(Debug, Clone)]
pub struct Prompting {
    pub chat: ChatTemplate,
    pub recipe_template: Option<Value>,
}

/// Writes `tokenizer_config.json` (and, for a decoder, `generation_config.json`) into `dir`,
/// beside the `tokenizer.json` of `tokenizer`.
pub fn write_serving_files(
    dir: &Path,
    tokenizer: &Tokenizer,
    config: &Value,
    prompting: Option<&Prompting>,
    decoder: bool,
) -> Result<()> {
    let spell = |id: u64| tokenizer.id_to_token(id as u32);
    let first_id = |key: &str| match &config[key] {
        Value::Array(ids) => ids.first().and_then(Value::as_u64),
        v => v.as_u64(),
    };
    let known =
        |t: &str| (!t.is_empty() && tokenizer.token_to_id(t).is_some()).then(|| t.to_owned());
    let mut tc = Map::new();
    tc.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    // hone decodes without transformers' clean-up of spaces before punctuation.
    tc.insert("clean_up_tokenization_spaces".into(), false.into());
    if let Some(n) = ["max_position_embeddings", "n_positions", "n_ctx"]
        .iter()
        .find_map(|k| config[*k].as_u64())
    {
        tc.insert("model_max_length".into(), n.into());
    }
    let bos = prompting
        .and_then(|p| known(&p.chat.bos_token))
        .or_else(|| first_id("bos_token_id").and_then(spell));
    // The template's eos_token is what it renders for `{{ eos_token }}`; without one, the
    // token that ends an answer.
    let eos = prompting
        .and_then(|p| known(&p.chat.eos_token).or_else(|| known(&p.chat.end_of_turn())))
        .or_else(|| first_id("eos_token_id").and_then(spell))
        .or_else(|| known(super::EOS));
    let pad = first_id("pad_token_id")
        .and_then(spell)
        .or_else(|| eos.clone());
    for (key, token) in [("bos_token", bos), ("eos_token", eos), ("pad_token", pad)] {
        if let Some(t) = token {
            tc.insert(key.into(), t.into());
        }
    }
    // WordPiece (BERT) vocabularies name their special tokens themselves.
    for (key, token) in [
        ("unk_token", "[UNK]"),
        ("cls_token", "[CLS]"),
        ("sep_token", "[SEP]"),
        ("mask_token", "[MASK]"),
    ] {
        if let Some(t) = known(token) {
            tc.insert(key.into(), t.into());
        }
    }
    if let Some(p) = prompting {
        tc.insert("chat_template".into(), p.chat.source.clone().into());
        if let Some(t) = &p.recipe_template {
            tc.insert(TRAINED_TEMPLATE_KEY.into(), t.clone());
        }
    }
    crate::store::write_atomic(
        &dir.join(TOKENIZER_CONFIG),
        serde_json::to_string_pretty(&Value::Object(tc))?.as_bytes(),
    )?;
    if decoder {
        let stops = super::stop_tokens(config, Some(tokenizer));
        let mut gc = Map::new();
        if let Some(b) = first_id("bos_token_id") {
            gc.insert("bos_token_id".into(), b.into());
        }
        match stops.as_slice() {
            [] => {}
            [one] => {
                gc.insert("eos_token_id".into(), (*one).into());
            }
            many => {
                gc.insert("eos_token_id".into(), json!(many));
            }
        }
        if let Some(p) = first_id("pad_token_id").or_else(|| stops.first().map(|&s| s as u64)) {
            gc.insert("pad_token_id".into(), p.into());
        }
        // `hone generate`'s defaults: greedy, 64 new tokens.
        gc.insert("do_sample".into(), false.into());
        gc.insert("max_new_tokens".into(), DEFAULT_MAX_NEW_TOKENS.into());
        crate::store::write_atomic(
            &dir.join(GENERATION_CONFIG),
            serde_json::to_string_pretty(&Value::Object(gc))?.as_bytes(),
        )?;
    }
    Ok(())
}

/// The recipe `template:` a hone stage trained the model in `dir` with, from its
/// `tokenizer_config.json`; `None` for any other model.
pub fn trained_template(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(TOKENIZER_CONFIG)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get(TRAINED_TEMPLATE_KEY).cloned()
}
