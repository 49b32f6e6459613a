//! `ppo`: RLHF with PPO, after TRL's OpenAI-style trainer (`train::rl` holds the arithmetic).
//!
//! Each batch of prompts is `ppo_epochs` consecutive trainer steps over one rollout: the first
//! samples answers from the current policy and computes, without gradients, their
//! log-probabilities, the reference's, the value model's estimates and the reward model's
//! scores; then per-token rewards (`-kl_coef * KL`, plus the score on the answer's last
//! token), GAE advantages (whitened over the batch's answer tokens) and returns. Every step
//! then takes the clipped policy loss plus `vf_coef` times the clipped value loss.
//!
//! Where the score goes: on the last token of the answer (its end token when it has one). TRL
//! puts it one position past the end token, a position the policy never generated (an open
//! upstream issue questions it); here the token whose choice ended the answer is the one the
//! score rewards, and GAE carries it back to the earlier tokens.
//!
//! Resume: a checkpoint taken between rollouts resumes exactly; one taken between the PPO
//! epochs of a rollout resumes with a fresh rollout for the rest of that batch.

use std::cell::RefCell;

use anyhow::Result;
use burn::module::Module;
use burn::prelude::*;
use serde_json::json;
use tokenizers::Tokenizer;

use super::conversation::Format;
use super::metrics::{self, Rounded, Training};
use super::model_input::{language_model, load_checkpoint};
use super::rollout::{
    Answering, PromptRow, RlSettings, RlSetup, Scorer, answer_rows, measure, measured_prompts,
    per_reward_metrics, rollout, token_logps,
};
use crate::model::sampling::SamplingConfig;
use crate::model::{Backbone, Model};
use crate::spec::StageResult;
use crate::spec::context::StageContext;
use crate::spec::kind::{DATA_INPUT, InputSlot, Kind, Problem, TemplateOf};
use crate::spec::settings::PromptTemplate;
use crate::spec::settings::{Input, default_epsilon, default_rl_tokens, prompt_column};
use crate::spec::settings::{PeftSpec, RewardSource};
use crate::store::ArtifactType;
use crate::train::objectives::{LmBatch, trained_lm};
use crate::train::rl::{
    KlEstimator, clipped_policy_loss, clipped_value_loss, gae, kl, masked_mean, shaped_rewards,
    whiten,
};
use crate::train::trainer::{Objective, Summary};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `ppo`: RLHF with PPO (TRL's OpenAI-style trainer). For each batch of prompts the policy
/// samples answers; the reward model scores them (minus `missing_eos_penalty` for answers
/// that never ended); every answer token gets `-kl_coef * KL` to the starting policy, and the
/// score lands on the answer's last token; GAE gives advantages (whitened) and returns; then
/// `ppo_epochs` passes of clipped policy and value losses. The value model starts from the
/// reward model when they share a vocabulary, else from the policy with a new scalar head.
/// Outputs: `model` and, with LoRA, `adapter`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PpoSpec {
    pub model: Input,
    /// A `reward` stage's model; anything else fails validation. The same as
    /// `reward: { model: ... }`; give one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<Input>,
    /// The rewards, as `grpo` takes them: a reward model, verifiers (`math`, `think`,
    /// `command`) and rules, each scored and logged on its own and summed with `weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<RewardSource>,
    pub prompts: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default = "default_kl_coef")]
    pub kl_coef: f64,
    #[serde(default)]
    pub kl_estimator: crate::train::rl::KlEstimator,
    #[serde(default = "default_epsilon")]
    pub cliprange: f64,
    #[serde(default = "default_epsilon")]
    pub cliprange_value: f64,
    #[serde(default = "default_vf_coef")]
    pub vf_coef: f64,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    #[serde(default = "default_lambda")]
    pub lam: f64,
    /// Optimisation passes over each batch of rollouts.
    #[serde(default = "default_ppo_epochs")]
    pub ppo_epochs: usize,
    #[serde(default = "default_ppo_temperature")]
    pub temperature: f64,
    #[serde(default = "default_rl_tokens")]
    pub max_new_tokens: usize,
    /// Subtracted from the score of an answer that did not end with an end token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_eos_penalty: Option<f64>,
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftSpec>,
    /// `batch_size` is prompts per rollout; an epoch is a pass over the prompts.
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

