//! `grpo`: group relative policy optimisation, with TRL's GRPO family. At every step, each
//! prompt of the batch gets `group_size` sampled answers from the current policy; a reward
//! model, verifiers and rules score them; an answer's advantage is its reward against its
//! group's (scaled as `scale_rewards` says, or RLOO's leave-one-out); the clipped objective
//! (plus an optional k3 KL penalty to the starting policy) is aggregated over the answer tokens
//! as `loss_type` says. A step's rollouts are sampled in [`Objective::prepare`], before any of
//! its losses, from the backend RNG the trainer seeds per step, so sampling is reproducible and
//! a resumed run samples what the original would have; with `num_iterations` a rollout is kept
//! for its later passes, and no checkpoint falls while one is. The reward of greedy answers to
//! the validation prompts is reported before and after.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use anyhow::Result;
use burn::module::Module;
use burn::prelude::*;
use serde_json::json;
use tokenizers::Tokenizer;

use super::conversation::Format;
use super::metrics::{self, Rounded, Training};
use super::rollout::{
    Answering, PromptRow, RlSettings, RlSetup, Rollout, Scorer, answer_rows, measure,
    measured_prompts, per_reward_metrics, rollout, token_logps,
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
use crate::train::objectives::trained_lm;
use crate::train::rl::{
    Baseline, ImportanceSampling, LossType, PolicyLoss, ScaleRewards, advantages,
};
use crate::train::trainer::Objective;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `grpo`: for each prompt, `group_size` sampled answers scored by `reward`; each answer's
/// advantage is its reward against its group's; the clipped objective (with an optional k3
/// KL penalty, `beta`) trains the policy. The loss family is TRL's `GRPOConfig`: `loss_type`,
/// `epsilon_high`, `importance_sampling_level`, `scale_rewards`, `mask_truncated`,
/// `num_iterations`, and RLOO's baseline (`advantage: rloo`). Outputs: `model` and, with
/// LoRA, `adapter`.
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
    /// Clipping of the probability ratio: below at `1 - epsilon`, above at `1 + epsilon`
    /// unless `epsilon_high` says otherwise.
    #[serde(default = "default_epsilon")]
    pub epsilon: f64,
    /// The upper clip, `1 + epsilon_high` (DAPO's clip-higher; the paper uses 0.28).
    /// Default: `epsilon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_high: Option<f64>,
    /// Weight of the k3 KL penalty to the starting policy (0: none, TRL's default).
    #[serde(default, skip_serializing_if = "is_default")]
    pub beta: f64,
    /// How per-token losses become one number: `grpo` (each answer's token mean, then the
    /// mean over answers), `bnpo` (token mean over the micro-batch), `dr_grpo` (token sum /
    /// (answers x `max_new_tokens`)), `dapo` (token mean over the whole step). The default is
    /// `grpo`, hone's from before the family; TRL's default is now `dapo`. `aggregation` is
    /// the older name, still read.
    // Serialised under its older name: the action keys of recipes that wrote neither name
    // stay what they were.
    #[serde(
        default,
        rename(serialize = "aggregation", deserialize = "loss_type"),
        alias = "aggregation"
    )]
    pub loss_type: LossType,
    /// `token`: one probability ratio per token; `sequence`: one per answer, from the mean of
    /// its tokens' log-ratios (GSPO, whose paper clips at epsilon 3e-4 / epsilon_high 4e-4).
    #[serde(default, skip_serializing_if = "is_default")]
    pub importance_sampling_level: ImportanceSampling,
    /// What the reward minus its group's mean is divided by: the group's std (`group`), the
    /// step's (`batch`), or nothing (`none`, Dr. GRPO).
    #[serde(default, skip_serializing_if = "is_default")]
    pub scale_rewards: ScaleRewards,
    /// `group`: an answer's reward against its group's mean (GRPO); `rloo`: against the mean
    /// of the other answers of its group, unscaled (RLOO).
    #[serde(default, skip_serializing_if = "is_default")]
    pub advantage: Baseline,
    /// Answers cut at `max_new_tokens` (no end token) get no loss; they still count in their
    /// group's rewards (DAPO; TRL's `mask_truncated_completions`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub mask_truncated: bool,
    /// Optimizer steps per rollout (TRL's mu): each batch of sampled answers is trained on
    /// this many times, the probability ratio taken against the policy that sampled them.
    /// With more than 1, prompts are taken in order (a rollout's passes follow each other).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub num_iterations: usize,
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

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Prompts of one micro-batch, on one of its `num_iterations` passes.
#[derive(Debug, Clone)]
pub struct GrpoBatch {
    /// Which slice of the prompts: the key of its rollout while its passes last.
    pub chunk: usize,
    pub iteration: usize,
    pub prompts: Vec<PromptRow>,
}

