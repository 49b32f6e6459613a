//! GPT-2 style decoder: learned positions, pre-LN blocks, fused q/k/v projection (`c_attn`),
//! GELU (tanh approximation, HF `gelu_new`), LM head tied to the token embedding.
//! HF stores GPT-2's projections as `Conv1D` weights `[in, out]`: the same layout as hone's, so
//! they load without a transpose.

pub(crate) mod gguf;

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use serde::{Deserialize, Serialize};

use super::layers::{
    KeysValues, KvCache, LayerNorm, Proj, causal_inputs, merge_heads, split_heads,
};
use super::weights::{ModelError, WeightMap, WeightWriter};

/// The fields of HF's `GPT2Config` that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_act")]
    pub activation_function: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "gelu_new".into()
}

impl Gpt2Config {
    fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

#[derive(Module, Debug)]
pub struct Gpt2Block {
    pub ln_1: LayerNorm,
    pub c_attn: Proj,
    pub attn_c_proj: Proj,
    pub ln_2: LayerNorm,
    pub c_fc: Proj,
    pub mlp_c_proj: Proj,
    pub n_head: usize,
    pub tanh_gelu: bool,
}

impl Gpt2Block {
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let d = x.dims()[2];
        let qkv = self.c_attn.forward(self.ln_1.forward(x.clone()));
        let q = split_heads(qkv.clone().narrow(2, 0, d), self.n_head);
        let k = split_heads(qkv.clone().narrow(2, d, d), self.n_head);
        let v = split_heads(qkv.narrow(2, 2 * d, d), self.n_head);
        let a = KeysValues::new(k, v, cache).attend(q, mask, None, None);
        let x = x + self.attn_c_proj.forward(merge_heads(a));
        let h = self.c_fc.forward(self.ln_2.forward(x.clone()));
        let h = if self.tanh_gelu {
            crate::kernels::gelu_tanh(h)
        } else {
            gelu(h)
        };
        x + self.mlp_c_proj.forward(h)
    }
}

#[derive(Module, Debug)]
pub struct Gpt2 {
    pub wte: Param<Tensor<2>>,
    pub wpe: Param<Tensor<2>>,
    pub h: Vec<Gpt2Block>,
    pub ln_f: LayerNorm,
    #[module(skip)]
    pub config: Gpt2Config,
    /// Recompute each layer in backward instead of keeping its activations
    /// (`train.gradient_checkpointing`).
    #[module(skip)]
    pub checkpoint_layers: bool,
}

