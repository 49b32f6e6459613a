//! Moving tensors between burn's run-time `Tensor` and one backend's primitives, for the ops
//! written once for every backend ([`PortableOps`](super::PortableOps)): their backward steps
//! get a backend's primitives and do their work with ordinary tensor ops on them.

use burn::backend::autodiff::NodeId;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Autodiff, Backend, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind,
    Flex, GradientCheckpointingStrategy,
};
use burn::prelude::*;

/// A backend the portable ops run on: how its tensors sit in the run-time dispatch.
pub trait Lane: Backend {
    fn wrap(t: BackendTensor<Self>) -> DispatchTensorKind;
    /// The backend's tensor, if `kind` is one.
    fn unwrap(kind: DispatchTensorKind) -> Option<BackendTensor<Self>>;
    /// [`unwrap`](Self::unwrap), borrowed.
    fn peek(kind: &DispatchTensorKind) -> Option<&BackendTensor<Self>>;
}

impl Lane for Flex {
    fn wrap(t: BackendTensor<Self>) -> DispatchTensorKind {
        DispatchTensorKind::Flex(t)
    }

    fn unwrap(kind: DispatchTensorKind) -> Option<BackendTensor<Self>> {
        match kind {
            DispatchTensorKind::Flex(t) => Some(t),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    fn peek(kind: &DispatchTensorKind) -> Option<&BackendTensor<Self>> {
        match kind {
            DispatchTensorKind::Flex(t) => Some(t),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// wgpu and CUDA: every cubecl runtime is this one backend.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl Lane for burn::backend::Cube {
    fn wrap(t: BackendTensor<Self>) -> DispatchTensorKind {
        DispatchTensorKind::Cube(t)
    }

    fn unwrap(kind: DispatchTensorKind) -> Option<BackendTensor<Self>> {
        match kind {
            DispatchTensorKind::Cube(t) => Some(t),
            _ => None,
        }
    }

    fn peek(kind: &DispatchTensorKind) -> Option<&BackendTensor<Self>> {
        match kind {
            DispatchTensorKind::Cube(t) => Some(t),
            _ => None,
        }
    }
}

/// The backend primitive under a float tensor, tracked or not.
pub fn primitive<B: Lane>(t: DispatchTensor) -> FloatTensor<B> {
    let kind = match t.kind {
        DispatchTensorKind::Autodiff(inner) => *inner,
        kind => kind,
    };
    match B::unwrap(kind) {
        Some(BackendTensor::Float(f)) => f,
        Some(BackendTensor::Autodiff(ad)) => ad.into_primitive(),
        _ => panic!("a float tensor of another backend reached a portable op"),
    }
}

/// A float primitive as a plain (untracked) tensor.
pub fn plain<B: Lane, const D: usize>(f: FloatTensor<B>) -> Tensor<D> {
    Tensor::from_dispatch(DispatchTensor {
        kind: B::wrap(BackendTensor::Float(f)),
        autodiff: DispatchAutodiffContext::Disabled,
    })
}

/// An integer primitive as a tensor.
pub fn plain_int<B: Lane, const D: usize>(i: IntTensor<B>) -> Tensor<D, Int> {
    Tensor::from_dispatch(DispatchTensor {
        kind: B::wrap(BackendTensor::Int(i)),
        autodiff: DispatchAutodiffContext::Disabled,
    })
}

/// A float primitive as a fresh autodiff leaf, requiring its gradient when `tracked`.
pub fn leaf<B: Lane, const D: usize>(
    f: FloatTensor<B>,
    tracked: bool,
    strategy: GradientCheckpointingStrategy,
) -> Tensor<D> {
    let ad = <FloatTensor<Autodiff<B>>>::new(f);
    let ad = if tracked { ad.require_grad() } else { ad };
    Tensor::from_dispatch(DispatchTensor {
        kind: DispatchTensorKind::Autodiff(Box::new(B::wrap(BackendTensor::Autodiff(ad)))),
        autodiff: DispatchAutodiffContext::Enabled(strategy),
    })
}

/// The autodiff node of a tracked float tensor, on any backend compiled in.
pub fn tracked_node<const D: usize>(t: &Tensor<D>) -> Option<NodeId> {
    let DispatchTensorKind::Autodiff(inner) = t.clone().into_dispatch().kind else {
        return None;
    };
    fn node<B: Lane>(kind: &DispatchTensorKind) -> Option<NodeId> {
        match B::peek(kind)? {
            BackendTensor::Autodiff(ad) if ad.is_tracked() => Some(ad.id()),
            _ => None,
        }
    }
    let found = node::<Flex>(&inner);
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let found = found.or_else(|| node::<burn::backend::Cube>(&inner));
    found
}
