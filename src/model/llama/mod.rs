//! Llama style decoder: RMSNorm, rotary embeddings in HF's half-split layout (with every
//! rotary scaling of `rope.rs`, Llama 3's included), SwiGLU MLP, grouped-query attention,
//! optional tied LM head. The families built the same way differ only in where attention has
//! biases and norms, which `model_type` says, as in transformers:
//! - `llama` (Llama 2 and 3.x, SmolLM2): q/k/v/o biases when `attention_bias`;
//! - `mistral`: as llama, every layer attending through a window of `sliding_window` tokens
//!   when the config gives one;
//! - `qwen2` (Qwen2, Qwen2.5): q/k/v always with biases, o without; with `use_sliding_window`,
//!   the layers from `max_window_layers` on attend through the window;
//! - `qwen3`: biases as llama, and an RMSNorm over each head of q and k before the rotation
//!   (`q_norm`, `k_norm`), with an explicit `head_dim`;
//! - `smollm3`: as llama, with no rotation at all in every `no_rope_layer_interval`-th layer
//!   (NoPE; or where `no_rope_layers` holds 0), and windows only with `use_sliding_window`;
//! - `olmo2`: norms after attention and after the MLP instead of before them
//!   (`post_attention_layernorm`, `post_feedforward_layernorm`, no `input_layernorm`), and q
//!   and k RMS-normalised over all their heads at once before the rotation;
//! - `qwen3_moe` (Qwen3-MoE): Qwen3's attention, and in its sparse layers a mixture of experts
//!   ([`super::moe`]) instead of the MLP: every `decoder_sparse_step`-th layer but those of
//!   `mlp_only_layers`; windows on every layer with `use_sliding_window`.

pub(crate) mod gguf;

use burn::module::{Module, Param};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::decoder::{DecoderConfig, DecoderLayer, DecoderStack, Rotary};
use super::layers::{
    DECODER_PROJECTIONS, KeysValues, KvCache, Proj, RmsNorm, apply_rope, merge_heads,
    named_projections, split_heads, write_projections,
};
use super::moe::{Activation, Expert, Router, SparseMoe, expert_parameter};
use super::rope::{RopeError, RopeScaling};
use super::weights::{ModelError, WeightMap, WeightWriter};

/// The fields of HF's `LlamaConfig` that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
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
    /// transformers < 5 writes `rope_theta` at the top level...
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// ...transformers 5 inside `rope_parameters`, with the scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP's gate, up and down projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Which of the Llama-architecture families (module docs); `llama` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// The attention window of sliding layers, in tokens (Mistral, Qwen's option).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// `sliding_attention` or `full_attention` per layer (transformers 5; else by family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// SmolLM3: 1 where a layer rotates q and k, 0 where it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_rope_layers: Option<Vec<u8>>,
    /// SmolLM3 without `no_rope_layers`: every this-many-th layer does not rotate (4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_rope_layer_interval: Option<usize>,
    /// Qwen3-MoE: experts per sparse layer, as released configs name it...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts: Option<usize>,
    /// ...and as transformers 5 writes it (a config may hold both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_local_experts: Option<usize>,
    /// Qwen3-MoE: experts each token goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts_per_tok: Option<usize>,
    /// Qwen3-MoE: each expert's MLP width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe_intermediate_size: Option<usize>,
    /// Qwen3-MoE: the chosen experts' probabilities renormalised to sum to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_topk_prob: Option<bool>,
    /// Qwen3-MoE: every this-many-th layer is sparse (1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_sparse_step: Option<usize>,
    /// Qwen3-MoE: layers that keep the dense MLP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlp_only_layers: Option<Vec<usize>>,
    /// Qwen3-MoE: the weight of the router's load-balancing loss in full fine-tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_aux_loss_coef: Option<f64>,
}

