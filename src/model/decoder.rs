//! Decoders, whatever their family.
//!
//! [`DecoderStack`] is the stack the rotary families share: token embedding (scaled where the
//! family scales it) -> blocks, with rotary positions, a KV cache when decoding and
//! checkpointing when training -> final norm -> LM head (its own or the tied embedding,
//! soft-capped where the config says). A family brings its block ([`DecoderLayer`]), its final
//! norm ([`FinalNorm`]) and its config ([`DecoderConfig`]); Llama, Phi-3 and Gemma are such
//! stacks. [`Body`] is what hone asks of any model body and [`Decoder`] what it asks of one
//! that generates text, so GPT-2 (learned positions) is a decoder too.

use std::fmt::Debug;

use burn::module::{Module, Param};
use burn::prelude::*;

use super::layers::{KvCache, Proj, causal_inputs, rows_at};
use super::rope::RopeScaling;
use super::weights::WeightWriter;

/// A decoder block that rotary positions reach (Llama's, Phi-3's, Gemma's): what
/// [`DecoderStack`] runs.
pub trait DecoderLayer: Module + Sync + 'static {
    /// The block over `x` `[b, s, d]`: attention under `mask` with q and k rotated by
    /// `rotary` (`cos`, `sin` at each position), its keys and values written to `cache`'s
    /// layer when decoding.
    fn forward(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<4, Bool>>,
        rotary: (&Tensor<4>, &Tensor<4>),
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3>;

    /// Which of the stack's rotary bases ([`Rotary::bases`]) rotates this block (Gemma's
    /// sliding and full layers rotate by different ones).
    fn rotary_base(&self) -> usize {
        0
    }

    /// The block's projections by their HF paths, block `layer` of the stack (for LoRA).
    fn projections_mut(&mut self, layer: usize) -> Vec<(String, &mut Proj)>;

    /// Writes the block's HF weights (LoRA merged in), block `layer` of the stack.
    fn write_weights(&self, layer: usize, w: &mut WeightWriter);

    /// Whether the block has a router that trains (a mixture of experts in full fine-tuning).
    fn trains_router(&self) -> bool {
        false
    }
}

/// The norm over the last block's output.
pub trait FinalNorm: Module + Sync + 'static {
    fn forward(&self, x: Tensor<3>) -> Tensor<3>;

    /// Writes its weights as `{name}.weight` (and `{name}.bias` where it has one).
    fn write_weights(&self, name: &str, w: &mut WeightWriter);
}

/// What the stack reads from a family's config.
pub trait DecoderConfig: Clone + Debug + Send + Sync + 'static {
    fn hidden_size(&self) -> usize;

    /// The longest sequence its positions cover.
    fn max_positions(&self) -> usize;

    fn tie_word_embeddings(&self) -> bool;

    /// What token embeddings are multiplied by (Gemma's sqrt(hidden size)).
    fn embed_scale(&self) -> Option<f64> {
        None
    }

    /// The final logits' soft cap, `tanh(x / cap) * cap` (Gemma 2).
    fn final_logit_softcapping(&self) -> Option<f64> {
        None
    }

    /// The weight of the router's load-balancing loss (see [`Decoder::router_aux_loss_coef`]).
    fn router_aux_loss_coef(&self) -> f64 {
        0.001
    }

    /// transformers' class for the model: its causal LM, or with `classifier` its sequence
    /// classifier (`LlamaForCausalLM`, `LlamaForSequenceClassification`).
    fn hf_class(&self, classifier: bool) -> String;
}

/// How positions rotate queries and keys: over the first `dim` features of a head, by each
/// `(theta, scaling)` base (blocks pick theirs with [`DecoderLayer::rotary_base`]).
#[derive(Debug, Clone)]
pub struct Rotary {
    pub dim: usize,
    pub bases: Vec<(f64, RopeScaling)>,
}

impl Rotary {
    /// Rotation over whole heads of `dim` by one base, read as HF configs give it: its theta
    /// inside `rope_parameters` (transformers 5) or as `rope_theta` (4), `default_theta` without
    /// either; its scaling from `rope_parameters` or `rope_scaling`.
    pub fn from_hf(
        dim: usize,
        rope_parameters: Option<&serde_json::Value>,
        rope_theta: Option<f64>,
        rope_scaling: Option<&serde_json::Value>,
        max_positions: usize,
        default_theta: f64,
    ) -> Result<Rotary, super::rope::RopeError> {
        let theta = rope_parameters
            .and_then(|r| r.get("rope_theta"))
            .and_then(serde_json::Value::as_f64)
            .or(rope_theta)
            .unwrap_or(default_theta);
        let scaling = RopeScaling::from_config(&serde_json::json!({
            "rope_parameters": rope_parameters,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": max_positions,
        }))?;
        Ok(Rotary {
            dim,
            bases: vec![(theta, scaling)],
        })
    }

