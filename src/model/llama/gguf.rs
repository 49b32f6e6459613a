//! Llama-architecture GGUF files (`llama`, `qwen2`, `qwen3`, `qwen3moe`, `smollm3`, `olmo2`) both ways: llama.cpp's metadata
//! and tensor names read onto HF's config and weights (`load`), and the plan that writes a
//! model back in them (`Llama::gguf_plan`).

use burn::prelude::*;

use crate::model::gguf::{DECODER_TOP, Fix, Gguf, TensorNames, merge, unpermuted_row_order};
use crate::model::rope::RopeScaling;
use crate::model::weights::{ModelError, WeightMap};
use crate::model::{Backbone, Frozen};

use super::{Llama, LlamaConfig};

/// A GGUF of a Llama-architecture family (`llama`, `qwen2`, `qwen3`). llama.cpp stores a
/// `llama` model's q and k rows interleaved for its rotary layout; they are put back in HF's
/// half-split order. Qwen's are stored as HF has them.
pub(crate) fn load(
    g: &Gguf,
    arch: &str,
    device: &Device,
    frozen: &Frozen,
) -> Result<(Backbone, serde_json::Value), ModelError> {
    let path = &g.path;
    let heads = g.int(arch, "attention.head_count")?;
    let kv_heads = g.int(arch, "attention.head_count_kv").unwrap_or(heads);
    let (vocab, tied) = g.vocab_and_tied()?;
    let (class, model_type) = match arch {
        "qwen2" => ("Qwen2ForCausalLM", arch),
        "qwen3" => ("Qwen3ForCausalLM", arch),
        "qwen3moe" => ("Qwen3MoeForCausalLM", "qwen3_moe"),
        "smollm3" => ("SmolLM3ForCausalLM", arch),
        "olmo2" => ("Olmo2ForCausalLM", arch),
        _ => ("LlamaForCausalLM", arch),
    };
    let experts = match arch {
        "qwen3moe" => Some(moe_config(g, arch)?),
        _ => None,
    };
    // llama.cpp's qwen3moe has experts in every layer, and may leave the dense width out.
    let intermediate = match (&experts, g.int(arch, "feed_forward_length")) {
        (Some(e), Err(_)) => e["moe_intermediate_size"].as_u64().unwrap_or(0) as usize,
        (_, width) => width?,
    };
    let config = merge(
        serde_json::json!({
            "model_type": model_type,
            "architectures": [class],
            "vocab_size": vocab,
            "hidden_size": g.int(arch, "embedding_length")?,
            "intermediate_size": intermediate,
            "num_hidden_layers": g.int(arch, "block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": g.int(arch, "context_length")?,
            "rms_norm_eps": g.float(arch, "attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            "rope_theta": g.float(arch, "rope.freq_base").unwrap_or(10_000.0),
            "tie_word_embeddings": tied,
        }),
        g.special_ids(),
    );
    // An explicit head size only where it is not hidden / heads (Qwen3's can differ), so the
    // config of every other model stays as it was (it is saved with each model trained from it).
    let mut config = merge(config, experts.unwrap_or_default());
    if arch == "smollm3" {
        // llama.cpp's smollm3 skips the rotation in every fourth layer (a fixed step, not in
        // the file) and has no sliding window.
        config["no_rope_layer_interval"] = 4.into();
        config["use_sliding_window"] = false.into();
    }
    if let Ok(head_dim) = g.int(arch, "attention.key_length")
        && Some(head_dim)
            != config["hidden_size"]
                .as_u64()
                .map(|d| d as usize / heads.max(1))
    {
        config["head_dim"] = head_dim.into();
    }
    // Biases and rotary scalings only where the file has them (the config of a model without
    // them stays as it was).
    let has = |suffix: &str| g.tensors.iter().any(|t| t.name.ends_with(suffix));
    if has("attn_output.bias") || (arch != "qwen2" && has("attn_q.bias")) {
        config["attention_bias"] = true.into();
    }
    if has("ffn_up.bias") {
        config["mlp_bias"] = true.into();
    }
    if let Some(scaling) = g.rope_scaling(arch, &config, heads)? {
        config["rope_scaling"] = scaling;
    }
    let cfg: LlamaConfig = g.config_as(&config)?;
    // Head counts divide the projections (un-permuting q/k rows below): a file that says 0
    // heads, or heads that do not group, is an error here rather than a crash there.
    cfg.check().map_err(|e| g.bad(e.to_string()))?;
    // llama.cpp's converter permutes q and k for its `llama` rotary layout (SmolLM3's too).
    let permuted = matches!(arch, "llama" | "smollm3");
    let names = names_of(arch);
    // Llama 3's rotary factors were read into the config above; the tensor stays unused.
    let rename = |n: &str| match n {
        "rope_freqs.weight" => Some(n.to_owned()),
        _ => names.to_hf(n),
    };
    let tensors = g.hf_tensors(arch, rename, |name, shape| {
        // Biases are permuted with their rows (one column).
        let heads = if !permuted {
            None
        } else if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") {
            Some(heads)
        } else if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") {
            Some(kv_heads)
        } else {
            None
        };
        match heads {
            Some(heads) => Fix::Rows(unpermuted_row_order(shape[0], heads)),
            None => Fix::AsStored,
        }
    })?;
    let mut weights = WeightMap::from_sources(path.to_path_buf(), tensors, device);
    // Each layer's stacked experts, one by one as HF stores them.
    for i in 0..cfg.num_hidden_layers {
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            let p = format!("model.layers.{i}.mlp.experts");
            weights.unstack(&format!("{p}.{proj}.weight"), |e| {
                format!("{p}.{e}.{proj}.weight")
            })?;
        }
    }
    weights.hold_frozen(frozen);
    let model = Llama::from_weights(&cfg, &mut weights)?;
    Ok((Backbone::Llama(model), config))
}

