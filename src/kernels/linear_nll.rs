//! An LM head and its cross-entropy in one op, a chunk of rows at a time.
//!
//! Forward computes each chunk's logits `h_c @ W`, reduces every row to its log-sum-exp and
//! the label's logit, and drops the chunk: what it keeps for backward is one float per row.
//! Backward recomputes a chunk's logits, turns them in place into
//! `g_r (softmax(row) - onehot(label))`, and takes `dH_c = P W^T` and `dW += H_c^T P` from
//! it. Forward leaves the last chunk's softmax behind, so that one is not recomputed (and with
//! a single chunk nothing is). Peak memory is about two chunks of logits instead of the whole
//! `[n, v]` tensor plus the log-softmax, exp and gather outputs burn's composed ops keep; the
//! price is the logits matmul done twice for every chunk but the last.

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::DType;
use rayon::prelude::*;

use super::flex::{contiguous, dims, exp, matmul, row_max, row_sum_exp, tensor, transpose, values};

fn check(hidden: &FlexTensor, weight: &FlexTensor, labels: &[i64]) -> (usize, usize) {
    let (h, w) = (dims(hidden), dims(weight));
    assert!(
        h.len() == 2 && w.len() == 2 && h[1] == w[0] && labels.len() == h[0],
        "linear_nll: hidden {h:?}, weight {w:?}, {} labels",
        labels.len()
    );
    let v = w[1];
    if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= v) {
        panic!("linear_nll: label {bad} is outside the vocabulary of {v}");
    }
    (h[0], v)
}

/// The chunk of rows `start..start + len` of `hidden`'s logits, `[len, v]` (a fresh,
/// contiguous tensor: gemm writes its own output).
fn logits(hidden: &FlexTensor, weight: &FlexTensor, start: usize, len: usize) -> FlexTensor {
    matmul(hidden.narrow(0, start, len), weight.clone())
}

/// The last chunk's softmax, which forward can leave for backward at no extra cost: its rows
/// `start..` of `exp(logits - lse)`. Bounded by the chunk size; with a single chunk (small
/// vocabularies and batches) backward then recomputes no logits at all.
#[derive(Debug, Clone)]
pub struct KeptChunk {
    start: usize,
    softmax: FlexTensor,
}

/// Rows of a chunk that spans all `v` columns, for the budget of a `rows` x `cols` tile.
fn full_width_rows((rows, cols): (usize, usize), v: usize) -> usize {
    (rows * cols / v.max(1)).max(1)
}

/// Per-row negative log-likelihoods `[n]` and log-sum-exps, and with `keep_last` the last
/// chunk's softmax. Chunks of rows span the whole vocabulary, as many rows as fit the
/// `rows` x `cols` tile's budget; a weight stored in a low precision is read in `rows` x
/// `cols` tiles instead ([`super::linear_nll_blocks`]; multiplied in bf16 when it is a
/// `frozen` bf16 head).
pub fn forward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    labels: &[i64],
    (rows, cols): (usize, usize),
    (keep_last, frozen): (bool, bool),
) -> (FlexTensor, Vec<f32>, Option<KeptChunk>) {
    let (n, v) = check(hidden, weight, labels);
    if weight.dtype() != DType::F32 {
        let (nll, lse) =
            super::linear_nll_blocks::forward(hidden, weight, labels, (rows, cols), frozen);
        return (nll, lse, None);
    }
    let (mut nll, mut lse) = (vec![0f32; n], vec![0f32; n]);
    let mut kept = None;
    let rows = full_width_rows((rows, cols), v);
    for start in (0..n).step_by(rows) {
        let len = rows.min(n - start);
        let mut chunk = logits(hidden, weight, start, len);
        let last = start + len == n;
        values(&chunk)
            .par_chunks(v)
            .zip(nll[start..start + len].par_iter_mut())
            .zip(lse[start..start + len].par_iter_mut())
            .zip(labels[start..start + len].par_iter())
            .for_each(|(((row, nll), lse), &label)| {
                let max = row_max(row);
                let sum = row_sum_exp(row, max);
                *lse = max + sum.ln();
                *nll = *lse - row[label as usize];
            });
        if keep_last && last {
            // The same `exp(x - lse)` backward would compute from recomputed logits.
            chunk
                .storage_mut::<f32>()
                .par_chunks_mut(v)
                .zip(&lse[start..start + len])
                .for_each(|(row, &lse)| row.iter_mut().for_each(|x| *x = exp(*x - lse)));
            kept = Some(KeptChunk {
                start,
                softmax: chunk,
            });
        }
    }
    (tensor(nll, [n]), lse, kept)
}

