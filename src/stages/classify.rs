//! Classification with a head on a decoder (pooled at the last real token) or an encoder such as
//! MiniLM/BERT (through its pooler): texts with labels as batches, the cross-entropy objective,
//! label ids, accuracy and macro-F1. Shared by `sft` with `task: classification` (which trains
//! with it) and `evaluate`'s classification check.

use anyhow::Result;
use burn::prelude::*;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use crate::model::Model;
use crate::train::loss::token_nll;
use crate::train::trainer::Objective;

/// Token ids of texts with their labels.
pub struct ClsBatch {
    pub ids: Tensor<2, Int>,
    pub padding: Tensor<2, Bool>,
    pub labels: Tensor<1, Int>,
    pub n: f64,
}

/// Cross-entropy of the head's scores against the labels.
pub struct Classification;

impl Objective<Model> for Classification {
    type Batch = ClsBatch;
    fn loss_sum(&self, model: &Model, b: &ClsBatch) -> Tensor<1> {
        let scores = model
            .scores(b.ids.clone(), b.padding.clone())
            .expect("a classification model has a head");
        token_nll(scores, b.labels.clone()).sum()
    }
    fn count(&self, b: &ClsBatch) -> f64 {
        b.n
    }
    fn unit(&self) -> &'static str {
        "examples"
    }
}

/// Label ids of label values: integers are their own ids; text labels are numbered in sorted
/// order. Returns the ids and the label names.
pub(super) fn label_ids<'a>(
    values: impl Iterator<Item = &'a Value> + Clone,
) -> (Vec<usize>, Vec<String>) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    if values.clone().all(|v| v.as_u64().is_some()) {
        let ids: Vec<usize> = values
            .filter_map(Value::as_u64)
            .map(|i| i as usize)
            .collect();
        let max = ids.iter().copied().max().unwrap_or(1);
        return (ids, (0..=max).map(|i| i.to_string()).collect());
    }
    let mut names: Vec<String> = values.clone().map(text).collect();
    names.sort();
    names.dedup();
    let ids = values
        .map(|v| names.binary_search(&text(v)).unwrap_or(0))
        .collect();
    (ids, names)
}

pub(super) fn encode(
    tok: &Tokenizer,
    rows: &[(String, usize)],
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Result<Vec<ClsBatch>> {
    let mut out = Vec::new();
    for chunk in rows.chunks(batch) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(t, _)| {
                let mut ids = tok
                    .encode(t.as_str(), true)
                    .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
                    .get_ids()
                    .to_vec();
                ids.truncate(max_len.max(1));
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        let (b, s) = (
            seqs.len(),
            seqs.iter().map(Vec::len).max().unwrap_or(1).max(1),
        );
        let (mut ids, mut real) = (vec![0i64; b * s], vec![false; b * s]);
        for (i, seq) in seqs.iter().enumerate() {
            for (j, &t) in seq.iter().enumerate() {
                ids[i * s + j] = t as i64;
                real[i * s + j] = true;
            }
        }
        let labels: Vec<i64> = chunk.iter().map(|(_, l)| *l as i64).collect();
        use burn::tensor::TensorData;
        out.push(ClsBatch {
            ids: Tensor::from_data(TensorData::new(ids, [b, s]), device),
            padding: Tensor::from_data(TensorData::new(real, [b, s]), device),
            labels: Tensor::from_data(TensorData::new(labels, [b]), device),
            n: b as f64,
        });
    }
    Ok(out)
}

/// Accuracy and macro-F1 of the head's argmax.
pub struct ClsMetrics {
    pub accuracy: f64,
    pub macro_f1: f64,
}

impl ClsMetrics {
    pub(super) fn to_json(&self) -> Value {
        json!({ "accuracy": self.accuracy, "macro_f1": self.macro_f1 })
    }
}

pub(super) fn accuracy(
    model: &Model,
    batches: &[ClsBatch],
    num_labels: usize,
) -> Option<ClsMetrics> {
    if batches.is_empty() {
        return None;
    }
    let (mut pred, mut gold) = (Vec::new(), Vec::new());
    for b in batches {
        let scores = model.scores(b.ids.clone(), b.padding.clone())?;
        pred.extend(scores.argmax(1).try_into_vec_as::<i64>().ok()?);
        gold.extend(b.labels.clone().try_into_vec_as::<i64>().ok()?);
    }
    Some(metrics(&pred, &gold, num_labels))
}

/// Accuracy and macro-F1 (F1 averaged over labels that occur in the predictions or the gold).
pub fn metrics(pred: &[i64], gold: &[i64], num_labels: usize) -> ClsMetrics {
    let n = gold.len().max(1) as f64;
    let accuracy = pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / n;
    let mut f1s = Vec::new();
    for l in 0..num_labels as i64 {
        let tp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == l && **g == l)
            .count() as f64;
        let fp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == l && **g != l)
            .count() as f64;
        let fn_ = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p != l && **g == l)
            .count() as f64;
        if tp + fp + fn_ > 0.0 {
            f1s.push(if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            });
        }
    }
    ClsMetrics {
        accuracy,
        macro_f1: f1s.iter().sum::<f64>() / f1s.len().max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn accuracy_and_macro_f1() {
        // gold [0,0,1,1], pred [0,1,1,1]: accuracy 0.75; F1(0) = 2/3, F1(1) = 0.8 -> 0.7333.
        let m = super::metrics(&[0, 1, 1, 1], &[0, 0, 1, 1], 2);
        assert_eq!(m.accuracy, 0.75);
        assert!((m.macro_f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-12);
    }
}
