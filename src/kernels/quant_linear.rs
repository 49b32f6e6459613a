//! `x W^T` for a frozen weight held quantised (QLoRA's base, `model::quantized`), written in
//! burn's tensor ops so every backend has it. The weight is dequantised a tile of output rows
//! at a time, multiplied with and dropped, in forward (`y[:, tile] = x tile^T`) and again in
//! backward for the input gradient (`dx += dy[:, tile] tile`): no f32 or bf16 copy of the
//! whole weight ever exists, and the autodiff tape keeps nothing of the op but a reference to
//! the quantised weight (the weight takes no gradient, so its input is not needed either).

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::prelude::*;

use super::lane::{Lane, plain, primitive};
use crate::model::quantized::QuantWeight;

/// A quantised weight handed to the op (shared, never copied), and whether its tiles
/// multiply in bf16 (`train.precision: bf16`, bitsandbytes' `bnb_4bit_compute_dtype`).
#[derive(Clone)]
pub struct Frozen(pub Arc<QuantWeight>, pub bool);

impl std::fmt::Debug for Frozen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frozen({} [{}, {}])",
            self.0.format(),
            self.0.d_out,
            self.0.d_in
        )
    }
}

/// `x W^T`: `[n, d_in]` -> `[n, d_out]`.
fn multiply(x: Tensor<2>, w: &QuantWeight, bf16: bool) -> Tensor<2> {
    if bf16 && on_amx(&x) {
        return amx::multiply(x, w);
    }
    let device = x.device();
    let parts: Vec<Tensor<2>> = w
        .tiles()
        .map(|(start, rows)| {
            x.clone()
                .matmul(w.rows_tensor(start, rows, &device).transpose())
        })
        .collect();
    match parts.len() {
        0 => Tensor::zeros([x.dims()[0], 0], &device),
        _ => Tensor::cat(parts, 1),
    }
}

/// `dy W`: `[n, d_out]` -> `[n, d_in]`.
fn input_gradient(dy: Tensor<2>, w: &QuantWeight, bf16: bool) -> Tensor<2> {
    if bf16 && on_amx(&dy) {
        return amx::input_gradient(dy, w);
    }
    let device = dy.device();
    let n = dy.dims()[0];
    w.tiles()
        .fold(Tensor::zeros([n, w.d_in], &device), |dx, (start, rows)| {
            dx + dy
                .clone()
                .narrow(1, start, rows)
                .matmul(w.rows_tensor(start, rows, &device))
        })
}

/// Whether `t` (f32 on the flex backend) can multiply on AMX: a bf16-computing weight's tiles
/// are then rounded to bf16 after dequantising, as bitsandbytes' bf16 compute does, and
/// multiplied on the tiles. Elsewhere bf16 compute multiplies the f32 tiles: the same products
/// within bf16 rounding.
fn on_amx(t: &Tensor<2>) -> bool {
    super::fused(&t.device(), t.dtype()) && super::amx::available()
}

/// The two products with each dequantised tile rounded to bf16 and multiplied on AMX.
mod amx {
    use burn::backend::Flex;
    use burn::prelude::*;
    use rayon::prelude::*;

    use super::super::amx::{Matrix, matmul, matmul_transposed, round_into, to_bf16};
    use super::super::flex::{contiguous, tensor, values};
    use super::super::lane::{plain, primitive};
    use crate::model::quantized::QuantWeight;

    /// The rows `start..start + rows` of the weight, in bf16: each row dequantised into an f32
    /// row of the worker's own and rounded from there, so no f32 copy of the tile exists.
    fn tile(w: &QuantWeight, start: usize, rows: usize) -> Vec<burn::tensor::bf16> {
        let d_in = w.d_in.max(1);
        let mut out = vec![burn::tensor::bf16::ZERO; rows * w.d_in];
        out.par_chunks_mut(d_in).enumerate().for_each_init(
            || vec![0f32; d_in],
            |row, (i, dst)| {
                w.dequantize_row_into(start + i, row);
                round_into(row, dst);
            },
        );
        out
    }

    /// `t`'s values rounded to bf16, and its rows.
    fn rounded(t: Tensor<2>) -> (Vec<burn::tensor::bf16>, usize) {
        let n = t.dims()[0];
        let flex = contiguous(&primitive::<Flex>(t.into_dispatch()));
        (to_bf16(values(&flex)), n)
    }

    pub fn multiply(x: Tensor<2>, w: &QuantWeight) -> Tensor<2> {
        let (d_in, d_out) = (w.d_in, w.d_out);
        let (x, n) = rounded(x);
        let mut y = vec![0f32; n * d_out];
        for (start, rows) in w.tiles() {
            let part = matmul_transposed(
                Matrix::dense(&x, n, d_in),
                Matrix::dense(&tile(w, start, rows), rows, d_in),
            );
            y.par_chunks_mut(d_out.max(1))
                .zip(part.par_chunks(rows.max(1)))
                .for_each(|(y, part)| y[start..start + rows].copy_from_slice(part));
        }
        plain::<Flex, 2>(tensor(y, [n, d_out]))
    }

