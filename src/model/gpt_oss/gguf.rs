//! `gpt-oss` GGUF files both ways, as llama.cpp's converter writes them: the sinks as
//! `attn_sinks`, the pre-MLP norm as `post_attention_norm`, the router as `ffn_gate_inp` (with
//! its bias), and each layer's experts stacked, the gate and up projections apart
//! (`ffn_gate_exps`, `ffn_up_exps`, `ffn_down_exps`, `[experts, out, in]`, and their biases),
//! where HF interleaves gate and up in one `[experts, in, 2 * inner]` weight. llama.cpp runs
//! the sliding layers first and in turn, and fixes the SwiGLU's alpha and limit at gpt-oss's.

use burn::prelude::*;

use crate::model::gguf::{DECODER_TOP, Fix, Gguf, TensorNames, merge};
use crate::model::gguf_write::{ArchPlan, GgufWriteError, HfTensor, MetaValue, unsupported};
use crate::model::rope::RopeScaling;
use crate::model::weights::{ModelError, WeightMap};
use crate::model::{Backbone, Frozen};

use super::GptOss;

const ARCH: &str = "gpt-oss";

/// What llama.cpp's `gpt-oss` graph computes the experts' SwiGLU with.
const ALPHA: f64 = 1.702;
const LIMIT: f64 = 7.0;

