//! BERT encoder: word + position + token-type embeddings, post-LN blocks, GELU (erf), pooler
//! `tanh(dense(h[:, 0]))`. Loads `BertModel` and `Bert*For*` checkpoints (e.g. MiniLM).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use serde::{Deserialize, Serialize};

use super::layers::{LayerNorm, Proj, attend, attention_mask, merge_heads, split_heads};
use super::weights::{ModelError, WeightMap, WeightWriter};

/// The fields of HF's `BertConfig` that shape the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_max_pos() -> usize {
    512
}
fn default_types() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

#[derive(Module, Debug)]
pub struct BertLayer {
    pub query: Proj,
    pub key: Proj,
    pub value: Proj,
    pub attention_output: Proj,
    pub attention_norm: LayerNorm,
    pub intermediate: Proj,
    pub output: Proj,
    pub output_norm: LayerNorm,
    pub n_heads: usize,
    pub tanh_gelu: bool,
}

impl BertLayer {
    fn forward(&self, x: Tensor<3>, mask: Option<Tensor<4, Bool>>) -> Tensor<3> {
        let q = split_heads(self.query.forward(x.clone()), self.n_heads);
        let k = split_heads(self.key.forward(x.clone()), self.n_heads);
        let v = split_heads(self.value.forward(x.clone()), self.n_heads);
        let a = self
            .attention_output
            .forward(merge_heads(attend(q, k, v, mask)));
        let x = self.attention_norm.forward(a + x);
        let h = self.intermediate.forward(x.clone());
        let h = if self.tanh_gelu {
            crate::kernels::gelu_tanh(h)
        } else {
            gelu(h)
        };
        self.output_norm.forward(self.output.forward(h) + x)
    }
}

/// HF's `BertLMPredictionHead` (`cls.predictions`): dense + GELU + LayerNorm, then the word
/// embeddings (tied) as the output projection, plus a per-token bias.
#[derive(Module, Debug)]
pub struct MlmHead {
    pub dense: Proj,
    pub norm: LayerNorm,
    pub bias: Param<Tensor<1>>,
    pub tanh_gelu: bool,
}

#[derive(Module, Debug)]
pub struct Bert {
    pub word_embeddings: Param<Tensor<2>>,
    pub position_embeddings: Param<Tensor<2>>,
    pub token_type_embeddings: Param<Tensor<2>>,
    pub embeddings_norm: LayerNorm,
    pub layers: Vec<BertLayer>,
    pub pooler: Option<Proj>,
    /// The masked-LM head, for `BertForMaskedLM` checkpoints and masked-LM pretraining.
    pub mlm_head: Option<MlmHead>,
    #[module(skip)]
    pub config: BertConfig,
    /// Recompute each layer in backward instead of keeping its activations
    /// (`train.gradient_checkpointing`).
    #[module(skip)]
    pub checkpoint_layers: bool,
}

/// Layer paths inside a BERT checkpoint, relative to `encoder.layer.{i}.`.
const PROJS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

impl Bert {
    pub fn init(config: &BertConfig, device: &Device) -> Bert {
        let (d, inner, std, eps) = (
            config.hidden_size,
            config.intermediate_size,
            0.02,
            config.layer_norm_eps,
        );
        let normal = |shape: [usize; 2]| {
            Tensor::random(shape, burn::tensor::Distribution::Normal(0.0, std), device)
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| BertLayer {
                query: Proj::init(d, d, true, std, device),
                key: Proj::init(d, d, true, std, device),
                value: Proj::init(d, d, true, std, device),
                attention_output: Proj::init(d, d, true, std, device),
                attention_norm: LayerNorm::init(d, eps, device),
                intermediate: Proj::init(d, inner, true, std, device),
                output: Proj::init(inner, d, true, std, device),
                output_norm: LayerNorm::init(d, eps, device),
                n_heads: config.num_attention_heads,
                tanh_gelu: config.hidden_act == "gelu_new",
            })
            .collect();
        Bert {
            word_embeddings: Param::from_tensor(normal([config.vocab_size, d])),
            position_embeddings: Param::from_tensor(normal([config.max_position_embeddings, d])),
            token_type_embeddings: Param::from_tensor(normal([config.type_vocab_size, d])),
            embeddings_norm: LayerNorm::init(d, eps, device),
            layers,
            pooler: Some(Proj::init(d, d, true, std, device)),
            mlm_head: None,
            config: config.clone(),
            checkpoint_layers: false,
        }
    }

