//! Building blocks shared by the model families: projections (with an optional LoRA adapter),
//! layer/RMS norms, masked scaled-dot-product attention, rotary embeddings (HF half-split).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use std::sync::Arc;

use super::lora::LoraAdapter;
use super::precision::Precision;
use super::quantized::{QuantError, QuantFormat, QuantWeight};
use super::weights::WeightWriter;

/// A linear projection `y = x W + b` with `W` stored `[in, out]`, plus an optional LoRA adapter.
/// A frozen weight may be held quantised instead (QLoRA): then `weight` is empty and
/// `quantized` holds it.
#[derive(Module, Debug)]
pub struct Proj {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<LoraAdapter>,
    /// The dtype `x W + b` is computed in when it is not f32 (`train.precision`; see
    /// [`super::precision`]).
    #[module(skip)]
    pub compute: Option<DType>,
    /// The frozen weight, quantised (see [`super::quantized`]); multiplied a tile at a time.
    #[module(skip)]
    pub quantized: Option<Arc<QuantWeight>>,
}

impl Proj {
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Proj {
        Proj {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            lora: None,
            compute: None,
            quantized: None,
        }
    }

    /// A projection whose frozen weight stays quantised.
    pub fn from_quantized(weight: QuantWeight, bias: Option<Tensor<1>>, device: &Device) -> Proj {
        let mut proj = Proj::new(Tensor::zeros([0, 0], device), bias);
        proj.weight = Param::from_tensor(proj.weight.val()).set_require_grad(false);
        proj.quantized = Some(Arc::new(weight));
        proj
    }

    /// Quantises this projection's weight (frozen from now on) to `format`.
    pub fn quantize(&mut self, format: QuantFormat) -> Result<(), QuantError> {
        if self.quantized.is_some() {
            return Ok(());
        }
        let (d_in, d_out) = (self.d_in(), self.d_out());
        // PyTorch's `[out, in]`, row-major: the layout the formats quantise by rows.
        let values = super::to_vec(self.dense_weight().transpose());
        let q = QuantWeight::quantize(&values, d_out, d_in, format)?;
        let device = self.weight.val().device();
        self.weight = Param::from_tensor(Tensor::zeros([0, 0], &device)).set_require_grad(false);
        self.quantized = Some(Arc::new(q));
        self.compute = None;
        Ok(())
    }

    /// The weight as `[in, out]`: as stored, or dequantised to f32 when it is held quantised
    /// (export and merging; training never needs it whole).
    pub fn dense_weight(&self) -> Tensor<2> {
        match &self.quantized {
            Some(q) => {
                let device = self.weight.val().device();
                let values = q.dequantize();
                Tensor::<2>::from_data(
                    burn::tensor::TensorData::new(values, [q.d_out, q.d_in]),
                    &device,
                )
                .transpose()
            }
            None => self.weight.val(),
        }
    }

    /// Computes in `precision` from now on; a frozen weight is stored in it, a trainable one
    /// is the f32 master weight (cast up if it was loaded low).
    pub fn set_precision(&mut self, precision: Precision) {
        let dtype = precision.dtype();
        self.compute = (precision != Precision::F32).then_some(dtype);
        if self.quantized.is_some() {
            return; // dequantised a tile at a time, in `compute` where AMX takes bf16
        }
        set_weight_precision(&mut self.weight, precision);
    }

    /// A projection initialised like GPT-2 (normal, std 0.02; zero bias).
    pub fn init(d_in: usize, d_out: usize, bias: bool, std: f64, device: &Device) -> Proj {
        let w = Tensor::random(
            [d_in, d_out],
            burn::tensor::Distribution::Normal(0.0, std),
            device,
        );
        Proj::new(w, bias.then(|| Tensor::zeros([d_out], device)))
    }

    pub fn d_in(&self) -> usize {
        match &self.quantized {
            Some(q) => q.d_in,
            None => self.weight.dims()[0],
        }
    }

