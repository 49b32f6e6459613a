//! `x W` for a frozen projection weight stored in bf16 (a LoRA or QLoRA-free base under
//! `train.precision: bf16`) on AMX: the input rounded to bf16, products summed in f32, the
//! output f32, as autocast's linear does. burn's own bf16 matmul on the CPU converts both
//! operands to f32 and multiplies in f32, slower than f32 itself.
//!
//! Backward gives the input gradient `dy W^T` the same way (the weight takes no gradient), so
//! the tape keeps nothing but a handle on the stored weight: no input, no cast copies.

use burn::backend::Autodiff;
use burn::backend::Flex;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, bf16};

use super::amx::{self, Matrix};
use super::flex::{contiguous, dims, tensor, values};

/// A frozen bf16 weight `[d_in, d_out]`, as the projection stores it: either laid out
/// row-major, or the transpose of a row-major `[d_out, d_in]` (a PyTorch-layout weight
/// loaded as a view).
#[derive(Clone)]
pub struct Frozen(pub FlexTensor);

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frozen(bf16 {:?})", dims(&self.0))
    }
}

/// How a weight's values lie.
pub(super) enum Layout<'a> {
    /// `[d_in, d_out]`, row-major.
    InOut(&'a [bf16]),
    /// `[d_out, d_in]`, row-major.
    OutIn(&'a [bf16]),
}

/// `weight` `[d_in, d_out]`'s values as one of the two layouts, if they are (what the AMX
/// path takes: anything else keeps burn's).
pub(super) fn layout(weight: &FlexTensor) -> Option<Layout<'_>> {
    if weight.dtype() != DType::BF16 || dims(weight).len() != 2 {
        return None;
    }
    if let Some(values) = weight.as_slice::<bf16>() {
        return Some(Layout::InOut(values));
    }
    // A transposed view: its storage is the `[d_out, d_in]` matrix, contiguous.
    let [d_in, d_out] = [dims(weight)[0], dims(weight)[1]];
    let strides = weight.layout().strides();
    let storage: &[bf16] = weight.storage();
    let offset = weight.layout().start_offset();
    (strides == [1, d_in as isize] && storage.len() >= offset + d_in * d_out)
        .then(|| Layout::OutIn(&storage[offset..offset + d_in * d_out]))
}

/// `x W`: `[n, d_in]` f32 -> `[n, d_out]` f32.
pub fn forward(x: &FlexTensor, w: &Frozen) -> FlexTensor {
    product(x, w, false)
}

/// `dy W^T`: `[n, d_out]` f32 -> `[n, d_in]` f32.
pub fn input_gradient(dy: &FlexTensor, w: &Frozen) -> FlexTensor {
    product(dy, w, true)
}

/// `x W`, or `x W^T` when `transposed`: `x` rounded to bf16, the weight read as it lies
/// (a `[d_in, d_out]` weight times `x` is a plain product, its transpose the other kind, and
/// the other way round for an `[d_out, d_in]` one).
fn product(x: &FlexTensor, w: &Frozen, transposed: bool) -> FlexTensor {
    let [d_in, d_out] = [dims(&w.0)[0], dims(&w.0)[1]];
    let (k, out) = if transposed {
        (d_out, d_in)
    } else {
        (d_in, d_out)
    };
    let x = contiguous(x);
    let n = values(&x).len() / k.max(1);
    let xb = amx::to_bf16(values(&x));
    let rows = Matrix::dense(&xb, n, k);
    let y = match (
        layout(&w.0).expect("checked by `layout` before the op"),
        transposed,
    ) {
        (Layout::InOut(wv), false) => amx::matmul(rows, Matrix::dense(wv, d_in, d_out)),
        (Layout::InOut(wv), true) => amx::matmul_transposed(rows, Matrix::dense(wv, d_in, d_out)),
        (Layout::OutIn(wv), false) => amx::matmul_transposed(rows, Matrix::dense(wv, d_out, d_in)),
        (Layout::OutIn(wv), true) => amx::matmul(rows, Matrix::dense(wv, d_out, d_in)),
    };
    tensor(y, [n, out])
}

#[derive(Debug)]
struct Bf16Linear;

impl Backward<Flex, 1> for Bf16Linear {
    type State = Frozen;