    pub fn input_gradient(dy: Tensor<2>, w: &QuantWeight) -> Tensor<2> {
        let (d_in, d_out) = (w.d_in, w.d_out);
        let (dy, n) = rounded(dy);
        let mut dx = vec![0f32; n * d_in];
        for (start, rows) in w.tiles() {
            let columns = Matrix {
                values: &dy[start..],
                rows: n,
                cols: rows,
                ld: d_out,
            };
            let part = matmul(columns, Matrix::dense(&tile(w, start, rows), rows, d_in));
            dx.par_iter_mut().zip(&part).for_each(|(dx, p)| *dx += p);
        }
        plain::<Flex, 2>(tensor(dx, [n, d_in]))
    }
}

pub fn forward<B: Lane>(x: FloatTensor<B>, w: &Frozen) -> FloatTensor<B> {
    primitive::<B>(multiply(plain::<B, 2>(x), &w.0, w.1).into_dispatch())
}

#[derive(Debug)]
struct QuantLinear;

impl<B: Lane> Backward<B, 1> for QuantLinear {
    type State = Frozen;

    fn backward(self, ops: Ops<Frozen, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let dy = plain::<B, 2>(grads.consume::<B>(&ops.node));
        if let Some(node) = x_node {
            let dx = input_gradient(dy, &ops.state.0, ops.state.1);
            grads.register::<B>(node.id, primitive::<B>(dx.into_dispatch()));
        }
    }
}