    pub fn d_out(&self) -> usize {
        match &self.quantized {
            Some(q) => q.d_out,
            None => self.weight.dims()[1],
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(q) = &self.quantized {
            let mut y = crate::kernels::quant_linear(x.clone(), q, self.computes_in_bf16());
            if let Some(b) = &self.bias {
                y = y + b.val().unsqueeze();
            }
            return self.plus_adapter(x, y);
        }
        // A weight loaded in a low precision computes in it until `set_precision` says more.
        let stored = self.weight.val().dtype();
        let compute = self
            .compute
            .or((stored != DType::F32 && x.dtype() == DType::F32).then_some(stored));
        // A frozen bf16 weight multiplies on AMX where the CPU has it: bf16 products summed
        // in f32, the output f32 without a bf16 rounding of its own.
        let on_amx = match compute {
            Some(DType::BF16) => self.frozen_bf16_product(&x),
            _ => None,
        };
        let y = match (on_amx, compute) {
            (Some(y), _) => y,
            // Autocast: the product in the low precision, the result back in f32. Casting a
            // weight stored in that dtype is the weight itself, so backward keeps no copy.
            (None, Some(dtype)) => {
                let cast = |t: Tensor<2>| if t.dtype() == dtype { t } else { t.cast(dtype) };
                burn::tensor::module::linear(
                    x.clone().cast(dtype),
                    cast(self.weight.val()),
                    self.bias.as_ref().map(|b| b.val().cast(dtype)),
                )
                .cast(DType::F32)
            }
            (None, None) => burn::tensor::module::linear(
                x.clone(),
                self.weight.val(),
                self.bias.as_ref().map(|b| b.val()),
            ),
        };
        self.plus_adapter(x, y)
    }

    fn computes_in_bf16(&self) -> bool {
        self.compute == Some(DType::BF16)
    }

    /// `x W + b` through [`crate::kernels::frozen_bf16_linear`], where it applies.
    fn frozen_bf16_product<const D: usize>(&self, x: &Tensor<D>) -> Option<Tensor<D>> {
        let y = crate::kernels::frozen_bf16_linear(x, &self.weight.val())?;
        Some(match &self.bias {
            Some(b) => y + super::precision::in_f32(b.val()).unsqueeze(),
            None => y,
        })
    }

    /// `y` (the base projection of `x`) plus the active adapter's update.
    fn plus_adapter<const D: usize>(&self, x: Tensor<D>, y: Tensor<D>) -> Tensor<D> {
        match &self.lora {
            Some(l) if l.enabled && !l.merged => {
                let update = l.update(
                    x,
                    &y,
                    self.bias.as_ref().map(|b| b.val()),
                    || self.adapted_norms(l),
                    |x| self.project(x),
                );
                y + update
            }
            _ => y,
        }
    }

    /// `x W` without the bias, in f32 (DoRA's base term under dropout).
    fn project<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match &self.quantized {
            Some(q) => crate::kernels::quant_linear(x, q, self.computes_in_bf16()),
            None => {
                let w = self.weight.val();
                let w = if w.dtype() == DType::F32 {
                    w
                } else {
                    w.cast(DType::F32)
                };
                burn::tensor::module::linear(x, w, None)
            }
        }
    }

    /// DoRA's `||W + s B A||` per output; over a quantised weight a tile of rows at a time, so
    /// no whole dense copy of it exists.
    fn adapted_norms(&self, l: &LoraAdapter) -> Tensor<1> {
        let Some(q) = &self.quantized else {
            return l.adapted_norms(self.dense_weight());
        };
        let device = self.weight.val().device();
        let parts: Vec<Tensor<1>> = q
            .tiles()
            .map(|(start, rows)| {
                let adapted = q.rows_tensor(start, rows, &device) + l.delta_rows(start, rows);
                adapted.square().sum_dim(1).sqrt().reshape([rows])
            })
            .collect();
        Tensor::cat(parts, 0)
    }

    /// The weight with the adapter folded in (for export and merged models).
    pub fn merged_weight(&self) -> Tensor<2> {
        match &self.lora {
            Some(l) if l.enabled && !l.merged => l.merged_weight(self.dense_weight()),
            _ => self.dense_weight(),
        }
    }

    /// Folds the adapter into the weight for good and drops it: the weight becomes the f32
    /// merged weight whatever the base stored (bf16 or a quantised format would round most of
    /// a low-rank update away). How a layered model's adapter is read.
    pub fn fold_adapter(&mut self) {
        if self.lora.is_none() {
            return;
        }
        let merged = super::precision::in_f32(self.merged_weight());
        self.lora = None;
        // A weight of its own, not a step of the computation that folded it.
        self.weight = Param::from_tensor(merged.detach());
        self.quantized = None;
        self.compute = None;
    }

