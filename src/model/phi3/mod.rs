//! Phi-3 and Phi-4-mini decoders (`phi3`): Llama's blocks (RMSNorm, SwiGLU, grouped-query
//! attention) with q, k and v in one projection (`qkv_proj`) and gate and up in one
//! (`gate_up_proj`), rotary embeddings on the first `partial_rotary_factor` of each head (3/4
//! in Phi-4-mini) with LongRoPE scaling, and a sliding window when the config gives one. Config
//! and weights as transformers names them (`Phi3Config`, `Phi3ForCausalLM`); the fused
//! projections stay fused, so LoRA targets them by PEFT's names.

pub(crate) mod gguf;

use burn::module::{Module, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::decoder::{DecoderConfig, DecoderLayer, DecoderStack, Rotary};
use super::layers::{
    KeysValues, KvCache, Proj, RmsNorm, apply_rope, merge_heads, split_heads,
    write_projections,
};
use super::rope::{RopeError, RopeScaling};
use super::weights::{ModelError, WeightMap, WeightWriter};

/// The fields of HF's `Phi3Config` that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phi3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// transformers 4 keeps it here; 5 inside `rope_parameters`.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_max_pos() -> usize {
    4096
}

/// A Phi-3 config hone cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Phi3ConfigError {
    #[error(transparent)]
    Rope(#[from] RopeError),
    #[error("attention heads must be at least 1 and a multiple of num_key_value_heads")]
    Heads,
    #[error("partial_rotary_factor {0} leaves no even number of rotated dimensions")]
    Rotary(f64),
}

impl DecoderConfig for Phi3Config {
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.max_position_embeddings
    }

    fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings
    }

    fn hf_class(&self, classifier: bool) -> String {
        match classifier {
            true => "Phi3ForSequenceClassification",
            false => "Phi3ForCausalLM",
        }
        .to_owned()
    }
}

