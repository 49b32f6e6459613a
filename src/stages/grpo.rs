//! `grpo`: group relative policy optimisation. At every step, each prompt of the batch gets
//! `group_size` sampled answers from the current policy; a reward model and/or rules score
//! them; an answer's advantage is its reward normalised within its group; the clipped
//! objective (plus an optional k3 KL penalty to the starting policy) is aggregated over the
//! answer tokens (up to and including the end token). The rollouts happen inside the shared
//! trainer's loss, whose backend RNG is seeded per step, so sampling is reproducible and a
//! resumed run samples what the original would have. Mean reward of greedy answers to the
//! validation prompts is reported before and after.

use std::cell::RefCell;

use anyhow::Result;
use burn::module::Module;
use burn::prelude::*;
use serde_json::json;
use tokenizers::Tokenizer;

use super::conversation::Format;
use super::metrics::{self, Rounded, Training};
use super::rollout::{
    Answering, Measured, PromptRow, RlSettings, RlSetup, Scorer, measure, measured_prompts,
    rollout, token_logps,
};
use crate::model::Backbone;
use crate::model::sampling::SamplingConfig;
use crate::spec::StageResult;
use crate::spec::context::StageContext;
use crate::spec::kind::{DATA_INPUT, InputSlot, Kind, Problem, TemplateOf};
use crate::spec::settings::PeftSpec;
use crate::spec::settings::PromptTemplate;
use crate::spec::settings::{
    Input, RewardSource, default_epsilon, default_rl_tokens, is_default, prompt_column,
};
use crate::store::ArtifactType;
use crate::train::rl::{GrpoAggregation, aggregate, clipped_policy_loss, group_advantages};
use crate::train::trainer::Objective;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `grpo`: for each prompt, `group_size` sampled answers scored by `reward`; each answer's
/// advantage is its reward normalised within its group; the clipped objective (with an
/// optional k3 KL penalty, `beta`) trains the policy. Outputs: `model` and, with LoRA,
/// `adapter`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpoSpec {
    pub model: Input,
    /// A dataset (or file) of prompts; `validation` prompts measure the reward before/after.
    pub prompts: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    pub reward: RewardSource,
    /// Answers sampled per prompt.
    #[serde(default = "default_group_size")]
    pub group_size: usize,
    #[serde(default = "default_rl_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_rl_temperature")]
    pub temperature: f64,
    /// Clipping of the probability ratio.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// Weight of the k3 KL penalty to the starting policy (0: none, TRL's default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub beta: f64,
    #[serde(default)]
    pub aggregation: crate::train::rl::GrpoAggregation,
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftSpec>,
    /// `batch_size` is prompts per step; an epoch is a pass over the prompts.
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

fn default_group_size() -> usize {
    8
}

fn default_rl_temperature() -> f64 {
    1.0
}

pub struct Grpo<'a> {
    pub tokenizer: &'a Tokenizer,
    pub format: &'a Format,
    pub scorer: &'a Scorer,
    /// The starting policy, for the KL penalty (`beta > 0`).
    pub reference: Option<Backbone>,
    pub sampling: SamplingConfig,
    pub group: usize,
    pub epsilon: f64,
    pub beta: f64,
    pub aggregation: GrpoAggregation,
    pub infer_device: Device,
    /// Mean reward of each step's samples, for the stage's report.
    pub rewards: RefCell<Vec<f64>>,
    /// The step's own metrics (TRL's names): each reward's mean, the share of answers cut at
    /// `max_new_tokens`, their mean length, and with `beta` the mean k3 KL per answer token.
    pub step: RefCell<Vec<(String, f64)>>,
}