    /// The `cos` and `sin` `[b, 1, s, dim]` of each base at `positions` `[b, s]`: each table is
    /// built once up to the furthest position, then gathered.
    pub fn at(&self, positions: &Tensor<2, Int>) -> Vec<(Tensor<4>, Tensor<4>)> {
        let device = positions.device();
        let max_pos = positions.clone().max().into_scalar::<i64>().max(0) as usize + 1;
        let table = |(theta, scaling): &(f64, RopeScaling)| {
            let (cos, sin) = super::rope::rope_tables(self.dim, *theta, scaling, max_pos, &device);
            (rows_at(&cos, positions), rows_at(&sin, positions))
        };
        self.bases.iter().map(table).collect()
    }
}

/// A rotary decoder: the embedding, the blocks, the final norm and the LM head (`None` when
/// tied to the embedding, or for a checkpoint saved without one).
#[derive(Module, Debug)]
pub struct DecoderStack<L: Module, N: Module, C> {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<L>,
    pub norm: N,
    pub lm_head: Option<Proj>,
    #[module(skip)]
    pub config: C,
    #[module(skip)]
    pub rotary: Rotary,
    /// Recompute each block in backward instead of keeping its activations
    /// (`train.gradient_checkpointing`).
    #[module(skip)]
    pub checkpoint_layers: bool,
}

impl<L: DecoderLayer, N: FinalNorm, C: DecoderConfig> DecoderStack<L, N, C> {
    /// Final hidden states `[b, s, d]`. `padding` is `[b, s]`, true at real tokens.
    pub fn forward(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        let (positions, mask) = causal_inputs(&ids, padding);
        self.forward_with(ids, positions, mask, None)
    }

    /// The general forward: explicit positions `[b, s]`, attention mask `[b, 1, s, t]` (true
    /// where a query must not see a key) and an optional cache of earlier keys/values
    /// (incremental decoding).
    pub fn forward_with(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let tables = self.rotary.at(&positions);
        let mut x = super::layers::embed(&self.embed_tokens, ids);
        if let Some(scale) = self.config.embed_scale() {
            x = x.mul_scalar(scale);
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let (cos, sin) = &tables[layer.rotary_base()];
            x = match cache.as_deref_mut() {
                None if self.checkpoint_layers => {
                    let (mask, cos, sin) = (mask.clone(), cos.clone(), sin.clone());
                    crate::kernels::checkpointed(layer, x, move |l, x| {
                        l.forward(x, mask.clone(), (&cos, &sin), None)
                    })
                }
                c => layer.forward(x, mask.clone(), (cos, sin), c.map(|c| (c, i))),
            };
        }
        self.norm.forward(x)
    }

    /// The blocks' projections by their HF paths, for LoRA.
    pub fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let layers = self.layers.iter_mut().enumerate();
        layers.flat_map(|(i, l)| l.projections_mut(i)).collect()
    }

    /// Writes HF `*ForCausalLM` weights (LoRA merged in).
    pub fn write_weights(&self, w: &mut WeightWriter) {
        w.put("model.embed_tokens.weight", self.embed_tokens.val());
        for (i, l) in self.layers.iter().enumerate() {
            l.write_weights(i, w);
        }
        self.norm.write_weights("model.norm", w);
        if let Some(head) = &self.lm_head {
            w.put_linear("lm_head.weight", head.merged_weight());
        }
    }

    fn head(&self) -> LmHead<'_> {
        LmHead {
            own: self.lm_head.as_ref(),
            embed: &self.embed_tokens,
            tied: self.config.tie_word_embeddings(),
            soft_cap: self.config.final_logit_softcapping(),
        }
    }
}

/// A decoder's LM head: its own projection, or the token embedding where `tied`; soft-capped
/// where `soft_cap` is set.
#[derive(Clone, Copy)]
pub struct LmHead<'a> {
    pub own: Option<&'a Proj>,
    pub embed: &'a Param<Tensor<2>>,
    pub tied: bool,
    pub soft_cap: Option<f64>,
}

