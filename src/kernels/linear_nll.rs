//! An LM head and its cross-entropy in one op, a chunk of rows at a time.
//!
//! Forward computes each chunk's logits `h_c @ W`, reduces every row to its log-sum-exp and
//! the label's logit, and drops the chunk: what it keeps for backward is one float per row.
//! Backward recomputes a chunk's logits, turns them in place into
//! `g_r (softmax(row) - onehot(label))`, and takes `dH_c = P W^T` and `dW += H_c^T P` from
//! it. Peak memory is one chunk of logits instead of the whole `[n, v]` tensor plus the
//! log-softmax, exp and gather outputs burn's composed ops keep; the price is the logits
//! matmul done twice.

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
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

/// Per-row negative log-likelihoods `[n]` and log-sum-exps.
pub fn forward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    labels: &[i64],
    rows: usize,
) -> (FlexTensor, Vec<f32>) {
    let (n, v) = check(hidden, weight, labels);
    let (mut nll, mut lse) = (vec![0f32; n], vec![0f32; n]);
    for start in (0..n).step_by(rows.max(1)) {
        let len = rows.min(n - start);
        let chunk = logits(hidden, weight, start, len);
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
    }
    (tensor(nll, [n]), lse)
}

/// The gradients of `sum_r grad_r * nll_r` with respect to `hidden` and `weight`, each when
/// asked for.
pub fn backward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    labels: &[i64],
    lse: &[f32],
    grad: &FlexTensor,
    rows: usize,
    (want_hidden, want_weight): (bool, bool),
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let (n, v) = check(hidden, weight, labels);
    let grad = contiguous(grad);
    let g = values(&grad);
    let weight_t = want_hidden.then(|| transpose(weight.clone()));
    let (mut d_hidden, mut d_weight) = (Vec::new(), None::<FlexTensor>);
    for start in (0..n).step_by(rows.max(1)) {
        let len = rows.min(n - start);
        let mut chunk = logits(hidden, weight, start, len);
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
                for x in row.iter_mut() {
                    *x = g * exp(*x - lse);
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
        1 => d_hidden.pop().expect("one chunk"),
        _ => Flex::float_cat(d_hidden, 0),
    });
    (d_hidden, d_weight)
}

#[derive(Debug)]
struct LinearNll;

#[derive(Debug, Clone)]
struct Saved {
    hidden: FlexTensor,
    weight: FlexTensor,
    labels: Vec<i64>,
    lse: Vec<f32>,
    rows: usize,
}

impl Backward<Flex, 2> for LinearNll {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [hidden_node, weight_node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let s = ops.state;
        let (d_hidden, d_weight) = backward(
            &s.hidden,
            &s.weight,
            &s.labels,
            &s.lse,
            &grad,
            s.rows,
            (hidden_node.is_some(), weight_node.is_some()),
        );
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
    rows: usize,
) -> FloatTensor<Autodiff<Flex, C>> {
    let labels = super::flex::labels(&labels);
    match LinearNll
        .prepare::<C>([hidden.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (h, w) = (hidden.primitive().clone(), weight.primitive().clone());
            let (nll, lse) = forward(&h, &w, &labels, rows);
            let saved = Saved {
                hidden: h,
                weight: w,
                labels,
                lse,
                rows,
            };
            prep.finish(saved, nll)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward(hidden.primitive(), weight.primitive(), &labels, rows).0)
        }
    }
}