fn default_kl_coef() -> f64 {
    0.05
}

fn default_vf_coef() -> f64 {
    0.1
}

fn default_gamma() -> f64 {
    1.0
}

fn default_lambda() -> f64 {
    0.95
}

fn default_ppo_epochs() -> usize {
    4
}

fn default_ppo_temperature() -> f64 {
    0.7
}

/// Answers per held-out prompt for the before/after score: what PPO optimises is the score of
/// its samples (TRL's objective/scores), so that is what is measured, from a fixed seed.
const SAMPLES: usize = 4;

/// What PPO trains: the policy and its value model, side by side.
#[derive(Module, Debug)]
pub struct PolicyValue {
    pub policy: Backbone,
    pub value: Model,
}

impl crate::model::GradientCheckpointing for PolicyValue {
    fn set_gradient_checkpointing(&mut self, on: bool) {
        self.policy.set_gradient_checkpointing(on);
        self.value.set_gradient_checkpointing(on);
    }
}

impl crate::model::precision::ReducedPrecision for PolicyValue {
    fn set_precision(&mut self, precision: crate::model::precision::Precision) {
        self.policy.set_precision(precision);
        self.value.set_precision(precision);
    }
}

/// One trainer step: a batch of prompts and which PPO pass over its rollout this is.
#[derive(Debug, Clone)]
pub struct PpoBatch {
    pub prompts: Vec<PromptRow>,
    pub pass: usize,
}

struct Rollout {
    batch: LmBatch,
    old_logp: Tensor<2>,
    old_values: Tensor<2>,
    advantages: Tensor<2>,
    returns: Tensor<2>,
}

/// What a PPO stage records: the reward model's score on held-out prompts and the sampled KL
/// from the reference after training, and TRL's training curves in quarters.
#[derive(Serialize)]
struct PpoMetrics {
    #[serde(flatten)]
    training: Training,
    #[serde(skip_serializing_if = "Option::is_none")]
    score_before: Option<Rounded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    score_after: Option<Rounded>,
    kl_after: Rounded,
    scores_first_quarter: Rounded,
    scores_last_quarter: Rounded,
    kl_last_quarter: Rounded,
}

/// TRL's logged quantities, per optimisation step.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PpoStepMetrics {
    #[serde(rename = "objective/scores")]
    pub scores: f64,
    #[serde(rename = "objective/kl")]
    pub kl: f64,
    #[serde(rename = "objective/non_score_reward")]
    pub non_score_reward: f64,
    #[serde(rename = "objective/rlhf_reward")]
    pub rlhf_reward: f64,
    #[serde(rename = "policy/clipfrac_avg")]
    pub clipfrac: f64,
    #[serde(rename = "val/clipfrac_avg")]
    pub value_clipfrac: f64,
    #[serde(rename = "policy/approxkl_avg")]
    pub approxkl: f64,
    #[serde(rename = "loss/policy_avg")]
    pub policy_loss: f64,
    #[serde(rename = "loss/value_avg")]
    pub value_loss: f64,
    /// The mean length of the sampled answers, in tokens.
    #[serde(rename = "completions/mean_length")]
    pub mean_length: f64,
    /// The share of answers cut at `max_new_tokens` (no end token).
    #[serde(rename = "completions/clipped_ratio")]
    pub clipped_ratio: f64,
    /// Each reward's mean over the rollout, as `rewards/<name>/mean` (TRL's names).
    #[serde(flatten)]
    pub rewards: std::collections::BTreeMap<String, f64>,
}

pub struct Ppo<'a> {
    pub spec: &'a PpoSpec,
    pub tokenizer: &'a Tokenizer,
    pub format: &'a Format,
    pub scorer: &'a Scorer,
    pub reference: Backbone,
    pub sampling: SamplingConfig,
    pub infer_device: Device,
    current: RefCell<Option<Rollout>>,
    pub log: RefCell<Vec<PpoStepMetrics>>,
}