impl Gpt2 {
    /// From-scratch init as GPT-2 does it: normal(0, 0.02), residual projections scaled by
    /// `1/sqrt(2 * n_layer)`, norms at one, biases at zero.
    pub fn init(config: &Gpt2Config, device: &Device) -> Gpt2 {
        let (d, std) = (config.n_embd, 0.02);
        let resid_std = std / (2.0 * config.n_layer as f64).sqrt();
        let normal = |shape: [usize; 2], std: f64| {
            Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, std), device)
        };
        let h = (0..config.n_layer)
            .map(|_| Gpt2Block {
                ln_1: LayerNorm::init(d, config.layer_norm_epsilon, device),
                c_attn: Proj::init(d, 3 * d, true, std, device),
                attn_c_proj: Proj::init(d, d, true, resid_std, device),
                ln_2: LayerNorm::init(d, config.layer_norm_epsilon, device),
                c_fc: Proj::init(d, config.inner(), true, std, device),
                mlp_c_proj: Proj::init(config.inner(), d, true, resid_std, device),
                n_head: config.n_head,
                tanh_gelu: config.activation_function != "gelu",
            })
            .collect();
        Gpt2 {
            wte: Param::from_tensor(normal([config.vocab_size, d], std)),
            wpe: Param::from_tensor(normal([config.n_positions, d], 0.01)),
            h,
            ln_f: LayerNorm::init(d, config.layer_norm_epsilon, device),
            config: config.clone(),
            checkpoint_layers: false,
        }
    }

    /// Reads HF weights (`GPT2Model` or `GPT2LMHeadModel` names).
    pub fn from_weights(config: &Gpt2Config, w: &mut WeightMap) -> Result<Gpt2, ModelError> {
        w.strip_prefix("transformer.");
        let (d, inner) = (config.n_embd, config.inner());
        let eps = config.layer_norm_epsilon;
        let ln = |w: &mut WeightMap, p: &str| -> Result<LayerNorm, ModelError> {
            Ok(LayerNorm::new(
                w.take(&format!("{p}.weight"), [d])?,
                w.take(&format!("{p}.bias"), [d])?,
                eps,
            ))
        };
        let conv = |w: &mut WeightMap, p: &str, i: usize, o: usize| -> Result<Proj, ModelError> {
            Ok(Proj::new(
                w.take_matrix(&format!("{p}.weight"), [i, o])?,
                Some(w.take(&format!("{p}.bias"), [o])?),
            ))
        };
        let mut h = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("h.{i}");
            h.push(Gpt2Block {
                ln_1: ln(w, &format!("{p}.ln_1"))?,
                c_attn: conv(w, &format!("{p}.attn.c_attn"), d, 3 * d)?,
                attn_c_proj: conv(w, &format!("{p}.attn.c_proj"), d, d)?,
                ln_2: ln(w, &format!("{p}.ln_2"))?,
                c_fc: conv(w, &format!("{p}.mlp.c_fc"), d, inner)?,
                mlp_c_proj: conv(w, &format!("{p}.mlp.c_proj"), inner, d)?,
                n_head: config.n_head,
                tanh_gelu: config.activation_function != "gelu",
            });
        }
        let wte = w.take_matrix("wte.weight", [config.vocab_size, d])?;
        // The LM head is tied to `wte`; a saved copy is redundant.
        w.discard("lm_head.weight");
        Ok(Gpt2 {
            wte: Param::from_tensor(wte),
            wpe: Param::from_tensor(w.take("wpe.weight", [config.n_positions, d])?),
            h,
            ln_f: ln(w, "ln_f")?,
            config: config.clone(),
            checkpoint_layers: false,
        })
    }

    /// Writes HF `GPT2LMHeadModel` weights (LoRA merged in).
    pub fn write_weights(&self, w: &mut WeightWriter) {
        w.put("transformer.wte.weight", self.wte.val());
        w.put("transformer.wpe.weight", self.wpe.val());
        for (i, b) in self.h.iter().enumerate() {
            let p = format!("transformer.h.{i}");
            for (name, ln) in [("ln_1", &b.ln_1), ("ln_2", &b.ln_2)] {
                w.put(format!("{p}.{name}.weight"), ln.weight.val());
                w.put(format!("{p}.{name}.bias"), ln.bias.val());
            }
            for (name, proj) in [
                ("attn.c_attn", &b.c_attn),
                ("attn.c_proj", &b.attn_c_proj),
                ("mlp.c_fc", &b.c_fc),
                ("mlp.c_proj", &b.mlp_c_proj),
            ] {
                w.put(format!("{p}.{name}.weight"), proj.merged_weight());
                if let Some(bias) = &proj.bias {
                    w.put(format!("{p}.{name}.bias"), bias.val());
                }
            }
        }
        w.put("transformer.ln_f.weight", self.ln_f.weight.val());
        w.put("transformer.ln_f.bias", self.ln_f.bias.val());
    }

    /// Projections by their HF module path (for LoRA targeting and adapter files).
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let mut out = Vec::new();
        for (i, b) in self.h.iter_mut().enumerate() {
            let p = format!("transformer.h.{i}");
            out.push((format!("{p}.attn.c_attn"), &mut b.c_attn));
            out.push((format!("{p}.attn.c_proj"), &mut b.attn_c_proj));
            out.push((format!("{p}.mlp.c_fc"), &mut b.c_fc));
            out.push((format!("{p}.mlp.c_proj"), &mut b.mlp_c_proj));
        }
        out
    }

    /// Final hidden states `[b, s, d]`. `padding` is `[b, s]`, true at real tokens.
    pub fn forward(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let (positions, mask) = causal_inputs(&ids, padding);
        self.forward_with(ids, positions, mask, None)
    }

    /// The general forward: explicit positions `[b, s]`, attention mask `[b, 1, s, t]` and an
    /// optional cache of earlier keys/values (incremental decoding).
    pub fn forward_with(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let mut x = super::layers::embed(&self.wte, ids)
            + burn::tensor::module::embedding(self.wpe.val(), positions);
        for (i, block) in self.h.iter().enumerate() {
            x = match cache.as_deref_mut() {
                None if self.checkpoint_layers => {
                    let mask = mask.clone();
                    crate::kernels::checkpointed(block, x, move |b, x| {
                        b.forward(x, mask.clone(), None)
                    })
                }
                c => block.forward(x, mask.clone(), c.map(|c| (c, i))),
            };
        }
        self.ln_f.forward(x)
    }
}

