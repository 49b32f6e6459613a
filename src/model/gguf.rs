//! GGUF v3 files (llama.cpp's format): metadata, the tensor table (dequantised by
//! `ggml_quants`), and what every family's reading of one shares (its `gguf.rs` maps the
//! metadata and tensor names onto HF's): the dispatch on `general.architecture`, tensors
//! under HF names with llama.cpp's layout changes undone, and the tokenizer and chat template
//! rebuilt from the metadata.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;

use super::Backbone;
use super::Frozen;
use super::ggml_quants::{SUPPORTED, block_layout, dequantize, type_name};
use super::weights::{FileBytes, ModelError, SharedBytes, Source, Stored};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

impl Meta {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Meta::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Meta::Float(f) => Some(*f),
            Meta::Int(i) => Some(*i as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Meta::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Meta]> {
        match self {
            Meta::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order (fastest-varying first): a PyTorch `[out, in]` is `[in, out]`.
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    pub offset: u64,
}

/// A parsed GGUF file (tensor data stays in `bytes` until dequantised).
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: HashMap<String, Meta>,
    pub tensors: Vec<TensorInfo>,
    bytes: SharedBytes,
    data_start: usize,
}

/// How deeply metadata arrays may nest.
const MAX_ARRAY_DEPTH: usize = 4;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Reader<'_> {
    fn err(&self, what: &str) -> ModelError {
        ModelError::BadGguf {
            path: self.path.to_path_buf(),
            reason: format!("{what} at byte {} (truncated file?)", self.pos),
        }
    }
    fn take(&mut self, n: usize) -> Result<&[u8], ModelError> {
        // `n` comes from the file and may be anything up to 2^64-1: compared with what is
        // left, never added to the position first.
        if n > self.bytes.len() - self.pos {
            return Err(self.err("unexpected end of file"));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, ModelError> {
        let n = usize::try_from(self.u64()?).map_err(|_| self.err("unexpected end of file"))?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn value(&mut self, t: u32, depth: usize) -> Result<Meta, ModelError> {
        Ok(match t {
            0 => Meta::Int(self.take(1)?[0] as i64),
            1 => Meta::Int(self.take(1)?[0] as i8 as i64),
            2 => Meta::Int(u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            3 => Meta::Int(i16::from_le_bytes(self.take(2)?.try_into().expect("2")) as i64),
            4 => Meta::Int(self.u32()? as i64),
            5 => Meta::Int(self.u32()? as i32 as i64),
            6 => Meta::Float(f32::from_le_bytes(self.take(4)?.try_into().expect("4")) as f64),
            7 => Meta::Bool(self.take(1)?[0] != 0),
            8 => Meta::Str(self.string()?),
            9 => {
                // llama.cpp writes flat arrays; a few levels allow for nesting, and bound the
                // recursion a crafted file could ask for.
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(&format!(
                        "metadata arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let inner = self.u32()?;
                let n = self.u64()?;
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                Meta::Array(items)
            }
            10 => Meta::Int(self.u64()? as i64),
            11 => Meta::Int(self.u64()? as i64),
            12 => Meta::Float(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            other => return Err(self.err(&format!("unknown metadata value type {other}"))),
        })
    }
}

impl Gguf {
    pub fn open(path: &Path) -> Result<Gguf, ModelError> {
        let io = |error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        };
        Gguf::from_bytes(path, FileBytes::map(path).map_err(io)?)
    }

    /// A GGUF held in memory.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Gguf, ModelError> {
        Gguf::from_bytes(path, FileBytes::Owned(bytes))
    }

    fn from_bytes(path: &Path, bytes: FileBytes) -> Result<Gguf, ModelError> {
        let mut r = Reader {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if r.take(4)? != b"GGUF" {
            return Err(ModelError::BadGguf {
                path: path.to_path_buf(),
                reason: "not a GGUF file (no GGUF magic)".into(),
            });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::BadGguf {
                path: path.to_path_buf(),
                reason: format!("GGUF version {version}; hone reads 2 and 3"),
            });
        }
        let n_tensors = r.u64()? as usize;
        let n_meta = r.u64()? as usize;
        let mut metadata = HashMap::new();
        for _ in 0..n_meta {
            let key = r.string()?;
            let t = r.u32()?;
            metadata.insert(key, r.value(t, 0)?);
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()? as usize;
            let dims = (0..n_dims)
                .map(|_| r.u64().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let bad = |reason: String| ModelError::BadGguf {
            path: path.to_path_buf(),
            reason,
        };
        let align = metadata
            .get("general.alignment")
            .and_then(Meta::as_i64)
            .unwrap_or(32);
        let align = usize::try_from(align)
            .ok()
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| bad(format!("general.alignment {align} is not a power of two")))?;
        let data_start = r
            .pos
            .div_ceil(align)
            .checked_mul(align)
            .ok_or_else(|| bad(format!("general.alignment {align} is too large")))?;
        for t in &tensors {
            let (bytes_per, per_block) =
                block_layout(t.ggml_type).ok_or_else(|| ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    name: t.name.clone(),
                    dtype: format!("{} (hone reads {})", type_name(t.ggml_type), SUPPORTED),
                })?;
            // Sizes come from the file: computed without overflow, checked against its length.
            let n = t.dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let end = n
                .filter(|n| n.is_multiple_of(per_block))
                .and_then(|n| (n / per_block).checked_mul(bytes_per))
                .and_then(|len| len.checked_add(usize::try_from(t.offset).ok()?))
                .and_then(|len| len.checked_add(data_start));
            match end {
                Some(end) if end <= bytes.len() => {}
                Some(_) => {
                    return Err(bad(format!(
                        "tensor `{}` runs past the end of the file (truncated?)",
                        t.name
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "tensor `{}` has a size that is not whole {} blocks or cannot be",
                        t.name,
                        type_name(t.ggml_type)
                    )));
                }
            }
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            bytes: std::sync::Arc::new(bytes),
            data_start,
        })
    }

    pub fn meta(&self, key: &str) -> Option<&Meta> {
        self.metadata.get(key)
    }

    /// A tensor dequantised to f32, with its PyTorch shape (ggml dims reversed).
    pub fn tensor(&self, info: &TensorInfo) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let n: usize = info.dims.iter().product();
        let start = self.data_start + info.offset as usize;
        let values = dequantize(info.ggml_type, &self.bytes[start..], n).ok_or_else(|| {
            ModelError::UnsupportedDtype {
                path: self.path.clone(),
                name: info.name.clone(),
                dtype: type_name(info.ggml_type),
            }
        })?;
        Ok((info.dims.iter().rev().copied().collect(), values))
    }

    /// The family config a GGUF's metadata was mapped to, parsed; a file it does not fit is
    /// named as bad.
    pub(crate) fn config_as<T: serde::de::DeserializeOwned>(
        &self,
        config: &serde_json::Value,
    ) -> Result<T, ModelError> {
        serde_json::from_value(config.clone()).map_err(|e| self.bad(e.to_string()))
    }

    pub(crate) fn bad(&self, reason: String) -> ModelError {
        ModelError::BadGguf {
            path: self.path.clone(),
            reason,
        }
    }

    pub(crate) fn need(&self, key: &str) -> Result<&Meta, ModelError> {
        self.meta(key).ok_or_else(|| ModelError::BadGguf {
            path: self.path.clone(),
            reason: format!("metadata `{key}` is missing"),
        })
    }
}

/// llama.cpp's reordering of q/k projection rows for its rotary layout (HF's half-split ->
/// interleaved pairs): HF row `(head, t, j)` is GGUF row `(head, j, t)`; [`unpermute_rows`]
/// undoes it.
pub(crate) fn permute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(values, rows, cols, heads, true)
}

/// Undoes [`permute_rows`]: GGUF row `(head, j, t)` is HF row `(head, t, j)`.
fn unpermute_rows(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    move_rows(values, rows, cols, heads, false)
}

/// [`unpermute_rows`] as a row order: HF row `r` is GGUF row `order[r]`.
pub(crate) fn unpermuted_row_order(rows: usize, heads: usize) -> Vec<u32> {
    let index: Vec<f32> = (0..rows).map(|r| r as f32).collect();
    unpermute_rows(&index, rows, 1, heads)
        .into_iter()
        .map(|r| r as u32)
        .collect()
}

fn move_rows(values: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let dh = rows / heads;
    let half = dh / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for j in 0..half {
            for t in 0..2 {
                let (gguf, hf) = (h * dh + j * 2 + t, h * dh + t * half + j);
                let (dst, src) = if to_gguf { (gguf, hf) } else { (hf, gguf) };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&values[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// A model read from a GGUF: the network, an HF-style `config.json`, the tokenizer rebuilt from
/// the metadata (when its kind is supported) and the chat template.
pub struct GgufModel {
    pub backbone: Backbone,
    pub config: serde_json::Value,
    pub tokenizer: Option<tokenizers::Tokenizer>,
    pub chat_template: Option<String>,
}

/// The architectures (`general.architecture`) hone maps onto its families, for messages.
pub fn architectures() -> String {
    super::family::FAMILIES
        .iter()
        .flat_map(|f| f.gguf_archs())
        .copied()
        .collect::<Vec<_>>()
        .join(", ")
}

/// A GGUF file as one of hone's model families.
/// Frozen weights are held as `frozen` says: F16 and BF16 tensors in one of `frozen.keep`
/// stay in it; with `frozen.quantize`, the block projections are held quantised (QLoRA's
/// frozen base): those the file stores in a ggml block type keep their blocks, the others are
/// quantised to it.
pub fn load(path: &Path, device: &Device, frozen: &Frozen) -> Result<GgufModel, ModelError> {
    let g = Gguf::open(path)?;
    let arch = g
        .need("general.architecture")?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let family =
        super::family::by_gguf_arch(&arch).ok_or_else(|| ModelError::UnknownArchitecture {
            path: path.to_path_buf(),
            found: arch.clone(),
            supported: format!("{} (GGUF)", architectures()),
        })?;
    let (backbone, config) = family.load_gguf(&g, &arch, device, frozen)?;
    Ok(GgufModel {
        backbone,
        config,
        tokenizer: super::gguf_tokenizer::build(&g)?,
        chat_template: g
            .meta("tokenizer.chat_template")
            .and_then(Meta::as_str)
            .map(str::to_owned),
    })
}

impl Gguf {
    /// Integer metadata `<arch>.<key>`.
    pub(crate) fn int(&self, arch: &str, key: &str) -> Result<usize, ModelError> {
        self.need(&format!("{arch}.{key}"))?
            .as_i64()
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| ModelError::BadGguf {
                path: self.path.clone(),
                reason: format!("`{arch}.{key}` is not a count"),
            })
    }

    pub(crate) fn float(&self, arch: &str, key: &str) -> Option<f64> {
        self.meta(&format!("{arch}.{key}")).and_then(Meta::as_f64)
    }

    /// The vocabulary size (the token embedding's rows) and whether the LM head is tied to it
    /// (no `output.weight`).
    pub(crate) fn vocab_and_tied(&self) -> Result<(usize, bool), ModelError> {
        let embd = self
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: "token_embd.weight".into(),
            })?;
        let vocab = embd
            .dims
            .get(1)
            .copied()
            .ok_or_else(|| ModelError::BadGguf {
                path: self.path.clone(),
                reason: "token_embd.weight is not a matrix".into(),
            })?;
        Ok((
            vocab,
            !self.tensors.iter().any(|t| t.name == "output.weight"),
        ))
    }

    /// The HF `rope_scaling` a Llama-architecture GGUF asks for: `rope.scaling.type` linear or
    /// yarn, or Llama 3's, recovered from the `rope_freqs` tensor llama.cpp stores it as.
    pub(crate) fn rope_scaling(
        &self,
        arch: &str,
        config: &serde_json::Value,
        heads: usize,
    ) -> Result<Option<serde_json::Value>, ModelError> {
        let bad = |reason: String| self.bad(reason);
        let kind = self
            .meta(&format!("{arch}.rope.scaling.type"))
            .and_then(Meta::as_str)
            .unwrap_or("none");
        let factor = self.float(arch, "rope.scaling.factor");
        match kind {
            "none" => {}
            "linear" => {
                return Ok(Some(
                    serde_json::json!({ "rope_type": "linear", "factor": factor }),
                ));
            }
            "yarn" => {
                return Ok(Some(serde_json::json!({
                    "rope_type": "yarn",
                    "factor": factor,
                    "original_max_position_embeddings":
                        self.int(arch, "rope.scaling.original_context_length").ok(),
                })));
            }
            other => {
                return Err(bad(format!(
                    "rotary scaling `{other}`; hone reads none, linear, yarn and Llama 3's rope_freqs"
                )));
            }
        }
        let Some(info) = self.tensors.iter().find(|t| t.name == "rope_freqs.weight") else {
            return Ok(None);
        };
        let (_, divisors) = self.tensor(info)?;
        let head_dim = config["head_dim"].as_u64().map_or_else(
            || config["hidden_size"].as_u64().unwrap_or(0) as usize / heads.max(1),
            |d| d as usize,
        );
        let theta = config["rope_theta"].as_f64().unwrap_or(10_000.0);
        match super::rope::RopeScaling::llama3_from_divisors(&divisors, head_dim, theta) {
            Some(super::rope::RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            }) => Ok(Some(serde_json::json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max,
            }))),
            Some(_) => Ok(None),
            None => Err(bad(
                "rope_freqs holds rotary factors that are not Llama 3's scaling".into(),
            )),
        }
    }