/// A rollout and everything its passes need, from the step that sampled it.
struct Prepared {
    rollout: Rollout,
    /// One per answer.
    advantages: Vec<f32>,
    /// 0 for an answer cut at `max_new_tokens` (with `mask_truncated`), else 1.
    keep: Option<Vec<f32>>,
    /// Per-token log-probabilities under the sampling policy, for passes after the first.
    old: Option<burn::tensor::TensorData>,
    /// Per-token log-probabilities under the reference (with `beta`).
    reference: Option<burn::tensor::TensorData>,
    /// Answer tokens that carry loss.
    tokens: f64,
}

pub struct Grpo<'a> {
    pub tokenizer: &'a Tokenizer,
    pub format: &'a Format,
    pub scorer: &'a Scorer,
    /// The starting policy, for the KL penalty (`beta > 0`).
    pub reference: Option<Backbone>,
    pub sampling: SamplingConfig,
    pub group: usize,
    pub loss: PolicyLoss,
    pub baseline: Baseline,
    pub scale: ScaleRewards,
    pub mask_truncated: bool,
    pub iterations: usize,
    pub infer_device: Device,
    /// Mean reward of each micro-batch's samples, for the stage's report.
    pub rewards: RefCell<Vec<f64>>,
    /// The step's own metrics (TRL's names): each reward's mean, the share of answers cut at
    /// `max_new_tokens`, their mean length; with `beta` the mean k3 KL per answer token and
    /// with `num_iterations` the share of clipped ratios.
    pub step: RefCell<Vec<(String, f64)>>,
    /// Rollouts sampled and not yet trained on for the last time, by chunk.
    pending: RefCell<HashMap<usize, Prepared>>,
    /// The step's loss-carrying tokens and prompts: dapo's normaliser and the trainer's.
    step_tokens: Cell<f64>,
    step_prompts: Cell<f64>,
    /// Sums over the step's micro-batches: (k3 KL, its tokens), (low clips, high clips, tokens).
    kl_sums: Cell<(f32, f32)>,
    clip_sums: Cell<(f32, f32, f32)>,
    /// Whether a step was prepared since its metrics were last read.
    stepped: Cell<bool>,
    /// Answer tokens sampled and the seconds their generation took, over the run.
    pub generated: Cell<(f64, f64)>,
}