    /// Replaces the weight by `w` (f32), stored in the old weight's dtype (PEFT's merge keeps
    /// the base's dtype too).
    pub fn replace_weight(&mut self, w: Tensor<2>) {
        if self.quantized.take().is_some() {
            self.weight = Param::from_tensor(w);
            return;
        }
        let dtype = self.weight.val().dtype();
        self.weight = Param::from_tensor(if dtype == DType::F32 {
            w
        } else {
            w.cast(dtype)
        });
    }
}

/// LayerNorm over the last dimension (PyTorch semantics: biased variance, eps inside the sqrt).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(weight: Tensor<1>, bias: Tensor<1>, eps: f64) -> LayerNorm {
        LayerNorm {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            eps,
        }
    }
    pub fn init(d: usize, eps: f64, device: &Device) -> LayerNorm {
        LayerNorm::new(Tensor::ones([d], device), Tensor::zeros([d], device), eps)
    }
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::layer_norm(x, self.weight.val(), Some(self.bias.val()), self.eps)
    }
}

impl super::decoder::FinalNorm for LayerNorm {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        LayerNorm::forward(self, x)
    }

    fn write_weights(&self, name: &str, w: &mut WeightWriter) {
        w.put(format!("{name}.weight"), self.weight.val());
        w.put(format!("{name}.bias"), self.bias.val());
    }
}

/// RMSNorm: `x / sqrt(mean(x^2) + eps) * weight` (Llama).
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Tensor<1>, eps: f64) -> RmsNorm {
        RmsNorm {
            weight: Param::from_tensor(weight),
            eps,
        }
    }
    pub fn init(d: usize, eps: f64, device: &Device) -> RmsNorm {
        RmsNorm::new(Tensor::ones([d], device), eps)
    }
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::kernels::rms_norm(x, self.weight.val(), self.eps)
    }
}

impl super::decoder::FinalNorm for RmsNorm {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        RmsNorm::forward(self, x)
    }

    fn write_weights(&self, name: &str, w: &mut WeightWriter) {
        w.put(format!("{name}.weight"), self.weight.val());
    }
}

/// Value added to masked attention scores: large and finite, so a fully masked row (a padding
/// query) gives a uniform distribution instead of NaN.
const MASKED: f32 = -1.0e9;

/// Attention mask `[b, 1, q, k]`, true where a query must not see a key: padding keys, and
/// with `causal`, keys after the query. `padding` is `[b, k]`, true at real tokens; `offset` is
/// the position of the first query (for a KV cache).
pub fn attention_mask(
    padding: Option<Tensor<2, Bool>>,
    b: usize,
    q: usize,
    k: usize,
    causal: bool,
    offset: usize,
    device: &Device,
) -> Option<Tensor<4, Bool>> {
    let mut mask: Option<Tensor<4, Bool>> = None;
    if causal {
        // Key j is hidden from query i when j > i + offset.
        let qi =
            Tensor::<1, Int>::arange(offset as i64..(offset + q) as i64, device).reshape([q, 1]);
        let kj = Tensor::<1, Int>::arange(0..k as i64, device).reshape([1, k]);
        let future = kj.greater(qi).reshape([1, 1, q, k]).expand([b, 1, q, k]);
        mask = Some(future);
    }
    if let Some(pad) = padding {
        let hidden = pad.bool_not().reshape([b, 1, 1, k]).expand([b, 1, q, k]);
        mask = Some(match mask {
            Some(m) => m.bool_or(hidden),
            None => hidden,
        });
    }
    mask
}

/// Positions `0..s` and the causal + padding mask for a whole sequence (no cache).
pub fn causal_inputs(
    ids: &Tensor<2, Int>,
    padding: Option<Tensor<2, Bool>>,
) -> (Tensor<2, Int>, Option<Tensor<4, Bool>>) {
    let [b, s] = ids.dims();
    let device = ids.device();
    let positions = Tensor::<1, Int>::arange(0..s as i64, &device)
        .reshape([1, s])
        .expand([b, s]);
    (
        positions,
        attention_mask(padding, b, s, s, true, 0, &device),
    )
}

