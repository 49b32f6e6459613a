//! Small helpers over flex's tensor type shared by the kernels.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, TensorData};

/// `tensor` laid out contiguously (a no-op when it already is).
pub fn contiguous(tensor: &FlexTensor) -> FlexTensor {
    if tensor.as_slice::<f32>().is_some() {
        tensor.clone()
    } else {
        tensor.to_contiguous()
    }
}

/// The f32 elements of a contiguous tensor.
pub fn values(tensor: &FlexTensor) -> &[f32] {
    assert_eq!(tensor.dtype(), DType::F32, "fused kernels take f32 tensors");
    tensor
        .as_slice::<f32>()
        .expect("kernel inputs are made contiguous first")
}

/// A tensor of `shape` holding `data`.
pub fn tensor(data: Vec<f32>, shape: impl Into<Vec<usize>>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape.into()))
}

/// An integer tensor's values (labels), whatever its integer dtype.
pub fn labels(tensor: &FlexTensor) -> Vec<i64> {
    tensor
        .clone()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("integer labels")
}

/// The dimensions of a tensor.
pub fn dims(tensor: &FlexTensor) -> Vec<usize> {
    tensor.layout().shape().to_vec()
}

pub fn matmul(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
    Flex::float_matmul(lhs, rhs)
}

pub fn transpose(tensor: FlexTensor) -> FlexTensor {
    Flex::float_transpose(tensor)
}

/// e^x for f32, branch-free so loops over it vectorise (libm's `expf` is a scalar call):
/// Cody-Waite reduction by ln 2 and a degree-6 polynomial, within 2 ulp of `expf` over
/// [-87, 88]; below that it flushes to 0, above it saturates at `f32::MAX`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest by adding and removing 1.5 * 2^23 (exact for |t| < 2^22): unlike
    // `f32::round`, which stays a call to libm's `roundf`, this vectorises.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let k = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor coefficients of e^r on |r| <= ln2/2.
    let p = 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^k by building the exponent bits; k is in [-126, 128] after the clamp, and 2^k is
    // split in two halves so k = 128 does not overflow the exponent field.
    let k = k as i32;
    let half = k >> 1;
    let a = f32::from_bits(((half + 127) as u32) << 23);
    let b = f32::from_bits(((k - half + 127) as u32) << 23);
    p * a * b
}

/// tanh through [`exp`], vectorisable: `1 - 2 / (e^{2x} + 1)`, exact in sign and saturating.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

/// Lanes of the reductions below: independent accumulators, so a row's max and sum vectorise
/// (a float fold in one accumulator is a serial chain of dependent adds).
const LANES: usize = 16;

/// The largest value of `row`.
pub fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    tail.iter()
        .chain(&acc)
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// `sum_j e^(row_j - shift)`.
pub fn row_sum_exp(row: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += exp(x - shift);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&x| exp(x - shift)).sum::<f32>()
}

/// `sum_j a_j b_j`, in lanes like the reductions above.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in ca.zip(cb) {
        for ((acc, &x), &y) in acc.iter_mut().zip(ca).zip(cb) {
            *acc += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}