    pub(crate) fn special_ids(&self) -> serde_json::Value {
        let id = |k: &str| {
            self.meta(&format!("tokenizer.ggml.{k}"))
                .and_then(Meta::as_i64)
        };
        serde_json::json!({
            "bos_token_id": id("bos_token_id"),
            "eos_token_id": id("eos_token_id"),
            "pad_token_id": id("padding_token_id"),
        })
    }

    /// Every tensor under its HF name (`rename`; `None` is an unexpected tensor), to be read
    /// when the model takes it, with llama.cpp's layout changes undone as `fix` says.
    pub(crate) fn hf_tensors(
        &self,
        arch: &str,
        rename: impl Fn(&str) -> Option<String>,
        fix: impl Fn(&str, &[usize]) -> Fix,
    ) -> Result<HashMap<String, (Vec<usize>, Source)>, ModelError> {
        let mut tensors = HashMap::new();
        for info in &self.tensors {
            let hf = rename(&info.name).ok_or_else(|| ModelError::BadGguf {
                path: self.path.clone(),
                reason: format!("unexpected tensor `{}` for {arch}", info.name),
            })?;
            let shape: Vec<usize> = info.dims.iter().rev().copied().collect();
            let lazy = |rows| Source::Ggml {
                bytes: self.bytes.clone(),
                start: self.data_start + info.offset as usize,
                ggml_type: info.ggml_type,
                rows,
            };
            let source = match fix(&info.name, &shape) {
                Fix::AsStored => lazy(None),
                Fix::Rows(order) => lazy(Some(order)),
                Fix::Values(f) => Source::Ready(Stored::F32(f(self.tensor(info)?.1))),
            };
            tensors.insert(hf, (shape, source));
        }
        Ok(tensors)
    }
}