impl LmHead<'_> {
    /// Whether there is a head at all (a checkpoint may be saved without its untied one).
    pub fn exists(&self) -> bool {
        self.own.is_some() || self.tied
    }

    /// `logits` soft-capped where the head is.
    pub fn soft_cap(&self, logits: Tensor<3>) -> Tensor<3> {
        match self.soft_cap {
            Some(cap) => logits.div_scalar(cap).tanh().mul_scalar(cap),
            None => logits,
        }
    }
}

/// A decoder with its LM head: what generates text, and what causal LM training, preference
/// losses and RL score ([`super::Backbone::language_model`]). An encoder has none, nor a
/// decoder saved without its head (a classifier's body).
#[derive(Clone, Copy)]
pub struct LanguageModel<'a> {
    decoder: &'a dyn Decoder,
    head: LmHead<'a>,
}

impl<'a> LanguageModel<'a> {
    /// `decoder` as a language model, if it has an LM head.
    pub fn of(decoder: &'a dyn Decoder) -> Option<LanguageModel<'a>> {
        let head = decoder.head();
        head.exists().then_some(LanguageModel { decoder, head })
    }

    pub fn decoder(&self) -> &'a dyn Decoder {
        self.decoder
    }

    /// Hidden states `[b, s, d]`; `padding` `[b, s]` is true at real tokens.
    pub fn hidden(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.decoder.hidden(ids, padding)
    }

    /// Forward with explicit positions and attention mask `[b, 1, s, s]` (true where a query
    /// must not see a key), without a cache: packed sequences, whose documents restart their
    /// positions and never see each other.
    pub fn hidden_masked(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Tensor<4, Bool>,
    ) -> Tensor<3> {
        self.decoder.hidden_with(ids, positions, Some(mask), None)
    }

    /// Forward with explicit positions, mask `[b, 1, s, t]` and a KV cache.
    pub fn hidden_with(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: &mut KvCache,
    ) -> Tensor<3> {
        self.decoder.hidden_with(ids, positions, mask, Some(cache))
    }