fn rows_of(t: Tensor<2>) -> Vec<Vec<f64>> {
    let [n, s] = t.dims();
    let v: Vec<f32> = t.try_into_vec_as::<f32>().unwrap_or_default();
    (0..n)
        .map(|i| v[i * s..(i + 1) * s].iter().map(|&x| x as f64).collect())
        .collect()
}

fn from_rows(rows: &[Vec<f64>], device: &Device) -> Tensor<2> {
    let (n, s) = (rows.len(), rows.first().map_or(0, Vec::len));
    let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
    Tensor::from_data(burn::tensor::TensorData::new(flat, [n, s]), device)
}

impl Ppo<'_> {
    /// Samples answers and computes everything the PPO passes over them need.
    fn collect(&self, model: &PolicyValue, prompts: &[PromptRow], device: &Device) -> Rollout {
        let seed = Tensor::<1>::random([1], burn::tensor::Distribution::Uniform(0.0, 1.0), device)
            .into_scalar::<f32>();
        let sampling = SamplingConfig {
            seed: (seed as f64 * u32::MAX as f64) as u64,
            ..self.sampling.clone()
        };
        let policy = model.policy.valid();
        let value = model.value.valid();
        let r = rollout(
            &policy,
            self.tokenizer,
            self.format,
            prompts,
            1,
            &sampling,
            &self.infer_device,
        )
        .expect("prompts were tokenized before training");
        let components = r
            .scored(prompts, self.scorer)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut scores = self.scorer.sum(&components);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let rewards = self
            .scorer
            .names()
            .into_iter()
            .zip(&components)
            .map(|(name, c)| (format!("rewards/{name}/mean"), mean(c)))
            .collect();
        let lengths: Vec<f64> = r
            .completions
            .iter()
            .map(|(_, ids, _)| ids.len() as f64)
            .collect();
        let cut: Vec<f64> = r
            .completions
            .iter()
            .map(|(_, ids, _)| f64::from(u8::from(self.sampling.cut_off(ids))))
            .collect();
        if let Some(penalty) = self.spec.missing_eos_penalty {
            for (s, (_, ids, _)) in scores.iter_mut().zip(&r.completions) {
                if !ids
                    .last()
                    .is_some_and(|t| self.sampling.stop_tokens.contains(t))
                {
                    *s -= penalty;
                }
            }
        }
        let infer_batch = r.batch(&self.infer_device);
        let (lp, mask) = token_logps(trained_lm(&policy), &infer_batch, self.spec.temperature);
        let reference = trained_lm(&self.reference);
        let (ref_lp, _) = token_logps(reference, &infer_batch, self.spec.temperature);
        let [n, t] = lp.dims();
        let values = value
            .token_scores(infer_batch.ids.clone(), infer_batch.padding.clone())
            .expect("the value model has a head")
            .narrow(1, 0, t);
        let (lp, ref_lp, values, mask) =
            (rows_of(lp), rows_of(ref_lp), rows_of(values), rows_of(mask));
        let (mut adv, mut ret) = (vec![vec![0.0; t]; n], vec![vec![0.0; t]; n]);
        let (mut kl_sum, mut score_sum) = (0.0, 0.0);
        for i in 0..n {
            let pos: Vec<usize> = (0..t).filter(|&k| mask[i][k] > 0.5).collect();
            if pos.is_empty() {
                continue;
            }
            let pick = |v: &[f64]| -> Vec<f64> { pos.iter().map(|&k| v[k]).collect() };
            let k = kl(&pick(&lp[i]), &pick(&ref_lp[i]), self.spec.kl_estimator);
            let rewards =
                shaped_rewards(&k, self.spec.kl_coef, pos.len(), scores[i], pos.len() - 1);
            let (a, rt) = gae(&rewards, &pick(&values[i]), self.spec.gamma, self.spec.lam);
            for (j, &k) in pos.iter().enumerate() {
                adv[i][k] = a[j];
                ret[i][k] = rt[j];
            }
            kl_sum += k.iter().sum::<f64>();
            score_sum += scores[i];
        }
        // Advantages whitened over every answer token of the batch.
        let flat: Vec<f64> = adv.iter().flatten().copied().collect();
        let valid: Vec<bool> = mask.iter().flatten().map(|m| *m > 0.5).collect();
        let white = whiten(&flat, &valid);
        let adv: Vec<Vec<f64>> = white.chunks(t.max(1)).map(<[f64]>::to_vec).collect();
        let nf = n.max(1) as f64;
        self.log.borrow_mut().push(PpoStepMetrics {
            scores: score_sum / nf,
            kl: kl_sum / nf,
            non_score_reward: -self.spec.kl_coef * kl_sum / nf,
            rlhf_reward: (score_sum - self.spec.kl_coef * kl_sum) / nf,
            mean_length: mean(&lengths),
            clipped_ratio: mean(&cut),
            rewards,
            ..Default::default()
        });
        Rollout {
            batch: r.batch(device),
            old_logp: from_rows(&lp, device),
            old_values: from_rows(&values, device),
            advantages: from_rows(&adv, device),
            returns: from_rows(&ret, device),
        }
    }
}