/// How a GGUF tensor's layout is turned into HF's.
pub(crate) enum Fix {
    /// As the file has it.
    AsStored,
    /// Rows reordered: row `r` is the file's row `order[r]` (llama.cpp's q/k permutation undone;
    /// quantised blocks stay as they are, since each row is whole).
    Rows(Vec<u32>),
    /// The values changed (read now, as f32).
    Values(Box<dyn FnOnce(Vec<f32>) -> Vec<f32>>),
}

pub(crate) fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// llama.cpp's tensor names and HF's for one family: model-wide tensors, and a layer's parts
/// (`blk.N.<gguf>` is `<layer_prefix>N.<hf>`). The loader reads them one way, the GGUF export
/// writes them the other.
pub(crate) struct TensorNames {
    pub(crate) top: &'static [(&'static str, &'static str)],
    pub(crate) layer_prefix: &'static str,
    pub(crate) layer: &'static [(&'static str, &'static str)],
}

impl TensorNames {
    pub(crate) fn to_hf(&self, gguf: &str) -> Option<String> {
        if let Some((_, hf)) = self.top.iter().find(|(g, _)| *g == gguf) {
            return Some((*hf).to_owned());
        }
        let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
        let (_, hf) = self.layer.iter().find(|(g, _)| *g == part)?;
        Some(format!("{}{layer}.{hf}", self.layer_prefix))
    }