    /// Logits `[b, s, vocab]` of hidden states `[b, s, d]`.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        // The head's own projection, else the tied embedding (`of` saw one of them).
        let logits = match self.head.own {
            Some(head) => head.forward(hidden),
            None => super::layers::matmul_autocast(hidden, self.head.embed.val().transpose()),
        };
        self.head.soft_cap(logits)
    }

    /// The weight of the router's load-balancing loss where the model has a router that
    /// trains (a mixture of experts in full fine-tuning): the config's `router_aux_loss_coef`,
    /// transformers' 0.001 when it gives none; `None` otherwise.
    pub fn router_aux_loss_coef(&self) -> Option<f64> {
        self.decoder.router_aux_loss_coef()
    }

    /// The LM head as one `[d, v]` matrix when the logits are exactly `hidden @ head`: a
    /// plain projection or the tied embedding, no bias, no LoRA adapter on the head, no
    /// soft-capping; and whether that weight trains. `None` otherwise.
    fn plain_head(&self) -> Option<(Tensor<2>, bool)> {
        let head = self.head;
        if head.soft_cap.is_some() {
            return None;
        }
        // Whether it trains is read off the parameter itself: a transposed view is not a leaf.
        let trains = |w: Tensor<2>| {
            let trains = w.is_require_grad();
            (w, trains)
        };
        match head.own {
            Some(p) if p.bias.is_none() && p.lora.is_none() => Some(trains(p.weight.val())),
            Some(_) => None,
            None => head.tied.then(|| {
                let (w, t) = trains(head.embed.val());
                (w.transpose(), t)
            }),
        }
    }

    /// The negative log-likelihood of each position's next token, `[b, s-1]` (position t
    /// scores `ids[t+1]`), under logits divided by `temperature`. Through
    /// [`kernels::linear_nll`](crate::kernels::linear_nll) where the head allows, so the
    /// `[b, s, v]` logits are never whole, on any backend.
    pub fn next_token_nll(
        &self,
        hidden: Tensor<3>,
        ids: Tensor<2, Int>,
        temperature: f64,
    ) -> Tensor<2> {
        let [b, s, d] = hidden.dims();
        let targets = ids.narrow(1, 1, s - 1).reshape([b * (s - 1)]);
        let rows = hidden.narrow(1, 0, s - 1).reshape([b * (s - 1), d]);
        self.rows_nll(rows, targets, temperature)
            .reshape([b, s - 1])
    }

    /// [`next_token_nll`](Self::next_token_nll) where only the positions `rows` of the
    /// flattened `[b, s-1]` grid count (a batch's targets: answers, not prompts); the others
    /// hold 0. Where the head is frozen (LoRA; [`head_at_rows_alone`](Self::head_at_rows_alone))
    /// it runs on those rows alone, and each row's value and gradient are the whole grid's, bit
    /// for bit: the head's matmul computes every output row on its own (gemm blocks the hidden
    /// size the same way for any number of rows, given two or more and a vocabulary over 64),
    /// and so does the log-sum-exp. A head that trains takes the whole grid, as before: its
    /// weight's gradient sums over the rows, and fewer rows would round that sum otherwise.
    pub fn next_token_nll_at(
        &self,
        hidden: Tensor<3>,
        ids: Tensor<2, Int>,
        temperature: f64,
        rows: &[i64],
    ) -> Tensor<2> {
        let [b, s, d] = hidden.dims();
        let n = b * (s - 1);
        if rows.len() < 2 || rows.len() == n || !self.head_at_rows_alone() {
            return self.next_token_nll(hidden, ids, temperature);
        }
        let device = hidden.device();
        let picked = Tensor::<1, Int>::from_data(
            burn::tensor::TensorData::new(rows.to_vec(), [rows.len()]),
            &device,
        );
        let targets = ids
            .narrow(1, 1, s - 1)
            .reshape([n])
            .select(0, picked.clone());
        let hidden = hidden
            .narrow(1, 0, s - 1)
            .reshape([n, d])
            .select(0, picked.clone());
        let nll = self.rows_nll(hidden, targets, temperature);
        let grid = Tensor::<1>::zeros([n], (&device, nll.dtype()));
        grid.select_assign(0, picked, nll, burn::tensor::IndexingUpdateOp::Add)
            .reshape([b, s - 1])
    }

    /// Whether [`next_token_nll_at`](Self::next_token_nll_at) takes the head at the target rows
    /// alone: a plain head (see [`plain_head`](Self::plain_head)) that does not train.
    pub fn head_at_rows_alone(&self) -> bool {
        self.plain_head().is_some_and(|(_, trains)| !trains)
    }

    /// The negative log-likelihood `[m]` of `targets` `[m]` after hidden states `[m, d]`.
    fn rows_nll(&self, hidden: Tensor<2>, targets: Tensor<1, Int>, temperature: f64) -> Tensor<1> {
        let scaled = |h: Tensor<2>| {
            if temperature > 0.0 && temperature != 1.0 {
                h.div_scalar(temperature)
            } else {
                h
            }
        };
        match self.plain_head() {
            Some((head, _)) => crate::kernels::linear_nll(scaled(hidden), head, targets),
            None => {
                let [m, d] = hidden.dims();
                let logits = self.logits(hidden.reshape([1, m, d]));
                let v = logits.dims()[2];
                crate::kernels::logits_nll(scaled(logits.reshape([m, v])), targets)
            }
        }
    }

    /// Each position's most likely next token, `[b, s-1]`, with the logits computed a chunk of
    /// rows at a time (about 64 MiB each) so evaluating a large vocabulary never holds the
    /// `[b, s, v]` logits.
    pub fn next_token_argmax(&self, hidden: Tensor<3>) -> Tensor<2, Int> {
        let vocab = self.decoder.token_table().dims()[0];
        let rows = (crate::kernels::LOGIT_ELEMENTS_PER_CHUNK / vocab.max(1)).max(1);
        let [b, s, d] = hidden.dims();
        let n = b * (s - 1);
        let h = hidden.narrow(1, 0, s - 1).reshape([1, n, d]);
        let mut picks = Vec::new();
        for start in (0..n).step_by(rows) {
            let len = rows.min(n - start);
            let logits = self.logits(h.clone().narrow(1, start, len));
            picks.push(logits.argmax(2).reshape([len]));
        }
        Tensor::cat(picks, 0).reshape([b, s - 1])
    }

    /// For decoding many steps: the transposed embedding of a tied LM head, laid out
    /// contiguously once. burn multiplies a single row by the transposed *view* an order of
    /// magnitude slower (482 ms against 39 ms per token for Gemma 3's 262k vocabulary), with
    /// bit-identical results. `None` when the head is not tied.
    pub fn tied_head_for_decoding(&self) -> Option<Tensor<2>> {
        let head = self.head;
        if head.own.is_some() || !head.tied {
            return None;
        }
        let t = head.embed.val().transpose();
        let device = t.device();
        Some(Tensor::from_data(t.into_data(), &device))
    }

    /// [`logits`](Self::logits) through a head from
    /// [`tied_head_for_decoding`](Self::tied_head_for_decoding) when there is one.
    pub fn logits_decoding(&self, hidden: Tensor<3>, tied: Option<&Tensor<2>>) -> Tensor<3> {
        let Some(w) = tied else {
            return self.logits(hidden);
        };
        let logits = super::layers::matmul_autocast(hidden, w.clone());
        self.head.soft_cap(logits)
    }
}