impl Objective<Backbone> for Grpo<'_> {
    type Batch = Vec<PromptRow>;

    fn loss_sum(&self, model: &Backbone, prompts: &Vec<PromptRow>) -> Tensor<1> {
        let device = model
            .devices()
            .into_iter()
            .next()
            .expect("the policy lives on a device");
        // The sampling seed comes from the backend RNG, which the trainer seeds per step.
        let seed = Tensor::<1>::random([1], burn::tensor::Distribution::Uniform(0.0, 1.0), &device)
            .into_scalar::<f32>();
        let sampling = SamplingConfig {
            seed: (seed as f64 * u32::MAX as f64) as u64,
            ..self.sampling.clone()
        };
        let policy = model.valid();
        let r = rollout(
            &policy,
            self.tokenizer,
            self.format,
            prompts,
            self.group,
            &sampling,
            &self.infer_device,
        )
        .expect("prompts were tokenized before training");
        // A reward that fails (a verifier program's crash) ends training: `run` turns the
        // panic back into the error, and nothing is committed.
        let components = r
            .scored(prompts, self.scorer)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let rewards = self.scorer.sum(&components);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        self.rewards.borrow_mut().push(mean(&rewards));
        let lengths: Vec<f64> = r
            .completions
            .iter()
            .map(|(_, ids, _)| ids.len() as f64)
            .collect();
        let clipped: Vec<f64> = r
            .completions
            .iter()
            .map(|(_, ids, _)| {
                let stopped = ids
                    .last()
                    .is_some_and(|t| self.sampling.stop_tokens.contains(t));
                f64::from(u8::from(
                    !stopped && ids.len() >= self.sampling.max_new_tokens,
                ))
            })
            .collect();
        let mut step = vec![("reward".to_owned(), mean(&rewards))];
        for (name, c) in self.scorer.names().into_iter().zip(&components) {
            step.push((format!("rewards/{name}/mean"), mean(c)));
        }
        step.push(("completions/mean_length".into(), mean(&lengths)));
        step.push(("completions/clipped_ratio".into(), mean(&clipped)));
        *self.step.borrow_mut() = step;
        let advantages: Vec<f32> = rewards
            .chunks(self.group)
            .flat_map(group_advantages)
            .map(|a| a as f32)
            .collect();

        let batch = r.batch(&device);
        let (lp, mask) = token_logps(model, &batch, self.sampling.temperature);
        let [n, t] = lp.dims();
        let adv = Tensor::<1>::from_data(burn::tensor::TensorData::new(advantages, [n]), &device)
            .reshape([n, 1])
            .expand([n, t]);
        let (mut loss, _) = clipped_policy_loss(lp.clone(), lp.clone().detach(), adv, self.epsilon);
        if self.beta > 0.0
            && let Some(reference) = &self.reference
        {
            let (ref_lp, _) = token_logps(
                reference,
                &r.batch(&self.infer_device),
                self.sampling.temperature,
            );
            let ref_lp = Tensor::<2>::from_data(ref_lp.into_data(), &device);
            // k3 = exp(ref - lp) - (ref - lp) - 1, per token.
            let logr = ref_lp - lp;
            let k3 = (logr.clone().exp() - logr).sub_scalar(1.0);
            // Its mean over the answer tokens, logged as TRL logs `kl`.
            let tokens = mask.clone().sum().into_scalar::<f32>().max(1.0);
            let kl = (k3.clone().detach() * mask.clone())
                .sum()
                .into_scalar::<f32>()
                / tokens;
            self.step.borrow_mut().push(("kl".into(), f64::from(kl)));
            loss = loss + k3.mul_scalar(self.beta);
        }
        aggregate(loss, mask, self.aggregation, self.sampling.max_new_tokens)
            .mul_scalar(prompts.len() as f64)
    }

    fn count(&self, prompts: &Vec<PromptRow>) -> f64 {
        prompts.len() as f64
    }
    fn step_metrics(&self) -> Vec<(String, f64)> {
        std::mem::take(&mut *self.step.borrow_mut())
    }
    fn unit(&self) -> &'static str {
        "prompts"
    }

    /// The sampled rewards so far: the stage's metrics read all of them at the end.
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&*self.rewards.borrow()).unwrap_or_default()
    }

    fn restore(&self, state: serde_json::Value) -> Result<(), serde_json::Error> {
        *self.rewards.borrow_mut() = serde_json::from_value(state)?;
        Ok(())
    }
}

/// `kind: grpo`.
#[derive(Default)]
pub struct GrpoKind;

/// The policy to tune.
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model]);
/// The prompts to answer.
const PROMPTS: InputSlot = InputSlot::new("prompts", DATA_INPUT);
/// Only a reward model scores rollouts: anything else fails validation.
const REWARD_MODEL: InputSlot = InputSlot::new("reward.model", &[ArtifactType::RewardModel]);

