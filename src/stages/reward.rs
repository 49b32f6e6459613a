//! `reward`: a reward model trained on preference pairs with the Bradley-Terry loss
//! (`-log sigmoid(r_chosen - r_rejected - margin)`, optional centering). The model is a scalar
//! head on an encoder (BERT/MiniLM: prompt and response as the two segments, through the
//! pooler) or a decoder (prompt formatted as for SFT, then the response, pooled at the last
//! real token). Pairwise accuracy and margin on the validation pairs are reported before and
//! after. Output: `model`, typed as a reward model.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde_json::json;
use tokenizers::Tokenizer;

use super::conversation::preference_rows;
use super::metrics::{self, Rounded, Training};
use super::model_input::{LoadedModel, load_model_input};
use super::scoring::RewardText;
use super::scoring::{Scored, score};
use crate::data::table::Table;
use crate::model::{Model, lora, save_hf_dir};
use crate::spec::StageResult;
use crate::spec::kind::{DATA_INPUT, InputSlot, Kind, Problem};
use crate::store::ArtifactType;

use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::settings::{
    Input, ModelInput, PeftSpec, PromptTemplate, chosen_column, default_max_length, prompt_column,
    rejected_column, response_column,
};
use crate::train::preference::bradley_terry;
use crate::train::trainer::Objective;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `reward`: a reward model, a scalar head on an encoder (BERT/MiniLM, through its pooler) or a
/// decoder (pooled at the last real token), trained on preference pairs with the
/// Bradley-Terry loss. Output: `model` (HF directory, typed as a reward model, so only stages
/// that want one accept it).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub model: ModelInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Input>,
    /// A dataset with prompt, chosen and rejected columns (`train`; `validation` measures
    /// pairwise accuracy).
    pub data: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default = "chosen_column")]
    pub chosen_column: String,
    #[serde(default = "rejected_column")]
    pub rejected_column: String,
    /// A column with each pair's required margin (`-log sigmoid(r_c - r_r - margin)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_column: Option<String>,
    /// Regression instead of pairs: rows of prompt, `response_column` and this numeric score,
    /// fitted with the squared error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_column: Option<String>,
    #[serde(default = "response_column")]
    pub response_column: String,
    /// Reward centering: adds `coefficient * (r_c + r_r)^2` (TRL suggests 0.01); 0 is off.
    #[serde(default)]
    pub center_rewards: f64,
    /// How a decoder sees prompt + response (encoders get the pair as two segments).
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftSpec>,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

/// One preference pair as text, with its margin.
#[derive(Debug, Clone)]
pub struct Pair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub margin: f64,
}

#[derive(Debug, Clone)]
pub struct PairBatch {
    pub chosen: Scored,
    pub rejected: Scored,
    pub margin: Option<Tensor<1>>,
    pub n: f64,
}

/// Bradley-Terry on the scalar head.
pub struct BradleyTerry {
    pub center: f64,
}

impl Objective<Model> for BradleyTerry {
    type Batch = PairBatch;
    fn loss_sum(&self, model: &Model, b: &PairBatch) -> Tensor<1> {
        let rc = score(model, &b.chosen);
        let rr = score(model, &b.rejected);
        bradley_terry(rc, rr, b.margin.clone(), self.center).sum()
    }
    fn count(&self, b: &PairBatch) -> f64 {
        b.n
    }
    fn unit(&self) -> &'static str {
        "pairs"
    }
}

/// The model a reward stage trains: its input with a single-score head (the checkpoint's own
/// when it has one, else a new one), how it reads prompt + response, its config and tokenizer.
fn scalar_model(
    spec: &RewardSpec,
    ctx: &mut StageContext,
    device: &Device,
) -> Result<(Model, RewardText, serde_json::Value, Tokenizer)> {
    let loaded = load_model_input(
        &spec.model,
        MODEL.key,
        spec.tokenizer.is_some().then_some(TOKENIZER.key),
        false,
        ctx,
        device,
    )?;
    let text = RewardText::new(
        &loaded.backbone,
        &loaded.tokenizer,
        &loaded.config,
        loaded.chat_template.as_ref(),
        &spec.template,
        spec.max_length,
    );
    let LoadedModel {
        backbone,
        score: head,
        config,
        tokenizer,
        ..
    } = loaded;
    let model = match head {
        Some(h) if h.d_out() == 1 => Model {
            backbone,
            score: Some(h),
        },
        _ => Model::with_new_head(backbone, 1, device),
    };
    Ok((model, text, config, tokenizer))
}

