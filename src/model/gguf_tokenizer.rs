//! The tokenizer a GGUF file carries in its metadata, rebuilt as a `tokenizers::Tokenizer`:
//! byte-level BPE (`tokenizer.ggml.model = gpt2`) from `tokens` and `merges`, control tokens
//! registered as special tokens so chat markers stay whole.

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::{Gguf, Meta};
use super::weights::ModelError;

/// ggml token type of control tokens (`<|im_start|>`, `<|endoftext|>`).
const CONTROL: i64 = 3;

/// `Ok(None)` for tokenizer kinds hone cannot rebuild yet (the model still loads).
pub fn build(g: &Gguf) -> Result<Option<Tokenizer>, ModelError> {
    let bad = |reason: String| ModelError::BadGguf {
        path: g.path.clone(),
        reason,
    };
    let kind = g
        .meta("tokenizer.ggml.model")
        .and_then(Meta::as_str)
        .unwrap_or("");
    if kind != "gpt2" {
        tracing::warn!(
            "GGUF tokenizer model `{kind}` is not supported yet; loading the model without a tokenizer"
        );
        return Ok(None);
    }
    let strings = |key: &str| -> Result<Vec<String>, ModelError> {
        g.meta(key)
            .and_then(Meta::as_array)
            .ok_or_else(|| bad(format!("metadata `{key}` is missing")))?
            .iter()
            .map(|m| {
                m.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("`{key}` holds a non-string")))
            })
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    // A vocabulary without merges (the GGUF writer drops an empty list) splits into its
    // single tokens.
    let merges = match g.meta("tokenizer.ggml.merges") {
        Some(_) => strings("tokenizer.ggml.merges")?,
        None => Vec::new(),
    };
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad(format!("cannot build the BPE tokenizer: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    // SmolLM's tokenizer splits digits one by one before the byte-level split.
    let pre = g
        .meta("tokenizer.ggml.pre")
        .and_then(Meta::as_str)
        .unwrap_or("");
    if pre == "smollm" {
        tok.with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ])));
    } else {
        tok.with_pre_tokenizer(Some(byte_level));
    }
    tok.with_decoder(Some(ByteLevel::default()));
    if let Some(types) = g.meta("tokenizer.ggml.token_type").and_then(Meta::as_array) {
        let special: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| t.as_i64() == Some(CONTROL))
            .map(|(_, s)| AddedToken::from(s.clone(), true))
            .collect();
        tok.add_special_tokens(&special);
    }
    Ok(Some(tok))
}