    pub(crate) fn to_gguf(&self, hf: &str) -> Option<String> {
        if let Some((g, _)) = self.top.iter().find(|(_, h)| *h == hf) {
            return Some((*g).to_owned());
        }
        let (layer, part) = hf.strip_prefix(self.layer_prefix)?.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let (g, _) = self.layer.iter().find(|(_, h)| *h == part)?;
        Some(format!("blk.{layer}.{g}"))
    }
}

pub(crate) const DECODER_TOP: &[(&str, &str)] = &[
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // One head, head_dim 4, 1 column: HF rows [a0 a1 | b0 b1] (half-split) are stored by
        // llama.cpp as interleaved pairs [a0 b0 a1 b1].
        let gguf = [0.0, 10.0, 1.0, 11.0];
        assert_eq!(unpermute_rows(&gguf, 4, 1, 1), vec![0.0, 1.0, 10.0, 11.0]);
        assert_eq!(permute_rows(&[0.0, 1.0, 10.0, 11.0], 4, 1, 1), gguf);
        let hf: Vec<f32> = (0..48).map(|v| v as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&hf, 16, 3, 2), 16, 3, 2), hf);
    }

    #[test]
    fn tensor_names_map_both_ways() {
        use crate::model::{gemma3, gpt2, llama, phi3};
        for names in [
            &llama::gguf::NAMES,
            &gemma3::gguf::NAMES,
            &phi3::gguf::NAMES,
            &gpt2::gguf::NAMES,
        ] {
            for (g, _) in names.layer {
                let gguf = format!("blk.7.{g}");
                let hf = names.to_hf(&gguf).unwrap();
                assert_eq!(names.to_gguf(&hf).as_deref(), Some(gguf.as_str()));
            }
        }
        assert_eq!(
            gpt2::gguf::NAMES.to_hf("blk.0.attn_qkv.weight").as_deref(),
            Some("transformer.h.0.attn.c_attn.weight")
        );
        assert_eq!(
            llama::gguf::NAMES.to_gguf("model.layers.x.mlp.up_proj.weight"),
            None
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_clear_errors() {
        let e = Gguf::parse(Path::new("x.gguf"), b"NOPE".to_vec())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a GGUF file"), "{e}");
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(3u32.to_le_bytes());
        bytes.extend(1u64.to_le_bytes());
        let e = Gguf::parse(Path::new("x.gguf"), bytes)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unexpected end of file"), "{e}");
    }
}