impl Objective<PolicyValue> for Ppo<'_> {
    type Batch = PpoBatch;

    fn loss_sum(&self, model: &PolicyValue, b: &PpoBatch) -> Tensor<1> {
        let device = model
            .policy
            .devices()
            .into_iter()
            .next()
            .expect("the policy lives on a device");
        let fresh = b.pass == 0 || self.current.borrow().is_none();
        if fresh {
            let r = self.collect(model, &b.prompts, &device);
            *self.current.borrow_mut() = Some(r);
        } else {
            // Another pass over the same rollout: its scores and KL are those of the rollout.
            let last = self.log.borrow().last().cloned();
            self.log.borrow_mut().extend(last);
        }
        let current = self.current.borrow();
        let r = current.as_ref().expect("a rollout");
        let (lp, mask) = token_logps(trained_lm(&model.policy), &r.batch, self.spec.temperature);
        let t = lp.dims()[1];
        let values = model
            .value
            .token_scores(r.batch.ids.clone(), r.batch.padding.clone())
            .expect("the value model has a head")
            .narrow(1, 0, t);
        let (pg, clipped) = clipped_policy_loss(
            lp.clone(),
            r.old_logp.clone(),
            r.advantages.clone(),
            self.spec.cliprange,
        );
        let (vf, vclipped) = clipped_value_loss(
            values,
            r.old_values.clone(),
            r.returns.clone(),
            self.spec.cliprange_value,
        );
        let pg = masked_mean(pg, mask.clone());
        let vf = masked_mean(vf, mask.clone());
        let scalar = |x: Tensor<1>| x.into_scalar::<f32>() as f64;
        if let Some(m) = self.log.borrow_mut().last_mut() {
            m.policy_loss = scalar(pg.clone().detach());
            m.value_loss = scalar(vf.clone().detach());
            m.clipfrac = scalar(masked_mean(clipped.float(), mask.clone()));
            m.value_clipfrac = scalar(masked_mean(vclipped.float(), mask.clone()));
            let d = (lp.detach() - r.old_logp.clone()).powi_scalar(2);
            m.approxkl = 0.5 * scalar(masked_mean(d, mask));
        }
        (pg + vf.mul_scalar(self.spec.vf_coef)).mul_scalar(b.prompts.len() as f64)
    }

    fn count(&self, b: &PpoBatch) -> f64 {
        b.prompts.len() as f64
    }
    fn unit(&self) -> &'static str {
        "prompts"
    }

    fn shuffle(&self) -> bool {
        false
    }

    /// The per-step log: the stage's metrics read all of it at the end.
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&*self.log.borrow()).unwrap_or_default()
    }

    fn restore(&self, state: serde_json::Value) -> Result<(), serde_json::Error> {
        *self.log.borrow_mut() = serde_json::from_value(state)?;
        Ok(())
    }

    /// Only after the last pass over a rollout: a resumed run samples a fresh rollout.
    fn resumable_after(&self, b: &PpoBatch) -> bool {
        b.pass + 1 >= self.spec.ppo_epochs.max(1)
    }
}

/// `kind: ppo`.
#[derive(Default)]
pub struct PpoKind;

