//! An LM head and its cross-entropy a block at a time, written in burn's tensor ops:
//! [`linear_nll`](super::linear_nll) for the backends without a hand kernel (wgpu, CUDA),
//! with the head in f32 or stored in a low precision (`train.precision` on a frozen base). The
//! CPU's kernels do the same in `linear_nll` and `linear_nll_blocks`.
//!
//! The logits are computed a block of vocabulary columns times a chunk of rows at a time, and
//! dropped: forward keeps a running maximum, sum of exponentials and label logit per row (an
//! online log-sum-exp) and leaves one log-sum-exp per row for backward; backward recomputes
//! each block's logits, turns them into `g_r (softmax(row) - onehot(label))` and takes
//! `dH += P W_b^T` and `dW_b = H^T P`. So the `[n, v]` logits, their log-softmax and the copies
//! burn's composed ops keep never exist whole, on the GPU as on the CPU. A low-precision weight
//! is cast to f32 one column block at a time, once per pass, so there is never an f32 copy of
//! the whole head either; the logits are f32 sums like the f32 kernel's.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::prelude::*;
use burn::tensor::{DType, IndexingUpdateOp};

use super::blocks;
use super::lane::{Lane, plain, plain_int, primitive};

/// Vocabulary columns per block: few enough that a block of a low-precision head cast to f32
/// stays small (a 2,048-wide model: 64 MiB), enough to keep the matmul efficient.
pub const COLUMNS_PER_BLOCK: usize = 8 << 10;

/// Columns `start..start + len` of the head, in f32.
fn f32_block(weight: &Tensor<2>, start: usize, len: usize) -> Tensor<2> {
    let block = weight.clone().narrow(1, start, len);
    match block.dtype() {
        DType::F32 => block,
        _ => block.cast(DType::F32),
    }
}

/// Where each row's label falls in the column block `start..start + len`: its column there
/// (0 when outside, to stay a valid index) `[len_rows, 1]`, and 1.0 when inside, else 0.0.
fn labels_in_block(
    labels: &Tensor<2, Int>,
    start: usize,
    len: usize,
) -> (Tensor<2, Int>, Tensor<2>) {
    let rel = labels.clone().sub_scalar(start as i64);
    let inside = rel
        .clone()
        .greater_equal_elem(0)
        .bool_and(rel.clone().lower_elem(len as i64));
    let column = rel.mask_fill(inside.clone().bool_not(), 0);
    (column, inside.float())
}

/// Per-row negative log-likelihoods `[n]` and log-sum-exps `[n]` of `labels` under
/// `hidden @ weight`, `rows` x `cols` logits at a time.
fn nll_and_lse(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    labels: Tensor<1, Int>,
    rows: usize,
    cols: usize,
) -> (Tensor<1>, Tensor<1>) {
    let ([n, _], v) = (hidden.dims(), weight.dims()[1]);
    let device = hidden.device();
    if n == 0 {
        let empty = Tensor::<1>::zeros([0], &device);
        return (empty.clone(), empty);
    }
    let labels = labels.reshape([n, 1]);
    // Per chunk of rows: running maximum, sum of exp(logit - maximum), label logit.
    let mut state: Vec<(Tensor<2>, Tensor<2>, Tensor<2>)> = blocks(n, rows)
        .map(|(_, len)| {
            (
                Tensor::full([len, 1], f32::NEG_INFINITY, &device),
                Tensor::zeros([len, 1], &device),
                Tensor::zeros([len, 1], &device),
            )
        })
        .collect();
    for (col, width) in blocks(v, cols) {
        let block = f32_block(&weight, col, width);
        for ((start, len), (max, sum, picked)) in blocks(n, rows).zip(state.iter_mut()) {
            let logits = hidden.clone().narrow(0, start, len).matmul(block.clone());
            let (column, inside) =
                labels_in_block(&labels.clone().narrow(0, start, len), col, width);
            let new_max = max.clone().max_pair(logits.clone().max_dim(1));
            *sum = sum.clone() * (max.clone() - new_max.clone()).exp()
                + (logits.clone() - new_max.clone()).exp().sum_dim(1);
            *picked = picked.clone() + logits.gather(1, column) * inside;
            *max = new_max;
        }
    }
    let (mut nll, mut lse) = (Vec::new(), Vec::new());
    for ((_, len), (max, sum, picked)) in blocks(n, rows).zip(state) {
        let row_lse = sum.log() + max;
        nll.push((row_lse.clone() - picked).reshape([len]));
        lse.push(row_lse.reshape([len]));
    }
    (Tensor::cat(nll, 0), Tensor::cat(lse, 0))
}