/// A `config.json` whose Llama settings hone cannot run: a rotary scaling it does not
/// implement, no attention heads, or attention heads that do not group evenly over the
/// key/value heads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlamaConfigError {
    #[error(transparent)]
    Rope(#[from] RopeError),
    #[error("num_attention_heads must be at least 1")]
    NoHeads,
    #[error("num_attention_heads must be a multiple of num_key_value_heads")]
    UngroupedHeads,
    #[error("layer_types must name sliding_attention or full_attention for each of the {0} layers")]
    LayerTypes(usize),
    #[error("no_rope_layers must hold 0 or 1 for each of the {0} layers")]
    NoRopeLayers(usize),
    #[error("no_rope_layer_interval must be at least 1")]
    NoRopeInterval,
    #[error("a qwen3_moe config needs {0}")]
    Experts(&'static str),
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

impl DecoderConfig for LlamaConfig {
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
        let task = if classifier {
            "SequenceClassification"
        } else {
            "CausalLM"
        };
        format!("{}For{task}", self.class_prefix())
    }
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|r| r.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }
    /// Rotation over whole heads by the config's one base, scaled by `scaling`.
    pub fn rotary(&self, scaling: RopeScaling) -> Rotary {
        Rotary {
            dim: self.head_dim(),
            bases: vec![(self.theta(), scaling)],
        }
    }

    /// The rotary scaling of `rope_parameters` or `rope_scaling`.
    pub fn rope_scaling(&self) -> Result<RopeScaling, RopeError> {
        RopeScaling::from_config(&serde_json::json!({
            "rope_parameters": self.rope_parameters,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
        }))
    }
    fn family(&self) -> &str {
        self.model_type.as_deref().unwrap_or("llama")
    }
    /// The start of transformers' class names for this family (`Qwen2` in
    /// `Qwen2ForCausalLM`), for the `architectures` of a saved config.
    pub fn class_prefix(&self) -> &'static str {
        match self.family() {
            "mistral" => "Mistral",
            "qwen2" => "Qwen2",
            "qwen3" => "Qwen3",
            "smollm3" => "SmolLM3",
            "olmo2" => "Olmo2",
            "qwen3_moe" => "Qwen3Moe",
            _ => "Llama",
        }
    }
    /// Whether q, k and v have biases: Qwen2 always, the others with `attention_bias`.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.family() == "qwen2"
    }
    /// Whether the output projection has a bias: with `attention_bias`, except in Qwen2.
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.family() != "qwen2"
    }
    /// Whether q and k are RMS-normalised before the rotation: each head on its own (Qwen3) or
    /// all heads at once ([`qk_norm_spans_heads`](Self::qk_norm_spans_heads), OLMo 2).
    pub fn qk_norm(&self) -> bool {
        matches!(self.family(), "qwen3" | "olmo2" | "qwen3_moe")
    }
    /// Whether the q and k norms span all heads (OLMo 2) rather than one head.
    pub fn qk_norm_spans_heads(&self) -> bool {
        self.family() == "olmo2"
    }
    /// Whether a layer normalises the outputs of attention and the MLP before adding them to
    /// the residual stream (OLMo 2) instead of their inputs.
    pub fn norms_after(&self) -> bool {
        self.family() == "olmo2"
    }
    /// Experts per sparse layer (0: none).
    pub fn experts(&self) -> usize {
        self.num_experts.or(self.num_local_experts).unwrap_or(0)
    }

    /// Whether each layer's MLP is a mixture of experts: in Qwen3-MoE, every
    /// `decoder_sparse_step`-th layer but those of `mlp_only_layers`, when it has experts.
    pub fn sparse_layers(&self) -> Result<Vec<bool>, LlamaConfigError> {
        let n = self.num_hidden_layers;
        let experts = self.experts();
        if self.family() != "qwen3_moe" || experts == 0 {
            return Ok(vec![false; n]);
        }
        let step = self.decoder_sparse_step.unwrap_or(1);
        if step == 0 {
            return Err(LlamaConfigError::Experts(
                "decoder_sparse_step of at least 1",
            ));
        }
        let k = self.num_experts_per_tok.unwrap_or(0);
        if k == 0 || k > experts {
            return Err(LlamaConfigError::Experts(
                "num_experts_per_tok between 1 and num_experts",
            ));
        }
        if self.moe_intermediate_size.unwrap_or(0) == 0 {
            return Err(LlamaConfigError::Experts("moe_intermediate_size"));
        }
        let dense = self.mlp_only_layers.as_deref().unwrap_or_default();
        Ok((0..n)
            .map(|i| !dense.contains(&i) && (i + 1).is_multiple_of(step))
            .collect())
    }

    /// Whether each layer rotates q and k: all do, except SmolLM3's NoPE layers.
    pub fn rotary_layers(&self) -> Result<Vec<bool>, LlamaConfigError> {
        let n = self.num_hidden_layers;
        if self.family() != "smollm3" {
            return Ok(vec![true; n]);
        }
        if let Some(flags) = &self.no_rope_layers {
            if flags.len() != n || flags.iter().any(|f| *f > 1) {
                return Err(LlamaConfigError::NoRopeLayers(n));
            }
            return Ok(flags.iter().map(|f| *f == 1).collect());
        }
        let every = self.no_rope_layer_interval.unwrap_or(4);
        if every == 0 {
            return Err(LlamaConfigError::NoRopeInterval);
        }
        Ok((0..n).map(|i| !(i + 1).is_multiple_of(every)).collect())
    }
    /// Each layer's attention window (`None`: it sees every earlier token), as transformers
    /// decides it: `layer_types` where given; else Mistral's window on every layer, Qwen's on
    /// the layers from `max_window_layers` on when `use_sliding_window`, none for Llama.
    pub fn windows(&self) -> Result<Vec<Option<usize>>, LlamaConfigError> {
        let n = self.num_hidden_layers;
        if self.family() == "smollm3" {
            // SmolLM3 windows its sliding layers only with `use_sliding_window`; without
            // `layer_types`, the sliding layers are the NoPE ones.
            let sliding = self.use_sliding_window == Some(true);
            let rotary = self.rotary_layers()?;
            return match &self.layer_types {
                Some(types) if types.len() != n => Err(LlamaConfigError::LayerTypes(n)),
                Some(types) => types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(self.sliding_window.filter(|_| sliding)),
                        "full_attention" => Ok(None),
                        _ => Err(LlamaConfigError::LayerTypes(n)),
                    })
                    .collect(),
                None => Ok(rotary
                    .iter()
                    .map(|r| self.sliding_window.filter(|_| sliding && !r))
                    .collect()),
            };
        }
        if let Some(types) = &self.layer_types {
            if types.len() != n {
                return Err(LlamaConfigError::LayerTypes(n));
            }
            return types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(self.sliding_window),
                    "full_attention" => Ok(None),
                    _ => Err(LlamaConfigError::LayerTypes(n)),
                })
                .collect();
        }
        Ok((0..n)
            .map(|i| match self.family() {
                "mistral" => self.sliding_window,
                "qwen2" | "qwen3" if self.use_sliding_window == Some(true) => self
                    .sliding_window
                    .filter(|_| i >= self.max_window_layers.unwrap_or(28)),
                "qwen3_moe" if self.use_sliding_window == Some(true) => self.sliding_window,
                _ => None,
            })
            .collect())
    }

    /// A rotary scaling hone implements, and at least one attention head, in groups of equal
    /// size per key/value head.
    pub fn check(&self) -> Result<(), LlamaConfigError> {
        self.rope_scaling()?;
        self.windows()?;
        self.rotary_layers()?;
        self.sparse_layers()?;
        if self.num_attention_heads == 0 {
            return Err(LlamaConfigError::NoHeads);
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(LlamaConfigError::UngroupedHeads);
        }
        Ok(())
    }
}