/// Scaled dot-product attention over `[b, h, s, d]` tensors.
pub fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
) -> Tensor<4> {
    attend_capped(q, k, v, mask, None, None)
}

/// [`attend`] with the scores soft-capped first, `tanh(s / cap) * cap` (Gemma 2), and with
/// `sinks` (one logit per head, gpt-oss) an extra key each query may attend to, that has no
/// value: it takes its share of the softmax and gives nothing back.
pub fn attend_capped(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<4, Bool>>,
    softcap: Option<f64>,
    sinks: Option<&Tensor<1>>,
) -> Tensor<4> {
    let d = q.dims()[3];
    let mut scores = q.matmul(k.swap_dims(2, 3)).div_scalar((d as f64).sqrt());
    if let Some(cap) = softcap {
        scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
    }
    if let Some(m) = mask {
        let [b, h, sq, sk] = scores.dims();
        scores = scores.mask_fill(m.expand([b, h, sq, sk]), MASKED);
    }
    attention_weights(scores, sinks).matmul(v)
}

/// The softmax of `scores` `[b, h, s, t]` over the keys, with each head's sink logit
/// (`sinks` `[h]`) as one more key whose weight is then dropped.
fn attention_weights(scores: Tensor<4>, sinks: Option<&Tensor<1>>) -> Tensor<4> {
    let Some(sinks) = sinks else {
        return softmax(scores, 3);
    };
    let [b, h, s, t] = scores.dims();
    let sink = sinks
        .clone()
        .cast(scores.dtype())
        .reshape([1, h, 1, 1])
        .expand([b, h, s, 1]);
    softmax(Tensor::cat(vec![scores, sink], 3), 3).narrow(3, 0, t)
}

/// A layer's keys and values `[b, kv, t, d]` as attention sees them: this step's alone, or the
/// cache's with this step's written after them.
pub enum KeysValues {
    Fresh(Tensor<4>, Tensor<4>),
    Cached(Tensor<5>, Tensor<5>),
}

impl KeysValues {
    /// This step's keys and values `[b, kv, s, d]`, after `cache`'s for its layer when given.
    pub fn new(k: Tensor<4>, v: Tensor<4>, cache: Option<(&mut KvCache, usize)>) -> KeysValues {
        match cache {
            Some((c, layer)) => {
                let (k, v) = c.extend(layer, k, v);
                KeysValues::Cached(k, v)
            }
            None => KeysValues::Fresh(k, v),
        }
    }