/// A qwen3moe file's experts as Qwen3-MoE's config has them: llama.cpp runs every layer
/// sparse and renormalises the chosen experts' weights.
fn moe_config(g: &Gguf, arch: &str) -> Result<serde_json::Value, ModelError> {
    let used = g.int(arch, "expert_used_count")?;
    let width = match g.int(arch, "expert_feed_forward_length") {
        Ok(w) => w,
        // llama.cpp's fallback for files without it.
        Err(_) => g.int(arch, "feed_forward_length")? / used.max(1),
    };
    Ok(serde_json::json!({
        "num_experts": g.int(arch, "expert_count")?,
        "num_experts_per_tok": used,
        "moe_intermediate_size": width,
        "norm_topk_prob": true,
        "decoder_sparse_step": 1,
    }))
}

/// The tensor names of GGUF architecture `arch`.
fn names_of(arch: &str) -> &'static TensorNames {
    match arch {
        "olmo2" => &OLMO2_NAMES,
        _ => &NAMES,
    }
}

/// OLMo 2: norms after attention and the MLP, q/k norms; no input norms, no biases.
const OLMO2_NAMES: TensorNames = TensorNames {
    top: DECODER_TOP,
    layer_prefix: "model.layers.",
    layer: &[
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("attn_q_norm.weight", "self_attn.q_norm.weight"),
        ("attn_k_norm.weight", "self_attn.k_norm.weight"),
        ("attn_post_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_post_norm.weight", "post_feedforward_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ],
};

/// Llama, Mistral, SmolLM3, Qwen2 (q/k/v biases), Qwen3 (per-head norms), Qwen3-MoE (router and
/// stacked experts, split per expert on reading).
pub(crate) const NAMES: TensorNames = TensorNames {
    top: DECODER_TOP,
    layer_prefix: "model.layers.",
    layer: &[
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"),
        ("attn_k.bias", "self_attn.k_proj.bias"),
        ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.bias", "self_attn.o_proj.bias"),
        ("attn_q_norm.weight", "self_attn.q_norm.weight"),
        ("attn_k_norm.weight", "self_attn.k_norm.weight"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
        ("ffn_gate.bias", "mlp.gate_proj.bias"),
        ("ffn_up.bias", "mlp.up_proj.bias"),
        ("ffn_down.bias", "mlp.down_proj.bias"),
        ("ffn_gate_inp.weight", "mlp.gate.weight"),
        ("ffn_gate_exps.weight", "mlp.experts.gate_proj.weight"),
        ("ffn_up_exps.weight", "mlp.experts.up_proj.weight"),
        ("ffn_down_exps.weight", "mlp.experts.down_proj.weight"),
    ],
};

impl Llama {
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
        let arch = match c.model_type.as_deref().unwrap_or("llama") {
            "qwen2" => "qwen2",
            "qwen3" => "qwen3",
            "qwen3_moe" => "qwen3moe",
            "smollm3" => "smollm3",
            "olmo2" => "olmo2",
            _ => "llama",
        };
        let cannot = |why: &str| {
            Err(unsupported(format!(
                "llama.cpp's {arch} {why}, so this model cannot be written as GGUF; export it as an HF directory (`format: hf`)"
            )))
        };
        let every_fourth = (0..c.num_hidden_layers).map(|i| !(i + 1).is_multiple_of(4));
        if arch == "smollm3"
            && !c
                .rotary_layers()
                .is_ok_and(|r| r.into_iter().eq(every_fourth))
        {
            return cannot("skips the rotation in every fourth layer, and this SmolLM3 does not");
        }
        let windowed = c.windows().is_ok_and(|w| w.iter().any(Option::is_some));
        if arch == "smollm3" && windowed {
            return cannot("has no sliding window, and this SmolLM3 has one");
        }
        if arch == "olmo2" && (c.qkv_bias() || c.o_bias() || c.mlp_bias) {
            return cannot("has no biases, and this OLMo 2 has");
        }
        if arch == "olmo2" && self.lm_head.is_none() {
            return cannot("needs an output head of its own, and this OLMo 2 ties it");
        }
        if arch == "olmo2" && c.head_dim() * c.num_attention_heads != c.hidden_size {
            return cannot("takes heads of hidden_size / num_attention_heads");
        }
        if c.windows().is_ok_and(|w| w.iter().any(Option::is_some)) {
            tracing::warn!(
                "llama.cpp runs `{arch}` without a sliding window: long prompts attend further than this model did"
            );
        }
        let hd = c.head_dim();
        let mut meta = vec![
            ("context_length", u(c.max_position_embeddings)),
            ("embedding_length", u(c.hidden_size)),
            ("feed_forward_length", u(c.intermediate_size)),
            ("block_count", u(c.num_hidden_layers)),
            ("attention.head_count", u(c.num_attention_heads)),
            ("attention.head_count_kv", u(c.kv_heads())),
            (
                "attention.layer_norm_rms_epsilon",
                F32(c.rms_norm_eps as f32),
            ),
            ("attention.key_length", u(hd)),
            ("attention.value_length", u(hd)),
            ("rope.freq_base", F32(c.theta() as f32)),
            ("rope.dimension_count", u(hd)),
            ("vocab_size", u(c.vocab_size)),
        ];
        if arch == "qwen3moe" {
            // llama.cpp's qwen3moe has experts in every layer and renormalises their weights.
            let sparse = c.sparse_layers().unwrap_or_default();
            if sparse.iter().any(|s| !s) {
                return Err(unsupported(
                    "llama.cpp's qwen3moe has experts in every layer; this Qwen3-MoE has dense layers (`mlp_only_layers`, `decoder_sparse_step`), so it cannot be written as GGUF",
                ));
            }
            if c.norm_topk_prob != Some(true) {
                return Err(unsupported(
                    "llama.cpp's qwen3moe renormalises the chosen experts' weights; this Qwen3-MoE does not (`norm_topk_prob: false`), so it cannot be written as GGUF",
                ));
            }
            meta.extend([
                ("expert_count", u(c.experts())),
                ("expert_used_count", u(c.num_experts_per_tok.unwrap_or(0))),
                (
                    "expert_feed_forward_length",
                    u(c.moe_intermediate_size.unwrap_or(0)),
                ),
            ]);
        }
        let mut rope_tensors = Vec::new();
        let rope = &self.rotary.bases[0].1;
        match rope {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                meta.push(("rope.scaling.type", Str("linear".into())));
                meta.push(("rope.scaling.factor", F32(*factor as f32)));
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                ..
            } => {
                meta.push(("rope.scaling.type", Str("yarn".into())));
                meta.push(("rope.scaling.factor", F32(*factor as f32)));
                meta.push(("rope.scaling.original_context_length", u(*original_max)));
            }
            RopeScaling::Llama3 { .. } => {
                let divisors = rope.frequency_divisors(hd, c.theta());
                rope_tensors.push(("rope_freqs.weight", divisors));
            }
            RopeScaling::Dynamic { .. } | RopeScaling::LongRope { .. } => {
                return Err(unsupported(
                    "llama.cpp's llama has no dynamic NTK or LongRoPE rotary scaling; this model cannot be written as GGUF",
                ));
            }
        }
        Ok(ArchPlan {
            arch,
            meta,
            names: names_of(arch),
            layers: c.num_hidden_layers,
            vocab: c.vocab_size,
            permute: matches!(arch, "llama" | "smollm3")
                .then_some((c.num_attention_heads, c.kv_heads())),
            norms_plus_one: false,
            rope_tensors,
            regroup: None,
            experts_4bit: None,
        })
    }
}
