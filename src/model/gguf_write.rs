//! Writing GGUF v3 files that llama.cpp, Ollama and LM Studio load: a decoder's weights (LoRA
//! merged) under llama.cpp's tensor names and layouts (q/k rows permuted for `llama`, Gemma's
//! norms stored as 1 + w, GPT-2's `Conv1D`s transposed), quantised as `f16`, `q8_0` or `q4_k_m`
//! (llama.cpp's mix: Q4_K, with Q6_K for the output and for `attn_v`/`ffn_down` of the layers
//! that matter most), with the hyperparameters, the tokenizer and the chat template in the
//! metadata.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use super::ggml_quantize::quantize;
use super::ggml_quants::types::{F16, F32, Q4_K, Q5_0, Q6_K, Q8_0};
use super::ggml_quants::{block_layout, type_name};
use super::gguf::{TensorNames, permute_rows};
use super::gpt2::gguf::is_conv1d as gpt2_conv1d;
use super::weights::WeightWriter;
use super::weights::transpose;
use super::{Backbone, Model};

/// How an exported GGUF stores its matrices (vectors stay F32); named in recipes as `f16`,
/// `q8_0`, `q4_k_m`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub enum GgufQuant {
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    /// llama.cpp's `Q4_K_M`.
    #[serde(rename = "q4_k_m")]
    Q4KM,
}

impl GgufQuant {
    /// llama.cpp's `general.file_type` (`enum llama_ftype`).
    fn file_type(self) -> u32 {
        match self {
            GgufQuant::F16 => 1,
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q4KM => 15,
        }
    }

    /// The name llama.cpp's tools give files of this kind (`Q4_K_M`).
    pub fn label(self) -> &'static str {
        match self {
            GgufQuant::F16 => "F16",
            GgufQuant::Q8_0 => "Q8_0",
            GgufQuant::Q4KM => "Q4_K_M",
        }
    }
}

/// Why a model cannot be written as GGUF.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("{0}")]
    Unsupported(String),
    #[error("the tokenizer cannot be written as a GGUF vocabulary: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

/// A typed metadata value, as llama.cpp expects each key's type.
#[derive(Debug, Clone)]
pub enum MetaValue {
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
}

/// What an export wrote: its size and how many tensors of each ggml type.
#[derive(Debug, Clone)]
pub struct Written {
    pub bytes: u64,
    pub tensor_types: BTreeMap<String, usize>,
}

