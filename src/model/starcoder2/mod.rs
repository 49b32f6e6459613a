//! StarCoder2 (`starcoder2`; BigCode's code models): pre-norm blocks with LayerNorms that
//! have biases, grouped-query attention with biases on every projection and rotary positions
//! over whole heads, a sliding window on every layer when the config gives one, and a
//! non-gated GELU MLP (`c_fc`, then `c_proj`). Config and weights as transformers names them
//! (`Starcoder2Config`, `Starcoder2ForCausalLM`); the head is tied to the embedding unless the
//! config says otherwise.
//!
//! The family is its block, its config and this folder's `impl Family`: the embedding, the
//! rotary tables, the KV cache, checkpointing, the final norm and the head are the shared
//! [`DecoderStack`]'s.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decoder::{DecoderConfig, DecoderLayer, DecoderStack, Rotary};
use super::family::{BuildError, Family, parse};
use super::layers::{
    KeysValues, KvCache, LayerNorm, Proj, apply_rope, merge_heads, split_heads,
    write_projections,
};
use super::weights::{ModelError, WeightMap, WeightWriter};

/// The fields of HF's `Starcoder2Config` that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Starcoder2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub norm_epsilon: f64,
    /// Biases on every projection (transformers' default).
    #[serde(default = "yes")]
    pub use_bias: bool,
    /// The attention window of every layer, in tokens.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// transformers < 5 writes `rope_theta` at the top level...
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// ...transformers 5 inside `rope_parameters`, with the scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    #[serde(default = "gelu_tanh")]
    pub hidden_act: String,
    /// transformers ties StarCoder2's head by default.
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
}

fn default_eps() -> f64 {
    1e-5
}

fn yes() -> bool {
    true
}

fn gelu_tanh() -> String {
    "gelu_pytorch_tanh".into()
}

impl Starcoder2Config {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    fn rotary(&self) -> Result<Rotary, String> {
        Rotary::from_hf(
            self.head_dim(),
            self.rope_parameters.as_ref(),
            self.rope_theta,
            self.rope_scaling.as_ref(),
            self.max_position_embeddings,
            10_000.0,
        )
        .map_err(|e| e.to_string())
    }

    /// Whether the MLP's GELU is the tanh approximation; an error for an activation hone
    /// does not run.
    fn tanh_gelu(&self) -> Result<bool, String> {
        match self.hidden_act.as_str() {
            "gelu_pytorch_tanh" | "gelu_new" => Ok(true),
            "gelu" => Ok(false),
            other => Err(format!(
                "hidden_act `{other}` is not one hone runs for starcoder2 (gelu_pytorch_tanh, \
                 gelu_new, gelu)"
            )),
        }
    }

    /// What [`Starcoder2::from_weights`] needs to hold: heads that divide the width and group
    /// evenly, an activation and a rotary scaling hone runs.
    pub fn check(&self) -> Result<(), String> {
        let (d, h, kv) = (self.hidden_size, self.num_attention_heads, self.kv_heads());
        if h == 0 || kv == 0 || !d.is_multiple_of(h) || !h.is_multiple_of(kv) {
            return Err(format!(
                "hidden_size {d}, num_attention_heads {h} and num_key_value_heads {kv} must \
                 split into whole heads, in groups of equal size per key/value head"
            ));
        }
        self.tanh_gelu()?;
        self.rotary()?;
        Ok(())
    }
}

impl DecoderConfig for Starcoder2Config {
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
            true => "Starcoder2ForSequenceClassification",
            false => "Starcoder2ForCausalLM",
        }
        .to_owned()
    }
}

/// The projections of a block, by their paths under `model.layers.{i}`.
const PROJECTIONS: [&str; 6] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.c_fc",
    "mlp.c_proj",
];

#[derive(Module, Debug)]
pub struct Starcoder2Layer {
    pub input_layernorm: LayerNorm,
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub o_proj: Proj,
    pub post_attention_layernorm: LayerNorm,
    pub c_fc: Proj,
    pub c_proj: Proj,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub window: Option<usize>,
    /// GELU's tanh approximation (`gelu_pytorch_tanh`) rather than the exact one.
    pub tanh_gelu: bool,
}

impl Starcoder2Layer {
    fn projections(&self) -> [&Proj; 6] {
        [
            &self.q_proj,
            &self.k_proj,
            &self.v_proj,
            &self.o_proj,
            &self.c_fc,
            &self.c_proj,
        ]
    }
}

/// The projections of block `layer` by their full HF paths.
fn named<P>(layer: usize, projs: [P; 6]) -> impl Iterator<Item = (String, P)> {
    PROJECTIONS
        .into_iter()
        .zip(projs)
        .map(move |(name, p)| (format!("model.layers.{layer}.{name}"), p))
}

