//! Fused CPU kernels with hand-written backward passes, for the ops that dominate training
//! time and memory on the flex backend:
//! - [`gelu_tanh`]: the tanh-approximated GELU in one pass each way, where burn composes it
//!   from eight element-wise ops that each keep their output for backward;
//! - [`silu_mul`]: `silu(gate) * up`, the gated MLP of Llama-family models;
//! - [`rms_norm`]: RMSNorm, where burn composes six ops;
//! - [`linear_nll`]: an LM head and cross-entropy together, in chunks of rows, so the
//!   `[n, vocab]` logits and their log-softmax never exist whole (forward keeps one
//!   log-sum-exp per row and the last chunk's softmax; backward recomputes the other chunks);
//!   a head stored in bf16 or f16 is read a block of columns at a time (`linear_nll_blocks`).
//!
//! They are burn backend extensions: a flex implementation and an autodiff one that records
//! the backward step. Other backends (wgpu, CUDA) and other dtypes take the composed burn ops
//! for the element-wise ones, which compute the same function; [`fused`] says which path a
//! device gets.
//!
//! Three ops change what training keeps in memory rather than how fast it runs, so every
//! backend has them ([`PortableOps`]): [`linear_nll`] (the flex kernel above, and on wgpu and
//! CUDA the same chunked loss written in burn's tensor ops, `chunked_nll`), [`checkpointed`]
//! (per-block recomputation, `recompute`) and [`quant_linear`] (a quantised frozen weight
//! dequantised a tile at a time).

pub(crate) mod amx;
mod bf16_linear;
mod chunked_nll;
mod flex;
mod gelu;
mod lane;
mod linear_nll;
mod linear_nll_blocks;
mod quant_linear;
mod recompute;
mod rms_norm;
mod silu_mul;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

pub use recompute::checkpointed;

#[cfg(any(feature = "wgpu", feature = "cuda"))]
use burn::backend::Cube;

/// Logits computed at once by [`linear_nll`] (and by evaluation's argmax): rows enough to
/// keep the gemm efficient, few enough that a chunk stays near 64 MiB whatever the vocabulary.
pub const LOGIT_ELEMENTS_PER_CHUNK: usize = 16 << 20;

#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, element-wise.
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `silu(gate) * up`, element-wise.
    fn silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self>;
    /// `x W` for `x` `[n, d_in]` (f32) and a frozen bf16 `W` `[d_in, d_out]`, on AMX.
    fn bf16_linear(x: FloatTensor<Self>, weight: bf16_linear::Frozen) -> FloatTensor<Self>;
}

/// The memory-saving ops, on every backend compiled in.
#[backend_extension(Flex, Cube: cfg(any(feature = "wgpu", feature = "cuda")), Autodiff)]
pub trait PortableOps: Backend {
    /// Per row of `hidden` `[n, d]`: `-log softmax(hidden @ weight)[label]`, with `weight`
    /// `[d, v]` and `labels` `[n]`; `[n]` out. The logits are computed `rows` x `cols` at a
    /// time, or (the f32 CPU kernel) in chunks of whole rows of the same size.
    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
        cols: usize,
    ) -> FloatTensor<Self>;
    /// `block(x)`, recomputed in backward instead of kept; `token` is a fresh tracked
    /// scalar that keeps the op recorded ([`checkpointed`]).
    fn recompute(
        x: FloatTensor<Self>,
        token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self>;
    /// `x W^T` for `x` `[n, d_in]` and a quantised frozen `W` `[d_out, d_in]`.
    fn quant_linear(x: FloatTensor<Self>, weight: quant_linear::Frozen) -> FloatTensor<Self>;
}

impl FusedOps for Flex {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu::forward(&x)
    }

    fn silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        silu_mul::forward(&gate, &up)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_norm::forward(&x, &weight, eps).0
    }

    fn bf16_linear(x: FloatTensor<Self>, weight: bf16_linear::Frozen) -> FloatTensor<Self> {
        bf16_linear::forward(&x, &weight)
    }
}

impl<C: CheckpointStrategy> FusedOps for Autodiff<Flex, C> {
    fn gelu_tanh(x: FloatTensor<Self>) -> FloatTensor<Self> {
        gelu::autodiff::<C>(x)
    }

    fn silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        silu_mul::autodiff::<C>(gate, up)
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        rms_norm::autodiff::<C>(x, weight, eps)
    }

    fn bf16_linear(x: FloatTensor<Self>, weight: bf16_linear::Frozen) -> FloatTensor<Self> {
        bf16_linear::autodiff::<C>(x, weight)
    }
}

