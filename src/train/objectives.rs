//! Objectives the trainer optimises, one per kind of training.

use burn::prelude::*;

use super::loss::masked_target_sum;
use super::trainer::Objective;
use crate::model::Backbone;
use crate::model::decoder::LanguageModel;

/// A batch of token sequences for language modelling.
#[derive(Debug, Clone)]
pub struct LmBatch {
    pub ids: Tensor<2, Int>,
    /// True at real tokens.
    pub padding: Tensor<2, Bool>,
    /// 1 where the token is a training target (completion tokens for SFT, all real tokens
    /// for pretraining), 0 elsewhere.
    pub target_mask: Tensor<2>,
    /// Where the targets are in the flattened `[b, s-1]` next-token grid (`i * (s-1) + j - 1`
    /// for token j of row i), in order: the rows whose LM head the losses need.
    pub target_rows: Vec<i64>,
    /// Packed rows: each token's position inside its document, and the attention mask that
    /// keeps documents apart (true where a query must not see a key).
    pub packed: Option<(Tensor<2, Int>, Tensor<4, Bool>)>,
}

impl LmBatch {
    /// Number of targets (positions 1.. with mask 1).
    pub fn targets(&self) -> f64 {
        self.target_rows.len() as f64
    }

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
        let mut target_rows = Vec::new();
        for (i, (seq, tgt)) in seqs.iter().zip(targets).enumerate() {
            for (j, (&t, &is_target)) in seq.iter().zip(tgt).enumerate() {
                ids[i * s + j] = t as i64;
                real[i * s + j] = true;
                if is_target {
                    mask[i * s + j] = 1.0;
                    if j > 0 {
                        target_rows.push((i * (s - 1) + j - 1) as i64);
                    }
                }
            }
        }
        use burn::tensor::TensorData;
        LmBatch {
            ids: Tensor::from_data(TensorData::new(ids, [b, s]), device),
            padding: Tensor::from_data(TensorData::new(real, [b, s]), device),
            target_mask: Tensor::from_data(TensorData::new(mask, [b, s]), device),
            target_rows,
            packed: None,
        }
    }

    /// Rows of several documents each: `docs[i][j]` is the document number of token j of row
    /// i. A token attends only to earlier tokens of its own document, positions restart at
    /// each document, and a document's first token is not predicted from the one before it.
    pub fn packed(rows: &[Vec<u32>], docs: &[Vec<u32>], device: &Device) -> LmBatch {
        let all: Vec<Vec<bool>> = rows.iter().map(|r| vec![true; r.len()]).collect();
        Self::packed_with_targets(rows, docs, &all, device)
    }

    /// [`packed`](Self::packed), with a target flag per token (SFT: the answers): a token is a
    /// target when its flag says so and it is not its document's first.
    pub fn packed_with_targets(
        rows: &[Vec<u32>],
        docs: &[Vec<u32>],
        flags: &[Vec<bool>],
        device: &Device,
    ) -> LmBatch {
        use burn::tensor::TensorData;
        let targets: Vec<Vec<bool>> = docs
            .iter()
            .zip(flags)
            .map(|(d, f)| {
                (0..d.len())
                    .map(|j| f[j] && j > 0 && d[j] == d[j - 1])
                    .collect()
            })
            .collect();
        let mut batch = Self::with_targets(rows, &targets, device);
        let [b, s] = batch.ids.dims();
        let (mut pos, mut hidden) = (vec![0i64; b * s], vec![true; b * s * s]);
        for (i, d) in docs.iter().enumerate() {
            let mut start = 0;
            for j in 0..d.len() {
                if j > 0 && d[j] != d[j - 1] {
                    start = j;
                }
                pos[i * s + j] = (j - start) as i64;
                for k in start..=j {
                    hidden[(i * s + j) * s + k] = false;
                }
            }
            // Padding queries see their own position only (a finite softmax; never a target).
            for j in d.len()..s {
                hidden[(i * s + j) * s + j] = false;
            }
        }
        batch.packed = Some((
            Tensor::from_data(TensorData::new(pos, [b, s]), device),
            Tensor::from_data(TensorData::new(hidden, [b, 1, s, s]), device),
        ));
        batch
    }
}

