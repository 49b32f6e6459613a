//! gpt-oss (`gpt_oss`; OpenAI's open-weight mixtures of experts, gpt-oss-20b and -120b):
//! Llama-like pre-norm blocks (RMSNorm, grouped-query attention with biases, rotary positions
//! with YaRN) whose attention has a learned sink per head (`self_attn.sinks`: one more logit in
//! each softmax, with no value), sliding-window and full layers in turn (`layer_types`), and a
//! sparse MLP in every layer: a router with a bias picks each token's `num_experts_per_tok`
//! largest logits and softmaxes them, and each expert is a clamped SwiGLU with biases, its gate
//! and up projections interleaved in one fused weight ([`Activation::ClampedSwiGlu`]).
//!
//! Config and weights as transformers names them (`GptOssConfig`, `GptOssForCausalLM`): the
//! experts fused per layer, `mlp.experts.gate_up_proj` `[experts, d, 2 * inner]` and
//! `mlp.experts.down_proj` `[experts, inner, d]` (already burn's `[in, out]`), with their
//! biases; they are cut per expert as they are read, and stacked again when saved. Released
//! checkpoints store the expert weights in MXFP4 (`_blocks` and `_scales`, 4-bit codes with a
//! power-of-two scale per 32): read as ggml's MXFP4 blocks, they are dequantised, or kept
//! 4-bit under QLoRA (the frozen base's weights stay in their blocks).

pub(crate) mod gguf;

use burn::module::{Module, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decoder::{DecoderConfig, DecoderLayer, DecoderStack, Rotary};
use super::family::{BuildError, Family, parse};
use super::layers::{
    KeysValues, KvCache, Proj, RmsNorm, apply_rope, merge_heads, split_heads,
    write_projections,
};
use super::moe::{Activation, Expert, Router, SparseMoe};
use super::weights::{ModelError, WeightMap, WeightWriter};

/// The fields of HF's `GptOssConfig` that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptOssConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Each expert's inner width.
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// The window of the sliding layers, in tokens.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// `sliding_attention` or `full_attention` per layer; sliding then full in turn when
    /// absent, as transformers fills it.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    #[serde(default = "yes")]
    pub attention_bias: bool,
    #[serde(default = "default_alpha")]
    pub swiglu_alpha: f64,
    #[serde(default = "default_limit")]
    pub swiglu_limit: f64,
    #[serde(default)]
    pub router_aux_loss_coef: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}

fn yes() -> bool {
    true
}

fn default_alpha() -> f64 {
    1.702
}

fn default_limit() -> f64 {
    7.0
}

impl GptOssConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn rotary(&self) -> Result<Rotary, String> {
        Rotary::from_hf(
            self.head_dim(),
            self.rope_parameters.as_ref(),
            self.rope_theta,
            self.rope_scaling.as_ref(),
            self.max_position_embeddings,
            150_000.0,
        )
        .map_err(|e| e.to_string())
    }

    /// Each layer's attention window: the sliding layers', `None` for the full ones.
    pub fn windows(&self) -> Result<Vec<Option<usize>>, String> {
        let n = self.num_hidden_layers;
        let sliding = |i: usize| i.is_multiple_of(2);
        match &self.layer_types {
            None => Ok((0..n)
                .map(|i| self.sliding_window.filter(|_| sliding(i)))
                .collect()),
            Some(types) if types.len() != n => Err(format!(
                "layer_types lists {} layers; the model has {n}",
                types.len()
            )),
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(self.sliding_window),
                    "full_attention" => Ok(None),
                    other => Err(format!(
                        "layer_types holds `{other}`; gpt-oss layers are \
                         `sliding_attention` or `full_attention`"
                    )),
                })
                .collect(),
        }
    }

    fn activation(&self) -> Activation {
        Activation::ClampedSwiGlu {
            alpha: self.swiglu_alpha,
            limit: self.swiglu_limit,
        }
    }

    /// What [`GptOss::from_weights`] needs to hold: whole heads in equal groups, experts to
    /// choose from, layer types and a rotary scaling hone runs.
    pub fn check(&self) -> Result<(), String> {
        let (h, kv) = (self.num_attention_heads, self.num_key_value_heads);
        if h == 0 || kv == 0 || !h.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads {h} must be a positive multiple of num_key_value_heads {kv}"
            ));
        }
        let (e, k) = (self.num_local_experts, self.num_experts_per_tok);
        if k == 0 || k > e {
            return Err(format!(
                "num_experts_per_tok {k} must be between 1 and num_local_experts {e}"
            ));
        }
        self.windows()?;
        self.rotary()?;
        Ok(())
    }
}