    /// Number of key positions `t`.
    pub fn len(&self) -> usize {
        match self {
            KeysValues::Fresh(k, _) => k.dims()[2],
            KeysValues::Cached(k, _) => k.dims()[3],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `mask` for queries `q` `[b, h, s, d]` over these keys, with the keys `window` or more
    /// positions before each query hidden too where the layer slides ([`window_mask`]).
    pub fn mask_within(
        &self,
        mask: Option<Tensor<4, Bool>>,
        q: &Tensor<4>,
        window: Option<usize>,
    ) -> Option<Tensor<4, Bool>> {
        match window {
            Some(w) => Some(window_mask(mask, q.dims()[2], self.len(), w, &q.device())),
            None => mask,
        }
    }

    /// [`attend_capped`] of the queries `[b, h, s, d]` over these keys and values, each key
    /// head serving `h / kv` query heads (grouped-query attention).
    pub fn attend(
        self,
        q: Tensor<4>,
        mask: Option<Tensor<4, Bool>>,
        softcap: Option<f64>,
        sinks: Option<&Tensor<1>>,
    ) -> Tensor<4> {
        match self {
            KeysValues::Fresh(k, v) => {
                let rep = q.dims()[1] / k.dims()[1];
                let (k, v) = (repeat_kv(k, rep), repeat_kv(v, rep));
                attend_capped(q, k, v, mask, softcap, sinks)
            }
            KeysValues::Cached(k, v) => attend_cached(q, k, v, mask, softcap, sinks),
        }
    }
}

/// [`attend_capped`] of `q` `[b, h, s, d]` over cached keys and values `[b, kv, 1, t, d]`
/// ([`KvCache::extend`]), `h` a multiple of `kv`: the queries of each key head's group meet it
/// through the broadcast unit dim, where [`repeat_kv`] would copy it `h / kv` times. Each
/// score and output is the same gemm, on the same strides, as over repeated keys, so the bits
/// are those of [`attend_capped`].
pub fn attend_cached(
    q: Tensor<4>,
    k: Tensor<5>,
    v: Tensor<5>,
    mask: Option<Tensor<4, Bool>>,
    softcap: Option<f64>,
    sinks: Option<&Tensor<1>>,
) -> Tensor<4> {
    let [b, h, s, d] = q.dims();
    let [_, kv, _, t, _] = k.dims();
    let q = q.reshape([b, kv, h / kv, s, d]);
    let mut scores = q
        .matmul(k.swap_dims(3, 4))
        .reshape([b, h, s, t])
        .div_scalar((d as f64).sqrt());
    if let Some(cap) = softcap {
        scores = scores.div_scalar(cap).tanh().mul_scalar(cap);
    }
    if let Some(m) = mask {
        scores = scores.mask_fill(m.expand([b, h, s, t]), MASKED);
    }
    attention_weights(scores, sinks)
        .reshape([b, kv, h / kv, s, t])
        .matmul(v)
        .reshape([b, h, s, d])
}

/// `mask` (true where a query may not see a key) with the keys `window` or more positions
/// before each query also hidden. The `s` queries are the last of the `t` keys; positions
/// count in the padded sequence, as transformers counts them for sliding windows.
pub fn window_mask(
    mask: Option<Tensor<4, Bool>>,
    s: usize,
    t: usize,
    window: usize,
    device: &Device,
) -> Tensor<4, Bool> {
    let offset = t - s;
    let far: Vec<bool> = (0..s)
        .flat_map(|i| (0..t).map(move |j| (offset + i).saturating_sub(j) >= window))
        .collect();
    let far =
        Tensor::<4, Bool>::from_data(burn::tensor::TensorData::new(far, [1, 1, s, t]), device);
    match mask {
        Some(m) => {
            let [b, h, ..] = m.dims();
            m.bool_or(far.expand([b, h, s, t]))
        }
        None => far,
    }
}

/// Rows `ids` of a token embedding table, in f32 whatever the table is stored in (a frozen
/// table is stored in the training precision, [`set_weight_precision`]).
pub fn embed(table: &Param<Tensor<2>>, ids: Tensor<2, Int>) -> Tensor<3> {
    let rows = burn::tensor::module::embedding(table.val(), ids);
    match rows.dtype() {
        DType::F32 => rows,
        _ => rows.cast(DType::F32),
    }
}

/// `x @ w` in f32: a weight stored in a low precision multiplies in it, the product cast
/// back, as [`Proj`] does (autocast). For tied LM heads (`w` the transposed embedding).
pub fn matmul_autocast<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    match w.dtype() {
        DType::F32 => burn::tensor::module::linear(x, w, None),
        low => burn::tensor::module::linear(x.cast(low), w, None).cast(DType::F32),
    }
}

/// Stores a frozen weight (a LoRA base's projection, token table or head) in `precision`; a
/// trainable one is the f32 master, a fresh leaf when it is cast up (a weight loaded low), so
/// the optimizer finds its gradient under its own node.
pub fn set_weight_precision(param: &mut Param<Tensor<2>>, precision: Precision) {
    let t = param.val();
    let trainable = t.is_require_grad();
    let dtype = if trainable {
        DType::F32
    } else {
        precision.dtype()
    };
    if t.dtype() != dtype {
        *param = param.clone().map(|t| match trainable {
            true => t.cast(dtype).detach().require_grad(),
            false => t.cast(dtype),
        });
    }
}

/// `[b, s, h*d]` -> `[b, h, s, d]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, s, hd] = x.dims();
    x.reshape([b, s, heads, hd / heads]).swap_dims(1, 2)
}

/// `[b, h, s, d]` -> `[b, s, h*d]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, s, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, s, h * d])
}

