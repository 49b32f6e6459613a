//! Objectives the trainer optimises, one per kind of training.

use burn::prelude::*;

use super::loss::causal_lm_loss_sum;
use super::trainer::Objective;
use crate::model::Backbone;

/// A batch of token sequences for language modelling.
#[derive(Debug, Clone)]
pub struct LmBatch {
    pub ids: Tensor<2, Int>,
    /// True at real tokens.
    pub padding: Tensor<2, Bool>,
    /// 1 where the token is a training target (completion tokens for SFT, all real tokens
    /// for pretraining), 0 elsewhere.
    pub target_mask: Tensor<2>,
    /// Number of targets (positions 1.. with mask 1).
    pub targets: f64,
}

impl LmBatch {
    /// A right-padded batch; every real token after the first of its row is a target.
    pub fn from_sequences(seqs: &[Vec<u32>], device: &Device) -> LmBatch {
        Self::with_targets(
            seqs,
            &seqs.iter().map(|s| vec![true; s.len()]).collect::<Vec<_>>(),
            device,
        )
    }

    /// A right-padded batch with an explicit target flag per token (prompt tokens false).
    pub fn with_targets(seqs: &[Vec<u32>], targets: &[Vec<bool>], device: &Device) -> LmBatch {
        let b = seqs.len();
        let s = seqs.iter().map(Vec::len).max().unwrap_or(1).max(2);
        let (mut ids, mut real, mut mask) =
            (vec![0i64; b * s], vec![false; b * s], vec![0f32; b * s]);
        let mut count = 0.0;
        for (i, (seq, tgt)) in seqs.iter().zip(targets).enumerate() {
            for (j, (&t, &is_target)) in seq.iter().zip(tgt).enumerate() {
                ids[i * s + j] = t as i64;
                real[i * s + j] = true;
                if is_target {
                    mask[i * s + j] = 1.0;
                    if j > 0 {
                        count += 1.0;
                    }
                }
            }
        }
        use burn::tensor::TensorData;
        LmBatch {
            ids: Tensor::from_data(TensorData::new(ids, [b, s]), device),
            padding: Tensor::from_data(TensorData::new(real, [b, s]), device),
            target_mask: Tensor::from_data(TensorData::new(mask, [b, s]), device),
            targets: count,
        }
    }
}

/// Next-token prediction (pretraining and SFT).
pub struct CausalLm;

impl Objective<Backbone> for CausalLm {
    type Batch = LmBatch;

    fn loss_sum(&self, model: &Backbone, b: &LmBatch) -> Tensor<1> {
        let hidden = model.hidden(b.ids.clone(), Some(b.padding.clone()));
        let logits = model
            .lm_logits(hidden)
            .expect("causal LM training needs a decoder");
        causal_lm_loss_sum(logits, b.ids.clone(), b.target_mask.clone())
    }

    fn count(&self, b: &LmBatch) -> f64 {
        b.targets
    }
}