/// The `config.json` of a reward model: one label, named for what it is, and the template its
/// decoder saw prompt + response through, so whoever scores with it formats the same way.
fn mark_reward_model(
    mut config: serde_json::Value,
    template: &crate::spec::settings::PromptTemplate,
) -> serde_json::Value {
    if let Some(obj) = config.as_object_mut() {
        obj.insert("id2label".into(), json!({ "0": "reward" }));
        obj.insert("label2id".into(), json!({ "reward": 0 }));
        obj.insert(
            "hone_reward_template".into(),
            serde_json::to_value(template).unwrap_or_default(),
        );
    }
    config
}

/// `kind: reward`.
#[derive(Default)]
pub struct RewardKind;

/// What to start from: a reward model can start from another reward model, a model, or a
/// checkpoint.
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model, ArtifactType::RewardModel]);

/// The tokenizer of a new model.
const TOKENIZER: InputSlot =
    InputSlot::new("tokenizer", &[ArtifactType::Tokenizer, ArtifactType::Model]);
/// Preference pairs, or scored answers.
const DATA: InputSlot = InputSlot::new("data", DATA_INPUT);

impl Kind for RewardKind {
    type Settings = RewardSpec;
    const NAME: &'static str = "reward";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str =
        "A reward model: a scalar head trained on preference pairs (Bradley-Terry).";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[MODEL, TOKENIZER, DATA]
    }

    fn outputs(&self, _: &RewardSpec) -> Vec<(&'static str, ArtifactType)> {
        vec![("model", ArtifactType::RewardModel)]
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(crate::spec::kind::schema_of::<RewardSpec>(generator))
    }

    fn check(&self, r: &RewardSpec, _stage: &str) -> Vec<Problem> {
        use crate::spec::settings::ModelInput;
        let mut problems = Vec::new();
        if matches!(r.model, ModelInput::Init { .. }) && r.tokenizer.is_none() {
            problems.push(Problem::at_key(
                "model",
                "a new model (`model: { init }`) needs a `tokenizer`",
            ));
        }
        if !(r.center_rewards >= 0.0 && r.center_rewards.is_finite()) {
            problems.push(Problem::new(
                "center_rewards",
                "`center_rewards` is a coefficient >= 0 (0.01 is typical)",
            ));
        }
        problems.extend(super::training::lora_problem(&r.peft));
        problems.extend(super::training::length_problem(r.max_length));
        problems.extend(super::training::train_problems(&r.train));
        problems
    }

    fn run(&self, spec: &RewardSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// What a reward model trained on pairs records.
#[derive(Serialize)]
struct RewardMetrics {
    #[serde(flatten)]
    training: Training,
    #[serde(flatten)]
    held_out: Option<PairAccuracy>,
}

/// Held-out pairwise accuracy and margin (chosen minus rejected score), before and after.
#[derive(Serialize)]
struct PairAccuracy {
    accuracy_before: Rounded,
    accuracy_after: Rounded,
    margin_before: Rounded,
    margin_after: Rounded,
}

pub fn run(spec: &RewardSpec, ctx: &mut StageContext) -> Result<StageResult> {
    if spec.score_column.is_some() {
        return regression::run(spec, ctx);
    }
    let device = super::training::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    ctx.progress.set_message("reading pairs");
    let (train_pairs, val_pairs) = pairs(ctx.input(DATA.key)?, spec)?;
    if train_pairs.is_empty() {
        bail!(
            "no preference pairs (columns `{}`, `{}`, `{}`)",
            spec.prompt_column,
            spec.chosen_column,
            spec.rejected_column
        );
    }
    ctx.progress.set_message("loading the model");
    let (model, text, config, tokenizer) = scalar_model(spec, ctx, &device)?;
    let batch = spec.train.batch_size.max(1);
    let make = |pairs: &[Pair], device: &Device| -> Result<Vec<PairBatch>> {
        pairs
            .chunks(batch)
            .map(|c| {
                let chosen: Vec<(&str, &str)> = c
                    .iter()
                    .map(|p| (p.prompt.as_str(), p.chosen.as_str()))
                    .collect();
                let rejected: Vec<(&str, &str)> = c
                    .iter()
                    .map(|p| (p.prompt.as_str(), p.rejected.as_str()))
                    .collect();
                let margin = spec.margin_column.as_ref().map(|_| {
                    let m: Vec<f32> = c.iter().map(|p| p.margin as f32).collect();
                    Tensor::from_data(burn::tensor::TensorData::new(m, [c.len()]), device)
                });
                Ok(PairBatch {
                    chosen: text.batch(&tokenizer, &chosen, device)?,
                    rejected: text.batch(&tokenizer, &rejected, device)?,
                    margin,
                    n: c.len() as f64,
                })
            })
            .collect()
    };
    ctx.progress.set_message("tokenizing");
    let train_batches = make(&train_pairs, &device)?;
    let val_batches = make(&val_pairs, &device)?;
    let val_infer = make(&val_pairs, &infer_device)?;
    let before = pairwise(&model.valid(), &val_infer);

    let model = crate::stages::training::with_peft(model, &spec.peft, &device)?;
    let (trained, summary, _) = super::training::train_logged(
        model,
        &BradleyTerry {
            center: spec.center_rewards,
        },
        &train_batches,
        &val_batches,
        &spec.train,
        ctx,
    )?;
    let mut inference = trained.valid();
    let after = pairwise(&inference, &val_infer);

    ctx.progress.set_message("saving");
    lora::merge_and_unload(&mut inference.backbone);
    let config = mark_reward_model(config, &spec.template);
    let dir = ctx.output_dir("model", ArtifactType::RewardModel)?;
    save_hf_dir(&inference, &config, Some(&tokenizer), None, &dir)?;

    let metrics = RewardMetrics {
        training: Training::of(&summary),
        held_out: before
            .as_ref()
            .zip(after.as_ref())
            .map(|(b, a)| PairAccuracy {
                accuracy_before: Rounded(b.accuracy),
                accuracy_after: Rounded(a.accuracy),
                margin_before: Rounded(b.margin),
                margin_after: Rounded(a.margin),
            }),
    };
    let mut warnings = super::guards::fit_warnings(&summary);
    if let Some(a) = &after
        && a.accuracy <= 0.55
    {
        warnings.push(format!(
            "underfitting: held-out pairwise accuracy {:.2} is near chance (0.5)",
            a.accuracy
        ));
    }
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings,
        summary: json!({
            "reward_model": true,
            "train_pairs": train_pairs.len(),
            "validation_pairs": val_pairs.len(),
            "before": before,
            "after": after,
            "training": summary,
        }),
    })
}