#[derive(Module, Debug)]
pub struct LlamaLayer {
    /// The norm of the layer's input; `None` where the norms come after (OLMo 2).
    pub input_layernorm: Option<RmsNorm>,
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub o_proj: Proj,
    /// Norms of queries and keys before the rotation: per head (Qwen3) or over all heads
    /// (OLMo 2, `qk_norm_spans_heads`).
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub qk_norm_spans_heads: bool,
    /// The norm of the MLP's input, or with `post_feedforward_layernorm` that of attention's
    /// output (OLMo 2: HF names both so).
    pub post_attention_layernorm: RmsNorm,
    /// OLMo 2's norm of the MLP's output, before the residual.
    pub post_feedforward_layernorm: Option<RmsNorm>,
    pub mlp: Mlp,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// The attention window of a sliding layer, in tokens.
    pub window: Option<usize>,
    /// Whether q and k are rotated (not in SmolLM3's NoPE layers).
    pub rotary: bool,
}

/// `x` through `norm` when there is one.
fn maybe_norm<const D: usize>(x: Tensor<D>, norm: &Option<RmsNorm>) -> Tensor<D> {
    match norm {
        Some(n) => n.forward(x),
        None => x,
    }
}

/// The MLP of a layer: SwiGLU, or a mixture of SwiGLU experts in Qwen3-MoE's sparse layers.
// One per layer, built once: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Mlp {
    Dense(SwiGlu),
    Sparse(SparseMoe),
}