/// The per-row negative log-likelihoods alone, nothing kept (no autodiff).
pub fn forward<B: Lane>(
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    labels: IntTensor<B>,
    rows: usize,
    cols: usize,
) -> FloatTensor<B> {
    let (nll, _) = nll_and_lse(
        plain::<B, 2>(hidden),
        plain::<B, 2>(weight),
        plain_int::<B, 1>(labels),
        rows,
        cols,
    );
    primitive::<B>(nll.into_dispatch())
}

#[derive(Debug)]
struct ChunkedNll;

#[derive(Debug, Clone)]
pub struct Saved<B: Lane> {
    hidden: FloatTensor<B>,
    weight: FloatTensor<B>,
    labels: IntTensor<B>,
    lse: FloatTensor<B>,
    rows: usize,
    cols: usize,
}

impl<B: Lane> Backward<B, 2> for ChunkedNll {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Saved<B>, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [h_node, w_node] = ops.parents;
        let g = plain::<B, 1>(grads.consume::<B>(&ops.node));
        let Saved {
            hidden,
            weight,
            labels,
            lse,
            rows,
            cols,
        } = ops.state;
        let (h, w) = (plain::<B, 2>(hidden), plain::<B, 2>(weight));
        let (labels, lse) = (plain_int::<B, 1>(labels), plain::<B, 1>(lse));
        let ([n, d], v) = (h.dims(), w.dims()[1]);
        let device = h.device();
        let labels = labels.reshape([n, 1]);
        let mut dh: Vec<Tensor<2>> = blocks(n, rows)
            .map(|(_, len)| Tensor::zeros([len, d], &device))
            .collect();
        let mut dw = Vec::new();
        for (col, width) in blocks(v, cols) {
            let block = f32_block(&w, col, width);
            let mut dw_block = None::<Tensor<2>>;
            for ((start, len), dh) in blocks(n, rows).zip(dh.iter_mut()) {
                let h_c = h.clone().narrow(0, start, len);
                let logits = h_c.clone().matmul(block.clone());
                let softmax = (logits - lse.clone().narrow(0, start, len).reshape([len, 1])).exp();
                let (column, inside) =
                    labels_in_block(&labels.clone().narrow(0, start, len), col, width);
                let minus_onehot = softmax.scatter(1, column, inside.neg(), IndexingUpdateOp::Add);
                let p = minus_onehot * g.clone().narrow(0, start, len).reshape([len, 1]);
                if h_node.is_some() {
                    *dh = dh.clone() + p.clone().matmul(block.clone().transpose());
                }
                if w_node.is_some() {
                    let part = h_c.transpose().matmul(p);
                    dw_block = Some(match dw_block {
                        Some(sum) => sum + part,
                        None => part,
                    });
                }
            }
            dw.extend(dw_block);
        }
        if let Some(node) = h_node {
            let dh = match dh.is_empty() {
                true => Tensor::<2>::zeros([0, d], &device),
                false => Tensor::cat(dh, 0),
            };
            grads.register::<B>(node.id, primitive::<B>(dh.into_dispatch()));
        }
        if let Some(node) = w_node {
            let dw = match dw.is_empty() {
                true => Tensor::<2>::zeros([d, v], &device),
                false => Tensor::cat(dw, 1),
            };
            let dw = match w.dtype() {
                DType::F32 => dw,
                low => dw.cast(low),
            };
            grads.register::<B>(node.id, primitive::<B>(dw.into_dispatch()));
        }
    }
}

pub fn autodiff<B: Lane, C: CheckpointStrategy>(
    hidden: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    labels: IntTensor<Autodiff<B, C>>,
    rows: usize,
    cols: usize,
) -> FloatTensor<Autodiff<B, C>> {
    match <ChunkedNll as Backward<B, 2>>::prepare::<C>(ChunkedNll, [hidden.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (h, w) = (hidden.primitive().clone(), weight.primitive().clone());
            let (nll, lse) = nll_and_lse(
                plain::<B, 2>(h.clone()),
                plain::<B, 2>(w.clone()),
                plain_int::<B, 1>(labels.clone()),
                rows,
                cols,
            );
            let saved = Saved {
                hidden: h,
                weight: w,
                labels,
                lse: primitive::<B>(lse.into_dispatch()),
                rows,
                cols,
            };
            prep.finish(saved, primitive::<B>(nll.into_dispatch()))
        }
        OpsKind::UnTracked(prep) => prep.finish(forward::<B>(
            hidden.primitive().clone(),
            weight.primitive().clone(),
            labels,
            rows,
            cols,
        )),
    }
}