/// Pairwise accuracy (strict `r_c > r_r`), mean margin and the reward range on held-out pairs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Pairwise {
    pub accuracy: f64,
    pub margin: f64,
    pub min_reward: f64,
    pub mean_reward: f64,
    pub max_reward: f64,
}

fn pairwise(model: &Model, batches: &[PairBatch]) -> Option<Pairwise> {
    let (mut c, mut r) = (Vec::new(), Vec::new());
    for b in batches {
        c.extend(score(model, &b.chosen).try_into_vec_as::<f32>().ok()?);
        r.extend(score(model, &b.rejected).try_into_vec_as::<f32>().ok()?);
    }
    if c.is_empty() {
        return None;
    }
    let n = c.len() as f64;
    let all: Vec<f64> = c.iter().chain(&r).map(|&x| x as f64).collect();
    Some(Pairwise {
        accuracy: c.iter().zip(&r).filter(|(a, b)| a > b).count() as f64 / n,
        margin: c.iter().zip(&r).map(|(a, b)| (a - b) as f64).sum::<f64>() / n,
        min_reward: all.iter().copied().fold(f64::INFINITY, f64::min),
        mean_reward: all.iter().sum::<f64>() / all.len() as f64,
        max_reward: all.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    })
}

/// Preference pairs of the train and validation splits.
fn pairs(input: &ResolvedInput, spec: &RewardSpec) -> Result<(Vec<Pair>, Vec<Pair>)> {
    let of = |t: &Table| -> Result<Vec<Pair>> {
        let what = "the reward stage reads column";
        let margin = match &spec.margin_column {
            Some(m) => Some(t.indices(std::slice::from_ref(m), what)?[0]),
            None => None,
        };
        let rows = preference_rows(
            t,
            &spec.prompt_column,
            &spec.chosen_column,
            &spec.rejected_column,
            what,
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (p, n) in rows {
            let margin = match margin {
                Some(i) => t.rows[n].values[i].as_f64().ok_or_else(|| {
                    anyhow::anyhow!("{}: the margin must be a number", t.origin(&t.rows[n]))
                })?,
                None => 0.0,
            };
            out.push(Pair {
                prompt: p.prompt_text(),
                chosen: p.chosen,
                rejected: p.rejected,
                margin,
            });
        }
        Ok(out)
    };
    crate::stages::tables::split_rows(input, of)
}

/// Reward models fitted to scored responses (`score_column`) by squared error.
mod regression {
    use anyhow::{Result, bail};
    use burn::module::Module;
    use burn::prelude::*;
    use serde_json::json;

    use super::super::scoring::{Scored, score};
    use super::RewardSpec;
    use crate::model::{Model, lora, save_hf_dir};

    use crate::spec::StageResult;
    use crate::spec::context::{ResolvedInput, StageContext};
    use crate::stages::metrics::{self, Rounded, Training};
    use crate::store::ArtifactType;
    use crate::train::trainer::Objective;

    /// What a reward model trained on scores records: held-out RMSE and correlation.
    #[derive(serde::Serialize)]
    struct ScoreMetrics {
        #[serde(flatten)]
        training: Training,
        #[serde(skip_serializing_if = "Option::is_none")]
        rmse_before: Option<Rounded>,
        #[serde(skip_serializing_if = "Option::is_none")]
        rmse_after: Option<Rounded>,
        #[serde(skip_serializing_if = "Option::is_none")]
        correlation_before: Option<Rounded>,
        #[serde(skip_serializing_if = "Option::is_none")]
        correlation_after: Option<Rounded>,
    }

    pub struct ScoredBatch {
        texts: Scored,
        targets: Tensor<1>,
        n: f64,
    }

    struct SquaredError;

    impl Objective<Model> for SquaredError {
        type Batch = ScoredBatch;
        fn loss_sum(&self, model: &Model, b: &ScoredBatch) -> Tensor<1> {
            (score(model, &b.texts) - b.targets.clone())
                .powi_scalar(2)
                .sum()
        }
        fn count(&self, b: &ScoredBatch) -> f64 {
            b.n
        }
    }

    type Rows = Vec<(String, String, f64)>;

    fn rows(input: &ResolvedInput, spec: &RewardSpec, column: &str) -> Result<(Rows, Rows)> {
        let of = |t: &crate::data::table::Table| -> Result<Rows> {
            let idx = t.indices(
                &[
                    spec.prompt_column.clone(),
                    spec.response_column.clone(),
                    column.to_owned(),
                ],
                "the reward stage reads column",
            )?;
            t.rows
                .iter()
                .filter(|r| r.values[idx[0]].is_string() && r.values[idx[1]].is_string())
                .map(|r| {
                    let s = r.values[idx[2]].as_f64().ok_or_else(|| {
                        anyhow::anyhow!("{}: the score must be a number", t.origin(r))
                    })?;
                    let text = |k: usize| r.values[idx[k]].as_str().unwrap_or_default().to_owned();
                    Ok((text(0), text(1), s))
                })
                .collect()
        };
        crate::stages::tables::split_rows(input, of)
    }

    /// Root-mean-square error and Pearson correlation of predictions with the scores.
    fn fit(model: &Model, batches: &[ScoredBatch]) -> Option<serde_json::Value> {
        let (mut p, mut y) = (Vec::new(), Vec::new());
        for b in batches {
            p.extend(score(model, &b.texts).try_into_vec_as::<f32>().ok()?);
            y.extend(b.targets.clone().try_into_vec_as::<f32>().ok()?);
        }
        if p.is_empty() {
            return None;
        }
        let n = p.len() as f64;
        let (p, y): (Vec<f64>, Vec<f64>) = (
            p.into_iter().map(f64::from).collect(),
            y.into_iter().map(f64::from).collect(),
        );
        let rmse = (p.iter().zip(&y).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / n).sqrt();
        let (mp, my) = (p.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
        let cov: f64 = p.iter().zip(&y).map(|(a, b)| (a - mp) * (b - my)).sum();
        let (vp, vy) = (
            p.iter().map(|a| (a - mp).powi(2)).sum::<f64>(),
            y.iter().map(|b| (b - my).powi(2)).sum::<f64>(),
        );
        let corr = if vp > 0.0 && vy > 0.0 {
            cov / (vp * vy).sqrt()
        } else {
            0.0
        };
        Some(json!({ "rmse": rmse, "correlation": corr }))
    }

    pub fn run(spec: &RewardSpec, ctx: &mut StageContext) -> Result<StageResult> {
        let column = spec.score_column.as_deref().unwrap_or("score");
        let device = crate::stages::training::stage_device(ctx, true)?;
        let infer_device = device.clone().without_autodiff();
        let (train_rows, val_rows) = rows(ctx.input(super::DATA.key)?, spec, column)?;
        if train_rows.is_empty() {
            bail!(
                "no scored responses (columns `{}`, `{}`, `{column}`)",
                spec.prompt_column,
                spec.response_column
            );
        }
        let (model, text, config, tokenizer) = super::scalar_model(spec, ctx, &device)?;
        let make = |rows: &Rows, device: &Device| -> Result<Vec<ScoredBatch>> {
            rows.chunks(spec.train.batch_size.max(1))
                .map(|c| {
                    let pairs: Vec<(&str, &str)> =
                        c.iter().map(|(p, r, _)| (p.as_str(), r.as_str())).collect();
                    let y: Vec<f32> = c.iter().map(|(_, _, s)| *s as f32).collect();
                    Ok(ScoredBatch {
                        texts: text.batch(&tokenizer, &pairs, device)?,
                        targets: Tensor::from_data(
                            burn::tensor::TensorData::new(y, [c.len()]),
                            device,
                        ),
                        n: c.len() as f64,
                    })
                })
                .collect()
        };
        let (train_b, val_b, val_infer) = (
            make(&train_rows, &device)?,
            make(&val_rows, &device)?,
            make(&val_rows, &infer_device)?,
        );
        let before = fit(&model.valid(), &val_infer);
        let model = crate::stages::training::with_peft(model, &spec.peft, &device)?;
        let (trained, summary, _) = crate::stages::training::train_logged(
            model,
            &SquaredError,
            &train_b,
            &val_b,
            &spec.train,
            ctx,
        )?;
        let mut inference = trained.valid();
        let after = fit(&inference, &val_infer);
        lora::merge_and_unload(&mut inference.backbone);
        let config = super::mark_reward_model(config, &spec.template);
        let dir = ctx.output_dir("model", ArtifactType::RewardModel)?;
        save_hf_dir(&inference, &config, Some(&tokenizer), None, &dir)?;
        let fit_of = |m: &Option<serde_json::Value>, field: &str| {
            m.as_ref()
                .map(|m| Rounded(m[field].as_f64().unwrap_or(f64::NAN)))
        };
        let metrics = ScoreMetrics {
            training: Training::of(&summary),
            rmse_before: fit_of(&before, "rmse"),
            rmse_after: fit_of(&after, "rmse"),
            correlation_before: fit_of(&before, "correlation"),
            correlation_after: fit_of(&after, "correlation"),
        };
        let warnings = crate::stages::guards::fit_warnings(&summary);
        Ok(StageResult {
            metrics: metrics::record(&metrics),
            warnings,
            summary: json!({
                "reward_model": true,
                "objective": "squared error on scores",
                "train_rows": train_rows.len(),
                "validation_rows": val_rows.len(),
                "before": before,
                "after": after,
                "training": summary,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::settings::{NamedTemplate, PromptTemplate};
    use crate::stages::scoring::trained_template;

    #[test]
    fn the_training_template_travels_with_the_reward_model() {
        let chatml = PromptTemplate::Named(NamedTemplate::Chatml);
        let config = mark_reward_model(json!({ "model_type": "gpt2" }), &chatml);
        assert_eq!(config["id2label"]["0"], "reward");
        assert_eq!(trained_template(&config), chatml);
        // A reward model from elsewhere, without the record, is read as plain text.
        assert_eq!(trained_template(&json!({})), PromptTemplate::default());
    }
}