#[derive(Module, Debug)]
pub struct SwiGlu {
    pub gate_proj: Proj,
    pub up_proj: Proj,
    pub down_proj: Proj,
}

impl Mlp {
    fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        match self {
            Mlp::Dense(m) => {
                let gated =
                    crate::kernels::silu_mul(m.gate_proj.forward(h.clone()), m.up_proj.forward(h));
                m.down_proj.forward(gated)
            }
            Mlp::Sparse(moe) => moe.forward(h),
        }
    }
}

impl LlamaLayer {
    /// The layer's projections by their HF paths: attention's and the MLP's in
    /// [`DECODER_PROJECTIONS`] order, or attention's and then each expert's.
    fn projections(&self, layer: usize) -> Vec<(String, &Proj)> {
        let attention = [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj];
        match &self.mlp {
            Mlp::Dense(m) => {
                let [q, k, v, o] = attention;
                named_projections(layer, [q, k, v, o, &m.gate_proj, &m.up_proj, &m.down_proj])
                    .collect()
            }
            Mlp::Sparse(moe) => named_attention(layer, attention)
                .chain(moe.projections(&format!("model.layers.{layer}.mlp")))
                .collect(),
        }
    }
}

/// Attention's four projections of layer `layer` by their HF paths.
fn named_attention<P>(layer: usize, projs: [P; 4]) -> impl Iterator<Item = (String, P)> {
    DECODER_PROJECTIONS[..4]
        .iter()
        .zip(projs)
        .map(move |(name, p)| (format!("model.layers.{layer}.{name}"), p))
}

