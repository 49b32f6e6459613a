//! Per-block activation checkpointing (`train.gradient_checkpointing`): a block's forward
//! runs without recording, so autodiff keeps only the block's input; backward runs the block
//! again with recording, from that input, and takes its gradients from the fresh graph.
//!
//! burn's own `gradient_checkpointing()` (BalancedCheckpointing) recomputes only memory-bound
//! ops and keeps every matmul output, which on the models hone trains costs memory instead of
//! saving it; recomputing whole blocks is what transformers does.
//!
//! The op has the block's input and a fresh tracked scalar (the token) as parents: the token
//! keeps the op recorded when the input needs no gradient (the first block above a frozen
//! embedding) but the block's parameters do. Backward registers the parameters' gradients
//! under their own autodiff nodes, where the optimizer looks them up. The inner backward runs
//! while the outer one holds its graph; burn supports that for a separate graph, which the
//! recomputed one is: the block's parameters never enter the outer graph, since its forward
//! ran with them untracked.

use std::sync::Arc;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients as TapeGradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    Autodiff, DispatchAutodiffContext, DispatchTensor, GradientCheckpointingStrategy,
};
use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

use super::lane::{Lane, leaf, plain, primitive, tracked_node};

/// A block to recompute: its forward with parameters tracked (`true`) or not, and how to
/// read each tracked parameter's gradient from a recomputed pass.
#[derive(Clone)]
pub struct Recompute {
    forward: Arc<dyn Fn(Tensor<3>, bool) -> Tensor<3> + Send + Sync>,
    params: Arc<Vec<ParamGrad>>,
    strategy: GradientCheckpointingStrategy,
}

impl std::fmt::Debug for Recompute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recompute({} parameters)", self.params.len())
    }
}

/// Reads one parameter's gradient from a recomputed pass's gradients.
type ReadGrad = Box<dyn Fn(&burn::tensor::Gradients) -> Option<DispatchTensor> + Send + Sync>;

/// A tracked parameter: its node, and its gradient in a recomputed pass's gradients.
struct ParamGrad {
    node: NodeId,
    grad: ReadGrad,
}

/// Collects the tracked float parameters of a module.
struct TrackedParams(Vec<ParamGrad>);

impl ModuleVisitor for TrackedParams {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        if let Some(node) = tracked_node(&t) {
            let grad = move |g: &burn::tensor::Gradients| t.grad(g).map(Tensor::into_dispatch);
            self.0.push(ParamGrad {
                node,
                grad: Box::new(grad),
            });
        }
    }
}

/// `forward(module, x)`, recomputed in backward instead of kept (see the module docs), when
/// `x` is under autodiff and something in the block needs a gradient; otherwise simply
/// `forward(module, x)`. Any backend: the op is written in burn's tensor ops.
pub fn checkpointed<M, F>(module: &M, x: Tensor<3>, forward: F) -> Tensor<3>
where
    M: Module + Sync + 'static,
    F: Fn(&M, Tensor<3>) -> Tensor<3> + Send + Sync + 'static,
{
    let dispatch = x.clone().into_dispatch();
    let DispatchAutodiffContext::Enabled(strategy) = dispatch.autodiff else {
        return forward(module, x);
    };
    let mut params = TrackedParams(Vec::new());
    module.visit(&mut params);
    if params.0.is_empty() && tracked_node(&x).is_none() {
        return forward(module, x);
    }
    let (tracking, quiet) = (module.clone(), module.clone().no_grad());
    let block = Recompute {
        forward: Arc::new(move |x, track| match track {
            true => forward(&tracking, x),
            false => forward(&quiet, x),
        }),
        params: Arc::new(params.0),
        strategy,
    };
    let token = Tensor::<1>::zeros([1], &x.device()).require_grad();
    Tensor::from_dispatch(<burn::backend::Dispatch as super::PortableOps>::recompute(
        x.into_dispatch(),
        token.into_dispatch(),
        block,
    ))
}

/// The block's output from its input, nothing recorded.
pub fn forward_quietly<B: Lane>(x: FloatTensor<B>, block: &Recompute) -> FloatTensor<B> {
    primitive::<B>((block.forward)(plain::<B, 3>(x), false).into_dispatch())
}

thread_local! {
    /// Blocks this thread's backward passes recomputed so far (the tests check that the path
    /// was taken; per thread, so tests running side by side do not count for each other).
    pub static RECOMPUTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[derive(Debug)]
struct RecomputeBlock;

#[derive(Debug, Clone)]
pub struct Saved<B: Lane> {
    x: FloatTensor<B>,
    block: Recompute,
}

impl<B: Lane> Backward<B, 2> for RecomputeBlock {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Saved<B>, 2>, grads: &mut TapeGradients, _: &mut Checkpointer) {
        let [x_node, _token] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Saved { x, block } = ops.state;
        let x = leaf::<B, 3>(x, x_node.is_some(), block.strategy);
        let y = (block.forward)(x.clone(), true);
        let inner = (y * plain::<B, 3>(grad)).sum().backward();
        RECOMPUTED.with(|n| n.set(n.get() + 1));
        if let (Some(node), Some(dx)) = (x_node, x.grad(&inner)) {
            grads.register::<B>(node.id, primitive::<B>(dx.into_dispatch()));
        }
        for p in block.params.iter() {
            if let Some(g) = (p.grad)(&inner) {
                grads.register::<B>(p.node, primitive::<B>(g));
            }
        }
    }
}

pub fn autodiff<B: Lane, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    token: FloatTensor<Autodiff<B, C>>,
    block: Recompute,
) -> FloatTensor<Autodiff<B, C>> {
    match <RecomputeBlock as Backward<B, 2>>::prepare::<C>(RecomputeBlock, [x.node(), token.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let x = x.primitive().clone();
            let y = forward_quietly::<B>(x.clone(), &block);
            prep.finish(Saved { x, block }, y)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(forward_quietly::<B>(x.primitive().clone(), &block))
        }
    }
}