impl DecoderConfig for GptOssConfig {
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }

    fn router_aux_loss_coef(&self) -> f64 {
        self.router_aux_loss_coef.unwrap_or(0.001)
    }

    fn hf_class(&self, classifier: bool) -> String {
        match classifier {
            true => "GptOssForSequenceClassification",
            false => "GptOssForCausalLM",
        }
        .to_owned()
    }
}

const ATTENTION: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

#[derive(Module, Debug)]
pub struct GptOssLayer {
    pub input_layernorm: RmsNorm,
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub o_proj: Proj,
    /// Each head's sink logit `[heads]`.
    pub sinks: Param<Tensor<1>>,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: SparseMoe,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// The window of a sliding layer, in tokens.
    pub window: Option<usize>,
}

impl DecoderLayer for GptOssLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        (cos, sin): (&Tensor<4>, &Tensor<4>),
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = self.input_layernorm.forward(x.clone());
        let q = split_heads(self.q_proj.forward(h.clone()), self.n_heads);
        let k = split_heads(self.k_proj.forward(h.clone()), self.n_kv_heads);
        let v = split_heads(self.v_proj.forward(h), self.n_kv_heads);
        let (q, k) = (apply_rope(q, cos, sin), apply_rope(k, cos, sin));
        let kv = KeysValues::new(k, v, cache);
        let mask = kv.mask_within(mask, &q, self.window);
        let a = kv.attend(q, mask, None, Some(&self.sinks.val()));
        let x = x + self.o_proj.forward(merge_heads(a));
        let h = self.post_attention_layernorm.forward(x.clone());
        x + self.mlp.forward(h)
    }

    fn projections_mut(&mut self, layer: usize) -> Vec<(String, &mut Proj)> {
        let GptOssLayer {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            mlp,
            ..
        } = self;
        let p = format!("model.layers.{layer}");
        let attention = ATTENTION
            .into_iter()
            .zip([q_proj, k_proj, v_proj, o_proj])
            .map(|(name, proj)| (format!("{p}.self_attn.{name}"), proj));
        attention
            .chain(mlp.projections_mut(&format!("{p}.mlp")))
            .collect()
    }

    fn write_weights(&self, layer: usize, w: &mut WeightWriter) {
        let p = format!("model.layers.{layer}");
        w.put(
            format!("{p}.input_layernorm.weight"),
            self.input_layernorm.weight.val(),
        );
        w.put(
            format!("{p}.post_attention_layernorm.weight"),
            self.post_attention_layernorm.weight.val(),
        );
        w.put(format!("{p}.self_attn.sinks"), self.sinks.val());
        let attention = [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj];
        let attention = ATTENTION
            .into_iter()
            .zip(attention)
            .map(|(name, proj)| (format!("{p}.self_attn.{name}"), proj));
        write_projections(w, attention);
        write_projections(w, [(format!("{p}.mlp.router"), &self.mlp.gate)]);
        write_experts(w, &format!("{p}.mlp.experts"), &self.mlp);
    }

    fn trains_router(&self) -> bool {
        self.mlp.gate.weight.is_require_grad()
    }
}

/// Writes the experts under `prefix` (`model.layers.0.mlp.experts`) fused, as gpt-oss
/// checkpoints hold them: `gate_up_proj` `[experts, d, 2 * inner]`, `down_proj`
/// `[experts, inner, d]` and their biases (LoRA merged in).
fn write_experts(w: &mut WeightWriter, prefix: &str, moe: &SparseMoe) {
    let stack = |part: fn(&Expert) -> &Proj| {
        let weights = moe.experts.iter().map(|x| part(x).merged_weight());
        let biases = moe.experts.iter().filter_map(|x| part(x).bias.as_ref());
        (
            Tensor::stack::<3>(weights.collect(), 0),
            Tensor::stack::<2>(biases.map(|b| b.val()).collect(), 0),
        )
    };
    for (name, part) in [
        ("gate_up_proj", (|x| &x.gate_up_proj) as fn(&Expert) -> &Proj),
        ("down_proj", |x| &x.down_proj),
    ] {
        let (weight, bias) = stack(part);
        w.put(format!("{prefix}.{name}"), weight);
        w.put(format!("{prefix}.{name}_bias"), bias);
    }
}