/// Writes `model` (its config and tokenizer, its chat template if any) to `path` as GGUF.
pub fn write_gguf(
    model: &Model,
    config: &Value,
    tokenizer: &Tokenizer,
    chat_template: Option<&str>,
    name: &str,
    quant: GgufQuant,
    path: &Path,
) -> Result<Written, GgufWriteError> {
    if model.score.is_some() {
        return Err(GgufWriteError::Unsupported(
            "a model with a classification or score head has no GGUF form llama.cpp runs; export it as `format: hf`".into(),
        ));
    }
    let plan = ArchPlan::of(&model.backbone, config)?;
    let mut meta: Vec<(String, MetaValue)> = vec![
        (
            "general.architecture".into(),
            MetaValue::Str(plan.arch.into()),
        ),
        ("general.name".into(), MetaValue::Str(name.into())),
        (
            "general.file_type".into(),
            MetaValue::U32(quant.file_type()),
        ),
        ("general.quantization_version".into(), MetaValue::U32(2)),
    ];
    meta.extend(
        plan.meta
            .iter()
            .map(|(k, v)| (format!("{}.{k}", plan.arch), v.clone())),
    );
    let vocab = plan.vocab;
    meta.extend(super::gguf_tokenizer::to_metadata(
        tokenizer, config, vocab,
    )?);
    if let Some(t) = chat_template {
        meta.push(("tokenizer.chat_template".into(), MetaValue::Str(t.into())));
    }
    let tensors = plan.tensors(&model.backbone)?;
    let n_layers = plan.layers;
    let tied = !tensors.iter().any(|t| t.0 == "output.weight");
    let mut encoded = Vec::with_capacity(tensors.len());
    let mut counts = BTreeMap::new();
    for (gguf_name, shape, values) in tensors {
        let t = match plan.experts_4bit {
            Some(t) if quant == GgufQuant::Q4KM && gguf_name.ends_with("_exps.weight") => t,
            _ => tensor_type(quant, &gguf_name, &shape, n_layers, tied),
        };
        let data = quantize(t, &values).ok_or_else(|| {
            GgufWriteError::Unsupported(format!("cannot write {gguf_name} as {}", type_name(t)))
        })?;
        *counts.entry(type_name(t)).or_insert(0) += 1;
        // ggml lists dimensions fastest-varying first.
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        encoded.push((gguf_name, dims, t, data));
    }
    let bytes = serialize(&meta, &encoded);
    crate::store::write_atomic(path, &bytes)?;
    Ok(Written {
        bytes: bytes.len() as u64,
        tensor_types: counts,
    })
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third one
/// between get more bits in the `_M` mixes.
fn use_more_bits(layer: usize, n: usize) -> bool {
    layer < n / 8 || layer >= 7 * n / 8 || (layer - n / 8) % 3 == 2
}

/// The ggml type of one tensor: vectors, biases (gpt-oss's stacked expert biases are
/// matrices) and routers (`ffn_gate_inp`, as llama.cpp's converter keeps them) F32; matrices
/// by the quant, falling back as llama.cpp does when a row is not a whole number of blocks
/// (Q4_K -> Q5_0, Q6_K -> Q8_0, then F16).
fn tensor_type(quant: GgufQuant, name: &str, shape: &[usize], n_layers: usize, tied: bool) -> u32 {
    if shape.len() < 2 || name.ends_with(".bias") || name.ends_with("ffn_gate_inp.weight") {
        return F32;
    }
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split_once('.'))
        .and_then(|(l, _)| l.parse::<usize>().ok());
    let wanted = match quant {
        GgufQuant::F16 => F16,
        GgufQuant::Q8_0 => Q8_0,
        GgufQuant::Q4KM => {
            let output = name == "output.weight" || (tied && name == "token_embd.weight");
            let more = |suffix: &str| {
                name.ends_with(suffix) && layer.is_some_and(|l| use_more_bits(l, n_layers))
            };
            // GPT-2's fused q/k/v gets more bits too (llama.cpp: Q5_K, which hone does not
            // write; Q6_K is the next).
            if output
                || more("attn_v.weight")
                || more("ffn_down.weight")
                || more("ffn_down_exps.weight")
                || name.ends_with("attn_qkv.weight")
            {
                Q6_K
            } else {
                Q4_K
            }
        }
    };
    let row = shape[shape.len() - 1];
    let fits = |t: u32| block_layout(t).is_some_and(|(_, per)| row.is_multiple_of(per));
    [wanted, if wanted == Q4_K { Q5_0 } else { Q8_0 }, F16]
        .into_iter()
        .find(|&t| fits(t))
        .unwrap_or(F16)
}