/// The gradients of `sum_r grad_r * nll_r` with respect to `hidden` and `weight`, each when
/// asked for.
pub fn backward(
    saved: Saved,
    grad: &FlexTensor,
    (want_hidden, want_weight): (bool, bool),
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let Saved {
        hidden,
        weight,
        labels,
        lse,
        mut kept,
        rows,
        cols,
    } = saved;
    let (hidden, weight) = (&hidden, &weight);
    let (n, v) = check(hidden, weight, &labels);
    let weight_len = dims(weight).iter().product();
    let grad = contiguous(grad);
    let g = values(&grad);
    if weight.dtype() != DType::F32 {
        return super::linear_nll_blocks::backward(
            hidden,
            weight,
            &labels,
            &lse,
            g,
            (rows, cols),
            (want_hidden, want_weight),
        );
    }
    let weight_t = want_hidden.then(|| transpose(weight.clone()));
    let (mut d_hidden, mut d_weight) = (Vec::new(), None::<FlexTensor>);
    let rows = full_width_rows((rows, cols), v);
    for start in (0..n).step_by(rows) {
        let len = rows.min(n - start);
        // Each row becomes g (softmax - onehot(label)); zero-weight rows are zero.
        let (mut chunk, is_softmax) = match kept.take() {
            Some(k) if k.start == start => (k.softmax, true),
            other => {
                kept = other;
                (logits(hidden, weight, start, len), false)
            }
        };
        chunk
            .storage_mut::<f32>()
            .par_chunks_mut(v)
            .zip(&lse[start..start + len])
            .zip(&g[start..start + len])
            .zip(&labels[start..start + len])
            .for_each(|(((row, &lse), &g), &label)| {
                if g == 0.0 {
                    row.fill(0.0);
                    return;
                }
                if is_softmax {
                    row.iter_mut().for_each(|x| *x *= g);
                } else {
                    row.iter_mut().for_each(|x| *x = g * exp(*x - lse));
                }
                row[label as usize] -= g;
            });
        if let Some(w_t) = &weight_t {
            d_hidden.push(matmul(chunk.clone(), w_t.clone()));
        }
        if want_weight {
            let part = matmul(transpose(hidden.narrow(0, start, len)), chunk);
            d_weight = Some(match d_weight {
                None => part,
                Some(sum) => Flex::float_add(sum, part),
            });
        }
    }
    let d_hidden = want_hidden.then(|| match d_hidden.len() {
        0 => tensor(Vec::new(), dims(hidden)),
        1 => d_hidden.pop().expect("one chunk"),
        _ => Flex::float_cat(d_hidden, 0),
    });
    let d_weight =
        d_weight.or_else(|| want_weight.then(|| tensor(vec![0.0; weight_len], dims(weight))));
    (d_hidden, d_weight)
}

#[derive(Debug)]
struct LinearNll;

/// What backward needs: the inputs, one log-sum-exp per row, and the kept last chunk.
#[derive(Debug, Clone)]
pub struct Saved {
    hidden: FlexTensor,
    weight: FlexTensor,
    labels: Vec<i64>,
    lse: Vec<f32>,
    kept: Option<KeptChunk>,
    rows: usize,
    cols: usize,
}

impl Backward<Flex, 2> for LinearNll {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [hidden_node, weight_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let wants = (hidden_node.is_some(), weight_node.is_some());
        let (d_hidden, d_weight) = backward(ops.state, &grad, wants);
        if let (Some(node), Some(d)) = (hidden_node, d_hidden) {
            grads.register::<Flex>(node.id, d);
        }
        if let (Some(node), Some(d)) = (weight_node, d_weight) {
            grads.register::<Flex>(node.id, d);
        }
    }
}

pub fn autodiff<C: CheckpointStrategy>(
    hidden: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    labels: IntTensor<Autodiff<Flex, C>>,
    (rows, cols): (usize, usize),
) -> FloatTensor<Autodiff<Flex, C>> {
    let labels = super::flex::labels(&labels);
    match LinearNll
        .prepare::<C>([hidden.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let frozen = !weight.is_tracked();
            let (h, w) = (hidden.primitive().clone(), weight.primitive().clone());
            let (nll, lse, kept) = forward(&h, &w, &labels, (rows, cols), (true, frozen));
            let saved = Saved {
                hidden: h,
                weight: w,
                labels,
                lse,
                kept,
                rows,
                cols,
            };
            prep.finish(saved, nll)
        }
        OpsKind::UnTracked(prep) => {
            let (h, w) = (hidden.primitive(), weight.primitive());
            prep.finish(forward(h, w, &labels, (rows, cols), (false, true)).0)
        }
    }
}
