//! Gemma decoders, 2 and 3 (`gemma3_text`: Gemma 3 270M and 1B, the text part of the larger
//! ones; `gemma2`): embeddings scaled by sqrt(hidden), RMSNorm scaled by (1 + w), four norms a
//! layer (before and after attention, before and after the MLP), GeGLU with the tanh GELU,
//! attention scaled by `query_pre_attn_scalar`^-1/2, and layers of two kinds:
//! `sliding_attention` (a window of `sliding_window` tokens) and `full_attention`. The two
//! generations differ in three places, as in transformers:
//! - Gemma 3 normalises each head of q and k (`q_norm`, `k_norm`) and gives sliding layers a
//!   rotary base of their own; every sixth layer is a full one by default;
//! - Gemma 2 soft-caps attention scores and final logits (`tanh(x / cap) * cap`), one rotary
//!   base for all layers, every other layer a full one by default.
//!
//! Config and weights as transformers names them (`Gemma3TextConfig`, `Gemma2Config`,
//! `*ForCausalLM`); both transformers 4's flat rope settings and 5's `rope_parameters` (per
//! layer type for Gemma 3) are read.

pub(crate) mod gguf;

use burn::module::{Module, Param};
use burn::prelude::*;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::decoder::{DecoderConfig, DecoderLayer, DecoderStack, FinalNorm, Rotary};
use super::layers::{
    KeysValues, KvCache, Proj, merge_heads, named_projections, split_heads,
    write_projections,
};
use super::rope::{RopeError, RopeScaling};
use super::weights::{ModelError, WeightMap, WeightWriter};

/// The fields of HF's `Gemma3TextConfig` / `Gemma2Config` that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    /// `gemma3_text` or `gemma2` (module docs); Gemma 3 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "default_head_dim")]
    pub head_dim: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_head_dim")]
    pub query_pre_attn_scalar: usize,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// `sliding_attention` or `full_attention` per layer (transformers 5; else the pattern).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// transformers 4: every `sliding_window_pattern`-th layer is a full one (6 for Gemma 3,
    /// 2 for Gemma 2 when absent).
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub use_bidirectional_attention: Option<bool>,
}

fn default_head_dim() -> usize {
    256
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}
fn default_max_pos() -> usize {
    131_072
}

/// The `config.json` of the text decoder of a multimodal Gemma 3 checkpoint (`model_type:
/// gemma3`, `Gemma3ForConditionalGeneration`): its `text_config`, with `Gemma3TextConfig`'s
/// defaults for what it leaves out (released checkpoints give only a few fields) and the
/// special token ids of the whole. hone trains and saves that decoder as `gemma3_text`.
pub fn text_config(multimodal: &Value) -> Value {
    let mut text = json!({
        "model_type": "gemma3_text",
        "vocab_size": 262_208,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "query_pre_attn_scalar": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 131_072,
        "rms_norm_eps": 1e-6,
        "sliding_window": 4096,
        "tie_word_embeddings": true,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 2,
    });
    let fields = text.as_object_mut().expect("an object");
    for key in ["pad_token_id", "eos_token_id", "bos_token_id"] {
        if let Some(v) = multimodal.get(key).filter(|v| !v.is_null()) {
            fields.insert(key.into(), v.clone());
        }
    }
    if let Some(given) = multimodal.get("text_config").and_then(Value::as_object) {
        for (k, v) in given {
            fields.insert(k.clone(), v.clone());
        }
    }
    fields.insert("model_type".into(), "gemma3_text".into());
    fields.insert("architectures".into(), json!(["Gemma3ForCausalLM"]));
    text
}

/// A Gemma 3 config hone cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Gemma3ConfigError {
    #[error(transparent)]
    Rope(#[from] RopeError),
    #[error("layer_types has {0} entries for {1} layers")]
    LayerTypes(usize, usize),
    #[error("layer type `{0}` is not sliding_attention or full_attention")]
    LayerType(String),
    #[error(
        "attention heads must be at least 1 and a multiple of num_key_value_heads, head_dim even"
    )]
    Heads,
    #[error("{0} is not supported yet (bidirectional attention)")]
    Unsupported(&'static str),
}