impl DecoderLayer for Starcoder2Layer {
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
        let x = x + self.o_proj.forward(merge_heads(kv.attend(q, mask, None, None)));
        let h = self
            .c_fc
            .forward(self.post_attention_layernorm.forward(x.clone()));
        let h = match self.tanh_gelu {
            true => crate::kernels::gelu_tanh(h),
            false => gelu(h),
        };
        x + self.c_proj.forward(h)
    }

    fn projections_mut(&mut self, layer: usize) -> Vec<(String, &mut Proj)> {
        let Starcoder2Layer {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            c_fc,
            c_proj,
            ..
        } = self;
        named(layer, [q_proj, k_proj, v_proj, o_proj, c_fc, c_proj]).collect()
    }

    fn write_weights(&self, layer: usize, w: &mut WeightWriter) {
        use super::decoder::FinalNorm;
        let p = format!("model.layers.{layer}");
        self.input_layernorm
            .write_weights(&format!("{p}.input_layernorm"), w);
        self.post_attention_layernorm
            .write_weights(&format!("{p}.post_attention_layernorm"), w);
        write_projections(w, named(layer, self.projections()));
    }
}

/// A StarCoder2 model: its blocks in the shared decoder stack.
pub type Starcoder2 = DecoderStack<Starcoder2Layer, LayerNorm, Starcoder2Config>;

impl Starcoder2 {
    /// Reads HF weights (`Starcoder2Model` or `Starcoder2ForCausalLM` names).
    pub fn from_weights(
        config: &Starcoder2Config,
        w: &mut WeightMap,
    ) -> Result<Starcoder2, ModelError> {
        let (d, hd, inner) = (
            config.hidden_size,
            config.head_dim(),
            config.intermediate_size,
        );
        let (h, kv, vocab) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.vocab_size,
        );
        let bad_config = |path: &std::path::Path, reason: String| ModelError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let tanh_gelu = config.tanh_gelu().map_err(|e| bad_config(w.path(), e))?;
        let rotary = config.rotary().map_err(|e| bad_config(w.path(), e))?;
        let lm_head = w.take_lm_head(d, vocab, config.tie_word_embeddings)?;
        w.strip_prefix("model.");
        let norm = |w: &mut WeightMap, name: &str| {
            let weight = w.take(&format!("{name}.weight"), [d])?;
            let bias = w.take(&format!("{name}.bias"), [d])?;
            Ok::<_, ModelError>(LayerNorm::new(weight, bias, config.norm_epsilon))
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("layers.{i}");
            let mut proj = |name: &str, d_in: usize, d_out: usize| {
                w.take_module(&format!("{p}.{name}"), d_in, d_out, config.use_bias)
            };
            let [q, k, v, o, c_fc, c_proj] = PROJECTIONS;
            layers.push(Starcoder2Layer {
                q_proj: proj(q, d, h * hd)?,
                k_proj: proj(k, d, kv * hd)?,
                v_proj: proj(v, d, kv * hd)?,
                o_proj: proj(o, h * hd, d)?,
                c_fc: proj(c_fc, d, inner)?,
                c_proj: proj(c_proj, inner, d)?,
                input_layernorm: norm(w, &format!("{p}.input_layernorm"))?,
                post_attention_layernorm: norm(w, &format!("{p}.post_attention_layernorm"))?,
                n_heads: h,
                n_kv_heads: kv,
                window: config.sliding_window,
                tanh_gelu,
            });
        }
        Ok(Starcoder2 {
            embed_tokens: Param::from_tensor(w.take_matrix("embed_tokens.weight", [vocab, d])?),
            layers,
            norm: norm(w, "norm")?,
            lm_head,
            rotary,
            config: config.clone(),
            checkpoint_layers: false,
        })
    }
}

/// StarCoder2 in [`super::FAMILIES`].
pub struct Starcoder2Family;

impl Family for Starcoder2Family {
    fn name(&self) -> &'static str {
        "starcoder2"
    }

    fn model_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("starcoder2", "StarCoder2")]
    }

    fn build(
        &self,
        _model_type: &str,
        config: &Value,
        weights: &mut WeightMap,
    ) -> Result<super::Backbone, BuildError> {
        let c: Starcoder2Config = parse(config)?;
        c.check().map_err(BuildError::Config)?;
        Ok(Starcoder2::from_weights(&c, weights)?.into())
    }

    /// PEFT has no default for StarCoder2; attention's query and value, as for the others.
    fn default_lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }
}
