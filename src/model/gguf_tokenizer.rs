//! The tokenizer a GGUF file carries in its metadata, rebuilt as a `tokenizers::Tokenizer`:
//! byte-level BPE (`tokenizer.ggml.model = gpt2`: GPT-2, SmolLM, Llama 3, Qwen) from `tokens`
//! and `merges`, or SentencePiece BPE (`llama`: Llama 2, Mistral, Gemma, Phi-3) from `tokens`
//! with merges recovered from the vocabulary, byte fallback and `▁` for spaces. Control tokens
//! become special tokens and user-defined ones added tokens, so chat markers stay whole; BOS and
//! EOS are added to a text as the file's `add_bos_token` / `add_eos_token` flags say, as
//! llama.cpp does.

use std::collections::HashMap;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab as BpeVocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::{Gguf, Meta};
use super::weights::ModelError;

/// The `tokenizer.ggml.model` kinds hone rebuilds.
pub const TOKENIZER_MODELS: &str = "gpt2 (byte-level BPE), llama (SentencePiece BPE)";

/// ggml token types (llama.cpp's `llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// SentencePiece's word-boundary mark, which stands for a space in the vocabulary.
const SPACE: char = '\u{2581}';

/// `Ok(None)` for tokenizer kinds hone cannot rebuild (the model still loads; a stage can name
/// a `tokenizer:` of its own).
pub fn build(g: &Gguf) -> Result<Option<Tokenizer>, ModelError> {
    // `tokenizers`' builders panic on some vocabularies a crafted file can hold.
    crate::diag::without_panic(|| build_checked(g)).unwrap_or_else(|e| {
        Err(ModelError::BadGguf {
            path: g.path.clone(),
            reason: format!("its tokenizer cannot be built: {e}"),
        })
    })
}

fn build_checked(g: &Gguf) -> Result<Option<Tokenizer>, ModelError> {
    let kind = g
        .meta("tokenizer.ggml.model")
        .and_then(Meta::as_str)
        .unwrap_or("");
    let vocab = GgufVocab::read(g)?;
    let mut tok = match kind {
        "gpt2" => byte_level(g, &vocab)?,
        "llama" => sentencepiece(g, &vocab)?,
        _ => {
            tracing::warn!(
                "{}: GGUF tokenizer model `{kind}` is not one hone rebuilds ({TOKENIZER_MODELS}); loading the model without a tokenizer",
                g.path.display()
            );
            return Ok(None);
        }
    };
    add_marked_tokens(&mut tok, &vocab, kind == "gpt2");
    // llama.cpp adds BOS to a SentencePiece vocabulary whose file does not say otherwise.
    let add_bos = flag(g, "add_bos_token").unwrap_or(kind == "llama");
    let add_eos = flag(g, "add_eos_token").unwrap_or(false);
    let special = |key: &str| {
        g.meta(&format!("tokenizer.ggml.{key}"))
            .and_then(Meta::as_i64)
            .and_then(|id| {
                Some((
                    vocab.tokens.get(usize::try_from(id).ok()?)?.clone(),
                    id as u32,
                ))
            })
    };
    let bos = special("bos_token_id").filter(|_| add_bos);
    let eos = special("eos_token_id").filter(|_| add_eos);
    if bos.is_some() || eos.is_some() {
        tok.with_post_processor(Some(bos_eos_processor(bos, eos).map_err(|e| {
            vocab.bad(format!("cannot build the BOS/EOS post-processor: {e}"))
        })?));
    }
    Ok(Some(tok))
}

/// The vocabulary as the file lists it.
struct GgufVocab<'a> {
    g: &'a Gguf,
    tokens: Vec<String>,
    /// ggml token type of each token (absent in some files).
    types: Vec<i64>,
}