impl DecoderConfig for Gemma3Config {
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }

    /// sqrt(hidden size), rounded to f32 as transformers' normaliser is.
    fn embed_scale(&self) -> Option<f64> {
        Some((self.hidden_size as f64).sqrt() as f32 as f64)
    }

    fn final_logit_softcapping(&self) -> Option<f64> {
        self.final_logit_softcapping
    }

    fn hf_class(&self, classifier: bool) -> String {
        match (self.is_gemma2(), classifier) {
            (true, false) => "Gemma2ForCausalLM",
            (true, true) => "Gemma2ForSequenceClassification",
            (false, false) => "Gemma3ForCausalLM",
            (false, true) => "Gemma3TextForSequenceClassification",
        }
        .to_owned()
    }
}

impl Gemma3Config {
    /// Gemma 2 (`model_type: gemma2`) rather than Gemma 3.
    pub fn is_gemma2(&self) -> bool {
        self.model_type.as_deref() == Some("gemma2")
    }

    /// Whether each head of q and k is normalised before the rotation (Gemma 3).
    pub fn qk_norm(&self) -> bool {
        !self.is_gemma2()
    }

    /// Whether each layer attends through a sliding window.
    pub fn sliding_layers(&self) -> Result<Vec<bool>, Gemma3ConfigError> {
        match &self.layer_types {
            Some(types) => {
                if types.len() != self.num_hidden_layers {
                    return Err(Gemma3ConfigError::LayerTypes(
                        types.len(),
                        self.num_hidden_layers,
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(Gemma3ConfigError::LayerType(other.to_owned())),
                    })
                    .collect()
            }
            None => {
                let default = if self.is_gemma2() { 2 } else { 6 };
                let pattern = self.sliding_window_pattern.unwrap_or(default).max(1);
                Ok((0..self.num_hidden_layers)
                    .map(|i| !(i + 1).is_multiple_of(pattern))
                    .collect())
            }
        }
    }

    /// Rotary base and scaling of each layer kind, `(full, sliding)`: transformers 5 keeps
    /// them per layer type in `rope_parameters`; 4 has `rope_theta` and `rope_scaling` for the
    /// full layers and `rope_local_base_freq` for the sliding ones. Gemma 2 has one of each for
    /// all layers (flat in `rope_parameters`, or `rope_theta`).
    /// Rotation over whole heads by the full layers' base and the sliding layers'.
    pub fn rotary(&self) -> Result<Rotary, RopeError> {
        Ok(Rotary {
            dim: self.head_dim,
            bases: self.rope()?.into(),
        })
    }

    pub fn rope(&self) -> Result<[(f64, RopeScaling); 2], RopeError> {
        if self.is_gemma2() {
            let theta = self
                .rope_parameters
                .as_ref()
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .or(self.rope_theta)
                .unwrap_or(10_000.0);
            let scaling = RopeScaling::from_config(&json!({
                "rope_parameters": self.rope_parameters,
                "rope_scaling": self.rope_scaling,
                "max_position_embeddings": self.max_position_embeddings,
            }))?;
            return Ok([(theta, scaling.clone()), (theta, scaling)]);
        }
        let of = |kind: &str, theta: Option<f64>, scaling: Option<&Value>, default: f64| {
            let params = self.rope_parameters.as_ref().and_then(|p| p.get(kind));
            let theta = params
                .and_then(|p| p.get("rope_theta"))
                .and_then(Value::as_f64)
                .or(theta)
                .unwrap_or(default);
            let config = json!({
                "rope_parameters": params,
                "rope_scaling": scaling,
                "max_position_embeddings": self.max_position_embeddings,
            });
            Ok((theta, RopeScaling::from_config(&config)?))
        };
        Ok([
            of(
                "full_attention",
                self.rope_theta,
                self.rope_scaling.as_ref(),
                1_000_000.0,
            )?,
            of(
                "sliding_attention",
                self.rope_local_base_freq,
                None,
                10_000.0,
            )?,
        ])
    }

    pub fn check(&self) -> Result<(), Gemma3ConfigError> {
        self.sliding_layers()?;
        self.rope()?;
        let (h, kv) = (self.num_attention_heads, self.num_key_value_heads);
        if h == 0 || kv == 0 || !h.is_multiple_of(kv) || !self.head_dim.is_multiple_of(2) {
            return Err(Gemma3ConfigError::Heads);
        }
        if self.use_bidirectional_attention == Some(true) {
            return Err(Gemma3ConfigError::Unsupported(
                "use_bidirectional_attention",
            ));
        }
        Ok(())
    }
}

/// Gemma's RMSNorm: the normalised input times (1 + weight); the weight starts at 0.
#[derive(Module, Debug)]
pub struct GemmaNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl GemmaNorm {
    pub fn new(weight: Tensor<1>, eps: f64) -> GemmaNorm {
        GemmaNorm {
            weight: Param::from_tensor(weight),
            eps,
        }
    }
    fn init(d: usize, eps: f64, device: &Device) -> GemmaNorm {
        GemmaNorm::new(Tensor::zeros([d], device), eps)
    }
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::kernels::rms_norm(x, self.weight.val().add_scalar(1.0), self.eps)
    }
}

