//! `dpo`: preference optimisation of a policy. Each pair's chosen and rejected completions are
//! scored by their summed log-probability under the policy and the reference; the loss is the
//! recipe's DPO variant (`train::preference`). The reference is the starting policy unless the
//! recipe names another: its log-probabilities are computed once, before training (equal to
//! a frozen copy, and to the same model with a fresh LoRA adapter off), and cached in the
//! store keyed by the reference model and the tokenized data, so a rerun with another `beta`
//! does not recompute them. Reported before and after on the validation pairs: TRL's
//! rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins and logps.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde_json::json;

use super::pretrain::{LoadedModel, load_checkpoint};
use super::sft::{Format, eos_token, one_turn, tokenize_conversations, truncate};
use super::{ArtifactType, StageResult, guards};
use crate::data::table::Table;
use crate::data::tokenized::Encoded;
use crate::exec::context::{ResolvedInput, StageContext};
use crate::model::{Backbone, Model, lora, save_hf_dir};
use crate::recipe::types::{DpoSpec, MissingPolicy, PeftSpec, Truncation};
use crate::train::objectives::{LmBatch, sequence_logps};
use crate::train::preference::{DpoMetrics, DpoParams, PairLogps, dpo_loss, dpo_metrics, kto_loss};
use crate::train::trainer::Objective;

/// A batch of preference pairs with their reference log-probabilities.
#[derive(Debug, Clone)]
pub struct PrefBatch {
    pub chosen: LmBatch,
    pub rejected: LmBatch,
    pub ref_chosen: Tensor<1>,
    pub ref_rejected: Tensor<1>,
    pub n: f64,
}

/// A batch of KTO examples: completions marked desirable or not.
#[derive(Debug, Clone)]
pub struct KtoBatch {
    pub seqs: LmBatch,
    pub reference: Tensor<1>,
    pub desirable: Tensor<1, Bool>,
    pub n: f64,
}

pub struct Dpo(pub DpoParams);

impl Objective<Backbone> for Dpo {
    type Batch = PrefBatch;
    fn loss_sum(&self, model: &Backbone, b: &PrefBatch) -> Tensor<1> {
        let (c, len_c) = sequence_logps(model, &b.chosen);
        let (r, len_r) = sequence_logps(model, &b.rejected);
        let policy = PairLogps {
            chosen: c,
            rejected: r,
            len_chosen: len_c.clamp_min(1.0),
            len_rejected: len_r.clamp_min(1.0),
        };
        let reference = PairLogps {
            chosen: b.ref_chosen.clone(),
            rejected: b.ref_rejected.clone(),
            ..policy.clone()
        };
        dpo_loss(&policy, Some(&reference), &self.0).sum()
    }
    fn count(&self, b: &PrefBatch) -> f64 {
        b.n
    }
}

pub struct Kto {
    pub beta: f64,
}

impl Objective<Backbone> for Kto {
    type Batch = KtoBatch;
    fn loss_sum(&self, model: &Backbone, b: &KtoBatch) -> Tensor<1> {
        let (lp, _) = sequence_logps(model, &b.seqs);
        let rho = lp - b.reference.clone();
        // z: the batch's mean log-ratio, detached and clamped at 0, as the KL estimate. (TRL
        // estimates it from mismatched prompt/completion pairs; on small batches the batch
        // mean is the simpler estimate of the same quantity.)
        let z = rho.clone().detach().mean().into_scalar::<f32>().max(0.0) as f64;
        kto_loss(rho, b.desirable.clone(), z, self.beta).sum()
    }
    fn count(&self, b: &KtoBatch) -> f64 {
        b.n
    }
}

/// One preference pair.
#[derive(Debug, Clone, serde::Serialize)]
struct Pair {
    prompt: String,
    chosen: String,
    rejected: String,
}