    /// Adds a freshly initialised masked-LM head when the model has none.
    pub fn ensure_mlm_head(&mut self, device: &Device) {
        if self.mlm_head.is_none() {
            let d = self.config.hidden_size;
            self.mlm_head = Some(MlmHead {
                dense: Proj::init(d, d, true, 0.02, device),
                norm: LayerNorm::init(d, self.config.layer_norm_eps, device),
                bias: Param::from_tensor(Tensor::zeros([self.config.vocab_size], device)),
                tanh_gelu: self.config.hidden_act == "gelu_new",
            });
        }
    }

    /// Masked-LM logits `[b, s, vocab]`; `None` without a head.
    pub fn mlm_logits(&self, hidden: Tensor<3>) -> Option<Tensor<3>> {
        let head = self.mlm_head.as_ref()?;
        let h = head.dense.forward(hidden);
        let h = if head.tanh_gelu {
            crate::kernels::gelu_tanh(h)
        } else {
            gelu(h)
        };
        let h = head.norm.forward(h);
        let [b, s, d] = h.dims();
        let logits = super::layers::matmul_autocast(
            h.reshape([b * s, d]),
            self.word_embeddings.val().transpose(),
        ) + head.bias.val().unsqueeze::<2>();
        Some(logits.reshape([b, s, self.config.vocab_size]))
    }