impl DecoderLayer for LlamaLayer {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        (cos, sin): (&Tensor<4>, &Tensor<4>),
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let h = maybe_norm(x.clone(), &self.input_layernorm);
        let none = None;
        let (q_norm, k_norm, head_norms) = match self.qk_norm_spans_heads {
            true => (&self.q_norm, &self.k_norm, (&none, &none)),
            false => (&none, &none, (&self.q_norm, &self.k_norm)),
        };
        let rotate = |t: Tensor<4>| match self.rotary {
            true => apply_rope(t, cos, sin),
            false => t,
        };
        let q = maybe_norm(self.q_proj.forward(h.clone()), q_norm);
        let q = rotate(maybe_norm(split_heads(q, self.n_heads), head_norms.0));
        let k = maybe_norm(self.k_proj.forward(h.clone()), k_norm);
        let k = rotate(maybe_norm(split_heads(k, self.n_kv_heads), head_norms.1));
        let v = split_heads(self.v_proj.forward(h), self.n_kv_heads);
        let kv = KeysValues::new(k, v, cache);
        let mask = kv.mask_within(mask, &q, self.window);
        let a = self.o_proj.forward(merge_heads(kv.attend(q, mask, None, None)));
        let mlp = |h: Tensor<3>| self.mlp.forward(h);
        match &self.post_feedforward_layernorm {
            None => {
                let x = x + a;
                let h = self.post_attention_layernorm.forward(x.clone());
                x + mlp(h)
            }
            Some(after_mlp) => {
                let x = x + self.post_attention_layernorm.forward(a);
                x.clone() + after_mlp.forward(mlp(x))
            }
        }
    }

    fn projections_mut(&mut self, layer: usize) -> Vec<(String, &mut Proj)> {
        let LlamaLayer {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            mlp,
            ..
        } = self;
        match mlp {
            Mlp::Dense(m) => {
                let SwiGlu {
                    gate_proj,
                    up_proj,
                    down_proj,
                } = m;
                named_projections(
                    layer,
                    [
                        q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj,
                    ],
                )
                .collect()
            }
            Mlp::Sparse(moe) => named_attention(layer, [q_proj, k_proj, v_proj, o_proj])
                .chain(moe.projections_mut(&format!("model.layers.{layer}.mlp")))
                .collect(),
        }
    }

    fn write_weights(&self, layer: usize, w: &mut WeightWriter) {
        let p = format!("model.layers.{layer}");
        if let Some(n) = &self.input_layernorm {
            w.put(format!("{p}.input_layernorm.weight"), n.weight.val());
        }
        w.put(
            format!("{p}.post_attention_layernorm.weight"),
            self.post_attention_layernorm.weight.val(),
        );
        if let Some(n) = &self.post_feedforward_layernorm {
            w.put(
                format!("{p}.post_feedforward_layernorm.weight"),
                n.weight.val(),
            );
        }
        for (name, norm) in [("q_norm", &self.q_norm), ("k_norm", &self.k_norm)] {
            if let Some(n) = norm {
                w.put(format!("{p}.self_attn.{name}.weight"), n.weight.val());
            }
        }
        if let Mlp::Sparse(moe) = &self.mlp {
            write_experts(w, &format!("{p}.mlp"), moe);
        }
        let dense = self.projections(layer).into_iter();
        write_projections(w, dense.filter(|(p, _)| expert_parameter(p).is_none()));
    }

    fn trains_router(&self) -> bool {
        match &self.mlp {
            Mlp::Sparse(moe) => moe.gate.weight.is_require_grad(),
            Mlp::Dense(_) => false,
        }
    }
}

/// A Llama-family model: Llama's blocks (and the variants its config selects) in the shared
/// decoder stack.
pub type Llama = DecoderStack<LlamaLayer, RmsNorm, LlamaConfig>;