pub fn run(spec: &DpoSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    ctx.progress.set_message("reading pairs");
    let (train_pairs, val_pairs) = pairs(ctx.input("data")?, spec)?;
    if train_pairs.is_empty() {
        bail!(
            "no preference pairs (columns `{}`, `{}`, `{}`)",
            spec.prompt_column,
            spec.chosen_column,
            spec.rejected_column
        );
    }
    ctx.progress.set_message("loading the policy");
    let policy = load_checkpoint(ctx, "model", None, true, &device)?;
    let format = Format::new(&spec.template, policy.chat_template.as_deref());
    let eos = eos_token(&policy.tokenizer, &policy.config);
    let tokenize = |pairs: &[Pair], chosen: bool| -> Result<Vec<Encoded>> {
        let convs: Vec<_> = pairs
            .iter()
            .map(|p| one_turn(&p.prompt, if chosen { &p.chosen } else { &p.rejected }))
            .collect();
        let whole = tokenize_conversations(&policy.tokenizer, &format, &convs, eos)?;
        // Cut prompts, not answers: the answer is what the pair compares.
        Ok(truncate(whole, spec.max_length, Truncation::Prompt).0)
    };
    let sides = |pairs: &[Pair]| -> Result<(Vec<Encoded>, Vec<Encoded>)> {
        Ok((tokenize(pairs, true)?, tokenize(pairs, false)?))
    };
    let (train_c, train_r) = sides(&train_pairs)?;
    let (val_c, val_r) = sides(&val_pairs)?;

    // Reference log-probabilities, once, cached by reference model and tokens.
    let reference_needed = spec.kto || (spec.loss.uses_reference() && !spec.reference_free);
    let (ref_rel, reference) = match (&spec.reference, reference_needed) {
        (Some(_), true) => (
            "reference",
            Some(load_checkpoint(
                ctx,
                "reference",
                None,
                true,
                &infer_device,
            )?),
        ),
        (None, true) => ("model", None),
        (_, false) => ("model", None),
    };
    let ref_model: Option<Backbone> = match (&reference, reference_needed) {
        (Some(r), _) => Some(r.backbone.clone()),
        (None, true) => Some(policy.backbone.valid()),
        (None, false) => None,
    };
    let ref_identity = super::input_identity(ctx.input(ref_rel)?);
    let ref_logps = |enc: &[Encoded]| -> Result<Vec<f32>> {
        let Some(m) = &ref_model else {
            return Ok(vec![0.0; enc.len()]);
        };
        let seqs: Vec<(Vec<u32>, Vec<bool>)> = enc
            .iter()
            .map(|e| (e.ids.clone(), e.targets.clone()))
            .collect();
        let key = crate::data::tokenized::key(
            &policy.tokenizer,
            &json!({ "reference_logps": ref_identity }),
            &seqs,
        )?;
        crate::data::tokenized::cached_floats(ctx.token_cache.as_deref(), &key, || {
            let mut out = Vec::with_capacity(enc.len());
            for chunk in enc.chunks(8) {
                let (lp, _) = sequence_logps(m, &lm_batch(chunk, &infer_device));
                out.extend(
                    lp.try_into_vec_as::<f32>()
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?,
                );
            }
            Ok(out)
        })
    };
    ctx.progress.set_message("reference log-probabilities");
    let (ref_train_c, ref_train_r) = (ref_logps(&train_c)?, ref_logps(&train_r)?);
    let (ref_val_c, ref_val_r) = (ref_logps(&val_c)?, ref_logps(&val_r)?);
    ctx.check_cancelled()?;

    let params = DpoParams {
        loss: spec.loss,
        beta: spec.beta,
        label_smoothing: spec.label_smoothing,
        simpo_gamma: spec.simpo_gamma,
        reference_free: spec.reference_free || !spec.loss.uses_reference(),
    };
    let batch = spec.train.batch_size.max(1);
    let val_infer = pref_batches(&val_c, &val_r, &ref_val_c, &ref_val_r, batch, &infer_device);
    let before = measure(&policy.backbone.valid(), &val_infer, spec.beta);

    let LoadedModel {
        backbone,
        config,
        tokenizer,
        ..
    } = policy;
    let (backbone, adapted) = match &spec.peft {
        Some(PeftSpec::Lora(cfg)) => {
            lora::apply(backbone, cfg, &device).map_err(anyhow::Error::msg)?
        }
        None => (backbone, Vec::new()),
    };
    let (trained, summary, _) = if spec.kto {
        let train_b = kto_batches(
            &train_c,
            &train_r,
            &ref_train_c,
            &ref_train_r,
            batch,
            &device,
        );
        let val_b = kto_batches(&val_c, &val_r, &ref_val_c, &ref_val_r, batch, &device);
        super::train_logged(
            backbone,
            &Kto { beta: spec.beta },
            &train_b,
            &val_b,
            &spec.train,
            ctx,
        )?
    } else {
        let train_b = pref_batches(
            &train_c,
            &train_r,
            &ref_train_c,
            &ref_train_r,
            batch,
            &device,
        );
        let val_b = pref_batches(&val_c, &val_r, &ref_val_c, &ref_val_r, batch, &device);
        super::train_logged(backbone, &Dpo(params), &train_b, &val_b, &spec.train, ctx)?
    };
    let mut inference = trained.valid();
    let after = measure(&inference, &val_infer, spec.beta);

    ctx.progress.set_message("saving");
    if let Some(PeftSpec::Lora(cfg)) = &spec.peft {
        let dir = ctx.output_dir("adapter", ArtifactType::Model)?;
        lora::save_peft(&mut inference, cfg, "model", &dir)?;
    }
    lora::merge_and_unload(&mut inference);
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    save_hf_dir(&Model::new(inference), &config, Some(&tokenizer), &dir)?;

    let mut metrics = serde_json::Map::new();
    let round = |x: f64| (x * 1e4).round() / 1e4;
    metrics.insert("steps".into(), summary.steps.into());
    if let (Some(b), Some(a)) = (&before, &after) {
        metrics.insert("accuracy_before".into(), round(b.rewards_accuracies).into());
        metrics.insert("accuracy_after".into(), round(a.rewards_accuracies).into());
        metrics.insert("margin_before".into(), round(b.rewards_margins).into());
        metrics.insert("margin_after".into(), round(a.rewards_margins).into());
    }
    let mut warnings = guards::fit_warnings(&summary, &mut metrics);
    if let Some(a) = &after
        && a.rewards_chosen < 0.0
        && a.rewards_rejected < a.rewards_chosen
    {
        warnings.push(format!(
            "both chosen and rejected answers lost probability (rewards/chosen {:.3}, rejected {:.3}): DPO is pushing the rejected ones down faster; a lower lr or beta keeps the chosen ones likely",
            a.rewards_chosen, a.rewards_rejected
        ));
    }
    Ok(StageResult {
        metrics,
        warnings,
        summary: json!({
            "loss": if spec.kto { "kto".to_owned() } else { format!("{:?}", spec.loss).to_lowercase() },
            "beta": spec.beta,
            "reference": if !reference_needed { "none" } else if spec.reference.is_some() { "the `reference` input" } else if adapted.is_empty() { "a frozen copy of the starting policy" } else { "the starting policy (LoRA adapter off)" },
            "method": if adapted.is_empty() { "full fine-tuning" } else { "LoRA" },
            "train_pairs": train_pairs.len(),
            "validation_pairs": val_pairs.len(),
            "before": before,
            "after": after,
            "training": summary,
        }),
    })
}