/// The policy to tune (its copy is the frozen reference).
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model]);
/// Only a reward model scores rollouts.
const REWARD_MODEL: InputSlot = InputSlot::new("reward_model", &[ArtifactType::RewardModel]);
/// The same, given as `reward: { model: ... }`.
const REWARD_SOURCE_MODEL: InputSlot = InputSlot::new("reward.model", &[ArtifactType::RewardModel]);
/// The prompts to answer.
const PROMPTS: InputSlot = InputSlot::new("prompts", DATA_INPUT);

impl Kind for PpoKind {
    type Settings = PpoSpec;
    const NAME: &'static str = "ppo";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str = "RLHF with PPO: the policy's sampled answers scored by a reward model (or verifiers and\nrules), a per-token KL penalty to the starting policy, GAE, clipped policy and value losses.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[MODEL, REWARD_MODEL, REWARD_SOURCE_MODEL, PROMPTS]
    }

    fn outputs(&self, p: &PpoSpec) -> Vec<(&'static str, ArtifactType)> {
        super::training::policy_outputs(&p.peft)
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(crate::spec::kind::schema_of::<PpoSpec>(generator))
    }

    fn check(&self, p: &PpoSpec, stage: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (&p.reward_model, &p.reward) {
            (Some(_), Some(_)) => problems.push(
                Problem::at_key(
                    "reward_model",
                    "both `reward_model` and `reward` are given",
                )
                .help("keep one: `reward: { model: { from: rm }, math: answer }` holds both"),
            ),
            (None, None) => problems.push(
                Problem::new(
                    "reward",
                    format!("`stages.{stage}` has no reward: give `reward_model` or `reward`"),
                )
                .help("`reward_model: { from: <reward stage> }`, or `reward:` with verifiers and rules as `grpo` takes them (`math: <answer column>`, `command: [...]`, ...)"),
            ),
            (None, Some(r)) => problems.extend(r.problems(stage)),
            (Some(_), None) => {}
        }
        if p.ppo_epochs == 0 {
            problems.push(Problem::new(
                "ppo_epochs",
                "`ppo_epochs` must be at least 1",
            ));
        }
        for (key, v) in [
            ("kl_coef", p.kl_coef),
            ("vf_coef", p.vf_coef),
            ("cliprange", p.cliprange),
            ("cliprange_value", p.cliprange_value),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                problems.push(Problem::new(
                    key,
                    format!("`{key}` must be a number >= 0, not {v}"),
                ));
            }
        }
        if !(0.0..=1.0).contains(&p.gamma) || !(0.0..=1.0).contains(&p.lam) {
            problems.push(Problem::at_key("gamma", "`gamma` and `lam` are in [0, 1]"));
        }
        problems.extend(super::training::lora_problem(&p.peft));
        problems.extend(super::training::train_problems(&p.train));
        problems
    }

    fn custom_rewards(&self, p: &PpoSpec) -> Vec<String> {
        p.reward
            .as_ref()
            .map(|r| r.custom.clone())
            .unwrap_or_default()
    }

    fn argument_files(&self, p: &PpoSpec) -> Vec<String> {
        let n = p
            .reward
            .as_ref()
            .and_then(|r| r.command.as_ref())
            .map_or(0, Vec::len);
        (0..n).map(|i| format!("reward.command.{i}")).collect()
    }

    fn prompt_template<'s>(&self, p: &'s PpoSpec) -> Option<TemplateOf<'s, PromptTemplate>> {
        Some(TemplateOf::Own(&p.template))
    }

    fn run(&self, spec: &PpoSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

pub fn run(spec: &PpoSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::training::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    let RlSetup {
        train_prompts,
        val_prompts,
        backbone,
        config,
        tokenizer,
        format,
        sampling,
    } = RlSetup::new(
        &RlSettings {
            prompts_input: PROMPTS.key,
            policy_input: MODEL.key,
            prompt_column: &spec.prompt_column,
            answer_columns: spec
                .reward
                .as_ref()
                .map(RewardSource::answer_columns)
                .unwrap_or_default(),
            template: &spec.template,
            max_new_tokens: spec.max_new_tokens,
            temperature: spec.temperature,
        },
        ctx,
        &device,
    )?;
    ctx.progress
        .set_message("loading the reference, reward and value models");
    let reference = backbone.valid();
    let (source, slot) = match (&spec.reward_model, &spec.reward) {
        (Some(model), _) => (
            RewardSource {
                model: Some(model.clone()),
                ..Default::default()
            },
            REWARD_MODEL.key,
        ),
        (None, reward) => (reward.clone().unwrap_or_default(), REWARD_SOURCE_MODEL.key),
    };
    let scorer = Scorer::new(&source, slot, ctx, &infer_device)?;
    let (value, value_from) = value_model(&scorer, slot, &tokenizer, ctx, &device)?;
    let answering = Answering {
        tok: &tokenizer,
        format: &format,
        sampling: &sampling,
        device: &infer_device,
    };
    let measured = measured_prompts(&train_prompts, &val_prompts);
    ctx.progress.set_message("measuring the reward (before)");
    let measured_before = measure(&reference, &answering, measured, &scorer, SAMPLES)?;
    let before = measured_before.as_ref().map(|m| m.mean);

    let (policy, adapted) = super::training::apply_peft(backbone, &spec.peft, &device)?;
    let objective = Ppo {
        spec,
        tokenizer: &tokenizer,
        format: &format,
        scorer: &scorer,
        reference: reference.clone(),
        sampling: sampling.clone(),
        infer_device: infer_device.clone(),
        current: RefCell::new(None),
        log: RefCell::new(Vec::new()),
    };
    let mut batches = Vec::new();
    for chunk in train_prompts.chunks(spec.train.batch_size.max(1)) {
        for pass in 0..spec.ppo_epochs.max(1) {
            batches.push(PpoBatch {
                prompts: chunk.to_vec(),
                pass,
            });
        }
    }
    // A reward that fails (a verifier program's crash) ends training: the panic comes back
    // as the error, and nothing is committed.
    let (trained, summary, _) = crate::diag::without_panic(|| {
        super::training::train_logged(
            PolicyValue { policy, value },
            &objective,
            &batches,
            &[],
            &spec.train,
            ctx,
        )
    })
    .map_err(|e| anyhow::anyhow!(e))??;
    let steps = objective.log.into_inner();
    for (i, m) in steps.iter().enumerate() {
        let mut e = serde_json::to_value(m)?;
        e["event"] = json!("ppo");
        e["step"] = json!(i + 1);
        ctx.log(e);
    }
    let inference = trained.policy.valid();
    ctx.progress.set_message("measuring the reward (after)");
    let measured_after = measure(&inference, &answering, measured, &scorer, SAMPLES)?;
    let after = measured_after.as_ref().map(|m| m.mean);
    let kl_after = sampled_kl(
        &inference,
        &reference,
        &tokenizer,
        &format,
        measured,
        &sampling,
        &infer_device,
    )?;

    let prompting = format.prompting(&spec.template, &tokenizer)?;
    super::training::save_policy(ctx, inference, &spec.peft, &config, &tokenizer, &prompting)?;

    let (metrics, warnings) = report(before, after, kl_after, &steps, &summary);
    let mut metrics = metrics::record(&metrics);
    // With several rewards, each on its own: a verifier's before/after is its accuracy.
    for (key, v) in per_reward_metrics(measured_before.as_ref(), measured_after.as_ref()) {
        metrics.insert(key, json!(Rounded(v)));
    }
    let answers = answer_rows(
        measured,
        &source,
        &scorer,
        measured_before.as_ref(),
        measured_after.as_ref(),
    );
    Ok(StageResult {
        metrics,
        warnings,
        summary: json!({
            "method": super::training::method_name(&spec.peft, &adapted),
            "value_model": value_from,
            "score_placement": "on the answer's last token (its end token when it has one)",
            "prompts": train_prompts.len(),
            "validation_prompts": val_prompts.len(),
            "score_before": before,
            "score_after": after,
            "kl_after": kl_after,
            "answers": answers,
            "first_step": steps.first(),
            "last_step": steps.last(),
            "training": summary,
        }),
    })
}

/// The value model: the reward model when it reads the policy's tokens, else the policy (a
/// fresh copy, its own parameters) with a new scalar head. With where it came from, in words.
fn value_model(
    scorer: &Scorer,
    reward_slot: &str,
    tokenizer: &Tokenizer,
    ctx: &StageContext,
    device: &Device,
) -> Result<(Model, &'static str)> {
    let rm_is_decoder_like_policy = scorer.model.as_ref().is_some_and(|(m, tok, _)| {
        m.backbone.is_decoder() && tok.get_vocab_size(true) == tokenizer.get_vocab_size(true)
    });
    Ok(if rm_is_decoder_like_policy {
        let v = load_checkpoint(ctx, reward_slot, None, false, device)?;
        (
            Model {
                backbone: v.backbone,
                score: v.score,
            },
            "the reward model",
        )
    } else {
        let v = load_checkpoint(ctx, MODEL.key, None, true, device)?;
        (
            Model::with_new_head(v.backbone, 1, device),
            "the policy with a new scalar head (the reward model reads other tokens)",
        )
    })
}

/// The stage's metrics and the pitfalls they show: the held-out score before and after, the
/// sampled KL after, and TRL's training curves in quarters.
fn report(
    before: Option<f64>,
    after: Option<f64>,
    kl_after: f64,
    steps: &[PpoStepMetrics],
    summary: &Summary,
) -> (PpoMetrics, Vec<String>) {
    // TRL's objective/scores and objective/kl over training, first and last quarter of steps.
    let quarter = |f: fn(&PpoStepMetrics) -> f64, last: bool| {
        let k = (steps.len() / 4).max(1).min(steps.len().max(1));
        let part = if last {
            &steps[steps.len().saturating_sub(k)..]
        } else {
            &steps[..k.min(steps.len())]
        };
        part.iter().map(f).sum::<f64>() / part.len().max(1) as f64
    };
    let metrics = PpoMetrics {
        training: Training::of(summary),
        score_before: before.zip(after).map(|(b, _)| Rounded(b)),
        score_after: before.zip(after).map(|(_, a)| Rounded(a)),
        kl_after: Rounded(kl_after),
        scores_first_quarter: Rounded(quarter(|m| m.scores, false)),
        scores_last_quarter: Rounded(quarter(|m| m.scores, true)),
        kl_last_quarter: Rounded(quarter(|m| m.kl, true)),
    };
    let mut warnings = Vec::new();
    if let (Some(b), Some(a)) = (before, after)
        && a <= b
    {
        warnings.push(format!(
            "the reward model's score on the held-out prompts did not rise ({b:.3} -> {a:.3}; on the training prompts {:.3} -> {:.3}): more prompts, more steps, or a value model that reads the policy's tokens may help",
            quarter(|m| m.scores, false),
            quarter(|m| m.scores, true)
        ));
    }
    if kl_after > 10.0 {
        warnings.push(format!(
            "the policy moved far from the reference (KL {kl_after:.2} nats per answer): reward hacking? raise kl_coef"
        ));
    }
    (metrics, warnings)
}

/// Mean KL (k1, summed over the answer) between `policy` and `reference` on `SAMPLES`
/// answers per prompt sampled from the policy as in training (fixed seed).
fn sampled_kl(
    policy: &Backbone,
    reference: &Backbone,
    tok: &Tokenizer,
    format: &Format,
    prompts: &[PromptRow],
    sampling: &SamplingConfig,
    device: &Device,
) -> Result<f64> {
    let cfg = SamplingConfig {
        seed: 0x5eed,
        ..sampling.clone()
    };
    let r = rollout(policy, tok, format, prompts, SAMPLES, &cfg, device)?;
    let b = r.batch(device);
    let (lp, mask) = token_logps(language_model(policy)?, &b, sampling.temperature);
    let (ref_lp, _) = token_logps(language_model(reference)?, &b, sampling.temperature);
    let (lp, ref_lp, mask) = (rows_of(lp), rows_of(ref_lp), rows_of(mask));
    let mut total = 0.0;
    for i in 0..lp.len() {
        let pos: Vec<usize> = (0..mask[i].len()).filter(|&k| mask[i][k] > 0.5).collect();
        let a: Vec<f64> = pos.iter().map(|&k| lp[i][k]).collect();
        let b: Vec<f64> = pos.iter().map(|&k| ref_lp[i][k]).collect();
        total += kl(&a, &b, KlEstimator::K1).iter().sum::<f64>();
    }
    Ok(total / lp.len().max(1) as f64)
}