/// The seven projections of a Llama-style decoder layer (Llama, Qwen, Mistral, Gemma 3), by
/// their HF module names under `model.layers.<i>`, in the order [`named_projections`] expects.
pub const DECODER_PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Layer `layer`'s projections (in [`DECODER_PROJECTIONS`] order) by their full HF paths, for
/// LoRA and for saving.
pub fn named_projections<P>(layer: usize, projs: [P; 7]) -> impl Iterator<Item = (String, P)> {
    DECODER_PROJECTIONS
        .into_iter()
        .zip(projs)
        .map(move |(name, p)| (format!("model.layers.{layer}.{name}"), p))
}

/// Writes projections (LoRA merged in) and their biases under their paths.
pub fn write_projections<'a>(
    w: &mut super::weights::WeightWriter,
    projs: impl IntoIterator<Item = (String, &'a Proj)>,
) {
    for (path, proj) in projs {
        w.put_linear(format!("{path}.weight"), proj.merged_weight());
        if let Some(b) = &proj.bias {
            w.put(format!("{path}.bias"), b.val());
        }
    }
}

/// Rows of a `[len, d]` table at `positions` `[b, s]`, shaped `[b, 1, s, d]` to broadcast over heads.
pub fn rows_at(table: &Tensor<2>, positions: &Tensor<2, Int>) -> Tensor<4> {
    let [b, s] = positions.dims();
    let d = table.dims()[1];
    burn::tensor::module::embedding(table.clone(), positions.clone()).reshape([b, 1, s, d])
}

/// Applies rotary embeddings to `[b, h, s, d]` given `cos`/`sin` `[b, 1, s, d]`:
/// `x * cos + rotate_half(x) * sin`, `rotate_half([x1, x2]) = [-x2, x1]`.
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// Positions of the tokens of a (possibly left-padded) batch: the count of real tokens before
/// each one, as HF computes them from the attention mask. `padding` is true at real tokens.
pub fn positions_from_padding(
    padding: &Tensor<2, Bool>,
    offset: Option<&Tensor<2, Int>>,
) -> Tensor<2, Int> {
    let pos = padding.clone().int().cumsum(1).sub_scalar(1).clamp_min(0);
    match offset {
        Some(o) => pos + o.clone(),
        None => pos,
    }
}

/// Keys and values of earlier positions, per layer, for incremental decoding. A layer's are
/// `[b, kv, 1, capacity, d]` buffers that each step writes its position into in place, where
/// growing them by concatenation copied every earlier position per step; the unit dim lets a
/// group of query heads share its key head in [`attend_cached`] without copying it.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    /// Positions to allocate for (more are made room for by doubling).
    capacity: usize,
}

#[derive(Debug, Clone)]
struct LayerKv {
    keys: Tensor<5>,
    values: Tensor<5>,
    len: usize,
}