/// One batch of all of `enc`, in order (no example is left out, so rows stay aligned with
/// their pair partners and reference log-probabilities).
fn lm_batch(enc: &[Encoded], device: &Device) -> LmBatch {
    let seqs: Vec<Vec<u32>> = enc.iter().map(|e| e.ids.clone()).collect();
    let targets: Vec<Vec<bool>> = enc.iter().map(|e| e.targets.clone()).collect();
    LmBatch::with_targets(&seqs, &targets, device)
}

fn tensor1(v: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(burn::tensor::TensorData::new(v.to_vec(), [v.len()]), device)
}

fn pref_batches(
    chosen: &[Encoded],
    rejected: &[Encoded],
    ref_c: &[f32],
    ref_r: &[f32],
    batch: usize,
    device: &Device,
) -> Vec<PrefBatch> {
    (0..chosen.len())
        .step_by(batch)
        .map(|start| {
            let end = (start + batch).min(chosen.len());
            PrefBatch {
                chosen: lm_batch(&chosen[start..end], device),
                rejected: lm_batch(&rejected[start..end], device),
                ref_chosen: tensor1(&ref_c[start..end], device),
                ref_rejected: tensor1(&ref_r[start..end], device),
                n: (end - start) as f64,
            }
        })
        .collect()
}

