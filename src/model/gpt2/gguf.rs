//! `gpt2` GGUF files both ways: llama.cpp's metadata and tensor names read onto HF's config and
//! weights, its transposed `Conv1D` projections put back (`load`), and the plan that writes a
//! model back in them (`Gpt2::gguf_plan`).

use burn::prelude::*;

use crate::model::gguf::{Fix, Gguf, TensorNames, merge};
use crate::model::weights::{ModelError, WeightMap, transpose};
use crate::model::{Backbone, Frozen};

use super::Gpt2;

/// A `gpt2` GGUF: llama.cpp stores the `Conv1D` projections transposed; they are put back.
pub(crate) fn load(
    g: &Gguf,
    device: &Device,
    frozen: &Frozen,
) -> Result<(Backbone, serde_json::Value), ModelError> {
    let path = &g.path;
    let (vocab, _) = g.vocab_and_tied()?;
    let config = merge(
        serde_json::json!({
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": vocab,
            "n_embd": g.int("gpt2", "embedding_length")?,
            "n_inner": g.int("gpt2", "feed_forward_length")?,
            "n_layer": g.int("gpt2", "block_count")?,
            "n_head": g.int("gpt2", "attention.head_count")?,
            "n_positions": g.int("gpt2", "context_length")?,
            "n_ctx": g.int("gpt2", "context_length")?,
            "layer_norm_epsilon": g.float("gpt2", "attention.layer_norm_epsilon").unwrap_or(1e-5),
        }),
        g.special_ids(),
    );
    let cfg: super::Gpt2Config = g.config_as(&config)?;
    let tensors = g.hf_tensors(
        "gpt2",
        |n| NAMES.to_hf(n),
        |name, shape| match is_conv1d(name) {
            true => {
                let (rows, cols) = (shape[0], shape[1]);
                Fix::Values(Box::new(move |v| transpose(&v, rows, cols)))
            }
            false => Fix::AsStored,
        },
    )?;
    // `hf_tensors` keeps llama.cpp's shapes; the transposed ones take HF's.
    let tensors = tensors
        .into_iter()
        .map(|(name, (shape, values))| {
            let conv = NAMES.to_gguf(&name).is_some_and(|g| is_conv1d(&g));
            let shape = if conv {
                vec![shape[1], shape[0]]
            } else {
                shape
            };
            (name, (shape, values))
        })
        .collect();
    let mut weights = WeightMap::from_sources(path.to_path_buf(), tensors, device);
    weights.hold_frozen(frozen);
    // A tied head is the embedding (GPT-2 has no other).
    weights.discard("lm_head.weight");
    let model = super::Gpt2::from_weights(&cfg, &mut weights)?;
    Ok((Backbone::Gpt2(model), config))
}

/// GPT-2: learned positions, LayerNorms with biases, fused q/k/v.
pub(crate) const NAMES: TensorNames = TensorNames {
    top: &[
        ("token_embd.weight", "transformer.wte.weight"),
        ("position_embd.weight", "transformer.wpe.weight"),
        ("output_norm.weight", "transformer.ln_f.weight"),
        ("output_norm.bias", "transformer.ln_f.bias"),
        ("output.weight", "lm_head.weight"),
    ],
    layer_prefix: "transformer.h.",
    layer: &[
        ("attn_norm.weight", "ln_1.weight"),
        ("attn_norm.bias", "ln_1.bias"),
        ("attn_qkv.weight", "attn.c_attn.weight"),
        ("attn_qkv.bias", "attn.c_attn.bias"),
        ("attn_output.weight", "attn.c_proj.weight"),
        ("attn_output.bias", "attn.c_proj.bias"),
        ("ffn_norm.weight", "ln_2.weight"),
        ("ffn_norm.bias", "ln_2.bias"),
        ("ffn_up.weight", "mlp.c_fc.weight"),
        ("ffn_up.bias", "mlp.c_fc.bias"),
        ("ffn_down.weight", "mlp.c_proj.weight"),
        ("ffn_down.bias", "mlp.c_proj.bias"),
    ],
};

/// GPT-2's projections are `Conv1D`s, stored `[in, out]` by HF and `[out, in]` by llama.cpp.
pub(crate) fn is_conv1d(gguf: &str) -> bool {
    [
        "attn_qkv.weight",
        "attn_output.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ]
    .iter()
    .any(|p| gguf.ends_with(p))
}

impl Gpt2 {
    /// How llama.cpp holds this model: its GGUF architecture, metadata and tensor names
    /// ([`crate::model::gguf_write`]); an error for what llama.cpp cannot run.
    pub(crate) fn gguf_plan(
        &self,
        config: &serde_json::Value,
    ) -> Result<crate::model::gguf_write::ArchPlan, crate::model::gguf_write::GgufWriteError> {
        use crate::model::gguf_write::MetaValue::*;
        use crate::model::gguf_write::{ArchPlan, unsupported};
        let u = |v: usize| U32(v as u32);
        let c: super::Gpt2Config = serde_json::from_value(config.clone())
            .map_err(|e| unsupported(format!("config.json: {e}")))?;
        Ok(ArchPlan {
            arch: "gpt2",
            meta: vec![
                ("context_length", u(c.n_positions)),
                ("embedding_length", u(c.n_embd)),
                ("feed_forward_length", u(c.n_inner.unwrap_or(4 * c.n_embd))),
                ("block_count", u(c.n_layer)),
                ("attention.head_count", u(c.n_head)),
                (
                    "attention.layer_norm_epsilon",
                    F32(c.layer_norm_epsilon as f32),
                ),
            ],
            names: &NAMES,
            layers: c.n_layer,
            vocab: c.vocab_size,
            permute: None,
            norms_plus_one: false,
            rope_tensors: Vec::new(),
            regroup: None,
            experts_4bit: None,
        })
    }
}