impl Llama {
    pub fn init(config: &LlamaConfig, device: &Device) -> Llama {
        let (d, hd, std) = (config.hidden_size, config.head_dim(), 0.02);
        let (h, kv, inner) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.intermediate_size,
        );
        let (bias, eps) = (config.qkv_bias(), config.rms_norm_eps);
        let spans = config.qk_norm_spans_heads();
        let qk_norm = |heads: usize| {
            let width = if spans { heads * hd } else { hd };
            config.qk_norm().then(|| RmsNorm::init(width, eps, device))
        };
        let after = config.norms_after();
        // A new model comes from a recipe's `init`, which sets no windows and rotates in every
        // layer (a tiny test model may set them).
        let n = config.num_hidden_layers;
        let windows = config.windows().unwrap_or_else(|_| vec![None; n]);
        let rotary = config.rotary_layers().unwrap_or_else(|_| vec![true; n]);
        let sparse = config.sparse_layers().unwrap_or_else(|_| vec![false; n]);
        let mlp = |sparse: bool| match sparse {
            false => Mlp::Dense(SwiGlu {
                gate_proj: Proj::init(d, inner, config.mlp_bias, std, device),
                up_proj: Proj::init(d, inner, config.mlp_bias, std, device),
                down_proj: Proj::init(inner, d, config.mlp_bias, std, device),
            }),
            true => {
                let (e, k) = (
                    config.experts().max(1),
                    config.num_experts_per_tok.unwrap_or(1),
                );
                let inner = config.moe_intermediate_size.unwrap_or(inner);
                Mlp::Sparse(SparseMoe {
                    gate: Proj::init(d, e, false, std, device),
                    experts: (0..e)
                        .map(|_| Expert {
                            gate_up_proj: Proj::init(d, 2 * inner, false, std, device),
                            down_proj: Proj::init(inner, d, false, std, device),
                        })
                        .collect(),
                    top_k: k,
                    router: Router::SoftmaxThenTopK {
                        renormalise: config.norm_topk_prob.unwrap_or(false),
                    },
                    activation: Activation::SwiGlu,
                })
            }
        };
        let layers = windows
            .into_iter()
            .zip(rotary)
            .zip(sparse)
            .map(|((window, rotary), sparse)| LlamaLayer {
                input_layernorm: (!after).then(|| RmsNorm::init(d, config.rms_norm_eps, device)),
                q_proj: Proj::init(d, h * hd, bias, std, device),
                k_proj: Proj::init(d, kv * hd, bias, std, device),
                v_proj: Proj::init(d, kv * hd, bias, std, device),
                o_proj: Proj::init(h * hd, d, config.o_bias(), std, device),
                q_norm: qk_norm(h),
                k_norm: qk_norm(kv),
                qk_norm_spans_heads: spans,
                post_attention_layernorm: RmsNorm::init(d, config.rms_norm_eps, device),
                post_feedforward_layernorm: after
                    .then(|| RmsNorm::init(d, config.rms_norm_eps, device)),
                mlp: mlp(sparse),
                n_heads: h,
                n_kv_heads: kv,
                window,
                rotary,
            })
            .collect();
        Llama {
            embed_tokens: Param::from_tensor(Tensor::random(
                [config.vocab_size, d],
                burn::tensor::Distribution::Normal(0.0, std),
                device,
            )),
            layers,
            norm: RmsNorm::init(d, config.rms_norm_eps, device),
            lm_head: (!config.tie_word_embeddings)
                .then(|| Proj::init(d, config.vocab_size, false, std, device)),
            // A new model comes from a recipe's `init`, which has no scaling.
            rotary: config.rotary(config.rope_scaling().unwrap_or(RopeScaling::Default)),
            config: config.clone(),
            checkpoint_layers: false,
        }
    }

    /// Reads HF weights (`LlamaModel` or `LlamaForCausalLM` names).
    pub fn from_weights(config: &LlamaConfig, w: &mut WeightMap) -> Result<Llama, ModelError> {
        let (d, hd) = (config.hidden_size, config.head_dim());
        let (h, kv, inner) = (
            config.num_attention_heads,
            config.kv_heads(),
            config.intermediate_size,
        );
        let lm_head = w.take_lm_head(d, config.vocab_size, config.tie_word_embeddings)?;
        w.strip_prefix("model.");
        let lin = WeightMap::take_module;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        let (bias, eps) = (config.qkv_bias(), config.rms_norm_eps);
        let bad_config = |e: LlamaConfigError| ModelError::BadConfig {
            path: w.path().to_path_buf(),
            reason: e.to_string(),
        };
        let windows = config.windows().map_err(bad_config)?;
        let rotary = config.rotary_layers().map_err(bad_config)?;
        let (spans, after) = (config.qk_norm_spans_heads(), config.norms_after());
        let sparse = config.sparse_layers().map_err(bad_config)?;
        let layer_flags = windows.into_iter().zip(rotary).zip(sparse);
        for (i, ((window, rotary), sparse)) in layer_flags.enumerate() {
            let p = format!("layers.{i}");
            let mut norm = |name: &str, width: usize| -> Result<RmsNorm, ModelError> {
                Ok(RmsNorm::new(
                    w.take(&format!("{p}.{name}.weight"), [width])?,
                    eps,
                ))
            };
            let (q_norm, k_norm) = match config.qk_norm() {
                true => {
                    let (q, k) = if spans { (h * hd, kv * hd) } else { (hd, hd) };
                    (
                        Some(norm("self_attn.q_norm", q)?),
                        Some(norm("self_attn.k_norm", k)?),
                    )
                }
                false => (None, None),
            };
            let input_layernorm = match after {
                true => None,
                false => Some(norm("input_layernorm", d)?),
            };
            let post_attention_layernorm = norm("post_attention_layernorm", d)?;
            let post_feedforward_layernorm = match after {
                true => Some(norm("post_feedforward_layernorm", d)?),
                false => None,
            };
            // Taken in the layer's order, so a short file's error names its first gap.
            let q_proj = lin(w, &format!("{p}.self_attn.q_proj"), d, h * hd, bias)?;
            let k_proj = lin(w, &format!("{p}.self_attn.k_proj"), d, kv * hd, bias)?;
            let v_proj = lin(w, &format!("{p}.self_attn.v_proj"), d, kv * hd, bias)?;
            let o_bias = config.o_bias();
            let o_proj = lin(w, &format!("{p}.self_attn.o_proj"), h * hd, d, o_bias)?;
            let mlp = match sparse {
                false => Mlp::Dense(SwiGlu {
                    gate_proj: lin(w, &format!("{p}.mlp.gate_proj"), d, inner, config.mlp_bias)?,
                    up_proj: lin(w, &format!("{p}.mlp.up_proj"), d, inner, config.mlp_bias)?,
                    down_proj: lin(w, &format!("{p}.mlp.down_proj"), inner, d, config.mlp_bias)?,
                }),
                true => Mlp::Sparse(sparse_moe(config, w, &format!("{p}.mlp"))?),
            };
            layers.push(LlamaLayer {
                input_layernorm,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                q_norm,
                k_norm,
                qk_norm_spans_heads: spans,
                post_attention_layernorm,
                post_feedforward_layernorm,
                mlp,
                n_heads: h,
                n_kv_heads: kv,
                window,
                rotary,
            });
        }
        let embed = w.take_matrix("embed_tokens.weight", [config.vocab_size, d])?;
        Ok(Llama {
            embed_tokens: Param::from_tensor(embed),
            layers,
            norm: RmsNorm::new(w.take("norm.weight", [d])?, config.rms_norm_eps),
            lm_head,
            rotary: config.rotary(config.rope_scaling().map_err(|e| {
                ModelError::BadConfig {
                    path: w.path().to_path_buf(),
                    reason: e.to_string(),
                }
            })?),
            config: config.clone(),
            checkpoint_layers: false,
        })
    }
}