impl<'a> Grpo<'a> {
    /// The objective of `spec` over an answering policy and a reward.
    pub fn new(
        spec: &GrpoSpec,
        answering: (&'a Tokenizer, &'a Format, &'a Scorer),
        sampling: SamplingConfig,
        reference: Option<Backbone>,
        infer_device: Device,
    ) -> Self {
        let (tokenizer, format, scorer) = answering;
        Grpo {
            tokenizer,
            format,
            scorer,
            reference,
            loss: PolicyLoss {
                loss_type: spec.loss_type,
                epsilon_low: spec.epsilon,
                epsilon_high: spec.epsilon_high.unwrap_or(spec.epsilon),
                importance_sampling: spec.importance_sampling_level,
                beta: spec.beta,
                max_completion_length: sampling.max_new_tokens,
            },
            sampling,
            group: spec.group_size,
            baseline: spec.advantage,
            scale: spec.scale_rewards,
            mask_truncated: spec.mask_truncated,
            iterations: spec.num_iterations.max(1),
            infer_device,
            rewards: RefCell::new(Vec::new()),
            step: RefCell::new(Vec::new()),
            pending: RefCell::new(HashMap::new()),
            step_tokens: Cell::new(0.0),
            step_prompts: Cell::new(0.0),
            kl_sums: Cell::new((0.0, 0.0)),
            clip_sums: Cell::new((0.0, 0.0, 0.0)),
            stepped: Cell::new(false),
            generated: Cell::new((0.0, 0.0)),
        }
    }

    /// The batches of `prompts`: `batch_size` prompts each, every one `num_iterations` times
    /// in a row.
    pub fn batches(&self, prompts: &[PromptRow], batch_size: usize) -> Vec<GrpoBatch> {
        prompts
            .chunks(batch_size.max(1))
            .enumerate()
            .flat_map(|(chunk, p)| {
                (0..self.iterations).map(move |iteration| GrpoBatch {
                    chunk,
                    iteration,
                    prompts: p.to_vec(),
                })
            })
            .collect()
    }

    /// Samples and scores the answers to `chunks`, with a seed drawn from the (per-step
    /// seeded) backend RNG for each, and prepares their passes.
    fn sample(&self, model: &Backbone, chunks: &[&GrpoBatch]) {
        let device = model
            .devices()
            .into_iter()
            .next()
            .expect("the policy lives on a device");
        let policy = model.valid();
        let mut sampled = Vec::with_capacity(chunks.len());
        let mut generating_secs = 0.0;
        for b in chunks {
            // The sampling seed comes from the backend RNG, which the trainer seeds per step.
            let seed =
                Tensor::<1>::random([1], burn::tensor::Distribution::Uniform(0.0, 1.0), &device)
                    .into_scalar::<f32>();
            let sampling = SamplingConfig {
                seed: (seed as f64 * u32::MAX as f64) as u64,
                ..self.sampling.clone()
            };
            let generating = std::time::Instant::now();
            let r = rollout(
                &policy,
                self.tokenizer,
                self.format,
                &b.prompts,
                self.group,
                &sampling,
                &self.infer_device,
            )
            .expect("prompts were tokenized before training");
            generating_secs += generating.elapsed().as_secs_f64();
            // A reward that fails (a verifier program's crash) ends training: `run` turns the
            // panic back into the error, and nothing is committed.
            let components = r
                .scored(&b.prompts, self.scorer)
                .unwrap_or_else(|e| panic!("{e:#}"));
            sampled.push((b.chunk, r, components));
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let names = self.scorer.names();
        let (mut rewards, mut components, mut lengths, mut cut) = (
            Vec::new(),
            vec![Vec::new(); names.len()],
            Vec::new(),
            Vec::new(),
        );
        for (_, r, c) in &sampled {
            let sum = self.scorer.sum(c);
            self.rewards.borrow_mut().push(mean(&sum));
            rewards.extend(sum);
            for (all, one) in components.iter_mut().zip(c) {
                all.extend(one);
            }
            for (_, ids, _) in &r.completions {
                lengths.push(ids.len() as f64);
                cut.push(f64::from(u8::from(self.sampling.cut_off(ids))));
            }
        }
        let mut step = vec![("reward".to_owned(), mean(&rewards))];
        for (name, c) in names.into_iter().zip(&components) {
            step.push((format!("rewards/{name}/mean"), mean(c)));
        }
        step.push(("completions/mean_length".into(), mean(&lengths)));
        step.push(("completions/clipped_ratio".into(), mean(&cut)));
        // Sampled answer tokens per second of generation (scoring not included).
        let tokens = lengths.iter().sum::<f64>();
        step.push((
            "rollout/tokens_per_s".into(),
            tokens / generating_secs.max(1e-9),
        ));
        let (all_tokens, all_secs) = self.generated.get();
        self.generated
            .set((all_tokens + tokens, all_secs + generating_secs));
        *self.step.borrow_mut() = step;

        // Advantages over everything sampled this step (a `batch` scale sees all of it).
        let mut advantages = advantages(&rewards, self.group, self.baseline, self.scale)
            .into_iter()
            .map(|a| a as f32);
        let mut pending = self.pending.borrow_mut();
        for (chunk, r, _) in sampled {
            let n = r.completions.len();
            let keep = self.mask_truncated.then(|| {
                r.completions
                    .iter()
                    .map(|(_, ids, _)| f32::from(u8::from(!self.sampling.cut_off(ids))))
                    .collect::<Vec<f32>>()
            });
            let tokens = r
                .completions
                .iter()
                .enumerate()
                .map(|(i, (_, ids, _))| {
                    ids.len() as f64 * keep.as_ref().map_or(1.0, |k| f64::from(k[i]))
                })
                .sum();
            let on_infer = r.batch(&self.infer_device);
            let old = (self.iterations > 1).then(|| {
                token_logps(trained_lm(&policy), &on_infer, self.sampling.temperature)
                    .0
                    .into_data()
            });
            let reference = self
                .reference
                .as_ref()
                .filter(|_| self.loss.beta > 0.0)
                .map(|reference| {
                    token_logps(trained_lm(reference), &on_infer, self.sampling.temperature)
                        .0
                        .into_data()
                });
            pending.insert(
                chunk,
                Prepared {
                    advantages: advantages.by_ref().take(n).collect(),
                    rollout: r,
                    keep,
                    old,
                    reference,
                    tokens,
                },
            );
        }
    }
}

impl Objective<Backbone> for Grpo<'_> {
    type Batch = GrpoBatch;

    fn prepare(&self, model: &Backbone, step: &[&GrpoBatch]) {
        let mut fresh: Vec<&GrpoBatch> = step
            .iter()
            .filter(|b| !self.pending.borrow().contains_key(&b.chunk))
            .copied()
            .collect();
        fresh.dedup_by_key(|b| b.chunk);
        if !fresh.is_empty() {
            self.sample(model, &fresh);
        }
        let pending = self.pending.borrow();
        self.step_tokens
            .set(step.iter().map(|b| pending[&b.chunk].tokens).sum());
        self.step_prompts
            .set(step.iter().map(|b| b.prompts.len() as f64).sum());
        self.kl_sums.set((0.0, 0.0));
        self.clip_sums.set((0.0, 0.0, 0.0));
        self.stepped.set(true);
    }

    fn loss_sum(&self, model: &Backbone, batch: &GrpoBatch) -> Tensor<1> {
        let device = model
            .devices()
            .into_iter()
            .next()
            .expect("the policy lives on a device");
        let pending = self.pending.borrow();
        let p = pending
            .get(&batch.chunk)
            .expect("the trainer prepares a step's batches before their losses");
        let (lp, mut mask) = token_logps(
            trained_lm(model),
            &p.rollout.batch(&device),
            self.sampling.temperature,
        );
        let [n, t] = lp.dims();
        if let Some(keep) = &p.keep {
            let keep =
                Tensor::<1>::from_data(burn::tensor::TensorData::new(keep.clone(), [n]), &device);
            mask = mask * keep.reshape([n, 1]).expand([n, t]);
        }
        let adv = Tensor::<1>::from_data(
            burn::tensor::TensorData::new(p.advantages.clone(), [n]),
            &device,
        )
        .reshape([n, 1])
        .expand([n, t]);
        let old = match &p.old {
            Some(old) => Tensor::<2>::from_data(old.clone(), &device),
            None => lp.clone().detach(),
        };
        let reference = p
            .reference
            .as_ref()
            .map(|r| Tensor::<2>::from_data(r.clone(), &device));
        let terms = self.loss.loss(
            lp,
            old,
            reference,
            adv,
            mask.clone(),
            self.step_tokens.get(),
        );
        let tokens = mask.clone().sum().into_scalar::<f32>();
        if let Some(k3) = terms.kl {
            let (sum, count) = self.kl_sums.get();
            let kl = (k3 * mask.clone()).sum().into_scalar::<f32>();
            self.kl_sums.set((sum + kl, count + tokens));
        }
        if self.iterations > 1 {
            let share = |clipped: Tensor<2, Bool>| {
                (clipped.float() * mask.clone()).sum().into_scalar::<f32>()
            };
            let (low, high, count) = self.clip_sums.get();
            self.clip_sums.set((
                low + share(terms.clipped_low),
                high + share(terms.clipped_high),
                count + tokens,
            ));
        }
        drop(pending);
        if batch.iteration + 1 >= self.iterations {
            self.pending.borrow_mut().remove(&batch.chunk);
        }
        // The trainer divides by the step's prompts. dapo's loss is already over the step's
        // tokens, so it is scaled by all the step's prompts; the others by this batch's.
        let weight = match self.loss.loss_type {
            LossType::Dapo => self.step_prompts.get(),
            _ => batch.prompts.len() as f64,
        };
        terms.loss.mul_scalar(weight)
    }

    fn count(&self, batch: &GrpoBatch) -> f64 {
        batch.prompts.len() as f64
    }
    fn step_metrics(&self) -> Vec<(String, f64)> {
        let mut step = std::mem::take(&mut *self.step.borrow_mut());
        if !self.stepped.replace(false) {
            return step;
        }
        let (kl, tokens) = self.kl_sums.take();
        if self.loss.beta > 0.0 {
            // The mean k3 KL per answer token, logged as TRL logs `kl`.
            step.push(("kl".into(), f64::from(kl / tokens.max(1.0))));
        }
        let (low, high, tokens) = self.clip_sums.take();
        if self.iterations > 1 {
            let tokens = tokens.max(1.0);
            step.push(("clip_ratio/low_mean".into(), f64::from(low / tokens)));
            step.push(("clip_ratio/high_mean".into(), f64::from(high / tokens)));
            step.push((
                "clip_ratio/region_mean".into(),
                f64::from((low + high) / tokens),
            ));
        }
        step
    }
    fn unit(&self) -> &'static str {
        "prompts"
    }
    /// A rollout's passes follow each other.
    fn shuffle(&self) -> bool {
        self.iterations == 1
    }
    /// Not while a rollout has passes to go: its sampling policy is gone after a resume.
    fn resumable_after(&self, _batch: &GrpoBatch) -> bool {
        self.pending.borrow().is_empty()
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
    const DESCRIPTION: &'static str = "Group relative policy optimisation: groups of sampled answers per prompt, scored by a\nreward model, verifiers (math, think, command) and rules, advantages against each group's;\nTRL's loss family (grpo, bnpo, dr_grpo, dapo, clip-higher, GSPO, RLOO, several passes).";

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
        let mut problems = g.reward.problems(stage);
        if let Some(high) = g.epsilon_high
            && !(high >= 0.0 && high.is_finite())
        {
            problems.push(Problem::new(
                "epsilon_high",
                format!("`epsilon_high: {high}` is not a non-negative number"),
            ));
        }
        if g.num_iterations == 0 {
            problems.push(Problem::new(
                "num_iterations",
                "`num_iterations` must be at least 1: each rollout is trained on that many times",
            ));
        }
        if g.num_iterations > 1 && g.train.micro_batches_per_step() > 1 {
            problems.push(
                Problem::new(
                    "num_iterations",
                    "`num_iterations` above 1 takes one micro-batch per optimizer step: each pass over a rollout is its own step",
                )
                .help("raise `train.batch_size` instead of `train.grad_accum` (or use one device)"),
            );
        }
        if g.advantage == Baseline::Rloo && g.scale_rewards != ScaleRewards::Group {
            problems.push(Problem::new(
                "scale_rewards",
                "`scale_rewards` applies to group baselines; RLOO's advantages (`advantage: rloo`) are not scaled",
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

    fn custom_rewards(&self, g: &GrpoSpec) -> Vec<String> {
        g.reward.custom.clone()
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
    let objective = Grpo::new(
        spec,
        (&tokenizer, &format, &scorer),
        sampling.clone(),
        reference,
        infer_device.clone(),
    );
    let batches = objective.batches(&train_prompts, spec.train.batch_size);
    let (trained, summary, _) = crate::diag::without_panic(|| {
        super::training::train_logged(backbone, &objective, &batches, &[], &spec.train, ctx)
    })
    .map_err(|e| anyhow::anyhow!(e))??;
    let inference = trained.valid();
    ctx.progress.set_message("measuring the reward (after)");
    let after = measure(&inference, &answering, measured, &scorer, 1)?;
    let sampled = objective.rewards.take();
    let (tokens, secs) = objective.generated.get();
    let rollout_tokens_per_s = (secs > 0.0).then(|| tokens / secs);

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
    for (key, v) in per_reward_metrics(before.as_ref(), after.as_ref()) {
        metrics.insert(key, json!(Rounded(v)));
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
            // Wall-clock, so in the summary rather than the metrics (which the lockfile keeps).
            "rollout_tokens_per_s": rollout_tokens_per_s,
            "training": summary,
        }),
    })
}
