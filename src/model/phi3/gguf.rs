//! `phi3` GGUF files both ways: llama.cpp's metadata and tensor names read onto HF's config and
//! weights, LongRoPE's factors from their tensors (`load`), and the plan that writes a model
//! back in them (`Phi3::gguf_plan`).

use burn::prelude::*;

use crate::model::gguf::{DECODER_TOP, Fix, Gguf, TensorNames, merge};
use crate::model::rope::RopeScaling;
use crate::model::weights::{ModelError, WeightMap};
use crate::model::{Backbone, Frozen};

use super::Phi3;

/// A `phi3` GGUF: q/k/v and gate/up stay fused as in HF, rotary on `rope.dimension_count`
/// of each head, LongRoPE's factors as the `rope_factors_short` / `rope_factors_long` tensors.
pub(crate) fn load(
    g: &Gguf,
    device: &Device,
    frozen: &Frozen,
) -> Result<(Backbone, serde_json::Value), ModelError> {
    let path = &g.path;
    let bad = |reason: String| g.bad(reason);
    let heads = g.int("phi3", "attention.head_count")?;
    let hidden = g.int("phi3", "embedding_length")?;
    let head_dim = hidden / heads.max(1);
    let rotary = g.int("phi3", "rope.dimension_count").unwrap_or(head_dim);
    let (vocab, tied) = g.vocab_and_tied()?;
    let context = g.int("phi3", "context_length")?;
    let original = g
        .int("phi3", "rope.scaling.original_context_length")
        .unwrap_or(context);
    let theta = g.float("phi3", "rope.freq_base").unwrap_or(10_000.0);
    let factors = |name: &str| -> Result<Option<Vec<f32>>, ModelError> {
        match g.tensors.iter().find(|t| t.name == name) {
            Some(info) => Ok(Some(g.tensor(info)?.1)),
            None => Ok(None),
        }
    };
    let mut rope = serde_json::json!({
        "rope_type": "default",
        "rope_theta": theta,
        "partial_rotary_factor": rotary as f64 / head_dim.max(1) as f64,
    });
    match (
        factors("rope_factors_short.weight")?,
        factors("rope_factors_long.weight")?,
    ) {
        (Some(short), Some(long)) => {
            rope["rope_type"] = "longrope".into();
            rope["short_factor"] = short.into();
            rope["long_factor"] = long.into();
            rope["original_max_position_embeddings"] = original.into();
            if let Some(a) = g.float("phi3", "rope.scaling.attn_factor") {
                rope["attention_factor"] = a.into();
            }
        }
        (None, None) => {}
        _ => {
            return Err(bad(
                "one of rope_factors_short / rope_factors_long without the other".into(),
            ));
        }
    }
    let window = g
        .int("phi3", "attention.sliding_window")
        .ok()
        .filter(|w| *w > 0);
    let config = merge(
        serde_json::json!({
            "model_type": "phi3",
            "architectures": ["Phi3ForCausalLM"],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": g.int("phi3", "feed_forward_length")?,
            "num_hidden_layers": g.int("phi3", "block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": g.int("phi3", "attention.head_count_kv").unwrap_or(heads),
            "max_position_embeddings": context,
            "original_max_position_embeddings": original,
            "rms_norm_eps": g.float("phi3", "attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            "rope_parameters": rope,
            "sliding_window": window,
            "tie_word_embeddings": tied,
        }),
        g.special_ids(),
    );
    let cfg: super::Phi3Config = g.config_as(&config)?;
    cfg.check().map_err(|e| bad(e.to_string()))?;
    // The rotary factors were read into the config above; the tensors stay unused.
    let rename = |n: &str| match n {
        "rope_factors_short.weight" | "rope_factors_long.weight" => Some(n.to_owned()),
        _ => NAMES.to_hf(n),
    };
    let tensors = g.hf_tensors("phi3", rename, |_, _| Fix::AsStored)?;
    let mut weights = WeightMap::from_sources(path.to_path_buf(), tensors, device);
    weights.hold_frozen(frozen);
    let model = super::Phi3::from_weights(&cfg, &mut weights)?;
    Ok((Backbone::Phi3(model), config))
}

/// Phi-3: q/k/v and gate/up fused, as in HF.
pub(crate) const NAMES: TensorNames = TensorNames {
    top: DECODER_TOP,
    layer_prefix: "model.layers.",
    layer: &[
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_qkv.weight", "self_attn.qkv_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_up.weight", "mlp.gate_up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ],
};

impl Phi3 {
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
            ("rope.dimension_count", u(c.rotary_dim())),
            ("rope.freq_base", F32(c.theta() as f32)),
            ("attention.sliding_window", u(c.sliding_window.unwrap_or(0))),
        ];
        let mut rope_tensors = Vec::new();
        match &self.rotary.bases[0].1 {
            RopeScaling::Default => {}
            RopeScaling::LongRope {
                short,
                long,
                original_max,
                attention_factor,
            } => {
                meta.push(("rope.scaling.original_context_length", u(*original_max)));
                meta.push(("rope.scaling.attn_factor", F32(*attention_factor as f32)));
                let f32s = |v: &[f64]| v.iter().map(|x| *x as f32).collect();
                rope_tensors.push(("rope_factors_long.weight", f32s(long)));
                rope_tensors.push(("rope_factors_short.weight", f32s(short)));
            }
            other => {
                return Err(unsupported(format!(
                    "hone writes phi3 GGUFs with LongRoPE or no rotary scaling, not {other:?}"
                )));
            }
        }
        Ok(ArchPlan {
            arch: "phi3",
            meta,
            names: &NAMES,
            layers: c.num_hidden_layers,
            vocab: c.vocab_size,
            permute: None,
            norms_plus_one: false,
            rope_tensors,
            regroup: None,
            experts_4bit: None,
        })
    }
}
