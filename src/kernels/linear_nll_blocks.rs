//! [`linear_nll`](super::linear_nll) for a head stored in a low precision (a frozen tied
//! embedding under `train.precision`): the flex kernel's contract, computed a block of
//! vocabulary columns at a time so the weight is cast to f32 one block at a time, once per
//! pass, and no f32 copy of the whole head exists.
//!
//! Forward keeps a running maximum, sum of exponentials and label logit per row across the
//! blocks (an online log-sum-exp) and leaves one log-sum-exp per row for backward. Backward
//! recomputes each block's logits, turns them into `g_r (softmax(row) - onehot(label))` and
//! takes `dH += P W_b^T` (and `dW_b = H^T P` if the weight is trained). The logits are f32 sums
//! of f32 products, as in the f32 kernel, except for a frozen bf16 head on a CPU with AMX:
//! there the hidden states and the logits' gradients are rounded to bf16 and multiplied on
//! the tiles (`AmxHead`), as autocast computes a bf16 head, without converting the head.

use std::ops::Range;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, bf16, f16};
use rayon::prelude::*;

use super::amx::{self, Matrix};
use super::bf16_linear::{Layout, layout};
use super::blocks;
use super::flex::{dims, exp, matmul, row_max, row_sum_exp, tensor, transpose, values};

/// Elements `range` of a contiguous tensor's storage, as f32; `None` when it is not laid out
/// contiguously.
fn f32_range(t: &FlexTensor, range: Range<usize>) -> Option<Vec<f32>> {
    match t.dtype() {
        DType::BF16 => t
            .as_slice::<bf16>()
            .map(|s| s[range].par_iter().map(|x| x.to_f32()).collect()),
        DType::F16 => t
            .as_slice::<f16>()
            .map(|s| s[range].par_iter().map(|x| x.to_f32()).collect()),
        DType::F32 => t.as_slice::<f32>().map(|s| s[range].to_vec()),
        other => panic!("linear_nll: a head of dtype {other:?}"),
    }
}

/// Columns `start..start + len` of `weight` `[d, v]` in f32, `[d, len]`.
fn f32_columns(weight: &FlexTensor, start: usize, len: usize) -> FlexTensor {
    let (d, v) = (dims(weight)[0], dims(weight)[1]);
    // A tied head is the transposed `[v, d]` embedding table: its columns are the table's
    // rows, one contiguous range.
    if let Some(rows) = f32_range(&transpose(weight.clone()), start * d..(start + len) * d) {
        return transpose(tensor(rows, [len, d]));
    }
    let weight = match weight.is_contiguous() {
        true => weight.clone(),
        false => weight.to_contiguous(),
    };
    let rows: Vec<Vec<f32>> = (0..d)
        .into_par_iter()
        .map(|r| f32_range(&weight, r * v + start..r * v + start + len).expect("contiguous"))
        .collect();
    tensor(rows.concat(), [d, len])
}

/// A bf16 head `[d, v]` multiplied on AMX (see `amx`), where the CPU has it: the logits of a
/// block of columns and the hidden states' gradient through it, without converting the head.
struct AmxHead<'a> {
    head: Layout<'a>,
    /// The hidden states rounded to bf16, `[n, d]`.
    hidden: Vec<bf16>,
    d: usize,
    v: usize,
}

impl<'a> AmxHead<'a> {
    fn new(hidden: &FlexTensor, weight: &'a FlexTensor) -> Option<AmxHead<'a>> {
        if !amx::available() {
            return None;
        }
        let head = layout(weight)?;
        let hidden = super::flex::contiguous(hidden);
        Some(AmxHead {
            head,
            hidden: amx::to_bf16(values(&hidden)),
            d: dims(weight)[0],
            v: dims(weight)[1],
        })
    }

    /// Columns `col..col + width` of the head, as `[width, d]` rows (the tied table's own
    /// rows) or as `[d, width]` (a block of a `[d, v]` weight).
    fn block(&self, col: usize, width: usize) -> (Matrix<'_>, bool) {
        let d = self.d;
        match self.head {
            Layout::OutIn(table) => (
                Matrix::dense(&table[col * d..][..width * d], width, d),
                true,
            ),
            Layout::InOut(w) => (
                Matrix {
                    values: &w[col..],
                    rows: d,
                    cols: width,
                    ld: self.v,
                },
                false,
            ),
        }
    }

    /// The logits of hidden rows `start..start + len` for the block: `[len, width]`.
    fn logits(&self, (start, len): (usize, usize), (col, width): (usize, usize)) -> FlexTensor {
        let rows = Matrix::dense(&self.hidden[start * self.d..][..len * self.d], len, self.d);
        let values = match self.block(col, width) {
            (block, true) => amx::matmul_transposed(rows, block),
            (block, false) => amx::matmul(rows, block),
        };
        tensor(values, [len, width])
    }

    /// `P W_b^T` for `P` `[len, width]` (the block's logit gradients): `[len, d]`.
    fn hidden_gradient(&self, p: &FlexTensor, (col, width): (usize, usize)) -> FlexTensor {
        let len = dims(p)[0];
        let p = amx::to_bf16(values(p));
        let p = Matrix::dense(&p, len, width);
        let values = match self.block(col, width) {
            (block, true) => amx::matmul(p, block),
            (block, false) => amx::matmul_transposed(p, block),
        };
        tensor(values, [len, self.d])
    }
}

/// Per-row negative log-likelihoods `[n]` and log-sum-exps, `rows` x `cols` logits at a time;
/// a `frozen` bf16 head multiplies on AMX where the CPU has it (the backward step, which
/// recomputes the logits, does too exactly when the head takes no gradient).
pub fn forward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    labels: &[i64],
    (rows, cols): (usize, usize),
    frozen: bool,
) -> (FlexTensor, Vec<f32>) {
    let (n, v) = (dims(hidden)[0], dims(weight)[1]);
    let mut max = vec![f32::NEG_INFINITY; n];
    let (mut sum, mut picked) = (vec![0f32; n], vec![0f32; n]);
    let amx = AmxHead::new(hidden, weight).filter(|_| frozen);
    for (col, width) in blocks(v, cols) {
        let block = amx.is_none().then(|| f32_columns(weight, col, width));
        for (start, len) in blocks(n, rows) {
            let chunk = match (&amx, &block) {
                (Some(amx), _) => amx.logits((start, len), (col, width)),
                (None, Some(block)) => matmul(hidden.narrow(0, start, len), block.clone()),
                (None, None) => unreachable!("a block for the portable path"),
            };
            let at = start..start + len;
            values(&chunk)
                .par_chunks(width)
                .zip(max[at.clone()].par_iter_mut())
                .zip(sum[at.clone()].par_iter_mut())
                .zip(picked[at.clone()].par_iter_mut())
                .zip(labels[at].par_iter())
                .for_each(|((((row, max), sum), picked), &label)| {
                    let new = max.max(row_max(row));
                    let carried = match *max == f32::NEG_INFINITY {
                        true => 0.0,
                        false => *sum * exp(*max - new),
                    };
                    *sum = carried + row_sum_exp(row, new);
                    *max = new;
                    if let Some(i) = (label as usize).checked_sub(col).filter(|&i| i < width) {
                        *picked = row[i];
                    }
                });
        }
    }
    let lse: Vec<f32> = max.iter().zip(&sum).map(|(m, s)| m + s.ln()).collect();
    let nll = lse.iter().zip(&picked).map(|(l, p)| l - p).collect();
    (tensor(nll, [n]), lse)
}

