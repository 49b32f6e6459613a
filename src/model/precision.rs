//! Reduced-precision training (`train.precision`), as PyTorch's autocast does it for linear
//! layers: each projection multiplies in the training precision (its input and weight cast to
//! bf16 or f16, the product cast back to f32), while norms, softmax, losses, LoRA factors and
//! everything the optimizer updates stay f32.
//!
//! - Frozen projection weights (a LoRA base) are *stored* in the low precision: half the
//!   memory, and no f32 copy on the autodiff tape (the product's backward keeps the stored
//!   weight itself, and no input, since the weight takes no gradient).
//! - Trainable weights (full fine-tuning) stay f32 master weights; forward casts a low-precision
//!   copy, whose gradient flows back to the master in f32.
//! - f16 needs loss scaling (`train::loss_scale`), bf16 does not (f32's exponent range).
//! - On a CPU with AMX (`kernels::amx`), a frozen bf16 projection, a frozen bf16 LM head and
//!   a quantised base computing in bf16 multiply on the tiles: f32 inputs rounded to bf16,
//!   products summed in f32, the output f32 with no bf16 rounding of its own. Elsewhere burn
//!   casts and multiplies: the same products within bf16 rounding. Trainable weights (full
//!   fine-tuning in bf16) keep burn's cast path.
//!
//! - Frozen token embedding tables and LM heads are stored low too: a row lookup is cast to
//!   f32, and the chunked cross-entropy casts a tied head one block of columns at a time
//!   (`kernels::linear_nll`), so no f32 copy of the head exists at once.

use burn::tensor::DType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The precision linear layers compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// Its name in a checkpoint config's `dtype` / `torch_dtype`.
    pub fn config_name(self) -> &'static str {
        match self {
            Precision::F32 => "float32",
            Precision::Bf16 => "bfloat16",
            Precision::F16 => "float16",
        }
    }

    /// The precision of tensors of `dtype`, if it is one.
    pub fn from_dtype(dtype: DType) -> Option<Precision> {
        match dtype {
            DType::F32 => Some(Precision::F32),
            DType::BF16 => Some(Precision::Bf16),
            DType::F16 => Some(Precision::F16),
            _ => None,
        }
    }

    /// From a checkpoint config's `dtype` / `torch_dtype` (`bfloat16`, `float16`, `float32`).
    pub fn from_config_name(name: &str) -> Option<Precision> {
        match name {
            "float32" => Some(Precision::F32),
            "bfloat16" => Some(Precision::Bf16),
            "float16" => Some(Precision::F16),
            _ => None,
        }
    }
}

/// `t` in f32, whatever float dtype it is stored in (itself when it is f32 already).
pub fn in_f32<const D: usize>(t: burn::tensor::Tensor<D>) -> burn::tensor::Tensor<D> {
    match t.dtype() {
        DType::F32 => t,
        _ => t.cast(DType::F32),
    }
}

/// Models whose linear layers can compute in a reduced precision (see the module docs). Call
/// it after freezing: what is frozen then is what gets stored in the low precision.
pub trait ReducedPrecision {
    fn set_precision(&mut self, precision: Precision);
}

impl ReducedPrecision for super::Backbone {
    fn set_precision(&mut self, precision: Precision) {
        for (_, proj) in self.projections_mut() {
            proj.set_precision(precision);
        }
        let (table, head) = self.tables_mut();
        super::layers::set_weight_precision(table, precision);
        // Only a frozen head: a trainable one keeps computing in f32, as the training loss
        // (which reads its f32 master weight) does.
        if let Some(head) = head.filter(|h| !h.weight.val().is_require_grad()) {
            head.set_precision(precision);
        }
    }
}

impl ReducedPrecision for super::Model {
    fn set_precision(&mut self, precision: Precision) {
        self.backbone.set_precision(precision);
        if let Some(score) = self.score.as_mut() {
            score.set_precision(precision);
        }
    }
}
