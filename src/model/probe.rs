//! What a recipe's checkpoint is, read from its headers only (config.json, the safetensors
//! headers, the GGUF metadata): whether hone can load it, checked when the recipe is
//! validated, so an unsupported architecture or dtype fails in a second, located at the
//! recipe's key, and not minutes into a run. The architecture is checked first.

use std::io::Read;
use std::path::Path;

use super::ModelError;

/// The safetensors dtypes the loader reads: floats as weights, integers as buffers it skips.
const READABLE_DTYPES: [&str; 10] = [
    "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL",
];

/// Checks that hone can load the checkpoint at `path` (an HF directory, a `.gguf`, or a
/// directory holding one `.gguf`) without reading any weights.
pub fn probe(path: &Path) -> Result<(), ModelError> {
    if let Some(one) = super::lone_gguf(path) {
        return probe(&one);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        let g = super::gguf::Gguf::open(path)?;
        let arch = g
            .meta("general.architecture")
            .and_then(super::gguf::Meta::as_str)
            .unwrap_or_default();
        if super::family::by_gguf_arch(arch).is_none() {
            return Err(ModelError::UnknownArchitecture {
                path: path.to_path_buf(),
                found: if arch.is_empty() {
                    "(none)".into()
                } else {
                    arch.into()
                },
                supported: format!("{} (GGUF)", super::gguf::architectures()),
            });
        }
        // Opening it checked every tensor's type against the ones hone dequantises.
        return Ok(());
    }
    // A PEFT adapter directory (what an export may copy) has no config.json of its own.
    if path.join(super::lora::ADAPTER_CONFIG).is_file() && !path.join("config.json").exists() {
        return Ok(());
    }
    let config_path = path.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|error| ModelError::Io {
        path: config_path.clone(),
        error,
    })?;
    let config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::BadConfig {
            path: config_path.clone(),
            reason: format!("invalid JSON: {e}"),
        })?;
    let model_type = config["model_type"].as_str().unwrap_or_default();
    if super::family::by_model_type(model_type).is_none() {
        return Err(ModelError::UnknownArchitecture {
            path: config_path,
            found: if model_type.is_empty() {
                "(no model_type)".into()
            } else {
                model_type.into()
            },
            supported: super::family::supported(),
        });
    }
    let mut shards: Vec<_> = std::fs::read_dir(path)
        .map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    shards.sort();
    for shard in &shards {
        for (name, dtype) in safetensors_dtypes(shard)? {
            if !READABLE_DTYPES.contains(&dtype.as_str()) {
                return Err(ModelError::UnsupportedDtype {
                    path: shard.clone(),
                    name,
                    dtype,
                });
            }
        }
    }
    let tokenizer = path.join("tokenizer.json");
    if tokenizer.is_file() {
        super::load_tokenizer_file(&tokenizer)?;
    }
    Ok(())
}

/// Each tensor's dtype from a safetensors header (an 8-byte length, then JSON).
fn safetensors_dtypes(path: &Path) -> Result<Vec<(String, String)>, ModelError> {
    let bad = |reason: String| ModelError::BadSafetensors {
        path: path.to_path_buf(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| bad(format!("no header: {e}")))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps headers at 100 MB; a header longer than the file is not read either.
    let file_len = f.metadata().map_or(0, |m| m.len());
    if len > 100_000_000 || len > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "a header of {len} bytes in a file of {file_len} bytes"
        )));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    Ok(v.as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, t)| (k.clone(), t["dtype"].as_str().unwrap_or("?").to_owned()))
        .collect())
}