/// A gpt-oss model: its blocks in the shared decoder stack.
pub type GptOss = DecoderStack<GptOssLayer, RmsNorm, GptOssConfig>;

/// How a checkpoint holds the expert weights.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ExpertWeights {
    /// As HF files do: fused per layer, `[experts, in, out]` floats, or MXFP4 blocks.
    Fused,
    /// Already one `[out, in]` tensor per expert (`mlp.experts.<e>.gate_up_proj`, the gate and
    /// up rows interleaved), as a GGUF's are once cut ([`gguf::load`]).
    PerExpert,
}

impl GptOss {
    /// Reads HF weights (`GptOssModel` or `GptOssForCausalLM` names).
    pub fn from_weights(config: &GptOssConfig, w: &mut WeightMap) -> Result<GptOss, ModelError> {
        GptOss::read(config, w, ExpertWeights::Fused)
    }

    /// [`from_weights`](Self::from_weights) where each expert's weights are their own `[out,
    /// in]` tensors already.
    fn from_weights_per_expert(
        config: &GptOssConfig,
        w: &mut WeightMap,
    ) -> Result<GptOss, ModelError> {
        GptOss::read(config, w, ExpertWeights::PerExpert)
    }

    fn read(
        config: &GptOssConfig,
        w: &mut WeightMap,
        experts: ExpertWeights,
    ) -> Result<GptOss, ModelError> {
        let (d, hd, inner) = (
            config.hidden_size,
            config.head_dim(),
            config.intermediate_size,
        );
        let (h, kv, vocab) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.vocab_size,
        );
        let bad_config = |w: &WeightMap, reason: String| ModelError::BadConfig {
            path: w.path().to_path_buf(),
            reason,
        };
        let windows = config.windows().map_err(|e| bad_config(w, e))?;
        let rotary = config.rotary().map_err(|e| bad_config(w, e))?;
        let lm_head = w.take_lm_head(d, vocab, config.tie_word_embeddings)?;
        w.strip_prefix("model.");
        let eps = config.rms_norm_eps;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (i, window) in windows.into_iter().enumerate() {
            let p = format!("layers.{i}");
            let bias = config.attention_bias;
            let mut attention = |name: &str, d_in: usize, d_out: usize| {
                w.take_module(&format!("{p}.self_attn.{name}"), d_in, d_out, bias)
            };
            let [q, k, v, o] = ATTENTION;
            let (q_proj, k_proj) = (attention(q, d, h * hd)?, attention(k, d, kv * hd)?);
            let (v_proj, o_proj) = (attention(v, d, kv * hd)?, attention(o, h * hd, d)?);
            let norm = |w: &mut WeightMap, name: &str| {
                Ok::<_, ModelError>(RmsNorm::new(w.take(&format!("{p}.{name}.weight"), [d])?, eps))
            };
            layers.push(GptOssLayer {
                input_layernorm: norm(w, "input_layernorm")?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                sinks: Param::from_tensor(w.take(&format!("{p}.self_attn.sinks"), [h])?),
                post_attention_layernorm: norm(w, "post_attention_layernorm")?,
                mlp: sparse_moe(config, w, &format!("{p}.mlp"), [d, inner], experts)?,
                n_heads: h,
                n_kv_heads: kv,
                window,
            });
        }
        Ok(GptOss {
            embed_tokens: Param::from_tensor(w.take_matrix("embed_tokens.weight", [vocab, d])?),
            layers,
            norm: RmsNorm::new(w.take("norm.weight", [d])?, eps),
            lm_head,
            rotary,
            config: config.clone(),
            checkpoint_layers: false,
        })
    }
}