/// A Qwen3-MoE sparse block from HF weights under `p` (`layers.0.mlp`): the router `gate` and
/// each expert's `gate_proj`, `up_proj` (fused here) and `down_proj`.
fn sparse_moe(config: &LlamaConfig, w: &mut WeightMap, p: &str) -> Result<SparseMoe, ModelError> {
    let d = config.hidden_size;
    let (e, k) = (config.experts(), config.num_experts_per_tok.unwrap_or(0));
    let inner = config.moe_intermediate_size.unwrap_or(0);
    // The router stays f32 and unquantised: it is small, and which experts a token reaches
    // should not move with the base's storage.
    let gate = Proj::new(w.take_linear(&format!("{p}.gate.weight"), d, e)?, None);
    let experts = (0..e)
        .map(|x| {
            let name = |proj: &str| format!("{p}.experts.{x}.{proj}.weight");
            let gate_up = [name("gate_proj"), name("up_proj")];
            Ok(Expert {
                gate_up_proj: Proj::new(w.take_linears_side_by_side(&gate_up, d, inner)?, None),
                down_proj: w.take_proj(&name("down_proj"), inner, d, None)?,
            })
        })
        .collect::<Result<_, ModelError>>()?;
    Ok(SparseMoe {
        gate,
        experts,
        top_k: k,
        router: Router::SoftmaxThenTopK {
            renormalise: config.norm_topk_prob.unwrap_or(false),
        },
        activation: Activation::SwiGlu,
    })
}

