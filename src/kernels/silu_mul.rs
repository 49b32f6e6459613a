//! `silu(gate) * up`, the gated MLP of Llama-family models (SwiGLU), in one pass each way;
//! backward keeps the two inputs only.

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use rayon::prelude::*;

use super::flex::{contiguous, dims, exp, tensor, values};

/// Elements per parallel task.
const GRAIN: usize = 1 << 14;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

pub fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    assert_eq!(
        dims(gate),
        dims(up),
        "silu_mul: gate and up differ in shape"
    );
    let (gate, up) = (contiguous(gate), contiguous(up));
    let (g, u) = (values(&gate), values(&up));
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(GRAIN)
        .zip(g.par_chunks(GRAIN).zip(u.par_chunks(GRAIN)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    tensor(out, dims(&gate))
}

/// The gradients with respect to `gate` and `up` of `sum grad * silu(gate) * up`.
pub fn backward(gate: &FlexTensor, up: &FlexTensor, grad: &FlexTensor) -> (FlexTensor, FlexTensor) {
    let (gate, up, grad) = (contiguous(gate), contiguous(up), contiguous(grad));
    let (g, u, dy) = (values(&gate), values(&up), values(&grad));
    let (mut d_gate, mut d_up) = (vec![0f32; g.len()], vec![0f32; g.len()]);
    d_gate
        .par_chunks_mut(GRAIN)
        .zip(d_up.par_chunks_mut(GRAIN))
        .zip(
            g.par_chunks(GRAIN)
                .zip(u.par_chunks(GRAIN))
                .zip(dy.par_chunks(GRAIN)),
        )
        .for_each(|((dg, du), ((g, u), dy))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                du[i] = dy[i] * g[i] * s;
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
    let shape = dims(&gate);
    (tensor(d_gate, shape.clone()), tensor(d_up, shape))
}

#[derive(Debug)]
struct SiluMul;

impl Backward<Flex, 2> for SiluMul {
    /// The inputs, gate and up.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let (d_gate, d_up) = backward(&gate, &up, &grad);
        let [gate_node, up_node] = ops.parents;
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, d_gate);
        }
        if let Some(node) = up_node {
            grads.register::<Flex>(node.id, d_up);
        }
    }
}

pub fn autodiff<C: CheckpointStrategy>(
    gate: FloatTensor<Autodiff<Flex, C>>,
    up: FloatTensor<Autodiff<Flex, C>>,
) -> FloatTensor<Autodiff<Flex, C>> {
    match SiluMul
        .prepare::<C>([gate.node(), up.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (g, u) = (gate.primitive().clone(), up.primitive().clone());
            let out = forward(&g, &u);
            prep.finish((g, u), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(gate.primitive(), up.primitive())),
    }
}