impl FinalNorm for GemmaNorm {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        GemmaNorm::forward(self, x)
    }

    fn write_weights(&self, name: &str, w: &mut WeightWriter) {
        w.put(format!("{name}.weight"), self.weight.val());
    }
}

#[derive(Module, Debug)]
pub struct Gemma3Layer {
    pub input_layernorm: GemmaNorm,
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub o_proj: Proj,
    /// Gemma 3's per-head norms (none in Gemma 2).
    pub q_norm: Option<GemmaNorm>,
    pub k_norm: Option<GemmaNorm>,
    pub post_attention_layernorm: GemmaNorm,
    pub pre_feedforward_layernorm: GemmaNorm,
    pub gate_proj: Proj,
    pub up_proj: Proj,
    pub down_proj: Proj,
    pub post_feedforward_layernorm: GemmaNorm,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// The window of a sliding-attention layer, in tokens.
    pub window: Option<usize>,
    /// What queries are multiplied by so that `attend`'s 1/sqrt(head_dim) makes the scaling
    /// `query_pre_attn_scalar`^-1/2 (1 when they agree, as in every released Gemma 3).
    pub query_factor: f64,
    /// Gemma 2's cap on attention scores.
    pub softcap: Option<f64>,
}

impl DecoderLayer for Gemma3Layer {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        (cos, sin): (&Tensor<4>, &Tensor<4>),
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = self.input_layernorm.forward(x.clone());
        let norm = |t: Tensor<4>, n: &Option<GemmaNorm>| match n {
            Some(n) => n.forward(t),
            None => t,
        };
        let q = norm(
            split_heads(self.q_proj.forward(h.clone()), self.n_heads),
            &self.q_norm,
        );
        let q = super::layers::apply_rope(q, cos, sin);
        let q = if self.query_factor == 1.0 {
            q
        } else {
            q.mul_scalar(self.query_factor)
        };
        let k = norm(
            split_heads(self.k_proj.forward(h.clone()), self.n_kv_heads),
            &self.k_norm,
        );
        let k = super::layers::apply_rope(k, cos, sin);
        let v = split_heads(self.v_proj.forward(h), self.n_kv_heads);
        let kv = KeysValues::new(k, v, cache);
        let mask = kv.mask_within(mask, &q, self.window);
        let a = kv.attend(q, mask, self.softcap, None);
        let a = self
            .post_attention_layernorm
            .forward(self.o_proj.forward(merge_heads(a)));
        let x = x + a;
        let h = self.pre_feedforward_layernorm.forward(x.clone());
        let m =
            crate::kernels::gelu_tanh(self.gate_proj.forward(h.clone())) * self.up_proj.forward(h);
        x + self
            .post_feedforward_layernorm
            .forward(self.down_proj.forward(m))
    }

    /// The sliding layers rotate by the second base.
    fn rotary_base(&self) -> usize {
        usize::from(self.window.is_some())
    }

    fn projections_mut(&mut self, layer: usize) -> Vec<(String, &mut Proj)> {
        named_projections(layer, Gemma3Layer::projections_mut(self)).collect()
    }

    fn write_weights(&self, layer: usize, w: &mut WeightWriter) {
        let p = format!("model.layers.{layer}");
        for (name, n) in [
            ("input_layernorm", Some(&self.input_layernorm)),
            ("self_attn.q_norm", self.q_norm.as_ref()),
            ("self_attn.k_norm", self.k_norm.as_ref()),
            (
                "post_attention_layernorm",
                Some(&self.post_attention_layernorm),
            ),
            (
                "pre_feedforward_layernorm",
                Some(&self.pre_feedforward_layernorm),
            ),
            (
                "post_feedforward_layernorm",
                Some(&self.post_feedforward_layernorm),
            ),
        ] {
            if let Some(n) = n {
                w.put(format!("{p}.{name}.weight"), n.weight.val());
            }
        }
        write_projections(w, named_projections(layer, self.projections()));
    }

}

/// A Gemma 3 or Gemma 2 model: its blocks in the shared decoder stack, which rotates its
/// full-attention layers by the first base and its sliding ones by the second.
pub type Gemma3 = DecoderStack<Gemma3Layer, GemmaNorm, Gemma3Config>;