    fn backward(self, ops: Ops<Frozen, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let w = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| input_gradient(&dy, &w));
    }
}

pub fn autodiff<C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<Flex, C>>,
    w: Frozen,
) -> FloatTensor<Autodiff<Flex, C>> {
    match Bf16Linear
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = forward(x.primitive(), &w);
            prep.finish(w, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive(), &w)),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::layers::Proj;
    use crate::model::lora::{self, LoraConfig};
    use crate::model::precision::Precision;
    use crate::model::to_vec;
    use burn::module::Param;
    use burn::prelude::*;
    use burn::tensor::{DType, Distribution};

    /// `t`'s values rounded to bf16, back in f32: what the tiles read.
    fn rounded<const D: usize>(t: Tensor<D>) -> Tensor<D> {
        t.cast(DType::BF16).cast(DType::F32)
    }

    /// Within `rel` of the largest wanted value, element by element.
    fn assert_close(got: Tensor<2>, want: Tensor<2>, rel: f32, what: &str) {
        let (got, want) = (to_vec(got), to_vec(want));
        assert_eq!(got.len(), want.len(), "{what}");
        let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= rel * scale,
                "{what}[{i}]: {g} vs {w} (scale {scale})"
            );
        }
    }

    /// A frozen bf16 projection (a LoRA base under `train.precision: bf16`) computes `x W + b`
    /// and the input gradient `dy W^T` as f32 sums of bf16 products, whichever way its weight
    /// lies, and an adapter on it still gets its gradients. Where the CPU lacks AMX the
    /// portable path (bf16 output rounding) is held to bf16's tolerance instead.
    #[test]
    fn a_frozen_bf16_projection_sums_bf16_products_in_f32_both_ways() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let (n, d_in, d_out) = (37, 96, 200);
        let w = Tensor::<2>::random([d_out, d_in], Distribution::Normal(0.0, 0.05), &device);
        let bias = Tensor::<1>::random([d_out], Distribution::Normal(0.0, 0.1), &device);
        let on_amx = super::amx::available();
        let rel = if on_amx { 1e-5 } else { 1e-2 };
        let layouts = [
            ("[in, out]", w.clone().transpose().mul_scalar(1.0)),
            ("[out, in] seen transposed", w.transpose()),
        ];
        for (layout, weight) in layouts {
            let mut proj = Proj::new(weight, Some(bias.clone()));
            proj.weight = Param::from_tensor(proj.weight.val()).set_require_grad(false);
            proj.set_precision(Precision::Bf16);
            let stored = proj.weight.val();
            assert_eq!(stored.dtype(), DType::BF16, "{layout}");
            let x = Tensor::<2>::random([n, d_in], Distribution::Normal(0.0, 1.0), &device);
            assert_eq!(
                crate::kernels::frozen_bf16_linear(&x, &stored).is_some(),
                on_amx,
                "{layout}: the AMX path is taken exactly where the CPU has it"
            );
            let x = x.require_grad();
            let dy = Tensor::<2>::random([n, d_out], Distribution::Normal(0.0, 1.0), &device);
            let y = proj.forward(x.clone());
            let grads = (y.clone() * dy.clone()).sum().backward();
            let w32 = stored.cast(DType::F32);
            let want_y = rounded(x.clone().detach()).matmul(w32.clone()) + bias.clone().unsqueeze();
            assert_close(y, want_y, rel, &format!("{layout}: output"));
            let want_dx = rounded(dy).matmul(w32.transpose());
            let dx = x.grad(&grads).expect("input gradient");
            assert_close(dx, want_dx, rel, &format!("{layout}: input gradient"));

            let cfg = LoraConfig {
                r: 4,
                alpha: 8.0,
                ..LoraConfig::default()
            };
            proj.lora = Some(lora::LoraAdapter::new(d_in, d_out, &cfg, &device));
            let x = Tensor::<2>::random([n, d_in], Distribution::Normal(0.0, 1.0), &device);
            let grads = proj.forward(x).sum().backward();
            let l = proj.lora.as_ref().unwrap();
            assert!(l.a.val().grad(&grads).is_some() && l.b.val().grad(&grads).is_some());
        }
    }
}