/// A `gpt-oss` GGUF: its config from the metadata, its stacked experts cut per expert, their
/// gate and up rows interleaved again as HF holds them (quantised rows move whole, so MXFP4
/// experts stay MXFP4).
pub(crate) fn load(
    g: &Gguf,
    device: &Device,
    frozen: &Frozen,
) -> Result<(Backbone, serde_json::Value), ModelError> {
    let heads = g.int(ARCH, "attention.head_count")?;
    let hidden = g.int(ARCH, "embedding_length")?;
    let layers = g.int(ARCH, "block_count")?;
    let experts = g.int(ARCH, "expert_count")?;
    let (vocab, tied) = g.vocab_and_tied()?;
    let mut rope = serde_json::json!({
        "rope_type": "default",
        "rope_theta": g.float(ARCH, "rope.freq_base").unwrap_or(150_000.0),
    });
    let mut config = serde_json::json!({ "hidden_size": hidden });
    if let Some(scaling) = g.rope_scaling(ARCH, &config, heads)? {
        if scaling["rope_type"] != "yarn" {
            return Err(g.bad(format!(
                "gpt-oss rotates with YaRN or without scaling, not {scaling}"
            )));
        }
        // The released models' YaRN, which llama.cpp assumes.
        rope = merge(rope, scaling);
        rope = merge(
            rope,
            serde_json::json!({ "beta_fast": 32.0, "beta_slow": 1.0, "truncate": false }),
        );
    }
    let layer_types: Vec<&str> = (0..layers)
        .map(|i| match i % 2 {
            0 => "sliding_attention",
            _ => "full_attention",
        })
        .collect();
    config = merge(
        serde_json::json!({
            "model_type": "gpt_oss",
            "architectures": ["GptOssForCausalLM"],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": g.int(ARCH, "expert_feed_forward_length")?,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": g.int(ARCH, "attention.head_count_kv").unwrap_or(heads),
            "head_dim": g.int(ARCH, "attention.key_length").unwrap_or(hidden / heads.max(1)),
            "num_local_experts": experts,
            "num_experts_per_tok": g.int(ARCH, "expert_used_count")?,
            "max_position_embeddings": g.int(ARCH, "context_length")?,
            "rms_norm_eps": g.float(ARCH, "attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            "sliding_window": g.int(ARCH, "attention.sliding_window")?,
            "layer_types": layer_types,
            "rope_parameters": rope,
            "attention_bias": true,
            "swiglu_alpha": ALPHA,
            "swiglu_limit": LIMIT,
            "tie_word_embeddings": tied,
        }),
        g.special_ids(),
    );
    let cfg: super::GptOssConfig = g.config_as(&config)?;
    cfg.check().map_err(|e| g.bad(e))?;
    let tensors = g.hf_tensors(ARCH, |n| NAMES.to_hf(n), |_, _| Fix::AsStored)?;
    let mut weights = WeightMap::from_sources(g.path.to_path_buf(), tensors, device);
    for i in 0..layers {
        let p = format!("model.layers.{i}.mlp.experts");
        for proj in ["gate_proj", "up_proj", "down_proj"] {
            for kind in ["weight", "bias"] {
                weights.unstack(&format!("{p}.{proj}.{kind}"), |e| {
                    format!("{p}.{e}.{proj}.{kind}")
                })?;
            }
        }
        for e in 0..experts {
            let x = format!("{p}.{e}");
            for (kind, fused) in [("weight", "gate_up_proj"), ("bias", "gate_up_proj_bias")] {
                let (gate, up) = (format!("{x}.gate_proj.{kind}"), format!("{x}.up_proj.{kind}"));
                weights.interleave_rows(&gate, &up, &format!("{x}.{fused}"))?;
            }
            weights.rename(&format!("{x}.down_proj.weight"), &format!("{x}.down_proj"));
            weights.rename(
                &format!("{x}.down_proj.bias"),
                &format!("{x}.down_proj_bias"),
            );
        }
    }
    weights.hold_frozen(frozen);
    let model = GptOss::from_weights_per_expert(&cfg, &mut weights)?;
    Ok((model.into(), config))
}

/// gpt-oss's tensors under llama.cpp's names; the experts' as [`regroup`] lays them out.
pub(crate) const NAMES: TensorNames = TensorNames {
    top: DECODER_TOP,
    layer_prefix: "model.layers.",
    layer: &[
        ("attn_norm.weight", "input_layernorm.weight"),
        ("post_attention_norm.weight", "post_attention_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"),
        ("attn_k.bias", "self_attn.k_proj.bias"),
        ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.bias", "self_attn.o_proj.bias"),
        ("attn_sinks.weight", "self_attn.sinks"),
        ("ffn_gate_inp.weight", "mlp.router.weight"),
        ("ffn_gate_inp.bias", "mlp.router.bias"),
        ("ffn_gate_exps.weight", "mlp.experts.gate_proj.weight"),
        ("ffn_up_exps.weight", "mlp.experts.up_proj.weight"),
        ("ffn_down_exps.weight", "mlp.experts.down_proj.weight"),
        ("ffn_gate_exps.bias", "mlp.experts.gate_proj.bias"),
        ("ffn_up_exps.bias", "mlp.experts.up_proj.bias"),
        ("ffn_down_exps.bias", "mlp.experts.down_proj.bias"),
    ],
};

/// HF's fused experts as llama.cpp's: `gate_up_proj` `[experts, d, 2 * inner]` (gate at even
/// columns) becomes `gate_proj.weight` and `up_proj.weight`, `[experts, inner, d]` each;
/// `down_proj` `[experts, inner, d]` becomes `down_proj.weight` `[experts, d, inner]`; the
/// biases follow (`gate_up_proj_bias` split the same way).
fn regroup(name: String, (shape, values): HfTensor) -> Vec<(String, HfTensor)> {
    let Some(prefix) = name.strip_suffix(".mlp.experts.gate_up_proj_bias") else {
        return regroup_weights(name, (shape, values));
    };
    let p = |part: &str| format!("{prefix}.mlp.experts.{part}.bias");
    let (e, width) = (shape[0], shape[1]);
    let half = |parity: usize| -> Vec<f32> { values.iter().skip(parity).step_by(2).copied().collect() };
    vec![
        (p("gate_proj"), (vec![e, width / 2], half(0))),
        (p("up_proj"), (vec![e, width / 2], half(1))),
    ]
}

fn regroup_weights(name: String, (shape, values): HfTensor) -> Vec<(String, HfTensor)> {
    let experts_of = |suffix: &str| name.strip_suffix(suffix).map(str::to_owned);
    if let Some(prefix) = experts_of(".mlp.experts.gate_up_proj") {
        let (e, d, width) = (shape[0], shape[1], shape[2]);
        let inner = width / 2;
        // Expert x's row i of the gate is column 2i of its `[d, 2 * inner]` block; the up's 2i+1.
        let part = |parity: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(e * inner * d);
            for x in 0..e {
                let block = &values[x * d * width..(x + 1) * d * width];
                for i in 0..inner {
                    out.extend((0..d).map(|j| block[j * width + 2 * i + parity]));
                }
            }
            out
        };
        let p = |part: &str| format!("{prefix}.mlp.experts.{part}.weight");
        return vec![
            (p("gate_proj"), (vec![e, inner, d], part(0))),
            (p("up_proj"), (vec![e, inner, d], part(1))),
        ];
    }
    if let Some(prefix) = experts_of(".mlp.experts.down_proj") {
        let (e, inner, d) = (shape[0], shape[1], shape[2]);
        let values = values
            .chunks_exact(inner * d)
            .flat_map(|block| crate::model::weights::transpose(block, inner, d))
            .collect();
        let name = format!("{prefix}.mlp.experts.down_proj.weight");
        return vec![(name, (vec![e, d, inner], values))];
    }
    if let Some(prefix) = experts_of(".mlp.experts.down_proj_bias") {
        return vec![(format!("{prefix}.mlp.experts.down_proj.bias"), (shape, values))];
    }
    vec![(name, (shape, values))]
}