/// The language model an objective trains. Stages load what they train as a language model
/// (`stages::model_input` with `need_decoder` refuses an encoder, or a decoder without its LM
/// head, with the reason), so an objective never meets one without.
pub fn trained_lm(model: &Backbone) -> LanguageModel<'_> {
    model
        .language_model()
        .expect("training stages load their model as a language model")
}

/// Each row's summed log-probability of its target tokens, and how many targets it has
/// (`[b]` each): what preference losses compare.
pub fn sequence_logps(model: LanguageModel<'_>, b: &LmBatch) -> (Tensor<1>, Tensor<1>) {
    let hidden = model.hidden(b.ids.clone(), Some(b.padding.clone()));
    let lp = model
        .next_token_nll_at(hidden, b.ids.clone(), 1.0, &b.target_rows)
        .neg();
    let [n, s] = b.ids.dims();
    let mask = b.target_mask.clone().narrow(1, 1, s - 1);
    (
        (lp * mask.clone()).sum_dim(1).reshape([n]),
        mask.sum_dim(1).reshape([n]),
    )
}

/// Next-token prediction (pretraining and SFT).
pub struct CausalLm;

impl Objective<Backbone> for CausalLm {
    type Batch = LmBatch;

    /// The targets' summed NLL; with a mixture of experts whose routers train, plus the
    /// load-balancing loss weighted by `router_aux_loss_coef` and the batch's target count, so
    /// that per target it adds `coef * aux` as transformers adds it to the mean loss.
    fn loss_sum(&self, model: &Backbone, b: &LmBatch) -> Tensor<1> {
        let model = trained_lm(model);
        let hidden = || match &b.packed {
            Some((positions, mask)) => {
                model.hidden_masked(b.ids.clone(), positions.clone(), mask.clone())
            }
            None => model.hidden(b.ids.clone(), Some(b.padding.clone())),
        };
        let coef = model.router_aux_loss_coef();
        let (hidden, routings) = match coef {
            Some(_) => crate::model::moe::with_routings(hidden),
            None => (hidden(), Vec::new()),
        };
        let nll = model.next_token_nll_at(hidden, b.ids.clone(), 1.0, &b.target_rows);
        let loss = masked_target_sum(nll, b.target_mask.clone());
        let Some(coef) = coef else { return loss };
        let real: Vec<bool> = b
            .padding
            .clone()
            .into_data()
            .try_to_vec()
            .unwrap_or_default();
        match crate::model::moe::load_balancing_loss(&routings, &real) {
            Some(aux) => loss + aux * (coef * b.targets()),
            None => loss,
        }
    }

    fn count(&self, b: &LmBatch) -> f64 {
        b.targets()
    }
    fn unit(&self) -> &'static str {
        // The tokens the loss covers: all of them in pretraining, the answers in SFT.
        "target tokens"
    }
}

/// A batch for masked-token prediction. Validation batches carry fixed masks (drawn once, so
/// before/after compare the same task); training batches are re-masked at every step
/// (`dynamic`, RoBERTa's dynamic masking), so the model cannot memorise which positions are
/// hidden. The draws come from the backend RNG, which the trainer seeds per step: the masks
/// are a function of the seed and the step, and a resumed run draws the same ones.
#[derive(Debug, Clone)]
pub struct MlmBatch {
    /// The input: corrupted (fixed masks) or original (dynamic).
    pub ids: Tensor<2, Int>,
    pub padding: Tensor<2, Bool>,
    /// The original tokens.
    pub labels: Tensor<2, Int>,
    /// Fixed masks: 1 at the selected positions (the loss is taken there), 0 elsewhere.
    pub weight: Tensor<2>,
    pub dynamic: Option<DynamicMask>,
    /// Selected positions (fixed), or their expected number (dynamic).
    pub selected: f64,
}

#[derive(Debug, Clone)]
pub struct DynamicMask {
    /// True at real, non-special tokens.
    pub maskable: Tensor<2, Bool>,
    pub mask_id: u32,
    pub vocab: usize,
    pub rate: f64,
}

impl MlmBatch {
    /// A batch with fixed masks.
    pub fn fixed(seqs: &[crate::data::masking::Masked], device: &Device) -> MlmBatch {
        let (ids, padding, labels, weight, selected) = Self::tensors(seqs, device);
        MlmBatch {
            ids,
            padding,
            labels,
            weight,
            dynamic: None,
            selected,
        }
    }