    pub fn from_weights(config: &BertConfig, w: &mut WeightMap) -> Result<Bert, ModelError> {
        w.strip_prefix("bert.");
        let (d, inner, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.layer_norm_eps,
        );
        // Old checkpoints name LayerNorm parameters gamma/beta.
        let ln = |w: &mut WeightMap, p: &str| -> Result<LayerNorm, ModelError> {
            let (wn, bn) = if w.contains(&format!("{p}.gamma")) {
                ("gamma", "beta")
            } else {
                ("weight", "bias")
            };
            Ok(LayerNorm::new(
                w.take(&format!("{p}.{wn}"), [d])?,
                w.take(&format!("{p}.{bn}"), [d])?,
                eps,
            ))
        };
        let lin = |w: &mut WeightMap, p: &str, i: usize, o: usize| w.take_module(p, i, o, true);
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(BertLayer {
                query: lin(w, &format!("{p}.{}", PROJS[0]), d, d)?,
                key: lin(w, &format!("{p}.{}", PROJS[1]), d, d)?,
                value: lin(w, &format!("{p}.{}", PROJS[2]), d, d)?,
                attention_output: lin(w, &format!("{p}.{}", PROJS[3]), d, d)?,
                attention_norm: ln(w, &format!("{p}.attention.output.LayerNorm"))?,
                intermediate: lin(w, &format!("{p}.{}", PROJS[4]), d, inner)?,
                output: lin(w, &format!("{p}.{}", PROJS[5]), inner, d)?,
                output_norm: ln(w, &format!("{p}.output.LayerNorm"))?,
                n_heads: config.num_attention_heads,
                tanh_gelu: config.hidden_act == "gelu_new",
            });
        }
        let pooler = if w.contains("pooler.dense.weight") {
            Some(lin(w, "pooler.dense", d, d)?)
        } else {
            None
        };
        // `cls.predictions.decoder.weight` is the tied word embeddings when present.
        let mlm_head = if w.contains("cls.predictions.transform.dense.weight") {
            let head = MlmHead {
                dense: lin(w, "cls.predictions.transform.dense", d, d)?,
                norm: ln(w, "cls.predictions.transform.LayerNorm")?,
                bias: Param::from_tensor(w.take("cls.predictions.bias", [config.vocab_size])?),
                tanh_gelu: config.hidden_act == "gelu_new",
            };
            for tied in [
                "cls.predictions.decoder.weight",
                "cls.predictions.decoder.bias",
            ] {
                if w.contains(tied) {
                    w.discard(tied);
                }
            }
            Some(head)
        } else {
            None
        };
        Ok(Bert {
            word_embeddings: Param::from_tensor(
                w.take_matrix("embeddings.word_embeddings.weight", [config.vocab_size, d])?,
            ),
            position_embeddings: Param::from_tensor(w.take(
                "embeddings.position_embeddings.weight",
                [config.max_position_embeddings, d],
            )?),
            token_type_embeddings: Param::from_tensor(w.take(
                "embeddings.token_type_embeddings.weight",
                [config.type_vocab_size, d],
            )?),
            embeddings_norm: ln(w, "embeddings.LayerNorm")?,
            layers,
            pooler,
            mlm_head,
            config: config.clone(),
            checkpoint_layers: false,
        })
    }

    /// Writes HF `BertModel` weight names under `prefix` (`""` or `"bert."`), LoRA merged in.
    pub fn write_weights(&self, w: &mut WeightWriter, prefix: &str) {
        w.put(
            format!("{prefix}embeddings.word_embeddings.weight"),
            self.word_embeddings.val(),
        );
        w.put(
            format!("{prefix}embeddings.position_embeddings.weight"),
            self.position_embeddings.val(),
        );
        w.put(
            format!("{prefix}embeddings.token_type_embeddings.weight"),
            self.token_type_embeddings.val(),
        );
        let put_ln = |w: &mut WeightWriter, p: String, ln: &LayerNorm| {
            w.put(format!("{p}.weight"), ln.weight.val());
            w.put(format!("{p}.bias"), ln.bias.val());
        };
        let put_lin = |w: &mut WeightWriter, p: String, proj: &Proj| {
            w.put_linear(format!("{p}.weight"), proj.merged_weight());
            if let Some(b) = &proj.bias {
                w.put(format!("{p}.bias"), b.val());
            }
        };
        put_ln(
            w,
            format!("{prefix}embeddings.LayerNorm"),
            &self.embeddings_norm,
        );
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("{prefix}encoder.layer.{i}");
            for (name, proj) in PROJS.iter().zip([
                &l.query,
                &l.key,
                &l.value,
                &l.attention_output,
                &l.intermediate,
                &l.output,
            ]) {
                put_lin(w, format!("{p}.{name}"), proj);
            }
            put_ln(
                w,
                format!("{p}.attention.output.LayerNorm"),
                &l.attention_norm,
            );
            put_ln(w, format!("{p}.output.LayerNorm"), &l.output_norm);
        }
        if let Some(pooler) = &self.pooler {
            put_lin(w, format!("{prefix}pooler.dense"), pooler);
        }
        if let Some(head) = &self.mlm_head {
            put_lin(w, "cls.predictions.transform.dense".into(), &head.dense);
            put_ln(w, "cls.predictions.transform.LayerNorm".into(), &head.norm);
            w.put("cls.predictions.bias", head.bias.val());
        }
    }

    pub fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("encoder.layer.{i}");
            for (name, proj) in PROJS.iter().zip([
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attention_output,
                &mut l.intermediate,
                &mut l.output,
            ]) {
                out.push((format!("{p}.{name}"), proj));
            }
        }
        out
    }

    /// Hidden states `[b, s, d]`. `padding` `[b, s]` is true at real tokens.
    pub fn forward(
        &self,
        ids: Tensor<2, Int>,
        token_types: Option<Tensor<2, Int>>,
        padding: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let [b, s] = ids.dims();
        let device = ids.device();
        let types = token_types.unwrap_or_else(|| Tensor::zeros([b, s], &device));
        let pos = self
            .position_embeddings
            .val()
            .narrow(0, 0, s)
            .unsqueeze::<3>();
        let x = super::layers::embed(&self.word_embeddings, ids)
            + burn::tensor::module::embedding(self.token_type_embeddings.val(), types)
            + pos;
        let mut x = self.embeddings_norm.forward(x);
        let mask = attention_mask(padding, b, s, s, false, 0, &device);
        for layer in &self.layers {
            x = match self.checkpoint_layers {
                true => {
                    let mask = mask.clone();
                    crate::kernels::checkpointed(layer, x, move |l, x| l.forward(x, mask.clone()))
                }
                false => layer.forward(x, mask.clone()),
            };
        }
        x
    }

    /// The pooler output `tanh(dense(h[:, 0]))` `[b, d]`.
    pub fn pool(&self, hidden: Tensor<3>) -> Option<Tensor<2>> {
        let [b, _, d] = hidden.dims();
        let first = hidden.narrow(1, 0, 1).reshape([b, d]);
        self.pooler.as_ref().map(|p| p.forward(first).tanh())
    }
}

