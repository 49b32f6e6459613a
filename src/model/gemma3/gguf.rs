//! `gemma3` and `gemma2` GGUF files both ways: llama.cpp's metadata and tensor names read onto
//! HF's config and weights, its norms stored plus 1 undone (`load`), and the plan that writes a
//! model back in them (`Gemma3::gguf_plan`).

use burn::prelude::*;

use crate::model::gguf::{DECODER_TOP, Fix, Gguf, Meta, TensorNames, merge};
use crate::model::rope::RopeScaling;
use crate::model::weights::{ModelError, WeightMap};
use crate::model::{Backbone, Frozen};

use super::{Gemma3, Gemma3Config};

/// A `gemma3` or `gemma2` GGUF (text): llama.cpp stores every norm weight plus 1 (Gemma's
/// norms scale by 1 + w), takes q and k as they are (Gemma's rotary layout is HF's) and scales
/// attention by the head size. Gemma 3: every sixth layer a full-attention one, the sliding
/// ones with a rotary base of 10000. Gemma 2: every other layer, one rotary base, soft-capped
/// attention scores and logits.
pub(crate) fn load(
    g: &Gguf,
    arch: &str,
    device: &Device,
    frozen: &Frozen,
) -> Result<(Backbone, serde_json::Value), ModelError> {
    let path = &g.path;
    let gemma2 = arch == "gemma2";
    let head_dim = g.int(arch, "attention.key_length")?;
    let (vocab, tied) = g.vocab_and_tied()?;
    let scaling = g
        .meta(&format!("{arch}.rope.scaling.type"))
        .and_then(Meta::as_str)
        .filter(|t| *t != "none")
        .map(|t| serde_json::json!({ "rope_type": t, "factor": g.float(arch, "rope.scaling.factor") }));
    let config = merge(
        serde_json::json!({
            "model_type": if gemma2 { "gemma2" } else { "gemma3_text" },
            "architectures": [if gemma2 { "Gemma2ForCausalLM" } else { "Gemma3ForCausalLM" }],
            "vocab_size": vocab,
            "hidden_size": g.int(arch, "embedding_length")?,
            "intermediate_size": g.int(arch, "feed_forward_length")?,
            "num_hidden_layers": g.int(arch, "block_count")?,
            "num_attention_heads": g.int(arch, "attention.head_count")?,
            "num_key_value_heads": g.int(arch, "attention.head_count_kv")?,
            "head_dim": head_dim,
            "query_pre_attn_scalar": head_dim,
            "max_position_embeddings": g.int(arch, "context_length")?,
            "rms_norm_eps": g.float(arch, "attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            "rope_theta": g.float(arch, "rope.freq_base")
                .unwrap_or(if gemma2 { 10_000.0 } else { 1_000_000.0 }),
            "rope_scaling": scaling,
            "sliding_window": g.int(arch, "attention.sliding_window").ok(),
            "sliding_window_pattern": if gemma2 { 2 } else { 6 },
            "tie_word_embeddings": tied,
            "hidden_activation": "gelu_pytorch_tanh",
        }),
        g.special_ids(),
    );
    let mut config = config;
    if gemma2 {
        config["attn_logit_softcapping"] = g.float(arch, "attn_logit_softcapping").into();
        config["final_logit_softcapping"] = g.float(arch, "final_logit_softcapping").into();
    } else {
        config["rope_local_base_freq"] = 10_000.0.into();
    }
    let cfg: Gemma3Config = g.config_as(&config)?;
    cfg.check().map_err(|e| g.bad(e.to_string()))?;
    let tensors = g.hf_tensors(
        arch,
        |n| NAMES.to_hf(n),
        |name, _| match name.ends_with("norm.weight") {
            true => Fix::Values(Box::new(|v| v.into_iter().map(|w| w - 1.0).collect())),
            false => Fix::AsStored,
        },
    )?;
    let mut weights = WeightMap::from_sources(path.to_path_buf(), tensors, device);
    weights.hold_frozen(frozen);
    let model = Gemma3::from_weights(&cfg, &mut weights)?;
    Ok((Backbone::Gemma3(model), config))
}

/// Gemma 2 and 3: four norms a layer, per-head norms (Gemma 3).
pub(crate) const NAMES: TensorNames = TensorNames {
    top: DECODER_TOP,
    layer_prefix: "model.layers.",
    layer: &[
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("attn_q_norm.weight", "self_attn.q_norm.weight"),
        ("attn_k_norm.weight", "self_attn.k_norm.weight"),
        (
            "post_attention_norm.weight",
            "post_attention_layernorm.weight",
        ),
        ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
        ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ],
};

impl Gemma3 {
    /// How llama.cpp holds this model: its GGUF architecture, metadata and tensor names
    /// ([`crate::model::gguf_write`]); an error for what llama.cpp cannot run.
    pub(crate) fn gguf_plan(
        &self,
        _config: &serde_json::Value,
    ) -> Result<crate::model::gguf_write::ArchPlan, crate::model::gguf_write::GgufWriteError> {
        use crate::model::gguf_write::MetaValue::*;
        use crate::model::gguf_write::{ArchPlan, unsupported};
        let u = |v: usize| U32(v as u32);
        let c = &self.config;
        let gemma2 = c.is_gemma2();
        let arch = if gemma2 { "gemma2" } else { "gemma3" };
        // llama.cpp fixes what these configs leave open: attention scaled by the head
        // size, the layer pattern, Gemma 3's sliding rotary base.
        if c.query_pre_attn_scalar != c.head_dim {
            return Err(unsupported(format!(
                "llama.cpp scales {arch} attention by head_dim ({}), this model by query_pre_attn_scalar {}",
                c.head_dim, c.query_pre_attn_scalar
            )));
        }
        let pattern = if gemma2 { 2 } else { 6 };
        let sliding = c.sliding_layers().map_err(|e| unsupported(e.to_string()))?;
        if sliding
            .iter()
            .enumerate()
            .any(|(i, s)| *s == (i + 1).is_multiple_of(pattern))
        {
            return Err(unsupported(format!(
                "llama.cpp's {arch} has a full-attention layer every {pattern}th layer; this model's layer_types differ"
            )));
        }
        // The stack's bases are [full, sliding].
        let (theta, full) = &self.rotary.bases[0];
        let local = self.rotary.bases[1].0;
        if !gemma2 && local != 10_000.0 {
            return Err(unsupported(format!(
                "llama.cpp's gemma3 gives sliding layers a rotary base of 10000; this model {local}"
            )));
        }
        let mut meta = vec![
            ("context_length", u(c.max_position_embeddings)),
            ("embedding_length", u(c.hidden_size)),
            ("feed_forward_length", u(c.intermediate_size)),
            ("block_count", u(c.num_hidden_layers)),
            ("attention.head_count", u(c.num_attention_heads)),
            ("attention.head_count_kv", u(c.num_key_value_heads)),
            ("attention.key_length", u(c.head_dim)),
            ("attention.value_length", u(c.head_dim)),
            (
                "attention.layer_norm_rms_epsilon",
                F32(c.rms_norm_eps as f32),
            ),
            ("rope.freq_base", F32(*theta as f32)),
        ];
        if let Some(w) = c.sliding_window {
            meta.push(("attention.sliding_window", u(w.min(u32::MAX as usize))));
        }
        match full {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                meta.push(("rope.scaling.type", Str("linear".into())));
                meta.push(("rope.scaling.factor", F32(*factor as f32)));
            }
            other => {
                return Err(unsupported(format!(
                    "hone writes {arch} GGUFs with linear rotary scaling or none, not {other:?}"
                )));
            }
        }
        if let Some(cap) = c.attn_logit_softcapping {
            meta.push(("attn_logit_softcapping", F32(cap as f32)));
        }
        if let Some(cap) = c.final_logit_softcapping {
            meta.push(("final_logit_softcapping", F32(cap as f32)));
        }
        Ok(ArchPlan {
            arch,
            meta,
            names: &NAMES,
            layers: c.num_hidden_layers,
            vocab: c.vocab_size,
            permute: None,
            norms_plus_one: true,
            rope_tensors: Vec::new(),
            regroup: None,
            experts_4bit: None,
        })
    }
}