/// The gradients of `sum_r g_r * nll_r` with respect to `hidden` and `weight` (in the
/// weight's dtype), each when asked for.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    hidden: &FlexTensor,
    weight: &FlexTensor,
    labels: &[i64],
    lse: &[f32],
    g: &[f32],
    (rows, cols): (usize, usize),
    (want_hidden, want_weight): (bool, bool),
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let ([n, d], v) = ([dims(hidden)[0], dims(hidden)[1]], dims(weight)[1]);
    let mut d_hidden: Vec<Option<FlexTensor>> = blocks(n, rows).map(|_| None).collect();
    let mut d_weight = Vec::new();
    // A trained head is f32 (`train.precision` keeps trainable weights so): AMX only ever
    // sees a frozen one.
    let amx = AmxHead::new(hidden, weight).filter(|_| !want_weight);
    for (col, width) in blocks(v, cols) {
        let block = amx.is_none().then(|| f32_columns(weight, col, width));
        let block_t = block.clone().map(transpose);
        let mut d_block = None::<FlexTensor>;
        for ((start, len), d_h) in blocks(n, rows).zip(d_hidden.iter_mut()) {
            let h = hidden.narrow(0, start, len);
            let mut chunk = match (&amx, &block) {
                (Some(amx), _) => amx.logits((start, len), (col, width)),
                (None, Some(block)) => matmul(h.clone(), block.clone()),
                (None, None) => unreachable!("a block for the portable path"),
            };
            let at = start..start + len;
            chunk
                .storage_mut::<f32>()
                .par_chunks_mut(width)
                .zip(&lse[at.clone()])
                .zip(&g[at.clone()])
                .zip(&labels[at])
                .for_each(|(((row, &lse), &g), &label)| {
                    if g == 0.0 {
                        row.fill(0.0);
                        return;
                    }
                    row.iter_mut().for_each(|x| *x = g * exp(*x - lse));
                    if let Some(i) = (label as usize).checked_sub(col).filter(|&i| i < width) {
                        row[i] -= g;
                    }
                });
            if want_hidden {
                let part = match (&amx, &block_t) {
                    (Some(amx), _) => amx.hidden_gradient(&chunk, (col, width)),
                    (None, Some(block_t)) => matmul(chunk.clone(), block_t.clone()),
                    (None, None) => unreachable!("a block for the portable path"),
                };
                *d_h = Some(match d_h.take() {
                    None => part,
                    Some(sum) => Flex::float_add(sum, part),
                });
            }
            if want_weight {
                let part = matmul(transpose(h), chunk);
                d_block = Some(match d_block {
                    None => part,
                    Some(sum) => Flex::float_add(sum, part),
                });
            }
        }
        if want_weight {
            d_weight.push(d_block.unwrap_or_else(|| tensor(vec![0.0; d * width], [d, width])));
        }
    }
    let d_hidden = want_hidden.then(|| {
        let mut parts: Vec<FlexTensor> = d_hidden.into_iter().flatten().collect();
        match parts.len() {
            0 => tensor(Vec::new(), [n, d]),
            1 => parts.pop().expect("one chunk"),
            _ => Flex::float_cat(parts, 0),
        }
    });
    let d_weight = want_weight.then(|| {
        let whole = Flex::float_cat(d_weight, 1);
        Flex::float_cast(whole, weight.dtype().into())
    });
    (d_hidden, d_weight)
}