impl super::decoder::Body for Bert {
    fn hidden(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.forward(ids, None, padding)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn tables_mut(&mut self) -> (&mut Param<Tensor<2>>, Option<&mut Proj>) {
        (&mut self.word_embeddings, None)
    }

    fn token_table(&self) -> &Param<Tensor<2>> {
        &self.word_embeddings
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        Bert::projections_mut(self)
    }

    /// `BertForMaskedLM` nests the encoder under `bert.`; `BertModel` has no prefix.
    fn write_weights(&self, w: &mut WeightWriter) {
        let prefix = if self.mlm_head.is_some() { "bert." } else { "" };
        Bert::write_weights(self, w, prefix)
    }

    fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpoint_layers = on;
    }

    fn hf_class(&self, classifier: bool) -> String {
        match (classifier, self.mlm_head.is_some()) {
            (true, _) => "BertForSequenceClassification",
            (false, true) => "BertForMaskedLM",
            (false, false) => "BertModel",
        }
        .to_owned()
    }
}

/// BERT in [`super::family::FAMILIES`].
pub struct BertFamily;

impl super::family::Family for BertFamily {
    fn name(&self) -> &'static str {
        "bert"
    }

    fn model_types(&self) -> &'static [(&'static str, &'static str)] {
        &[("bert", "")]
    }

    fn build(
        &self,
        _model_type: &str,
        config: &serde_json::Value,
        weights: &mut WeightMap,
    ) -> Result<super::Backbone, super::family::BuildError> {
        let c: BertConfig = super::family::parse(config)?;
        Ok(super::Backbone::Bert(Bert::from_weights(&c, weights)?))
    }

    fn init(
        &self,
        shape: &super::family::NewModel,
        device: &Device,
    ) -> Option<Result<(super::Backbone, serde_json::Value), super::family::BuildError>> {
        let config = serde_json::json!({
            "model_type": "bert", "vocab_size": shape.vocab, "hidden_size": shape.d_model,
            "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
            "intermediate_size": shape.intermediate.unwrap_or(4 * shape.d_model),
            "max_position_embeddings": shape.context, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "hidden_act": "gelu",
            "pad_token_id": shape.pad.unwrap_or(0),
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        });
        Some(
            super::family::parse(&config)
                .map(|c: BertConfig| (super::Backbone::Bert(Bert::init(&c, device)), config)),
        )
    }

    fn default_lora_targets(&self) -> &'static [&'static str] {
        &["query", "value"]
    }

    fn is_encoder(&self) -> bool {
        true
    }

    fn score_head(&self) -> super::family::ScoreHead {
        super::family::ScoreHead {
            name: "classifier",
            bias: true,
        }
    }
}