/// The sparse block under `p` (`layers.0.mlp`): the router (f32, unquantised, with its bias)
/// and the fused experts cut per expert.
fn sparse_moe(
    config: &GptOssConfig,
    w: &mut WeightMap,
    p: &str,
    [d, inner]: [usize; 2],
    held: ExpertWeights,
) -> Result<SparseMoe, ModelError> {
    let e = config.num_local_experts;
    // The router stays f32 and unquantised: it is small, and which experts a token reaches
    // should not move with the base's storage.
    let gate = Proj::new(
        w.take_linear(&format!("{p}.router.weight"), d, e)?,
        Some(w.take(&format!("{p}.router.bias"), [e])?),
    );
    let part = |x: usize, name: &str| format!("{p}.experts.{x}.{name}");
    // Released checkpoints hold the expert weights in MXFP4 (`_blocks`, `_scales`, each expert
    // `[out, in]`); bf16 and f32 ones as `[in, out]` tensors.
    // Each weight's experts `[out, in]` (a GGUF's, or MXFP4 blocks) or `[in, out]`.
    let mut out_in = [held == ExpertWeights::PerExpert; 2];
    if held == ExpertWeights::Fused {
        for (out_in, name) in out_in.iter_mut().zip(["gate_up_proj", "down_proj"]) {
            *out_in = w.unstack_mxfp4(&format!("{p}.experts.{name}"), |x| part(x, name))?;
        }
        for name in ["gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"] {
            w.unstack(&format!("{p}.experts.{name}"), |x| part(x, name))?;
        }
    }
    let take = |w: &mut WeightMap, x: usize, which: usize, [d_in, d_out]: [usize; 2]| {
        let name = ["gate_up_proj", "down_proj"][which];
        let bias = w.take(&part(x, &format!("{name}_bias")), [d_out])?;
        match out_in[which] {
            true => w.take_proj(&part(x, name), d_in, d_out, Some(bias)),
            false => w.take_proj_in_out(&part(x, name), d_in, d_out, Some(bias)),
        }
    };
    let experts = (0..e)
        .map(|x| {
            Ok(Expert {
                gate_up_proj: take(w, x, 0, [d, 2 * inner])?,
                down_proj: take(w, x, 1, [inner, d])?,
            })
        })
        .collect::<Result<_, ModelError>>()?;
    Ok(SparseMoe {
        gate,
        experts,
        top_k: config.num_experts_per_tok,
        router: Router::TopKThenSoftmax,
        activation: config.activation(),
    })
}

/// gpt-oss in [`super::FAMILIES`].
pub struct GptOssFamily;

impl Family for GptOssFamily {
    fn name(&self) -> &'static str {
        "gpt_oss"
    }

    fn model_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("gpt_oss", "gpt-oss")]
    }

    fn gguf_archs(&self) -> &'static [&'static str] {
        &["gpt-oss"]
    }

    fn load_gguf(
        &self,
        g: &super::gguf::Gguf,
        _arch: &str,
        device: &Device,
        frozen: &super::Frozen,
    ) -> Result<(super::Backbone, Value), ModelError> {
        gguf::load(g, device, frozen)
    }

    fn gguf_plan(
        &self,
        backbone: &super::Backbone,
        _config: &Value,
    ) -> Result<super::gguf_write::ArchPlan, super::gguf_write::GgufWriteError> {
        match backbone {
            super::Backbone::GptOss(m) => m.gguf_plan(),
            other => Err(super::family::not_this_family(self, other)),
        }
    }

    fn build(
        &self,
        _model_type: &str,
        config: &Value,
        weights: &mut WeightMap,
    ) -> Result<super::Backbone, BuildError> {
        let c: GptOssConfig = parse(config)?;
        c.check().map_err(BuildError::Config)?;
        Ok(GptOss::from_weights(&c, weights)?.into())
    }

    /// PEFT has no default for gpt-oss; attention's query and value, as for the others (its
    /// experts through `target_parameters`).
    fn default_lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_slide_and_attend_fully_in_turn_unless_the_config_lists_them() {
        let mut c: GptOssConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 3,
            "num_attention_heads": 2, "num_key_value_heads": 1, "num_local_experts": 2,
            "num_experts_per_tok": 1, "max_position_embeddings": 16, "sliding_window": 4,
        }))
        .unwrap();
        assert_eq!(c.windows().unwrap(), [Some(4), None, Some(4)]);
        c.layer_types = Some(vec!["full_attention".into(); 3]);
        assert_eq!(c.windows().unwrap(), [None, None, None]);
        c.layer_types = Some(vec!["chunked_attention".into(); 3]);
        assert!(c.windows().unwrap_err().contains("chunked_attention"));
        c.num_experts_per_tok = 3;
        assert!(c.check().unwrap_err().contains("num_experts_per_tok 3"));
    }
}