impl KvCache {
    /// A cache for `layers` layers that expects about `positions` positions in all.
    pub fn new(layers: usize, positions: usize) -> KvCache {
        KvCache {
            layers: vec![None; layers],
            capacity: positions,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every row's keys and values `group` times in a row (see [`repeat_rows`]): a prompt
    /// encoded once, then decoded as `group` rows.
    pub fn repeat_rows(&mut self, group: usize) {
        for l in self.layers.iter_mut().flatten() {
            l.keys = repeat_rows(l.keys.clone(), group);
            l.values = repeat_rows(l.values.clone(), group);
        }
    }

    /// Writes this step's keys/values `[b, kv, s, d]` for `layer` after the cached ones and
    /// returns all of them, `[b, kv, 1, t, d]` views of the buffers (drop them before the next
    /// step's write, or that write copies the buffer).
    pub fn extend(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<5>, Tensor<5>) {
        let [b, kv, s, d] = k.dims();
        let mut l = match self.layers[layer].take() {
            Some(l) => l,
            None => {
                let buffer = || {
                    Tensor::<5>::zeros(
                        [b, kv, 1, self.capacity.max(s), d],
                        (&k.device(), k.dtype()),
                    )
                };
                LayerKv {
                    keys: buffer(),
                    values: buffer(),
                    len: 0,
                }
            }
        };
        let capacity = l.keys.dims()[3];
        if l.len + s > capacity {
            let more = capacity.max(l.len + s - capacity);
            let room = || Tensor::<5>::zeros([b, kv, 1, more, d], (&k.device(), k.dtype()));
            l.keys = Tensor::cat(vec![l.keys, room()], 3);
            l.values = Tensor::cat(vec![l.values, room()], 3);
        }
        let at = [0..b, 0..kv, 0..1, l.len..l.len + s, 0..d];
        l.keys = l.keys.slice_assign(at.clone(), k.unsqueeze_dim(2));
        l.values = l.values.slice_assign(at, v.unsqueeze_dim(2));
        l.len += s;
        let seen = (
            l.keys.clone().narrow(3, 0, l.len),
            l.values.clone().narrow(3, 0, l.len),
        );
        self.layers[layer] = Some(l);
        seen
    }
}

/// Each row of `x` (dim 0) `group` times in a row: `[a, b]` -> `[a, a, b, b]` for 2.
pub fn repeat_rows<const D: usize>(x: Tensor<D>, group: usize) -> Tensor<D> {
    if group == 1 {
        return x;
    }
    let rows = x.dims()[0];
    let index: Vec<i64> = (0..rows as i64)
        .flat_map(|i| std::iter::repeat_n(i, group))
        .collect();
    let index = Tensor::<1, Int>::from_data(index.as_slice(), &x.device());
    x.select(0, index)
}

/// Repeats key/value heads for grouped-query attention: `[b, kv, s, d]` -> `[b, kv*rep, s, d]`.
pub fn repeat_kv(x: Tensor<4>, rep: usize) -> Tensor<4> {
    if rep == 1 {
        return x;
    }
    let [b, kv, s, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kv, rep, s, d])
        .reshape([b, kv * rep, s, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoding through the cache gives, step by step, the bits of attention over every key so
    /// far with the keys repeated per query head (what the cache grown by concatenation gave),
    /// so cached rollouts reproduce earlier artifacts.
    #[test]
    fn cached_attention_equals_attention_over_repeated_keys() {
        let device = Device::flex();
        device.seed(7);
        let (b, h, kv, d, prompt, steps) = (3, 6, 2, 16, 9, 4);
        let t = prompt + steps;
        let normal = burn::tensor::Distribution::Normal(0.0, 1.0);
        let q = Tensor::<4>::random([b, h, t, d], normal, &device);
        let k = Tensor::<4>::random([b, kv, t, d], normal, &device);
        let v = Tensor::<4>::random([b, kv, t, d], normal, &device);
        let padding = Tensor::<2, Bool>::from_data(
            burn::tensor::TensorData::new(
                (0..b * t)
                    .map(|i| i % t >= (i / t) * 2)
                    .collect::<Vec<bool>>(),
                [b, t],
            ),
            &device,
        );
        let bits = |x: Tensor<4>| {
            crate::model::to_vec(x)
                .into_iter()
                .map(f32::to_bits)
                .collect::<Vec<_>>()
        };
        let sink_logits = Tensor::<1>::random([h], normal, &device);
        for (softcap, sinks) in [(None, None), (Some(5.0), None), (None, Some(&sink_logits))] {
            // The prompt at once, then a position a step, into a cache sized short of the end
            // (it grows).
            let mut cache = KvCache::new(1, prompt + 1);
            for (at, len) in std::iter::once((0, prompt)).chain((prompt..t).map(|i| (i, 1))) {
                let seen = at + len;
                let mask = attention_mask(
                    Some(padding.clone().narrow(1, 0, seen)),
                    b,
                    len,
                    seen,
                    true,
                    at,
                    &device,
                );
                let q = q.clone().narrow(2, at, len);
                let whole = KeysValues::new(
                    k.clone().narrow(2, 0, seen),
                    v.clone().narrow(2, 0, seen),
                    None,
                )
                .attend(q.clone(), mask.clone(), softcap, sinks);
                let cached = KeysValues::new(
                    k.clone().narrow(2, at, len),
                    v.clone().narrow(2, at, len),
                    Some((&mut cache, 0)),
                );
                assert_eq!(cached.len(), seen);
                let cached = cached.attend(q, mask, softcap, sinks);
                assert_eq!(
                    bits(cached),
                    bits(whole),
                    "softcap {softcap:?}, sinks {}, {seen} keys",
                    sinks.is_some()
                );
            }
            assert_eq!(cache.len(), t);
        }
    }
}