/// KTO: every chosen completion a desirable example, every rejected one an undesirable one,
/// interleaved so each batch holds both.
fn kto_batches(
    chosen: &[Encoded],
    rejected: &[Encoded],
    ref_c: &[f32],
    ref_r: &[f32],
    batch: usize,
    device: &Device,
) -> Vec<KtoBatch> {
    let mut rows: Vec<(&Encoded, f32, bool)> = Vec::new();
    for i in 0..chosen.len() {
        rows.push((&chosen[i], ref_c[i], true));
        rows.push((&rejected[i], ref_r[i], false));
    }
    rows.chunks(batch)
        .map(|c| {
            let enc: Vec<Encoded> = c.iter().map(|(e, _, _)| (*e).clone()).collect();
            let refs: Vec<f32> = c.iter().map(|(_, r, _)| *r).collect();
            let good: Vec<bool> = c.iter().map(|(_, _, g)| *g).collect();
            KtoBatch {
                seqs: lm_batch(&enc, device),
                reference: tensor1(&refs, device),
                desirable: Tensor::from_data(
                    burn::tensor::TensorData::new(good, [c.len()]),
                    device,
                ),
                n: c.len() as f64,
            }
        })
        .collect()
}

/// TRL's DPO metrics on held-out pairs (before training the policy equals the reference, so
/// rewards and margins start at 0).
fn measure(model: &Backbone, batches: &[PrefBatch], beta: f64) -> Option<DpoMetrics> {
    let (mut pc, mut pr, mut rc, mut rr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for b in batches {
        let vec = |t: Tensor<1>| -> Option<Vec<f64>> {
            Some(
                t.try_into_vec_as::<f32>()
                    .ok()?
                    .into_iter()
                    .map(f64::from)
                    .collect(),
            )
        };
        pc.extend(vec(sequence_logps(model, &b.chosen).0)?);
        pr.extend(vec(sequence_logps(model, &b.rejected).0)?);
        rc.extend(vec(b.ref_chosen.clone())?);
        rr.extend(vec(b.ref_rejected.clone())?);
    }
    (!pc.is_empty()).then(|| dpo_metrics((&pc, &pr), (&rc, &rr), beta))
}

/// Pairs of the train and validation splits.
fn pairs(input: &ResolvedInput, spec: &DpoSpec) -> Result<(Vec<Pair>, Vec<Pair>)> {
    let of = |t: &Table| -> Result<Vec<Pair>> {
        let idx = t.indices(
            &[
                spec.prompt_column.clone(),
                spec.chosen_column.clone(),
                spec.rejected_column.clone(),
            ],
            "the dpo stage reads column",
        )?;
        Ok(t.rows
            .iter()
            .filter_map(|r| {
                Some(Pair {
                    prompt: r.values[idx[0]].as_str()?.to_owned(),
                    chosen: r.values[idx[1]].as_str()?.to_owned(),
                    rejected: r.values[idx[2]].as_str()?.to_owned(),
                })
            })
            .collect())
    };
    match input {
        ResolvedInput::Artifact(view) if view.outputs.len() > 1 => {
            let part = |split| -> Result<Vec<Pair>> {
                super::read_split(view, split)?.map_or(Ok(Vec::new()), |t| of(&t))
            };
            Ok((part("train")?, part("validation")?))
        }
        _ => Ok((
            of(&super::read_table(input, MissingPolicy::Null)?)?,
            Vec::new(),
        )),
    }
}