pub fn autodiff<B: Lane, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: Frozen,
) -> FloatTensor<Autodiff<B, C>> {
    match <QuantLinear as Backward<B, 1>>::prepare::<C>(QuantLinear, [x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = forward::<B>(x.primitive().clone(), &w);
            prep.finish(w, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward::<B>(x.primitive().clone(), &w)),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::layers::Proj;
    use crate::model::lora::{self, LoraConfig};
    use crate::model::quantized::QuantFormat;
    use crate::model::to_vec;
    use burn::prelude::*;

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    /// A quantised projection computes `x W^T + b` and the input gradient `dy W` of its
    /// dequantised weight, over several tiles (1,100 rows of 4,096: a tile is 1,024 rows), and
    /// the LoRA factors on it get their gradients.
    #[test]
    fn quantised_projection_matches_its_dequantised_weight_both_ways() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let (d_in, d_out) = (4096, 1100);
        let w = Tensor::<2>::random(
            [d_in, d_out],
            burn::tensor::Distribution::Normal(0.0, 0.02),
            &device,
        );
        let bias = Tensor::<1>::random(
            [d_out],
            burn::tensor::Distribution::Normal(0.0, 0.1),
            &device,
        );
        for format in [QuantFormat::Nf4, QuantFormat::Q8_0] {
            let mut proj = Proj::new(w.clone(), Some(bias.clone()));
            proj.quantize(format).unwrap();
            assert_eq!((proj.d_in(), proj.d_out()), (d_in, d_out));
            assert_eq!(proj.weight.val().dims(), [0, 0], "no dense copy kept");
            let dense = proj.dense_weight();

            let x = Tensor::<3>::random(
                [2, 3, d_in],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            )
            .require_grad();
            let y = proj.forward(x.clone());
            let want = x.clone().matmul(dense.clone().unsqueeze()) + bias.clone().unsqueeze();
            let err = max_diff(&to_vec(y.clone()), &to_vec(want));
            assert!(err < 1e-4, "{format:?} forward: {err}");

            let dy = Tensor::<3>::random(
                [2, 3, d_out],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let grads = (y * dy.clone()).sum().backward();
            let dx = to_vec(x.grad(&grads).unwrap());
            let want = to_vec(dy.matmul(dense.transpose().unsqueeze()));
            let err = max_diff(&dx, &want);
            assert!(err < 1e-4, "{format:?} input gradient: {err}");
        }

        // Computing in bf16 (`train.precision: bf16`): the input and the dequantised tiles
        // rounded to bf16, products summed in f32, on AMX; the f32 tiles elsewhere.
        let rounded = |t: Tensor<2>| {
            t.cast(burn::tensor::DType::BF16)
                .cast(burn::tensor::DType::F32)
        };
        let on_amx = crate::kernels::amx::available();
        let mut proj = Proj::new(w.clone(), None);
        proj.quantize(QuantFormat::Nf4).unwrap();
        proj.set_precision(crate::model::precision::Precision::Bf16);
        let dense = rounded(proj.dense_weight());
        let x = Tensor::<2>::random(
            [7, d_in],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let dy = Tensor::<2>::random(
            [7, d_out],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let y = proj.forward(x.clone());
        let grads = (y.clone() * dy.clone()).sum().backward();
        let tol = if on_amx { 1e-4 } else { 5e-2 };
        let want = rounded(x.clone().detach()).matmul(dense.clone());
        let err = max_diff(&to_vec(y), &to_vec(want));
        assert!(err < tol, "bf16 forward (AMX: {on_amx}): {err}");
        let want = rounded(dy).matmul(dense.transpose());
        let err = max_diff(&to_vec(x.grad(&grads).unwrap()), &to_vec(want));
        assert!(err < tol, "bf16 input gradient (AMX: {on_amx}): {err}");

        // LoRA on a quantised base: the adapter's factors get gradients, the base none.
        let cfg = LoraConfig {
            r: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        };
        let mut proj = Proj::new(w, None);
        proj.quantize(QuantFormat::Nf4).unwrap();
        let mut adapter = lora::LoraAdapter::new(d_in, d_out, &cfg, &device);
        adapter.b = burn::module::Param::from_tensor(Tensor::ones([4, d_out], &device));
        proj.lora = Some(adapter);
        let x = Tensor::<2>::random(
            [5, d_in],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let grads = proj.forward(x).sum().backward();
        let l = proj.lora.as_ref().unwrap();
        assert!(l.a.val().grad(&grads).is_some() && l.b.val().grad(&grads).is_some());
    }
}

#[cfg(test)]
mod dora_tests {
    use crate::model::layers::Proj;
    use crate::model::lora::{self, LoraConfig};
    use crate::model::quantized::QuantFormat;
    use crate::model::to_vec;
    use burn::prelude::*;

    /// DoRA on a quantised weight (QDoRA) computes what DoRA on its dequantised weight does, in
    /// forward and in every adapter gradient, with the norms taken a tile at a time (3 tiles of
    /// 1,024 rows here), with and without dropout's extra base term.
    #[test]
    fn dora_on_a_quantised_weight_equals_dora_on_its_dequantised_weight() {
        let device = Device::flex().autodiff();
        let (d_in, d_out) = (4096, 2100);
        for dropout in [0.0, 0.2] {
            device.seed(5);
            let w = Tensor::<2>::random(
                [d_in, d_out],
                burn::tensor::Distribution::Normal(0.0, 0.02),
                &device,
            );
            let mut quantised = Proj::new(w, None);
            quantised.quantize(QuantFormat::Nf4).unwrap();
            let mut dense = Proj::new(quantised.dense_weight(), None);
            dense.weight =
                burn::module::Param::from_tensor(dense.weight.val()).set_require_grad(false);
            let cfg = LoraConfig {
                r: 4,
                alpha: 8.0,
                use_dora: true,
                dropout,
                ..LoraConfig::default()
            };
            let mut adapter = lora::LoraAdapter::new(d_in, d_out, &cfg, &device);
            adapter.b = burn::module::Param::from_tensor(Tensor::random(
                [4, d_out],
                burn::tensor::Distribution::Normal(0.0, 0.01),
                &device,
            ));
            let norms = to_vec(
                dense
                    .dense_weight()
                    .square()
                    .sum_dim(0)
                    .sqrt()
                    .reshape([d_out]),
            );
            adapter.magnitude = Some(burn::module::Param::from_tensor(Tensor::from_data(
                burn::tensor::TensorData::new(
                    norms.iter().map(|n| n * 1.1).collect::<Vec<_>>(),
                    [d_out],
                ),
                &device,
            )));
            quantised.lora = Some(adapter.clone());
            dense.lora = Some(adapter);
            let x = Tensor::<2>::random(
                [3, d_in],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                &device,
            );
            let run = |p: &Proj| {
                device.seed(9); // the same dropout mask on both sides
                let y = p.forward(x.clone());
                let grads = y.clone().sum().backward();
                let l = p.lora.as_ref().unwrap();
                let g = |t: Tensor<2>| to_vec(t.grad(&grads).unwrap());
                let m = to_vec(l.magnitude.as_ref().unwrap().val().grad(&grads).unwrap());
                (to_vec(y), g(l.a.val()), g(l.b.val()), m)
            };
            let within = |a: &[f32], b: &[f32]| {
                let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                (worst < 1e-4 * scale, worst, scale)
            };
            // The backend's RNG is one for the process: a test on another thread that draws
            // between `seed` and the dropout draw gives one side another mask. So up to three
            // tries; a real difference fails every one.
            let mut tries = 0;
            let (q, d) = loop {
                let (q, d) = (run(&quantised), run(&dense));
                tries += 1;
                let all = [(&q.0, &d.0), (&q.1, &d.1), (&q.2, &d.2), (&q.3, &d.3)]
                    .iter()
                    .all(|(a, b)| within(a, b).0);
                if all || tries == 3 {
                    break (q, d);
                }
            };
            let close = |a: &[f32], b: &[f32], what: &str| {
                let (ok, worst, scale) = within(a, b);
                assert!(ok, "dropout {dropout}, {what}: {worst} (scale {scale})");
            };
            close(&q.0, &d.0, "output");
            close(&q.1, &d.1, "gradient of A");
            close(&q.2, &d.2, "gradient of B");
            close(&q.3, &d.3, "gradient of the magnitude");
        }
    }
}