/// One architecture's GGUF form: its name in llama.cpp, its hyperparameters and how its HF
/// tensors become llama.cpp's.
pub struct ArchPlan {
    pub(crate) arch: &'static str,
    pub(crate) meta: Vec<(&'static str, MetaValue)>,
    pub(crate) names: &'static TensorNames,
    pub(crate) layers: usize,
    pub(crate) vocab: usize,
    /// q/k rows reordered for llama.cpp's rotary layout (heads, kv heads).
    pub(crate) permute: Option<(usize, usize)>,
    /// Gemma's norms are stored as 1 + w.
    pub(crate) norms_plus_one: bool,
    /// Tensors llama.cpp keeps rotary settings in: Llama 3's `rope_freqs`, Phi-3's
    /// `rope_factors_short` / `rope_factors_long`.
    pub(crate) rope_tensors: Vec<(&'static str, Vec<f32>)>,
    /// Where HF's tensors do not map one to one onto llama.cpp's (gpt-oss's fused, interleaved
    /// gate/up experts become `ffn_gate_exps` and `ffn_up_exps`): each HF tensor as the
    /// tensors it becomes, under names [`names`](Self::names) maps.
    pub(crate) regroup: Option<Regroup>,
    /// The ggml type a 4-bit export (`q4_k_m`) gives the stacked experts where the family
    /// has its own (gpt-oss's MXFP4), instead of the Q4_K mix.
    pub(crate) experts_4bit: Option<u32>,
}

/// See [`ArchPlan::regroup`].
pub(crate) type Regroup = fn(String, HfTensor) -> Vec<(String, HfTensor)>;

pub fn unsupported(msg: impl Into<String>) -> GgufWriteError {
    GgufWriteError::Unsupported(msg.into())
}

impl ArchPlan {
    fn of(backbone: &Backbone, config: &Value) -> Result<ArchPlan, GgufWriteError> {
        backbone.family().gguf_plan(backbone, config)
    }

    /// The backbone's tensors under llama.cpp's names, in its layouts: `(name, PyTorch shape,
    /// values)`, ordered as llama.cpp's converter orders them (model-wide first, then by layer).
    #[allow(clippy::type_complexity)]
    fn tensors(
        &self,
        backbone: &Backbone,
    ) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>, GgufWriteError> {
        let mut w = WeightWriter::default();
        backbone.write_weights(&mut w);
        let mut out = Vec::new();
        let regrouped: Vec<(String, HfTensor)> = match self.regroup {
            Some(regroup) => w.into_tensors().flat_map(|(n, t)| regroup(n, t)).collect(),
            None => w.into_tensors().collect(),
        };
        for (hf, (shape, values)) in stack_experts(regrouped.into_iter()) {
            let gguf = self.names.to_gguf(&hf).ok_or_else(|| {
                unsupported(format!(
                    "no llama.cpp name for tensor `{hf}` of {}",
                    self.arch
                ))
            })?;
            let (shape, values) = self.to_gguf_layout(&gguf, shape, values);
            out.push((gguf, shape, values));
        }
        for (name, f) in &self.rope_tensors {
            out.push(((*name).to_owned(), vec![f.len()], f.clone()));
        }
        let rank = |n: &str| match n.strip_prefix("blk.") {
            None => (0, 0),
            Some(r) => (
                1,
                r.split('.')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            ),
        };
        out.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    fn to_gguf_layout(
        &self,
        gguf: &str,
        shape: Vec<usize>,
        values: Vec<f32>,
    ) -> (Vec<usize>, Vec<f32>) {
        if self.norms_plus_one && gguf.ends_with("norm.weight") {
            return (shape, values.into_iter().map(|v| v + 1.0).collect());
        }
        if let Some((heads, kv_heads)) = self.permute {
            let cols = shape.get(1).copied().unwrap_or(1);
            if gguf.ends_with("attn_q.weight") || gguf.ends_with("attn_q.bias") {
                let v = permute_rows(&values, shape[0], cols, heads);
                return (shape, v);
            }
            if gguf.ends_with("attn_k.weight") || gguf.ends_with("attn_k.bias") {
                let v = permute_rows(&values, shape[0], cols, kv_heads);
                return (shape, v);
            }
        }
        if self.arch == "gpt2" && gpt2_conv1d(gguf) {
            return (
                vec![shape[1], shape[0]],
                transpose(&values, shape[0], shape[1]),
            );
        }
        (shape, values)
    }
}

/// A tensor's PyTorch shape and values.
pub(crate) type HfTensor = (Vec<usize>, Vec<f32>);

/// HF tensors with each layer's experts (`<p>.experts.<e>.<name>`) stacked in expert order
/// as llama.cpp holds them: `<p>.experts.<name>`, `[experts, ...]`.
fn stack_experts(tensors: impl Iterator<Item = (String, HfTensor)>) -> Vec<(String, HfTensor)> {
    let mut out = Vec::new();
    let mut stacks: BTreeMap<String, BTreeMap<usize, HfTensor>> = BTreeMap::new();
    for (name, tensor) in tensors {
        match super::moe::expert_parameter(name.trim_end_matches(".weight")) {
            Some((stacked, e)) if name.ends_with(".weight") => {
                stacks
                    .entry(format!("{stacked}.weight"))
                    .or_default()
                    .insert(e, tensor);
            }
            _ => out.push((name, tensor)),
        }
    }
    for (name, experts) in stacks {
        let n = experts.len();
        let shape = experts
            .values()
            .next()
            .map(|(s, _)| s.clone())
            .unwrap_or_default();
        let values = experts.into_values().flat_map(|(_, v)| v).collect();
        out.push((name, ([vec![n], shape].concat(), values)));
    }
    out
}

/// The bytes of a GGUF v3 file: header, metadata, tensor table, tensor data (each aligned to
/// 32 bytes, the default `general.alignment`).
fn serialize(
    meta: &[(String, MetaValue)],
    tensors: &[(String, Vec<u64>, u32, Vec<u8>)],
) -> Vec<u8> {
    const ALIGN: usize = 32;
    let mut b = Vec::new();
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    for (key, value) in meta {
        string(&mut b, key);
        match value {
            MetaValue::U32(v) => {
                b.extend(4u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            MetaValue::I32(v) => {
                b.extend(5u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            MetaValue::F32(v) => {
                b.extend(6u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            MetaValue::Bool(v) => {
                b.extend(7u32.to_le_bytes());
                b.push(*v as u8);
            }
            MetaValue::Str(s) => {
                b.extend(8u32.to_le_bytes());
                string(&mut b, s);
            }
            MetaValue::Strs(items) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut b, s);
                }
            }
            MetaValue::I32s(items) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| b.extend(v.to_le_bytes()));
            }
            MetaValue::F32s(items) => {
                b.extend(9u32.to_le_bytes());
                b.extend(6u32.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|v| b.extend(v.to_le_bytes()));
            }
        }
    }
    let mut offset = 0usize;
    for (name, dims, t, data) in tensors {
        string(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(t.to_le_bytes());
        b.extend((offset as u64).to_le_bytes());
        offset += data.len().div_ceil(ALIGN) * ALIGN;
    }
    b.resize(b.len().div_ceil(ALIGN) * ALIGN, 0);
    for (_, _, _, data) in tensors {
        b.extend(data);
        b.resize(b.len().div_ceil(ALIGN) * ALIGN, 0);
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_mixes_types_as_llama_cpp_does() {
        let n = 16;
        let t = |name: &str, shape: &[usize]| {
            type_name(tensor_type(GgufQuant::Q4KM, name, shape, n, true))
        };
        assert_eq!(t("token_embd.weight", &[100, 256]), "Q6_K");
        assert_eq!(t("blk.0.attn_v.weight", &[256, 256]), "Q6_K");
        assert_eq!(t("blk.3.attn_v.weight", &[256, 256]), "Q4_K");
        assert_eq!(t("blk.4.ffn_down.weight", &[256, 512]), "Q6_K");
        assert_eq!(t("blk.5.attn_q.weight", &[256, 256]), "Q4_K");
        // Rows that are not whole K-quant blocks fall back; vectors stay F32.
        assert_eq!(t("blk.5.attn_q.weight", &[64, 64]), "Q5_0");
        assert_eq!(t("token_embd.weight", &[100, 64]), "Q8_0");
        assert_eq!(t("blk.5.attn_q.weight", &[10, 10]), "F16");
        assert_eq!(t("blk.5.attn_norm.weight", &[64]), "F32");
        assert_eq!(t("blk.5.ffn_gate_inp.weight", &[8, 256]), "F32");
        assert_eq!(t("blk.5.ffn_up_exps.bias", &[8, 256]), "F32");
        let q8 = tensor_type(GgufQuant::Q8_0, "blk.0.ffn_up.weight", &[64, 48], n, true);
        assert_eq!(type_name(q8), "F16");
    }
}