impl<'a> GgufVocab<'a> {
    fn read(g: &'a Gguf) -> Result<GgufVocab<'a>, ModelError> {
        let mut v = GgufVocab {
            g,
            tokens: Vec::new(),
            types: Vec::new(),
        };
        v.tokens = v.strings("tokenizer.ggml.tokens")?;
        v.types = g
            .meta("tokenizer.ggml.token_type")
            .and_then(Meta::as_array)
            .map(|a| a.iter().map(|t| t.as_i64().unwrap_or(0)).collect())
            .unwrap_or_default();
        Ok(v)
    }

    fn bad(&self, reason: String) -> ModelError {
        ModelError::BadGguf {
            path: self.g.path.clone(),
            reason,
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ModelError> {
        self.g
            .meta(key)
            .and_then(Meta::as_array)
            .ok_or_else(|| self.bad(format!("metadata `{key}` is missing")))?
            .iter()
            .map(|m| {
                m.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| self.bad(format!("`{key}` holds a non-string")))
            })
            .collect()
    }

    /// Each token's id; a token listed twice keeps its last id (as a dict built from the
    /// list would).
    fn ids(tokens: &[String]) -> BpeVocab {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect()
    }
}

fn flag(g: &Gguf, key: &str) -> Option<bool> {
    match g.meta(&format!("tokenizer.ggml.{key}"))? {
        Meta::Bool(b) => Some(*b),
        Meta::Int(i) => Some(*i != 0),
        _ => None,
    }
}

/// Byte-level BPE from the file's vocabulary and merges.
fn byte_level(g: &Gguf, vocab: &GgufVocab) -> Result<Tokenizer, ModelError> {
    // A vocabulary without merges (the GGUF writer drops an empty list) splits into its
    // single tokens.
    let merges = match g.meta("tokenizer.ggml.merges") {
        Some(_) => vocab.strings("tokenizer.ggml.merges")?,
        None => Vec::new(),
    };
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(GgufVocab::ids(&vocab.tokens), merges)
        .build()
        .map_err(|e| vocab.bad(format!("cannot build the BPE tokenizer: {e}")))?;
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
    Ok(tok)
}

/// SentencePiece BPE. The file lists no merges: they are recovered from the vocabulary, every
/// split of a token into two tokens, best first. Gemma's files need two more things (as
/// transformers reads them): runs of spaces are stored as real spaces but looked up as `▁`s,
/// and the merge order is the order of the tokens in the file, not their scores.
fn sentencepiece(g: &Gguf, vocab: &GgufVocab) -> Result<Tokenizer, ModelError> {
    let arch = g
        .meta("general.architecture")
        .and_then(Meta::as_str)
        .unwrap_or("");
    let gemma = arch.starts_with("gemma");
    let (tokens, scores): (Vec<String>, Vec<f64>) = if gemma {
        let respelled = vocab
            .tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    SPACE.to_string().repeat(t.chars().count())
                } else {
                    t.clone()
                }
            })
            .collect();
        let positions = (0..vocab.tokens.len()).map(|i| -(i as f64)).collect();
        (respelled, positions)
    } else {
        let scores = g
            .meta("tokenizer.ggml.scores")
            .and_then(Meta::as_array)
            .ok_or_else(|| {
                vocab.bad("metadata `tokenizer.ggml.scores` is missing (a SentencePiece vocabulary needs it)".into())
            })?
            .iter()
            .map(|s| s.as_f64().unwrap_or(0.0))
            .collect::<Vec<_>>();
        if scores.len() != vocab.tokens.len() {
            return Err(vocab.bad(format!(
                "{} token scores for {} tokens",
                scores.len(),
                vocab.tokens.len()
            )));
        }
        (vocab.tokens.clone(), scores)
    };
    let ids = GgufVocab::ids(&tokens);
    let merges = merges_from_vocab(&tokens, &scores, &ids);
    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if gemma
        && let Some(unk) = g
            .meta("tokenizer.ggml.unknown_token_id")
            .and_then(Meta::as_i64)
            .and_then(|id| tokens.get(usize::try_from(id).ok()?))
    {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| vocab.bad(format!("cannot build the SentencePiece tokenizer: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let replace = |from: &str, to: &str| Replace::new(from, to).expect("a literal pattern");
    let mut decoders = vec![
        DecoderWrapper::Replace(replace(&SPACE.to_string(), " ")),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if gemma {
        // Spaces are `▁`s, and no space is put before the text.
        tok.with_normalizer(Some(replace(" ", &SPACE.to_string())));
    } else if arch == "phi3" {
        // Phi-3 puts the prefix space on in its normalizer, so a text that starts with spaces
        // keeps all of them.
        tok.with_normalizer(Some(NormalizerSequence::new(vec![
            NormalizerWrapper::Prepend(Prepend::new(SPACE.to_string())),
            NormalizerWrapper::Replace(replace(" ", &SPACE.to_string())),
        ])));
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    } else {
        // Llama 2 / Mistral: a space before the first word, unless the file says not to.
        let prefix = flag(g, "add_space_prefix").unwrap_or(true);
        let scheme = if prefix {
            PrependScheme::First
        } else {
            PrependScheme::Never
        };
        tok.with_pre_tokenizer(Some(Metaspace::new(SPACE, scheme, false)));
        if prefix {
            decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
        }
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

/// The longest vocabulary entry (in bytes) merges are recovered for.
const MAX_MERGED_TOKEN_BYTES: usize = 1024;

/// The merges a vocabulary implies: every split of a token into two tokens, ordered by the
/// token's score (best first), then longer left parts first; a token's splits with equal keys
/// keep the order of their parts' ids. (transformers' `generate_merges`, so hone cuts text
/// into the same tokens it does.)
fn merges_from_vocab(tokens: &[String], scores: &[f64], ids: &BpeVocab) -> Vec<(String, String)> {
    // A token listed twice is considered once, at its first place, with its last score.
    let mut score_of: HashMap<&str, f64> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (t, &s) in tokens.iter().zip(scores) {
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    // Splitting a token costs its length squared (every split is hashed): an entry longer
    // than any real one (Gemma's longest of 262k is 31 characters) gets no merges, so a
    // crafted file cannot make loading take hours.
    for token in order
        .into_iter()
        .filter(|t| t.len() <= MAX_MERGED_TOKEN_BYTES)
    {
        let score = score_of[token];
        let start = merges.len();
        for (i, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(i);
            if ids.contains_key(l) && ids.contains_key(r) {
                merges.push((l, r, score));
            }
        }
        merges[start..].sort_by_key(|(l, r, _)| (ids[*l], ids[*r]));
    }
    // Stable, so splits whose keys tie keep the order above.
    merges.sort_by(|a, b| {
        b.2.total_cmp(&a.2)
            .then(b.0.chars().count().cmp(&a.0.chars().count()))
            .then(b.1.chars().count().cmp(&a.1.chars().count()))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_owned(), r.to_owned()))
        .collect()
}

/// Control tokens as special tokens; user-defined ones (`<think>`, Gemma's runs of newlines
/// and HTML tags) as added tokens matched whole in the raw text, as llama.cpp matches them. In
/// a byte-level vocabulary a "control" token spelled outside the byte alphabet is a mislabel
/// and is left out (adding it would grow the vocabulary past the model's).
fn add_marked_tokens(tok: &mut Tokenizer, vocab: &GgufVocab, byte_level: bool) {
    let spelled_in_bytes = |s: &str| {
        !byte_level
            || s.chars().all(|c| {
                let c = c as u32;
                // GPT-2's byte alphabet: printable Latin-1 and the code points 256..324.
                (0x21..=0x7E).contains(&c)
                    || (0xA1..=0xAC).contains(&c)
                    || (0xAE..=0xFF).contains(&c)
                    || (0x100..=0x143).contains(&c)
            })
    };
    let marked = |kind: i64| {
        vocab
            .types
            .iter()
            .zip(&vocab.tokens)
            .filter(move |(t, _)| **t == kind)
            .map(|(_, s)| s)
    };
    let control: Vec<AddedToken> = marked(CONTROL)
        .filter(|s| spelled_in_bytes(s))
        .map(|s| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(&control);
    let known = tok.get_vocab(false);
    let user: Vec<AddedToken> = marked(USER_DEFINED)
        .filter(|s| known.contains_key(*s))
        .map(|s| AddedToken::from(s.clone(), false).normalized(false))
        .collect();
    tok.add_tokens(&user);
}

fn bos_eos_processor(
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
) -> Result<TemplateProcessing, String> {
    let b = |seq: &str| {
        bos.as_ref()
            .map(|(t, _)| format!("{t}:{seq} "))
            .unwrap_or_default()
    };
    let e = |seq: &str| {
        eos.as_ref()
            .map(|(t, _)| format!(" {t}:{seq}"))
            .unwrap_or_default()
    };
    let single = format!("{}$A:0{}", b("0"), e("0"));
    let pair = format!("{single} {}$B:1{}", b("1"), e("1"));
    TemplateProcessing::builder()
        .try_single(single.as_str())?
        .try_pair(pair.as_str())?
        .special_tokens(bos.into_iter().chain(eos).collect::<Vec<_>>())
        .build()
        .map_err(|e| e.to_string())
}

/// ggml token types written for a vocabulary.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The `tokenizer.*` metadata of a GGUF holding `tok` for a model of `vocab_size` rows (the
/// vocabulary is padded to it with unused `[PAD<i>]` tokens, as llama.cpp's converter does): a
/// byte-level BPE as `gpt2` with its merges, a BPE with byte fallback as SentencePiece
/// (`llama`) with scores in id order, special ids from `config` and the BOS/EOS flags the
/// tokenizer acts on.
pub fn to_metadata(
    tok: &Tokenizer,
    config: &serde_json::Value,
    vocab_size: usize,
) -> Result<Vec<(String, super::gguf_write::MetaValue)>, super::gguf_write::GgufWriteError> {
    use super::gguf_write::{GgufWriteError, MetaValue};
    let bad = |m: String| GgufWriteError::Tokenizer(m);
    let json: serde_json::Value = serde_json::from_str(
        &tok.to_string(false)
            .map_err(|e| bad(format!("cannot serialise it: {e}")))?,
    )
    .map_err(|e| bad(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad(format!(
            "its model is {}; GGUF vocabularies are BPE (byte-level or SentencePiece)",
            model["type"]
        )));
    }
    let spm = model["byte_fallback"].as_bool() == Some(true);
    let pre = json["pre_tokenizer"].to_string();
    if !spm && !pre.contains("ByteLevel") {
        return Err(bad(
            "a BPE without byte-level pre-tokenization or byte fallback has no GGUF form".into(),
        ));
    }
    let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
    let mut types = vec![NORMAL; vocab_size];
    let mut place = |id: u64, text: &str| -> Result<usize, GgufWriteError> {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| {
                bad(format!(
                    "token {text:?} has id {id}, beyond the model's {vocab_size} embeddings"
                ))
            })?;
        tokens[i] = Some(text.to_owned());
        Ok(i)
    };
    for (text, id) in model["vocab"].as_object().into_iter().flatten() {
        let i = place(id.as_u64().unwrap_or(u64::MAX), text)?;
        if spm && text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') {
            types[i] = BYTE;
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let text = added["content"].as_str().unwrap_or_default();
        let i = place(added["id"].as_u64().unwrap_or(u64::MAX), text)?;
        types[i] = if added["special"].as_bool() == Some(true) {
            CONTROL as i32
        } else {
            USER_DEFINED as i32
        };
    }
    if let Some(unk) = model["unk_token"].as_str().and_then(|u| tok.token_to_id(u)) {
        types[unk as usize] = UNKNOWN;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            t.unwrap_or_else(|| {
                types[i] = UNUSED;
                format!("[PAD{i}]")
            })
        })
        .collect();
    let id_of = |key: &str| match &config[key] {
        serde_json::Value::Array(ids) => ids.first().and_then(serde_json::Value::as_u64),
        v => v.as_u64(),
    };
    // What the tokenizer puts around a text: BOS before it, EOS after it.
    let around = tok
        .encode("a", true)
        .map_err(|e| bad(format!("cannot encode with it: {e}")))?;
    let (ids, specials) = (around.get_ids(), around.get_special_tokens_mask());
    let bos = id_of("bos_token_id");
    let eos = id_of("eos_token_id");
    let add_bos = specials.first() == Some(&1) && bos == ids.first().map(|&i| i as u64);
    let add_eos = specials.last() == Some(&1) && eos == ids.last().map(|&i| i as u64);
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    let mut meta = vec![
        (
            key("model"),
            MetaValue::Str(if spm { "llama" } else { "gpt2" }.into()),
        ),
        (key("pre"), MetaValue::Str(pre_name(&pre).into())),
    ];
    if spm {
        // Scores in id order (a SentencePiece vocabulary is listed best first): llama.cpp
        // merges by them, transformers rebuilds its merges from them.
        let scores = types
            .iter()
            .enumerate()
            .map(|(i, t)| match *t {
                NORMAL => -(i as f32),
                BYTE => 0.0,
                _ => -1000.0,
            })
            .collect();
        let prefix = pre.contains("Metaspace") && !pre.contains("\"never\"");
        meta.push((key("tokens"), MetaValue::Strs(tokens)));
        meta.push((key("scores"), MetaValue::F32s(scores)));
        meta.push((key("add_space_prefix"), MetaValue::Bool(prefix)));
    } else {
        let merges = model["merges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| match m {
                serde_json::Value::String(s) => s.clone(),
                pair => pair
                    .as_array()
                    .map(|p| {
                        p.iter()
                            .filter_map(serde_json::Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default(),
            })
            .collect();
        meta.push((key("tokens"), MetaValue::Strs(tokens)));
        meta.push((key("merges"), MetaValue::Strs(merges)));
    }
    meta.push((key("token_type"), MetaValue::I32s(types)));
    for (name, id) in [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("padding_token_id", id_of("pad_token_id")),
        (
            "unknown_token_id",
            model["unk_token"]
                .as_str()
                .and_then(|u| tok.token_to_id(u))
                .map(u64::from),
        ),
    ] {
        if let Some(id) = id.filter(|&i| (i as usize) < vocab_size) {
            meta.push((key(name), MetaValue::U32(id as u32)));
        }
    }
    meta.push((key("add_bos_token"), MetaValue::Bool(add_bos)));
    meta.push((key("add_eos_token"), MetaValue::Bool(add_eos)));
    Ok(meta)
}

/// llama.cpp's name for a byte-level pre-tokenizer: SmolLM's splits digits one by one.
fn pre_name(pre_tokenizer_json: &str) -> &'static str {
    if pre_tokenizer_json.contains("\"Digits\"")
        && pre_tokenizer_json.contains("\"individual_digits\":true")
    {
        "smollm"
    } else {
        "default"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_score_then_longer_left_part() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let ids = GgufVocab::ids(&tokens);
        // `abc` scores best: its splits come first, the longer left part (`ab`+`c`) leading.
        let scores = [0.0, 0.0, 0.0, -2.0, -3.0, -1.0];
        let merges = merges_from_vocab(&tokens, &scores, &ids);
        let got: Vec<String> = merges.iter().map(|(l, r)| format!("{l} {r}")).collect();
        assert_eq!(got, ["ab c", "a bc", "a b", "b c"]);
    }

    #[test]
    fn an_absurdly_long_entry_gets_no_merges() {
        let long = "a".repeat(1 << 20);
        let tokens = vec!["a".to_owned(), "aa".to_owned(), long];
        let ids = GgufVocab::ids(&tokens);
        // Splitting it would hash a million substrings of up to a megabyte each.
        let merges = merges_from_vocab(&tokens, &[0.0, -1.0, -2.0], &ids);
        assert_eq!(merges, [("a".to_owned(), "a".to_owned())]);
    }
}
