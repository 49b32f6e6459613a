//! The tanh-approximated GELU: one pass forward, one pass backward (input kept, nothing else).

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use rayon::prelude::*;

use super::flex::{contiguous, dims, tanh, tensor, values};

/// sqrt(2 / pi).
const C: f32 = 0.797_884_6;
const A: f32 = 0.044_715;
/// Elements per parallel task: large enough to amortise rayon's overhead.
const GRAIN: usize = 1 << 14;

pub fn forward(x: &FlexTensor) -> FlexTensor {
    let x = contiguous(x);
    let xs = values(&x);
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(GRAIN)
        .zip(xs.par_chunks(GRAIN))
        .for_each(|(o, x)| {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = 0.5 * x * (1.0 + tanh(C * (x + A * x * x * x)));
            }
        });
    tensor(out, dims(&x))
}

/// d/dx of [`forward`] times `grad`.
pub fn backward(x: &FlexTensor, grad: &FlexTensor) -> FlexTensor {
    let (x, grad) = (contiguous(x), contiguous(grad));
    let (xs, gs) = (values(&x), values(&grad));
    let mut out = vec![0f32; xs.len()];
    out.par_chunks_mut(GRAIN)
        .zip(xs.par_chunks(GRAIN).zip(gs.par_chunks(GRAIN)))
        .for_each(|(o, (x, g))| {
            for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                let x2 = x * x;
                let t = tanh(C * (x + A * x2 * x));
                let du = C * (1.0 + 3.0 * A * x2);
                *o = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
            }
        });
    tensor(out, dims(&x))
}

#[derive(Debug)]
struct GeluTanh;

impl Backward<Flex, 1> for GeluTanh {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |g| backward(&x, &g));
    }
}

pub fn autodiff<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
) -> FloatTensor<Autodiff<Flex, C>> {
    match GeluTanh.prepare::<C>([x.node()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let input = x.primitive().clone();
            let out = forward(&input);
            prep.finish(input, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive())),
    }
}