impl PortableOps for Flex {
    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
        cols: usize,
    ) -> FloatTensor<Self> {
        linear_nll::forward(
            &hidden,
            &weight,
            &flex::labels(&labels),
            (rows, cols),
            (false, true),
        )
        .0
    }

    fn recompute(
        x: FloatTensor<Self>,
        _token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self> {
        recompute::forward_quietly::<Flex>(x, &block)
    }

    fn quant_linear(x: FloatTensor<Self>, weight: quant_linear::Frozen) -> FloatTensor<Self> {
        quant_linear::forward::<Flex>(x, &weight)
    }
}

impl<C: CheckpointStrategy> PortableOps for Autodiff<Flex, C> {
    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
        cols: usize,
    ) -> FloatTensor<Self> {
        linear_nll::autodiff::<C>(hidden, weight, labels, (rows, cols))
    }

    fn recompute(
        x: FloatTensor<Self>,
        token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self> {
        recompute::autodiff::<Flex, C>(x, token, block)
    }

    fn quant_linear(x: FloatTensor<Self>, weight: quant_linear::Frozen) -> FloatTensor<Self> {
        quant_linear::autodiff::<Flex, C>(x, weight)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl PortableOps for Cube {
    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
        cols: usize,
    ) -> FloatTensor<Self> {
        chunked_nll::forward::<Self>(hidden, weight, labels, rows, cols)
    }

    fn recompute(
        x: FloatTensor<Self>,
        _token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self> {
        recompute::forward_quietly::<Self>(x, &block)
    }

    fn quant_linear(x: FloatTensor<Self>, weight: quant_linear::Frozen) -> FloatTensor<Self> {
        quant_linear::forward::<Self>(x, &weight)
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl<C: CheckpointStrategy> PortableOps for Autodiff<Cube, C> {
    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
        cols: usize,
    ) -> FloatTensor<Self> {
        chunked_nll::autodiff::<Cube, C>(hidden, weight, labels, rows, cols)
    }

    fn recompute(
        x: FloatTensor<Self>,
        token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self> {
        recompute::autodiff::<Cube, C>(x, token, block)
    }

    fn quant_linear(x: FloatTensor<Self>, weight: quant_linear::Frozen) -> FloatTensor<Self> {
        quant_linear::autodiff::<Cube, C>(x, weight)
    }
}

/// `(start, len)` of each block of `step` (at least 1) out of `total`: the row chunks and
/// column blocks the chunked losses walk.
fn blocks(total: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = step.max(1);
    (0..total)
        .step_by(step)
        .map(move |s| (s, step.min(total - s)))
}

/// Whether tensors of `dtype` on `device` take the fused kernels: f32 on the flex backend
/// (with or without autodiff).
pub fn fused(device: &Device, dtype: DType) -> bool {
    let flex = match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(a) => matches!(a.clone().inner(), DispatchDevice::Flex(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    };
    flex && dtype == DType::F32
}

/// Elements converted to f32 at a time by [`for_f32_pieces`]: 4 MiB of f32.
const PIECE: usize = 1 << 20;

/// `visit` of `t`'s values as f32, row-major, in consecutive pieces: borrowed where they lie
/// when `t` is a contiguous f32 tensor on the flex backend (a model's weights, which saving
/// then never copies); converted a piece at a time from a contiguous bf16 or f16 one (a frozen
/// weight stored in the training precision), so no f32 copy of it exists at once; else read
/// back once (in its own dtype) and converted the same way.
pub fn for_f32_pieces<const D: usize>(t: Tensor<D>, visit: &mut dyn FnMut(&[f32])) {
    use burn::backend::{BackendTensor, DispatchTensorKind};
    use burn::tensor::{bf16, f16};
    fn pieces<E: Copy + Sync>(values: &[E], f32_of: fn(E) -> f32, visit: &mut dyn FnMut(&[f32])) {
        use rayon::prelude::*;
        for piece in values.chunks(PIECE) {
            let converted: Vec<f32> = piece.par_iter().map(|&x| f32_of(x)).collect();
            visit(&converted);
        }
    }
    let dispatch = t.clone().into_dispatch();
    if let DispatchTensorKind::Flex(BackendTensor::Float(flex)) = &dispatch.kind {
        if let Some(values) = flex.as_slice::<f32>() {
            return visit(values);
        }
        if let Some(values) = flex.as_slice::<bf16>() {
            return pieces(values, bf16::to_f32, visit);
        }
        if let Some(values) = flex.as_slice::<f16>() {
            return pieces(values, f16::to_f32, visit);
        }
    }
    let data = t.into_data();
    if let Ok(values) = data.as_slice::<f32>() {
        visit(values)
    } else if let Ok(values) = data.as_slice::<bf16>() {
        pieces(values, bf16::to_f32, visit)
    } else if let Ok(values) = data.as_slice::<f16>() {
        pieces(values, f16::to_f32, visit)
    } else {
        visit(
            &data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32 values"),
        )
    }
}

/// Negative log-likelihood of `labels` `[n]` under `logits` `[n, v]`, per row, from burn's
/// composed ops (`log_softmax` + `gather`; burn has no ignore-index).
pub fn logits_nll(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let n = labels.dims()[0];
    burn::tensor::activation::log_softmax(logits, 1)
        .gather(1, labels.reshape([n, 1]))
        .reshape([n])
        .neg()
}

/// The tanh-approximated GELU (HF `gelu_new`, `gelu_pytorch_tanh`).
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !fused(&x.device(), x.dtype()) {
        return burn::tensor::activation::gelu_approximate(x);
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::gelu_tanh(x.into_dispatch()))
}

/// `silu(gate) * up` (SwiGLU's gating).
pub fn silu_mul<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    if !fused(&gate.device(), gate.dtype()) || up.dtype() != DType::F32 || gate.dims() != up.dims()
    {
        return burn::tensor::activation::silu(gate) * up;
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::silu_mul(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x^2) + eps) * weight` (`weight` `[d]`).
pub fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    if !fused(&x.device(), x.dtype()) || weight.dtype() != DType::F32 {
        let rms = x.clone().square().mean_dim(D - 1).add_scalar(eps).sqrt();
        return x.div(rms).mul(weight.unsqueeze());
    }
    Tensor::from_dispatch(<Dispatch as FusedOps>::rms_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        eps,
    ))
}

/// Negative log-likelihood of `labels` `[n]` under the logits `hidden @ weight`
/// (`hidden` `[n, d]`, `weight` `[d, v]`), per row, `[n]`. The logits are computed in f32 a
/// chunk at a time and never kept, on every backend, for a weight in any float dtype (a frozen
/// head stored in `train.precision`); hidden states in another dtype than f32 take
/// [`logits_nll`] of the whole logits.
pub fn linear_nll(hidden: Tensor<2>, weight: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [_, v] = weight.dims();
    if hidden.dtype() != DType::F32 {
        return logits_nll(hidden.matmul(weight), labels);
    }
    let cols = v.clamp(1, chunked_nll::COLUMNS_PER_BLOCK);
    let rows = (LOGIT_ELEMENTS_PER_CHUNK / cols).max(1);
    Tensor::from_dispatch(<Dispatch as PortableOps>::linear_nll(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        labels.into_dispatch(),
        rows,
        cols,
    ))
}

/// `x W` over the last dimension of `x` (`[..., d_in]` -> `[..., d_out]`, f32 in and out)
/// for a frozen weight `[d_in, d_out]` stored in bf16, multiplied in bf16 on AMX (see
/// `bf16_linear`); `None` where that path does not apply: no AMX (or `HONE_AMX=0`), another
/// backend, an input that is not f32, or a weight that trains or is not bf16.
pub fn frozen_bf16_linear<const D: usize>(x: &Tensor<D>, weight: &Tensor<2>) -> Option<Tensor<D>> {
    if weight.dtype() != DType::BF16
        || weight.is_require_grad()
        || !fused(&x.device(), x.dtype())
        || !amx::available()
    {
        return None;
    }
    let stored = lane::primitive::<Flex>(weight.clone().into_dispatch());
    bf16_linear::layout(&stored)?; // a weight laid out otherwise keeps burn's path
    let [d_in, d_out] = weight.dims();
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let flat: Tensor<2> = x.clone().reshape([rows, d_in]);
    let y: Tensor<2> = Tensor::from_dispatch(<Dispatch as FusedOps>::bf16_linear(
        flat.into_dispatch(),
        bf16_linear::Frozen(stored),
    ));
    let mut out = dims;
    out[D - 1] = d_out;
    Some(y.reshape(out))
}

/// `x W^T` over the last dimension of `x` (`[..., d_in]` -> `[..., d_out]`) for a frozen weight
/// held quantised: dequantised a tile of rows at a time in forward and backward, never whole
/// (see `quant_linear`). `x` is taken in f32; with `bf16` the tiles multiply in bf16 where
/// the CPU has AMX.
pub fn quant_linear<const D: usize>(
    x: Tensor<D>,
    weight: &std::sync::Arc<crate::model::quantized::QuantWeight>,
    bf16: bool,
) -> Tensor<D> {
    let dims = x.dims();
    let x = crate::model::precision::in_f32(x);
    let rows = dims[..D - 1].iter().product::<usize>();
    let flat: Tensor<2> = x.reshape([rows, weight.d_in]);
    let y: Tensor<2> = Tensor::from_dispatch(<Dispatch as PortableOps>::quant_linear(
        flat.into_dispatch(),
        quant_linear::Frozen(weight.clone(), bf16),
    ));
    let mut out = dims;
    out[D - 1] = weight.d_out;
    y.reshape(out)
}

#[cfg(test)]
pub(crate) mod tests;