/// What hone asks of any model body, encoder or decoder, whatever its family.
pub trait Body: Sync {
    /// Hidden states `[b, s, d]`; `padding` `[b, s]` is true at real tokens.
    fn hidden(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3>;

    fn hidden_size(&self) -> usize;

    /// The longest sequence its positions cover.
    fn max_positions(&self) -> usize;

    fn num_layers(&self) -> usize;

    /// The token embedding table `[vocab, d]`, and the LM head where it has its own.
    fn tables_mut(&mut self) -> (&mut Param<Tensor<2>>, Option<&mut Proj>);

    /// The token embedding table `[vocab, d]`.
    fn token_table(&self) -> &Param<Tensor<2>>;

    /// Projections by HF module path, for LoRA.
    fn projections_mut(&mut self) -> Vec<(String, &mut Proj)>;

    /// Writes its HF weights (LoRA merged in).
    fn write_weights(&self, w: &mut WeightWriter);

    fn set_gradient_checkpointing(&mut self, on: bool);

    /// transformers' class for it, with `classifier` that of a sequence classifier.
    fn hf_class(&self, classifier: bool) -> String;

    /// It as a decoder; `None` for an encoder.
    fn as_decoder(&self) -> Option<&dyn Decoder> {
        None
    }
}

/// What causal LM training, sampling and RL ask of a decoder.
pub trait Decoder: Body {
    /// Forward with explicit positions `[b, s]`, mask `[b, 1, s, t]` and, when decoding, a KV
    /// cache.
    fn hidden_with(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3>;

    fn head(&self) -> LmHead<'_>;

    /// The weight of the router's load-balancing loss where the model has a router that
    /// trains (a mixture of experts in full fine-tuning); `None` otherwise.
    fn router_aux_loss_coef(&self) -> Option<f64> {
        None
    }
}

impl<L: DecoderLayer, N: FinalNorm, C: DecoderConfig> Body for DecoderStack<L, N, C> {
    fn hidden(&self, ids: Tensor<2, Int>, padding: Option<Tensor<2, Bool>>) -> Tensor<3> {
        self.forward(ids, padding)
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size()
    }

    fn max_positions(&self) -> usize {
        self.config.max_positions()
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn tables_mut(&mut self) -> (&mut Param<Tensor<2>>, Option<&mut Proj>) {
        (&mut self.embed_tokens, self.lm_head.as_mut())
    }

    fn token_table(&self) -> &Param<Tensor<2>> {
        &self.embed_tokens
    }

    fn projections_mut(&mut self) -> Vec<(String, &mut Proj)> {
        DecoderStack::projections_mut(self)
    }

    fn write_weights(&self, w: &mut WeightWriter) {
        DecoderStack::write_weights(self, w)
    }

    fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpoint_layers = on;
    }

    fn hf_class(&self, classifier: bool) -> String {
        self.config.hf_class(classifier)
    }

    fn as_decoder(&self) -> Option<&dyn Decoder> {
        Some(self)
    }
}

impl<L: DecoderLayer, N: FinalNorm, C: DecoderConfig> Decoder for DecoderStack<L, N, C> {
    fn hidden_with(
        &self,
        ids: Tensor<2, Int>,
        positions: Tensor<2, Int>,
        mask: Option<Tensor<4, Bool>>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.forward_with(ids, positions, mask, cache)
    }

    fn head(&self) -> LmHead<'_> {
        DecoderStack::head(self)
    }

    fn router_aux_loss_coef(&self) -> Option<f64> {
        let trains = self.layers.iter().any(|l| l.trains_router());
        trains.then(|| self.config.router_aux_loss_coef())
    }
}
