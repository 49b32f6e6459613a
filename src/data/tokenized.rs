//! The tokenized form of a stage's examples, cached in the store (`.hone/tokenized/<key>`) so a
//! rerun that changes only training settings (lr, epochs, LoRA rank...) does not tokenize the
//! data again. The key is BLAKE3 over the tokenizer's full content (vocabulary, merges,
//! normaliser, special tokens), the examples' text and how they were encoded (template,
//! length limit, end token): a different tokenizer, or the same data encoded differently, can
//! never reuse an entry. Entries are written whole (temp file, rename) or not at all, and are
//! pure caches: `hone cache gc` removes them, and a damaged one is recomputed.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;
use tokenizers::Tokenizer;

use crate::store::hash::hash_bytes;
use crate::store::sealed;

/// One encoded example: its token ids and, per token, whether the loss covers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

/// Version 2 entries end in their BLAKE3 (`store::sealed`): a damaged one is recomputed.
const MAGIC: &[u8; 8] = b"HONETOK2";

/// The cache key of `examples` (any serialisable form of the text) encoded by `tokenizer` as
/// `how` says.
pub fn key(
    tokenizer: &Tokenizer,
    how: &serde_json::Value,
    examples: &(impl serde::Serialize + ?Sized),
) -> Result<String> {
    let tok = tokenizer
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("cannot serialise the tokenizer: {e}"))?;
    let material = serde_json::json!({
        "tokenizer": hash_bytes(tok.as_bytes()),
        "how": how,
        "examples": hash_bytes(serde_json::to_string(examples)?.as_bytes()),
    });
    Ok(hash_bytes(material.to_string().as_bytes()))
}

/// The cached encoding under `key` in `dir`, or `compute`'s, stored for next time. Without a
/// directory (a stage run outside a store) it just computes.
pub fn cached(
    dir: Option<&Path>,
    key: &str,
    compute: impl FnOnce() -> Result<Vec<Encoded>>,
) -> Result<Vec<Encoded>> {
    let Some(dir) = dir else { return compute() };
    let path = dir.join(key);
    if let Ok(bytes) = std::fs::read(&path) {
        match sealed::open(&bytes).and_then(decode) {
            Some(hit) => return Ok(hit),
            // An entry of an earlier hone is replaced without a word.
            None if bytes.starts_with(b"HONETOK1") => {}
            None => tracing::warn!(
                "discarding a damaged tokenized cache entry {}; encoding again",
                path.display()
            ),
        }
    }
    let encoded = compute()?;
    // A cache that cannot be written costs speed, not correctness.
    let _ = store(dir, &path, &encoded);
    Ok(encoded)
}

/// Numbers computed from data (a reference model's log-probabilities), cached like tokens:
/// stored bit for bit as the ids of one entry, so a reread gives the very same floats.
pub fn cached_floats(
    dir: Option<&Path>,
    key: &str,
    compute: impl FnOnce() -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let entry = cached(dir, key, || {
        let values = compute()?;
        Ok(vec![Encoded {
            targets: vec![false; values.len()],
            ids: values.iter().map(|v| v.to_bits()).collect(),
        }])
    })?;
    Ok(entry
        .first()
        .map(|e| e.ids.iter().map(|&b| f32::from_bits(b)).collect())
        .unwrap_or_default())
}

/// Results computed from a model and data (an evaluation of one model), cached like tokens
/// as sealed JSON: f64s survive JSON unchanged, so a reread gives the very same numbers.
pub fn cached_json<T: serde::Serialize + serde::de::DeserializeOwned>(
    dir: Option<&Path>,
    key: &str,
    compute: impl FnOnce() -> Result<T>,
) -> Result<(T, bool)> {
    let Some(dir) = dir else {
        return Ok((compute()?, false));
    };
    let path = dir.join(key);
    if let Ok(bytes) = std::fs::read(&path) {
        let hit = sealed::open(&bytes)
            .and_then(|b| b.strip_prefix(JSON_MAGIC))
            .and_then(|b| serde_json::from_slice(b).ok());
        match hit {
            Some(hit) => return Ok((hit, true)),
            None => tracing::warn!(
                "discarding a damaged cache entry {}; computing it again",
                path.display()
            ),
        }
    }
    let value = compute()?;
    let mut bytes = JSON_MAGIC.to_vec();
    serde_json::to_writer(&mut bytes, &value)?;
    // A cache that cannot be written costs time, not correctness.
    let _ = std::fs::create_dir_all(dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| crate::store::write_atomic(&path, &sealed::seal(bytes)));
    Ok((value, false))
}

const JSON_MAGIC: &[u8; 8] = b"HONEJSN1";

fn store(dir: &Path, path: &PathBuf, encoded: &[Encoded]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut out =
        Vec::with_capacity(16 + encoded.iter().map(|e| 8 + e.ids.len() * 5).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
    for e in encoded {
        out.extend_from_slice(&(e.ids.len() as u64).to_le_bytes());
        for id in &e.ids {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out.extend(e.targets.iter().map(|&t| t as u8));
    }
    let tmp = dir.join(format!(
        ".{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&sealed::seal(out))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn decode(bytes: &[u8]) -> Option<Vec<Encoded>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    if take(8)? != MAGIC {
        return None;
    }
    let u64_of = |b: &[u8]| usize::try_from(u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let n = u64_of(take(8)?).ok()?;
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        let len = u64_of(take(8)?).ok()?;
        let ids = take(len.checked_mul(4)?)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let targets = take(len)?.iter().map(|&b| b == 1).collect();
        out.push(Encoded { ids, targets });
    }
    (at == bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(vocab: &[&str]) -> Tokenizer {
        let v: std::collections::HashMap<String, u32> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(v.into_iter().collect())
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        Tokenizer::new(model)
    }

    #[test]
    fn entries_round_trip_and_keys_follow_the_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![Encoded {
            ids: vec![1, 2, 70000],
            targets: vec![false, true, true],
        }];
        let (a, b) = (tokenizer(&["[UNK]", "a"]), tokenizer(&["[UNK]", "b"]));
        let how = serde_json::json!({ "max_length": 8 });
        let key_a = key(&a, &how, &["x"]).unwrap();
        assert_ne!(
            key_a,
            key(&b, &how, &["x"]).unwrap(),
            "another tokenizer, another key"
        );
        assert_ne!(
            key_a,
            key(&a, &serde_json::json!({ "max_length": 9 }), &["x"]).unwrap()
        );
        assert_ne!(key_a, key(&a, &how, &["y"]).unwrap());
        let first = cached(Some(dir.path()), &key_a, || Ok(data.clone())).unwrap();
        assert_eq!(first, data);
        let again = cached(Some(dir.path()), &key_a, || {
            panic!("must come from the cache")
        })
        .unwrap();
        assert_eq!(again, data);
        // A damaged entry is recomputed, not trusted.
        std::fs::write(dir.path().join(&key_a), b"HONETOK1garbage").unwrap();
        let recomputed = cached(Some(dir.path()), &key_a, || Ok(vec![])).unwrap();
        assert!(recomputed.is_empty());
    }
}
