//! RMSNorm over the last dimension, `x / sqrt(mean(x^2) + eps) * weight`, in one pass each
//! way. burn composes it from six ops (square, mean, add, sqrt, div, mul) that each keep a
//! tensor for backward; this keeps the input and one reciprocal RMS per row.

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use rayon::prelude::*;

use super::flex::{contiguous, dims, dot, tensor, values};

/// Rows per parallel task in backward; fixed, so d weight's summation order is too.
const ROWS_PER_BLOCK: usize = 32;

/// The row length (last dimension) of `x`, checked against `weight`.
fn row_len(x: &FlexTensor, weight: &FlexTensor) -> usize {
    let (shape, w) = (dims(x), dims(weight));
    let d = *shape.last().expect("rms_norm of a scalar");
    assert!(w == [d], "rms_norm: weight {w:?} for rows of {d}");
    d
}

/// The normalised rows and each row's `1 / rms`.
pub fn forward(x: &FlexTensor, weight: &FlexTensor, eps: f64) -> (FlexTensor, Vec<f32>) {
    let d = row_len(x, weight);
    let (x, weight) = (contiguous(x), contiguous(weight));
    let (xs, w) = (values(&x), values(&weight));
    let mut out = vec![0f32; xs.len()];
    let mut inv = vec![0f32; xs.len() / d.max(1)];
    out.par_chunks_mut(d)
        .zip(xs.par_chunks(d))
        .zip(inv.par_iter_mut())
        .for_each(|((o, x), inv)| {
            let ms = dot(x, x) / d as f32;
            *inv = 1.0 / (ms + eps as f32).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * *inv * w;
            }
        });
    (tensor(out, dims(&x)), inv)
}

/// The gradients with respect to `x` and `weight` of `sum grad * forward(x, weight)`.
pub fn backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    inv: &[f32],
    grad: &FlexTensor,
) -> (FlexTensor, FlexTensor) {
    let d = row_len(x, weight);
    let (x, weight, grad) = (contiguous(x), contiguous(weight), contiguous(grad));
    let (xs, w, dy) = (values(&x), values(&weight), values(&grad));
    let mut dx = vec![0f32; xs.len()];
    // d weight sums every row's contribution. Rows are taken in fixed blocks and the blocks'
    // partial sums added in order, so the result is the same bits whatever the thread count
    // and however rayon splits the work (a parallel fold/reduce would not be).
    let block = ROWS_PER_BLOCK * d;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(block)
        .zip(xs.par_chunks(block).zip(dy.par_chunks(block)))
        .zip(inv.par_chunks(ROWS_PER_BLOCK))
        .map(|((dx, (x, dy)), inv)| {
            let mut dw = vec![0f32; d];
            for (((dx, x), dy), &r) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)).zip(inv)
            {
                // u = dy * w; dx = r u - x r^3 mean(u x). dx holds u until it is overwritten.
                for j in 0..d {
                    dx[j] = dy[j] * w[j];
                }
                let c = r * r * r * dot(dx, x) / d as f32;
                for j in 0..d {
                    dx[j] = r * dx[j] - x[j] * c;
                    dw[j] += dy[j] * x[j] * r;
                }
            }
            dw
        })
        .collect();
    let mut dw = vec![0f32; d];
    for p in partials {
        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    (tensor(dx, dims(&x)), tensor(dw, [d]))
}

#[derive(Debug)]
struct RmsNorm;

#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    weight: FlexTensor,
    inv: Vec<f32>,
}

impl Backward<Flex, 2> for RmsNorm {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let (dx, dw) = backward(&s.x, &s.weight, &s.inv, &grad);
        let [x_node, weight_node] = ops.parents;
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = weight_node {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

pub fn autodiff<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    weight: FloatTensor<Autodiff<Flex, C>>,
    eps: f64,
) -> FloatTensor<Autodiff<Flex, C>> {
    match RmsNorm
        .prepare::<C>([x.node(), weight.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (xp, wp) = (x.primitive().clone(), weight.primitive().clone());
            let (out, inv) = forward(&xp, &wp, eps);
            let saved = Saved {
                x: xp,
                weight: wp,
                inv,
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), weight.primitive(), eps).0),
    }
}