impl Phi3Config {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    fn param(&self, key: &str) -> Option<f64> {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get(key))
            .and_then(Value::as_f64)
    }
    pub fn theta(&self) -> f64 {
        self.param("rope_theta")
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }
    /// How many leading dimensions of each head rotate.
    pub fn rotary_dim(&self) -> usize {
        let factor = self
            .param("partial_rotary_factor")
            .or(self.partial_rotary_factor)
            .unwrap_or(1.0);
        (self.head_dim() as f64 * factor) as usize
    }
    pub fn rope(&self) -> Result<RopeScaling, RopeError> {
        RopeScaling::from_config(&json!({
            "rope_parameters": self.rope_parameters,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }))
    }
    pub fn check(&self) -> Result<(), Phi3ConfigError> {
        self.rope()?;
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if h == 0 || kv == 0 || !h.is_multiple_of(kv) {
            return Err(Phi3ConfigError::Heads);
        }
        let r = self.rotary_dim();
        if r == 0 || !r.is_multiple_of(2) || r > self.head_dim() {
            return Err(Phi3ConfigError::Rotary(
                r as f64 / self.head_dim().max(1) as f64,
            ));
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
pub struct Phi3Layer {
    pub input_layernorm: RmsNorm,
    /// q, k and v stacked: `[d, (heads + 2 kv_heads) * head_dim]`.
    pub qkv_proj: Proj,
    pub o_proj: Proj,
    pub post_attention_layernorm: RmsNorm,
    /// gate and up stacked: `[d, 2 * intermediate]`.
    pub gate_up_proj: Proj,
    pub down_proj: Proj,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub window: Option<usize>,
}

/// The projections of a Phi-3 layer by their HF module names under `model.layers.<i>`.
pub const PHI3_PROJECTIONS: [&str; 4] = [
    "self_attn.qkv_proj",
    "self_attn.o_proj",
    "mlp.gate_up_proj",
    "mlp.down_proj",
];

impl Phi3Layer {
    fn projections(&self) -> [&Proj; 4] {
        [
            &self.qkv_proj,
            &self.o_proj,
            &self.gate_up_proj,
            &self.down_proj,
        ]
    }

    fn projections_mut(&mut self) -> [&mut Proj; 4] {
        [
            &mut self.qkv_proj,
            &mut self.o_proj,
            &mut self.gate_up_proj,
            &mut self.down_proj,
        ]
    }

    /// Rotates the first `rotary_dim` dimensions of each head, leaves the rest.
    fn rotate(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let hd = self.head_dim;
        if self.rotary_dim == hd {
            return apply_rope(x, cos, sin);
        }
        let rot = apply_rope(x.clone().narrow(3, 0, self.rotary_dim), cos, sin);
        let pass = x.narrow(3, self.rotary_dim, hd - self.rotary_dim);
        Tensor::cat(vec![rot, pass], 3)
    }
}

impl DecoderLayer for Phi3Layer {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        (cos, sin): (&Tensor<4>, &Tensor<4>),
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let (h, kv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let n = self.input_layernorm.forward(x.clone());
        let qkv = self.qkv_proj.forward(n);
        let q = split_heads(qkv.clone().narrow(2, 0, h * hd), h);
        let k = split_heads(qkv.clone().narrow(2, h * hd, kv * hd), kv);
        let v = split_heads(qkv.narrow(2, (h + kv) * hd, kv * hd), kv);
        let q = self.rotate(q, cos, sin);
        let k = self.rotate(k, cos, sin);
        let kv = KeysValues::new(k, v, cache);
        let mask = kv.mask_within(mask, &q, self.window);
        let a = kv.attend(q, mask, None, None);
        let x = x + self.o_proj.forward(merge_heads(a));
        let n = self.post_attention_layernorm.forward(x.clone());
        let gu = self.gate_up_proj.forward(n);
        let inner = gu.dims()[2] / 2;
        let gate = gu.clone().narrow(2, 0, inner);
        let up = gu.narrow(2, inner, inner);
        x + self.down_proj.forward(crate::kernels::silu_mul(gate, up))
    }

    fn projections_mut(&mut self, layer: usize) -> Vec<(String, &mut Proj)> {
        named(layer).zip(Phi3Layer::projections_mut(self)).collect()
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
        write_projections(w, named(layer).zip(self.projections()));
    }
}

/// The projections of layer `i` by their full HF paths.
fn named(i: usize) -> impl Iterator<Item = String> {
    PHI3_PROJECTIONS
        .into_iter()
        .map(move |name| format!("model.layers.{i}.{name}"))

}

/// A Phi-3 (or Phi-4-mini) model: its blocks in the shared decoder stack.
pub type Phi3 = DecoderStack<Phi3Layer, RmsNorm, Phi3Config>;

impl Phi3 {
    /// Reads HF weights (`Phi3Model` or `Phi3ForCausalLM` names).
    pub fn from_weights(config: &Phi3Config, w: &mut WeightMap) -> Result<Phi3, ModelError> {
        let bad = |reason: String| ModelError::BadConfig {
            path: w.path().to_path_buf(),
            reason,
        };
        let rope = config.rope().map_err(|e| bad(e.to_string()))?;
        let (d, hd, eps) = (config.hidden_size, config.head_dim(), config.rms_norm_eps);
        let (h, kv, inner) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.intermediate_size,
        );
        let lm_head = w.take_lm_head(d, config.vocab_size, config.tie_word_embeddings)?;
        w.strip_prefix("model.");
        let lin = |w: &mut WeightMap, p: &str, i: usize, o: usize| w.take_module(p, i, o, false);
        let norm = |w: &mut WeightMap, name: &str| {
            Ok::<_, ModelError>(RmsNorm::new(w.take(name, [d])?, eps))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("layers.{i}");
            layers.push(Phi3Layer {
                input_layernorm: norm(w, &format!("{p}.input_layernorm.weight"))?,
                qkv_proj: lin(w, &format!("{p}.self_attn.qkv_proj"), d, (h + 2 * kv) * hd)?,
                o_proj: lin(w, &format!("{p}.self_attn.o_proj"), h * hd, d)?,
                post_attention_layernorm: norm(w, &format!("{p}.post_attention_layernorm.weight"))?,
                gate_up_proj: lin(w, &format!("{p}.mlp.gate_up_proj"), d, 2 * inner)?,
                down_proj: lin(w, &format!("{p}.mlp.down_proj"), inner, d)?,
                n_heads: h,
                n_kv_heads: kv,
                head_dim: hd,
                rotary_dim: config.rotary_dim(),
                window: config.sliding_window,
            });
        }
        let embed = w.take_matrix("embed_tokens.weight", [config.vocab_size, d])?;
        Ok(Phi3 {
            embed_tokens: Param::from_tensor(embed),
            layers,
            norm: norm(w, "norm.weight")?,
            lm_head,
            config: config.clone(),
            rotary: Rotary {
                dim: config.rotary_dim(),
                bases: vec![(config.theta(), rope)],
            },
            checkpoint_layers: false,
        })
    }
}

/// Phi-3 (and Phi-4-mini) in [`super::family::FAMILIES`].
pub struct Phi3Family;

impl super::family::Family for Phi3Family {
    fn name(&self) -> &'static str {
        "phi3"
    }

    fn model_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("phi3", "Phi-3, Phi-4-mini")]
    }

    fn gguf_archs(&self) -> &'static [&'static str] {
        &["phi3"]
    }

    fn load_gguf(
        &self,
        g: &super::gguf::Gguf,
        _arch: &str,
        device: &Device,
        frozen: &super::Frozen,
    ) -> Result<(super::Backbone, serde_json::Value), ModelError> {
        gguf::load(g, device, frozen)
    }

    fn build(
        &self,
        _model_type: &str,
        config: &Value,
        weights: &mut WeightMap,
    ) -> Result<super::Backbone, super::family::BuildError> {
        let c: Phi3Config = super::family::parse(config)?;
        c.check()
            .map_err(|e| super::family::BuildError::Config(e.to_string()))?;
        Ok(super::Backbone::Phi3(Phi3::from_weights(&c, weights)?))
    }

    /// PEFT's default for Phi-3: the fused q/k/v projection.
    fn gguf_plan(
        &self,
        backbone: &super::Backbone,
        config: &serde_json::Value,
    ) -> Result<super::gguf_write::ArchPlan, super::gguf_write::GgufWriteError> {
        match backbone {
            super::Backbone::Phi3(m) => m.gguf_plan(config),
            other => Err(super::family::not_this_family(self, other)),
        }
    }

    fn default_lora_targets(&self) -> &'static [&'static str] {
        &["qkv_proj"]
    }
}
