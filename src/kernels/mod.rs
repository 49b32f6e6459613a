//! Fused CPU kernels with hand-written backward passes, for the ops that dominate training
//! time and memory on the flex backend:
//! - [`gelu_tanh`]: the tanh-approximated GELU in one pass each way, where burn composes it
//!   from eight element-wise ops that each keep their output for backward;
//! - [`silu_mul`]: `silu(gate) * up`, the gated MLP of Llama-family models;
//! - [`rms_norm`]: RMSNorm, where burn composes six ops;
//! - [`linear_nll`]: an LM head and cross-entropy together, in chunks of rows, so the
//!   `[n, vocab]` logits and their log-softmax never exist whole (forward keeps one
//!   log-sum-exp per row and the last chunk's softmax; backward recomputes the other chunks).
//!
//! They are burn backend extensions: a flex implementation and an autodiff one that records
//! the backward step. Other backends (wgpu, CUDA) and other dtypes take the composed burn ops,
//! which compute the same function; [`fused`] says which path a device gets.

mod flex;
mod gelu;
mod linear_nll;
mod recompute;
mod rms_norm;
mod silu_mul;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, DispatchDevice, Flex, backend_extension};
use burn::prelude::*;
use burn::tensor::DType;

pub use recompute::checkpointed;

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
    /// Per row of `hidden` `[n, d]`: `-log softmax(hidden @ weight)[label]`, with `weight`
    /// `[d, v]` and `labels` `[n]`; `[n]` out. `rows` logits rows are computed at a time.
    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self>;
    /// `block(x)`, recomputed in backward instead of kept; `token` is a fresh tracked
    /// scalar that keeps the op recorded ([`checkpointed`]).
    fn recompute(
        x: FloatTensor<Self>,
        token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self>;
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

    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        linear_nll::forward(&hidden, &weight, &flex::labels(&labels), rows, false).0
    }

    fn recompute(
        x: FloatTensor<Self>,
        _token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self> {
        recompute::forward_quietly(x, &block)
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

    fn linear_nll(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        labels: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        linear_nll::autodiff::<C>(hidden, weight, labels, rows)
    }

    fn recompute(
        x: FloatTensor<Self>,
        token: FloatTensor<Self>,
        block: recompute::Recompute,
    ) -> FloatTensor<Self> {
        recompute::autodiff::<C>(x, token, block)
    }
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

/// `f` of `t`'s values as f32, row-major: borrowed where they lie when `t` is a contiguous f32
/// tensor on the flex backend (a model's weights, which saving then never copies), else read
/// back once.
pub fn with_f32_values<const D: usize, R>(t: Tensor<D>, f: impl FnOnce(&[f32]) -> R) -> R {
    use burn::backend::{BackendTensor, DispatchTensorKind};
    if t.dtype() == DType::F32 {
        let dispatch = t.clone().into_dispatch();
        if let DispatchTensorKind::Flex(BackendTensor::Float(flex)) = &dispatch.kind
            && let Some(values) = flex.as_slice::<f32>()
        {
            return f(values);
        }
    }
    let data = t.into_data();
    match data.as_slice::<f32>() {
        Ok(values) => f(values),
        Err(_) => f(&data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 values")),
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
/// (`hidden` `[n, d]`, `weight` `[d, v]`), per row, `[n]`. On the fused path the logits are
/// computed a chunk of rows at a time and never kept; elsewhere this is
/// [`logits_nll`] of the whole logits.
pub fn linear_nll(hidden: Tensor<2>, weight: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [_, v] = weight.dims();
    if !fused(&hidden.device(), hidden.dtype()) || weight.dtype() != DType::F32 {
        return logits_nll(hidden.matmul(weight), labels);
    }
    let rows = (LOGIT_ELEMENTS_PER_CHUNK / v.max(1)).max(1);
    Tensor::from_dispatch(<Dispatch as FusedOps>::linear_nll(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        labels.into_dispatch(),
        rows,
    ))
}

#[cfg(test)]
mod tests;