/// Writes a sparse block under `prefix` (`model.layers.0.mlp`) as HF checkpoints hold it:
/// each expert's gate and up projections apart (LoRA merged in).
fn write_experts(w: &mut WeightWriter, prefix: &str, moe: &SparseMoe) {
    w.put_linear(format!("{prefix}.gate.weight"), moe.gate.merged_weight());
    for (x, expert) in moe.experts.iter().enumerate() {
        let gate_up = expert.gate_up_proj.merged_weight();
        let inner = gate_up.dims()[1] / 2;
        let name = |proj: &str| format!("{prefix}.experts.{x}.{proj}.weight");
        w.put_linear(name("gate_proj"), gate_up.clone().narrow(1, 0, inner));
        w.put_linear(name("up_proj"), gate_up.narrow(1, inner, inner));
        w.put_linear(name("down_proj"), expert.down_proj.merged_weight());
    }
}

/// Llama and the families that share its layers (Mistral, Qwen2, Qwen3, SmolLM3, OLMo 2,
/// Qwen3-MoE) in
/// [`super::family::FAMILIES`].
pub struct LlamaFamily;

impl super::family::Family for LlamaFamily {
    fn name(&self) -> &'static str {
        "llama"
    }

    fn model_types(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("llama", "Llama 2 and 3.x"),
            ("mistral", ""),
            ("qwen2", ""),
            ("qwen3", ""),
            ("smollm3", ""),
            ("olmo2", ""),
            ("qwen3_moe", "Qwen3-MoE"),
        ]
    }

    fn gguf_archs(&self) -> &'static [&'static str] {
        &["llama", "qwen2", "qwen3", "qwen3moe", "smollm3", "olmo2"]
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
        _model_type: &str,
        config: &serde_json::Value,
        weights: &mut WeightMap,
    ) -> Result<super::Backbone, super::family::BuildError> {
        let mut c: LlamaConfig = super::family::parse(config)?;
        // transformers ties SmolLM3's head by default; the others' by `tie_word_embeddings`.
        if c.family() == "smollm3" && config.get("tie_word_embeddings").is_none() {
            c.tie_word_embeddings = true;
        }
        c.check()
            .map_err(|e| super::family::BuildError::Config(e.to_string()))?;
        Ok(super::Backbone::Llama(Llama::from_weights(&c, weights)?))
    }

    fn init(
        &self,
        shape: &super::family::NewModel,
        device: &Device,
    ) -> Option<Result<(super::Backbone, serde_json::Value), super::family::BuildError>> {
        // SwiGLU keeps the MLP's parameter count near 4 d^2 with a width of 8/3 d.
        let inner = shape
            .intermediate
            .unwrap_or((shape.d_model * 8 / 3).div_ceil(8) * 8);
        let config = serde_json::json!({
            "model_type": "llama", "vocab_size": shape.vocab, "hidden_size": shape.d_model, "intermediate_size": inner,
            "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "num_key_value_heads": shape.kv_heads.unwrap_or(shape.heads), "max_position_embeddings": shape.context,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu",
            "bos_token_id": shape.eos, "eos_token_id": shape.eos,
        });
        Some(
            super::family::parse(&config)
                .map(|c: LlamaConfig| (super::Backbone::Llama(Llama::init(&c, device)), config)),
        )
    }

    fn gguf_plan(
        &self,
        backbone: &super::Backbone,
        config: &serde_json::Value,
    ) -> Result<super::gguf_write::ArchPlan, super::gguf_write::GgufWriteError> {
        match backbone {
            super::Backbone::Llama(m) => m.gguf_plan(config),
            other => Err(super::family::not_this_family(self, other)),
        }
    }

    fn default_lora_targets(&self) -> &'static [&'static str] {
        &["q_proj", "v_proj"]
    }
}