impl Kind for GrpoKind {
    type Settings = GrpoSpec;
    const NAME: &'static str = "grpo";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str = "Group relative policy optimisation: groups of sampled answers per prompt, scored by a\nreward model, verifiers (math, think) and rules, advantages normalised within each group.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[MODEL, PROMPTS, REWARD_MODEL]
    }

    fn outputs(&self, g: &GrpoSpec) -> Vec<(&'static str, ArtifactType)> {
        super::training::policy_outputs(&g.peft)
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(crate::spec::kind::schema_of::<GrpoSpec>(generator))
    }

    fn check(&self, g: &GrpoSpec, stage: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let r = &g.reward;
        let names = r.names();
        if names.is_empty() {
            problems.push(
                Problem::at_key("reward", format!("`stages.{stage}.reward` gives no reward"))
                    .help("set `model: { from: <reward stage> }`, a verifier (`math: <answer column>`, `think: true`), or a rule: `exact_match: <answer column>`, `length: { min, max }`, `regex: ...`"),
            );
        }
        for (name, w) in &r.weights {
            if !names.contains(&name.as_str()) {
                problems.push(
                    Problem::new(
                        format!("reward.weights.{name}"),
                        format!("a weight for `{name}`, which is not one of this stage's rewards"),
                    )
                    .help(format!("rewards set here: {}", names.join(", "))),
                );
            } else if !w.is_finite() {
                problems.push(Problem::new(
                    format!("reward.weights.{name}"),
                    format!("the weight of `{name}` is not a finite number"),
                ));
            }
        }
        if let Some(re) = &r.regex
            && let Err(e) = regex::Regex::new(re)
        {
            problems.push(Problem::new(
                "reward.regex",
                format!("invalid regular expression: {e}"),
            ));
        }
        if let Some(l) = &r.length
            && l.min > l.max
        {
            problems.push(Problem::at_key(
                "reward.length",
                format!("length rule: min {} is above max {}", l.min, l.max),
            ));
        }
        if let Some(c) = &r.command
            && c.first().is_none_or(|p| p.trim().is_empty())
        {
            problems.push(
                Problem::new("reward.command", "`command` names no program")
                    .help("write the program and its arguments: `command: [python3, verify.py]`"),
            );
        }
        if let Some(t) = r.timeout
            && !(t > 0.0 && t.is_finite())
        {
            problems.push(Problem::new(
                "reward.timeout",
                format!("`timeout: {t}` is not a positive number of seconds"),
            ));
        }
        if g.group_size < 2 {
            problems.push(Problem::new(
                "group_size",
                "`group_size` must be at least 2: advantages compare answers within a group",
            ));
        }
        problems.extend(super::training::lora_problem(&g.peft));
        problems.extend(super::training::train_problems(&g.train));
        problems
    }

    fn argument_files(&self, g: &GrpoSpec) -> Vec<String> {
        let n = g.reward.command.as_ref().map_or(0, Vec::len);
        (0..n).map(|i| format!("reward.command.{i}")).collect()
    }

    fn prompt_template<'s>(&self, g: &'s GrpoSpec) -> Option<TemplateOf<'s, PromptTemplate>> {
        Some(TemplateOf::Own(&g.template))
    }

    fn run(&self, spec: &GrpoSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// What a GRPO stage records: the reward on held-out prompts before and after, and the mean
/// sampled reward over the first and last quarter of training.
#[derive(Serialize)]
struct GrpoMetrics {
    #[serde(flatten)]
    training: Training,
    #[serde(skip_serializing_if = "Option::is_none")]
    reward_before: Option<Rounded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reward_after: Option<Rounded>,
    sampled_reward_first_quarter: Rounded,
    sampled_reward_last_quarter: Rounded,
}

pub fn run(spec: &GrpoSpec, ctx: &mut StageContext) -> Result<StageResult> {
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
            answer_columns: spec.reward.answer_columns(),
            template: &spec.template,
            max_new_tokens: spec.max_new_tokens,
            temperature: spec.temperature,
        },
        ctx,
        &device,
    )?;
    let scorer = Scorer::new(&spec.reward, REWARD_MODEL.key, ctx, &infer_device)?;
    let answering = Answering {
        tok: &tokenizer,
        format: &format,
        sampling: &sampling,
        device: &infer_device,
    };
    let measured = measured_prompts(&train_prompts, &val_prompts);
    ctx.progress.set_message("measuring the reward (before)");
    let before = measure(&backbone.valid(), &answering, measured, &scorer, 1)?;
    let reference = (spec.beta > 0.0).then(|| backbone.valid());
    let (backbone, adapted) = super::training::apply_peft(backbone, &spec.peft, &device)?;
    let objective = Grpo {
        tokenizer: &tokenizer,
        format: &format,
        scorer: &scorer,
        reference,
        sampling: sampling.clone(),
        group: spec.group_size,
        epsilon: spec.epsilon,
        beta: spec.beta,
        aggregation: spec.aggregation,
        infer_device: infer_device.clone(),
        rewards: RefCell::new(Vec::new()),
        step: RefCell::new(Vec::new()),
    };
    let batches: Vec<Vec<PromptRow>> = train_prompts
        .chunks(spec.train.batch_size.max(1))
        .map(<[PromptRow]>::to_vec)
        .collect();
    let (trained, summary, _) = crate::diag::without_panic(|| {
        super::training::train_logged(backbone, &objective, &batches, &[], &spec.train, ctx)
    })
    .map_err(|e| anyhow::anyhow!(e))??;
    let inference = trained.valid();
    ctx.progress.set_message("measuring the reward (after)");
    let after = measure(&inference, &answering, measured, &scorer, 1)?;
    let sampled = objective.rewards.into_inner();

    let prompting = format.prompting(&spec.template, &tokenizer)?;
    super::training::save_policy(ctx, inference, &spec.peft, &config, &tokenizer, &prompting)?;

    let first_last = |v: &[f64]| {
        let k = (v.len() / 4).max(1);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        (
            mean(&v[..k.min(v.len())]),
            mean(&v[v.len().saturating_sub(k)..]),
        )
    };
    let (early, late) = first_last(&sampled);
    let mut metrics = metrics::record(&GrpoMetrics {
        training: Training::of(&summary),
        reward_before: before
            .as_ref()
            .zip(after.as_ref())
            .map(|(b, _)| Rounded(b.mean)),
        reward_after: before
            .as_ref()
            .zip(after.as_ref())
            .map(|(_, a)| Rounded(a.mean)),
        sampled_reward_first_quarter: Rounded(early),
        sampled_reward_last_quarter: Rounded(late),
    });
    // With several rewards, each on its own: a verifier's before/after is its accuracy.
    if let (Some(b), Some(a)) = (&before, &after)
        && b.components.len() > 1
    {
        for ((name, vb), (_, va)) in b.components.iter().zip(&a.components) {
            metrics.insert(format!("reward_{name}_before"), json!(Rounded(*vb)));
            metrics.insert(format!("reward_{name}_after"), json!(Rounded(*va)));
        }
    }
    let mut warnings = Vec::new();
    if let (Some(b), Some(a)) = (&before, &after)
        && a.mean <= b.mean
    {
        warnings.push(format!(
            "the reward did not rise ({:.3} -> {:.3}): more steps, a higher lr, or a larger group may help",
            b.mean, a.mean
        ));
    }
    let answers = answer_rows(
        measured,
        &spec.reward,
        &scorer,
        before.as_ref(),
        after.as_ref(),
    );
    Ok(StageResult {
        metrics,
        warnings,
        summary: json!({
            "method": super::training::method_name(&spec.peft, &adapted),
            "prompts": train_prompts.len(),
            "validation_prompts": val_prompts.len(),
            "group_size": spec.group_size,
            "reward_before": before.as_ref().map(|m| m.mean),
            "reward_after": after.as_ref().map(|m| m.mean),
            "answers": answers,
            "sampled_reward_per_step": sampled,
            "training": summary,
        }),
    })
}

/// The held-out answers before and after training, each with every reward's score, for
/// `hone show --examples` and the report (the first `ANSWERS_KEPT` prompts).
fn answer_rows(
    prompts: &[PromptRow],
    reward: &RewardSource,
    scorer: &Scorer,
    before: Option<&Measured>,
    after: Option<&Measured>,
) -> Vec<serde_json::Value> {
    let (Some(before), Some(after)) = (before, after) else {
        return Vec::new();
    };
    let reference_column = reward.math.as_ref().or(reward.exact_match.as_ref());
    let mut rows = Vec::new();
    for (b, a) in before
        .answers
        .iter()
        .zip(&after.answers)
        .take(super::conversation::ANSWERS_KEPT)
    {
        for (model, (p, text, scores)) in [("before", b), ("after", a)] {
            let prompt = &prompts[*p];
            let mut row = json!({
                "model": model,
                "prompt": prompt.prompt,
                "reference": reference_column.and_then(|c| prompt.text(c)),
                "answer": text,
            });
            for (name, s) in scorer.names().into_iter().zip(scores) {
                row[name] = (*s).into();
            }
            rows.push(row);
        }
    }
    rows
}