impl super::decoder::Body for Gpt2 {
    fn hidden(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.forward(ids, padding)
    }

    fn hidden_size(&self) -> usize {
        self.config.n_embd
    }

    fn max_positions(&self) -> usize {
        self.config.n_positions
    }

    fn num_layers(&self) -> usize {
        self.h.len()
    }

    fn tables_mut(&mut self) -> (&mut Param<Tensor<2>>, Option<&mut Proj>) {
        (&mut self.wte, None)
    }

    fn token_table(&self) -> &Param<Tensor<2>> {
        &self.wte
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        Gpt2::projections_mut(self)
    }

    fn write_weights(&self, w: &mut WeightWriter) {
        Gpt2::write_weights(self, w)
    }

    fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpoint_layers = on;
    }

    fn hf_class(&self, classifier: bool) -> String {
        match classifier {
            true => "GPT2ForSequenceClassification",
            false => "GPT2LMHeadModel",
        }
        .to_owned()
    }

    fn as_decoder(&self) -> Option<&dyn super::decoder::Decoder> {
        Some(self)
    }
}

impl super::decoder::Decoder for Gpt2 {
    fn hidden_with(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.forward_with(ids, positions, mask, cache)
    }

    /// Always the tied embedding.
    fn head(&self) -> super::decoder::LmHead<'_> {
        super::decoder::LmHead {
            own: None,
            embed: &self.wte,
            tied: true,
            soft_cap: None,
        }
    }
}

/// GPT-2 in [`super::family::FAMILIES`].
pub struct Gpt2Family;

impl super::family::Family for Gpt2Family {
    fn name(&self) -> &'static str {
        "gpt2"
    }

    fn model_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("gpt2", "")]
    }

    fn gguf_archs(&self) -> &'static [&'static str] {
        &["gpt2"]
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
        config: &serde_json::Value,
        weights: &mut WeightMap,
    ) -> Result<super::Backbone, super::family::BuildError> {
        let c: Gpt2Config = super::family::parse(config)?;
        Ok(super::Backbone::Gpt2(Gpt2::from_weights(&c, weights)?))
    }

    fn init(
        &self,
        shape: &super::family::NewModel,
        device: &Device,
    ) -> Option<Result<(super::Backbone, serde_json::Value), super::family::BuildError>> {
        let config = serde_json::json!({
            "model_type": "gpt2", "vocab_size": shape.vocab, "n_positions": shape.context, "n_embd": shape.d_model,
            "n_layer": shape.layers, "n_head": shape.heads, "n_inner": shape.intermediate, "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new", "bos_token_id": shape.eos, "eos_token_id": shape.eos, "tie_word_embeddings": true,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        });
        Some(
            super::family::parse(&config)
                .map(|c: Gpt2Config| (super::Backbone::Gpt2(Gpt2::init(&c, device)), config)),
        )
    }

    fn gguf_plan(
        &self,
        backbone: &super::Backbone,
        config: &serde_json::Value,
    ) -> Result<super::gguf_write::ArchPlan, super::gguf_write::GgufWriteError> {
        match backbone {
            super::Backbone::Gpt2(m) => m.gguf_plan(config),
            other => Err(super::family::not_this_family(self, other)),
        }
    }

    fn default_lora_targets(&self) -> &'static [&'static str] {
        &["c_attn"]
    }

    fn fan_in_fan_out(&self) -> bool {
        true
    }
}