    /// A batch masked anew at every step: `seqs` hold the original tokens, `selected` marks
    /// the maskable ones.
    pub fn dynamic(
        seqs: &[crate::data::masking::Masked],
        mask_id: u32,
        vocab: usize,
        rate: f64,
        device: &Device,
    ) -> MlmBatch {
        let (ids, padding, labels, maskable, n) = Self::tensors(seqs, device);
        MlmBatch {
            ids,
            padding,
            labels,
            weight: maskable.clone(),
            dynamic: Some(DynamicMask {
                maskable: maskable.greater_elem(0.5),
                mask_id,
                vocab,
                rate,
            }),
            selected: n * rate,
        }
    }

    #[allow(clippy::type_complexity)]
    fn tensors(
        seqs: &[crate::data::masking::Masked],
        device: &Device,
    ) -> (
        Tensor<2, Int>,
        Tensor<2, Bool>,
        Tensor<2, Int>,
        Tensor<2>,
        f64,
    ) {
        use burn::tensor::TensorData;
        let b = seqs.len();
        let s = seqs.iter().map(|m| m.input.len()).max().unwrap_or(1).max(1);
        let (mut ids, mut labels, mut real, mut w) = (
            vec![0i64; b * s],
            vec![0i64; b * s],
            vec![false; b * s],
            vec![0f32; b * s],
        );
        let mut count = 0.0;
        for (i, m) in seqs.iter().enumerate() {
            for j in 0..m.input.len() {
                ids[i * s + j] = m.input[j] as i64;
                labels[i * s + j] = m.labels[j] as i64;
                real[i * s + j] = true;
                if m.selected[j] {
                    w[i * s + j] = 1.0;
                    count += 1.0;
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(ids, [b, s]), device),
            Tensor::from_data(TensorData::new(real, [b, s]), device),
            Tensor::from_data(TensorData::new(labels, [b, s]), device),
            Tensor::from_data(TensorData::new(w, [b, s]), device),
            count,
        )
    }

    /// The input and loss weights for this step: fixed, or freshly drawn (80% mask token,
    /// 10% random token, 10% unchanged).
    fn draw(&self) -> (Tensor<2, Int>, Tensor<2>) {
        let Some(d) = &self.dynamic else {
            return (self.ids.clone(), self.weight.clone());
        };
        use burn::tensor::Distribution;
        let device = self.ids.device();
        let shape = self.ids.dims();
        let u = |_| Tensor::<2>::random(shape, Distribution::Uniform(0.0, 1.0), &device);
        let selected = u(0).lower_elem(d.rate).bool_and(d.maskable.clone());
        let roll = u(1);
        let to_mask = selected.clone().bool_and(roll.clone().lower_elem(0.8));
        let to_random = selected
            .clone()
            .bool_and(roll.clone().greater_equal_elem(0.8))
            .bool_and(roll.lower_elem(0.9));
        let random_ids = u(2)
            .mul_scalar(d.vocab as f64)
            .floor()
            .int()
            .clamp(0, d.vocab as i64 - 1);
        let ids = self
            .ids
            .clone()
            .mask_fill(to_mask, d.mask_id as i64)
            .mask_where(to_random, random_ids);
        (ids, selected.float())
    }
}

/// Masked-token prediction (BERT pretraining): cross-entropy at the selected positions.
pub struct MaskedLm;

impl Objective<Backbone> for MaskedLm {
    type Batch = MlmBatch;

    fn loss_sum(&self, model: &Backbone, b: &MlmBatch) -> Tensor<1> {
        let (ids, weight) = b.draw();
        let hidden = model.hidden(ids, Some(b.padding.clone()));
        let logits = model
            .mlm_logits(hidden)
            .expect("masked-LM training needs a BERT with an MLM head");
        let [n, s, v] = logits.dims();
        let nll = super::loss::token_nll(
            logits.reshape([n * s, v]),
            b.labels.clone().reshape([n * s]),
        );
        (nll * weight.reshape([n * s])).sum()
    }

    fn count(&self, b: &MlmBatch) -> f64 {
        b.selected
    }
    fn unit(&self) -> &'static str {
        "masked tokens"
    }
}
