//! `sft` with `task: classification`: a classification head on a decoder (pooled at the last
//! real token) or an encoder such as MiniLM/BERT (through its pooler), trained with
//! cross-entropy. Accuracy on the validation split before and after, and macro-F1 after.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::model_input::{LoadedModel, load_model_input};
use super::{ArtifactType, StageResult};
use crate::data::table::Table;
use crate::model::{Model, lora, save_hf_dir};
use crate::recipe::types::{MissingPolicy, PeftSpec, SftSpec};
use crate::stages::context::{ResolvedInput, StageContext};
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
}

type Examples = Vec<(String, usize)>;

pub fn run(spec: &SftSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    ctx.progress.set_message("reading examples");
    let (train_rows, val_rows, names) =
        examples(ctx.input("data")?, &spec.text_column, &spec.label_column)?;
    let num_labels = spec.num_labels.unwrap_or(names.len()).max(2);
    if let Some(bad) = train_rows
        .iter()
        .chain(&val_rows)
        .find(|(_, l)| *l >= num_labels)
    {
        bail!(
            "label {} is out of range for num_labels {num_labels}",
            bad.1
        );
    }
    ctx.progress.set_message("loading the model");
    let LoadedModel {
        backbone,
        score,
        config,
        tokenizer,
        ..
    } = load_model_input(&spec.model, spec.tokenizer.is_some(), false, ctx, &device)?;
    let model = match score {
        Some(head) if head.d_out() == num_labels => Model {
            backbone,
            score: Some(head),
        },
        _ => Model::with_new_head(backbone, num_labels, &device),
    };
    let batch = spec.train.batch_size.max(1);
    let train_batches = encode(&tokenizer, &train_rows, spec.max_length, batch, &device)?;
    let val_batches = encode(&tokenizer, &val_rows, spec.max_length, batch, &device)?;
    let val_infer = encode(&tokenizer, &val_rows, spec.max_length, batch, &infer_device)?;
    let before = accuracy(&model.valid(), &val_infer, num_labels);

    let model = crate::stages::with_peft(model, &spec.peft, &device)?;
    let (trained, summary, _) = super::train_logged(
        model,
        &Classification,
        &train_batches,
        &val_batches,
        &spec.train,
        ctx,
    )?;
    let mut inference = trained.valid();
    let after = accuracy(&inference, &val_infer, num_labels);

    if let Some(PeftSpec::Lora(cfg)) = &spec.peft {
        let dir = ctx.output_dir("adapter", ArtifactType::Model)?;
        lora::save_peft(&mut inference.backbone, cfg, "model", &dir)?;
    }
    lora::merge_and_unload(&mut inference.backbone);
    // The label names travel with the model (HF's id2label), so evaluation maps text labels
    // to the ids the head was trained on.
    let mut config = config;
    if names.len() == num_labels
        && let Some(obj) = config.as_object_mut()
    {
        let id2label: serde_json::Map<String, Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), Value::from(n.clone())))
            .collect();
        let label2id: serde_json::Map<String, Value> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), Value::from(i)))
            .collect();
        obj.insert("id2label".into(), id2label.into());
        obj.insert("label2id".into(), label2id.into());
    }
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    save_hf_dir(&inference, &config, Some(&tokenizer), &dir)?;

    let mut metrics = serde_json::Map::new();
    let round = |x: f64| (x * 1e4).round() / 1e4;
    metrics.insert("steps".into(), summary.steps.into());
    if let (Some(b), Some(a)) = (&before, &after) {
        metrics.insert("accuracy_before".into(), round(b.accuracy).into());
        metrics.insert("accuracy_after".into(), round(a.accuracy).into());
        metrics.insert("macro_f1_after".into(), round(a.macro_f1).into());
    }
    let mut warnings = Vec::new();
    if let Some(a) = &after
        && a.accuracy <= 1.0 / num_labels as f64 + 0.05
    {
        warnings.push(format!(
            "underfitting: validation accuracy {:.2} is near chance ({:.2})",
            a.accuracy,
            1.0 / num_labels as f64
        ));
    }
    let label_names: BTreeMap<usize, String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i, n.clone()))
        .collect();
    let summary_json = json!({
        "task": "classification",
        "labels": label_names,
        "train_examples": train_rows.len(),
        "validation_examples": val_rows.len(),
        "before": before.map(|m| m.to_json()),
        "after": after.map(|m| m.to_json()),
        "training": summary,
    });
    Ok(StageResult {
        metrics,
        warnings,
        summary: summary_json,
    })
}

/// Train and validation examples, and the label names (ids in sorted order of text labels,
/// or the integers themselves).
fn examples(
    input: &ResolvedInput,
    text: &str,
    label: &str,
) -> Result<(Examples, Examples, Vec<String>)> {
    let tables: Vec<(String, Table)> = match input {
        ResolvedInput::Artifact(view) => {
            let mut out = Vec::new();
            for split in view.outputs.keys() {
                if let Some(t) = super::read_split(view, split)? {
                    out.push((split.clone(), t));
                }
            }
            out
        }
        file => vec![(
            "train".into(),
            super::read_table(file, MissingPolicy::Null)?,
        )],
    };
    let mut raw: Vec<(String, String, Value)> = Vec::new();
    for (split, t) in &tables {
        let idx = t.indices(
            &[text.to_owned(), label.to_owned()],
            "the classification stage reads column",
        )?;
        for r in &t.rows {
            if let Some(s) = r.values[idx[0]].as_str() {
                raw.push((split.clone(), s.to_owned(), r.values[idx[1]].clone()));
            }
        }
    }
    let (ids, names) = label_ids(raw.iter().map(|(_, _, v)| v));
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for ((split, t, _), id) in raw.iter().zip(ids) {
        let ex = (t.clone(), id);
        if split == "validation" {
            val.push(ex)
        } else if split != "test" {
            train.push(ex)
        }
    }
    if train.is_empty() {
        bail!("no training examples (text column `{text}`, label column `{label}`)");
    }
    Ok((train, val, names))
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