impl Gemma3 {
    fn layer_shape(config: &Gemma3Config) -> Result<Vec<(Option<usize>, f64)>, ModelError> {
        let sliding = config.sliding_layers().map_err(|e| ModelError::BadConfig {
            path: "config.json".into(),
            reason: e.to_string(),
        })?;
        let factor = (config.head_dim as f64).sqrt() / (config.query_pre_attn_scalar as f64).sqrt();
        Ok(sliding
            .into_iter()
            .map(|s| {
                (
                    s.then_some(config.sliding_window.unwrap_or(usize::MAX)),
                    factor,
                )
            })
            .collect())
    }

    /// A new, randomly initialised model (norm weights 0, so every norm starts as x * 1).
    pub fn init(config: &Gemma3Config, device: &Device) -> Result<Gemma3, ModelError> {
        let (d, hd, std, eps) = (
            config.hidden_size,
            config.head_dim,
            0.02,
            config.rms_norm_eps,
        );
        let (h, kv, inner) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.intermediate_size,
        );
        let bias = config.attention_bias;
        let layers = Gemma3::layer_shape(config)?
            .into_iter()
            .map(|(window, query_factor)| Gemma3Layer {
                input_layernorm: GemmaNorm::init(d, eps, device),
                q_proj: Proj::init(d, h * hd, bias, std, device),
                k_proj: Proj::init(d, kv * hd, bias, std, device),
                v_proj: Proj::init(d, kv * hd, bias, std, device),
                o_proj: Proj::init(h * hd, d, bias, std, device),
                q_norm: config.qk_norm().then(|| GemmaNorm::init(hd, eps, device)),
                k_norm: config.qk_norm().then(|| GemmaNorm::init(hd, eps, device)),
                post_attention_layernorm: GemmaNorm::init(d, eps, device),
                pre_feedforward_layernorm: GemmaNorm::init(d, eps, device),
                gate_proj: Proj::init(d, inner, false, std, device),
                up_proj: Proj::init(d, inner, false, std, device),
                down_proj: Proj::init(inner, d, false, std, device),
                post_feedforward_layernorm: GemmaNorm::init(d, eps, device),
                n_heads: h,
                n_kv_heads: kv,
                window,
                query_factor,
                softcap: config.attn_logit_softcapping,
            })
            .collect();
        Ok(Gemma3 {
            embed_tokens: Param::from_tensor(Tensor::random(
                [config.vocab_size, d],
                burn::tensor::Distribution::Normal(0.0, std),
                device,
            )),
            layers,
            norm: GemmaNorm::init(d, eps, device),
            lm_head: (!config.tie_word_embeddings)
                .then(|| Proj::init(d, config.vocab_size, false, std, device)),
            rotary: config.rotary().map_err(|e| ModelError::BadConfig {
                path: "config.json".into(),
                reason: e.to_string(),
            })?,
            config: config.clone(),
            checkpoint_layers: false,
        })
    }

    /// Reads HF weights (`Gemma3TextModel` or `Gemma3ForCausalLM` names).
    pub fn from_weights(config: &Gemma3Config, w: &mut WeightMap) -> Result<Gemma3, ModelError> {
        let (d, hd, eps) = (config.hidden_size, config.head_dim, config.rms_norm_eps);
        let (h, kv, inner) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.intermediate_size,
        );
        let lm_head = w.take_lm_head(d, config.vocab_size, config.tie_word_embeddings)?;
        w.strip_prefix("model.");
        let bias = config.attention_bias;
        let lin = WeightMap::take_module;
        let norm = |w: &mut WeightMap, name: &str, n: usize| {
            Ok::<_, ModelError>(GemmaNorm::new(w.take(name, [n])?, eps))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for (i, (window, query_factor)) in Gemma3::layer_shape(config)?.into_iter().enumerate() {
            let p = format!("layers.{i}");
            layers.push(Gemma3Layer {
                input_layernorm: norm(w, &format!("{p}.input_layernorm.weight"), d)?,
                q_proj: lin(w, &format!("{p}.self_attn.q_proj"), d, h * hd, bias)?,
                k_proj: lin(w, &format!("{p}.self_attn.k_proj"), d, kv * hd, bias)?,
                v_proj: lin(w, &format!("{p}.self_attn.v_proj"), d, kv * hd, bias)?,
                o_proj: lin(w, &format!("{p}.self_attn.o_proj"), h * hd, d, bias)?,
                q_norm: match config.qk_norm() {
                    true => Some(norm(w, &format!("{p}.self_attn.q_norm.weight"), hd)?),
                    false => None,
                },
                k_norm: match config.qk_norm() {
                    true => Some(norm(w, &format!("{p}.self_attn.k_norm.weight"), hd)?),
                    false => None,
                },
                post_attention_layernorm: norm(
                    w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                )?,
                pre_feedforward_layernorm: norm(
                    w,
                    &format!("{p}.pre_feedforward_layernorm.weight"),
                    d,
                )?,
                gate_proj: lin(w, &format!("{p}.mlp.gate_proj"), d, inner, false)?,
                up_proj: lin(w, &format!("{p}.mlp.up_proj"), d, inner, false)?,
                down_proj: lin(w, &format!("{p}.mlp.down_proj"), inner, d, false)?,
                post_feedforward_layernorm: norm(
                    w,
                    &format!("{p}.post_feedforward_layernorm.weight"),
                    d,
                )?,
                n_heads: h,
                n_kv_heads: kv,
                window,
                query_factor,
                softcap: config.attn_logit_softcapping,
            });
        }
        let embed = w.take_matrix("embed_tokens.weight", [config.vocab_size, d])?;
        Ok(Gemma3 {
            embed_tokens: Param::from_tensor(embed),
            layers,
            norm: norm(w, "norm.weight", d)?,
            lm_head,
            rotary: config.rotary().map_err(|e| ModelError::BadConfig {
                path: w.path().to_path_buf(),
                reason: e.to_string(),
            })?,
            config: config.clone(),
            checkpoint_layers: false,
        })
    }
}