impl GptOss {
    /// How llama.cpp holds this model ([`crate::model::gguf_write`]); an error for what its
    /// `gpt-oss` graph would run otherwise than this model.
    pub(crate) fn gguf_plan(&self) -> Result<ArchPlan, GgufWriteError> {
        use MetaValue::*;
        let c = &self.config;
        let cannot = |why: String| {
            Err(unsupported(format!(
                "llama.cpp's gpt-oss {why}, so this model cannot be written as GGUF; export it as an HF directory (`format: hf`)"
            )))
        };
        if (c.swiglu_alpha, c.swiglu_limit) != (ALPHA, LIMIT) {
            return cannot(format!(
                "computes the experts' SwiGLU with alpha {ALPHA} and limit {LIMIT}, and this model with alpha {} and limit {}",
                c.swiglu_alpha, c.swiglu_limit
            ));
        }
        let alternating = (0..c.num_hidden_layers).map(|i| i.is_multiple_of(2));
        let windows = c.windows().unwrap_or_default();
        if !windows.iter().map(Option::is_some).eq(alternating) {
            return cannot(
                "slides its window in the even layers and attends fully in the odd ones".into(),
            );
        }
        if !c.attention_bias {
            return cannot("needs attention biases, and this model has none".into());
        }
        if self.lm_head.is_none() {
            return cannot("needs an output head of its own, and this model ties it".into());
        }
        let u = |v: usize| U32(v as u32);
        let hd = c.head_dim();
        let mut meta = vec![
            ("context_length", u(c.max_position_embeddings)),
            ("embedding_length", u(c.hidden_size)),
            ("feed_forward_length", u(c.intermediate_size)),
            ("block_count", u(c.num_hidden_layers)),
            ("attention.head_count", u(c.num_attention_heads)),
            ("attention.head_count_kv", u(c.num_key_value_heads)),
            (
                "attention.layer_norm_rms_epsilon",
                F32(c.rms_norm_eps as f32),
            ),
            ("attention.key_length", u(hd)),
            ("attention.value_length", u(hd)),
            ("attention.sliding_window", u(c.sliding_window.unwrap_or(0))),
            ("rope.freq_base", F32(self.rotary.bases[0].0 as f32)),
            ("rope.dimension_count", u(hd)),
            ("expert_count", u(c.num_local_experts)),
            ("expert_used_count", u(c.num_experts_per_tok)),
            ("expert_feed_forward_length", u(c.intermediate_size)),
            ("vocab_size", u(c.vocab_size)),
        ];
        match &self.rotary.bases[0].1 {
            RopeScaling::Default => {}
            RopeScaling::Yarn {
                factor,
                original_max,
                ..
            } => {
                meta.push(("rope.scaling.type", Str("yarn".into())));
                meta.push(("rope.scaling.factor", F32(*factor as f32)));
                meta.push(("rope.scaling.original_context_length", u(*original_max)));
            }
            other => {
                return cannot(format!(
                    "rotates with YaRN or without scaling, and this model with {other:?}"
                ));
            }
        }
        Ok(ArchPlan {
            arch: ARCH,
            meta,
            names: &NAMES,
            layers: c.num_hidden_layers,
            vocab: c.vocab_size,
            permute: None,
            norms_plus_one: false,
            rope_tensors: Vec::new(),
            regroup: Some(regroup),
            experts_4bit: Some(crate::model::ggml_quants::types::MXFP4),
        })
    }
}