impl Gemma3Layer {
    /// In [`DECODER_PROJECTIONS`](super::layers::DECODER_PROJECTIONS) order.
    fn projections(&self) -> [&Proj; 7] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.gate_proj,
            &self.up_proj,
            &self.down_proj,
        ]
    }

    fn projections_mut(&mut self) -> [&mut Proj; 7] {
        [
            &mut self.q_proj,
            &mut self.k_proj,
            &mut self.v_proj,
            &mut self.o_proj,
            &mut self.gate_proj,
            &mut self.up_proj,
            &mut self.down_proj,
        ]
    }
}

/// Gemma 3 (its text decoder, also of a multimodal checkpoint) and Gemma 2 in
/// [`super::family::FAMILIES`].
pub struct Gemma3Family;

impl super::family::Family for Gemma3Family {
    fn name(&self) -> &'static str {
        "gemma3"
    }

    fn model_types(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("gemma2", ""),
            ("gemma3_text", ""),
            ("gemma3", "its text decoder"),
        ]
    }

    fn text_config(&self, model_type: &str, config: Value) -> Value {
        if model_type == "gemma3" {
            text_config(&config)
        } else {
            config
        }
    }

    fn gguf_archs(&self) -> &'static [&'static str] {
        &["gemma2", "gemma3"]
    }

    fn load_gguf(
        &self,
        g: &super::gguf::Gguf,
        arch: &str,
        device: &Device,
        frozen: &super::Frozen,
    ) -> Result<(super::Backbone, serde_json::Value), ModelError> {
        gguf::load(g, arch, device, frozen)
    }

    fn build(
        &self,
        model_type: &str,
        config: &Value,
        weights: &mut WeightMap,
    ) -> Result<super::Backbone, super::family::BuildError> {
        let c: Gemma3Config = super::family::parse(config)?;
        if model_type == "gemma3" {
            // Only the text decoder of a multimodal checkpoint: its weights sit under
            // `language_model.model.` (transformers 4) or `model.language_model.` (5).
            weights.replace_prefix("language_model.model.", "model.");
            weights.replace_prefix("model.language_model.", "model.");
            weights.replace_prefix("language_model.lm_head.", "lm_head.");
        }
        c.check()
            .map_err(|e| super::family::BuildError::Config(e.to_string()))?;
        Ok(super::Backbone::Gemma3(Gemma3::from_weights(&c, weights)?))
    }

    fn gguf_plan(
        &self,
        backbone: &super::Backbone,
        config: &serde_json::Value,
    ) -> Result<super::gguf_write::ArchPlan, super::gguf_write::GgufWriteError> {
        match backbone {
            super::Backbone::Gemma3(m) => m.gguf_plan(config),
            other => Err(super::family::not_this_family(self, other)),
        }
    }

    fn default_lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }

    fn default_chat_template(&self) -> Option<&'static str> {
        Some(super::chat::GEMMA)
    }
}
