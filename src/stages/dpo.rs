//! `dpo`: preference optimisation of a policy. Each pair's chosen and rejected completions are
//! scored by their summed log-probability under the policy and the reference; the loss is the
//! recipe's DPO variant (`train::preference`). The reference is the starting policy unless the
//! recipe names another: its log-probabilities are computed once, before training (equal to
//! a frozen copy, and to the same model with a fresh LoRA adapter off), and cached in the
//! store keyed by the reference model and the tokenized data, so a rerun with another `beta`
//! does not recompute them. Reported before and after on the validation pairs: TRL's
//! rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins and logps. KTO also
//! trains on unpaired feedback (`label_column`): single answers marked desirable or not, with
//! the implied rewards of each kind and their margin reported.

use std::path::Path;

use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde_json::json;
use tokenizers::Tokenizer;

use super::conversation::{
    Format, Preference, eos_token, one_turn, preference_rows, tokenize_conversations, truncate,
};
use super::guards;
use super::metrics::{self, Rounded, Training};
use super::model_input::{LoadedModel, load_checkpoint};
use crate::data::table::Table;
use crate::data::tokenized::Encoded;
use crate::model::Backbone;
use crate::model::chat::Message;
use crate::spec::StageResult;
use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::kind::{self, DATA_INPUT, InputSlot, Kind, Problem, TemplateOf};
use crate::spec::settings::PromptTemplate;
use crate::spec::settings::{
    Input, chosen_column, default_max_length, is_default, prompt_column, rejected_column,
};
use crate::spec::settings::{PeftSpec, Truncation};
use crate::store::ArtifactType;
use crate::train::objectives::{LmBatch, sequence_logps, trained_lm};
use crate::train::preference::{DpoMetrics, DpoParams, PairLogps, dpo_loss, dpo_metrics, kto_loss};
use crate::train::trainer::{Objective, Summary};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `dpo`: preference optimisation of a policy (usually an SFT model) on prompt / chosen /
/// rejected pairs. The reference is the
/// starting model (a frozen copy; with LoRA, the same model with its adapter off) unless
/// `reference` names another; its log-probabilities are computed once and cached in the store.
/// Outputs: `model` and, with LoRA, `adapter`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DpoSpec {
    /// The policy to start from: a model stage or a checkpoint.
    pub model: Input,
    /// Another reference model (default: the starting policy). Frozen whole: held in the dtype
    /// its checkpoint stores where the stage computes in it (bf16/f16), never as an f32 copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Input>,
    pub data: Input,
    #[serde(default)]
    pub loss: crate::train::preference::DpoLoss,
    /// KTO instead of a pairwise loss: every chosen answer is a desirable example and every
    /// rejected one an undesirable example, each scored on its own.
    #[serde(default, skip_serializing_if = "is_default")]
    pub kto: bool,
    #[serde(default = "default_beta")]
    pub beta: f64,
    /// Robust / conservative DPO: the share of pairs assumed mislabelled.
    #[serde(default, skip_serializing_if = "is_default")]
    pub label_smoothing: f64,
    /// SimPO's target reward margin.
    #[serde(default = "default_simpo_gamma")]
    pub simpo_gamma: f64,
    /// Compare with no reference model (its log-probabilities count as zero).
    #[serde(default, skip_serializing_if = "is_default")]
    pub reference_free: bool,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default = "chosen_column")]
    pub chosen_column: String,
    #[serde(default = "rejected_column")]
    pub rejected_column: String,
    /// Unpaired feedback for KTO (with `kto: true`), as thumbs-up/down logs give it: the column
    /// saying whether each answer is desirable (true or 1) or not (false or 0). The data then
    /// has prompt, completion and label columns instead of chosen and rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_column: Option<String>,
    /// The answer column of unpaired feedback (default `completion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_column: Option<String>,
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftSpec>,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

fn default_beta() -> f64 {
    0.1
}

fn default_simpo_gamma() -> f64 {
    0.5
}

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

/// The DPO family's objective. It also keeps each pair's log-probabilities of the current step,
/// so every step reports TRL's metrics (`rewards/chosen`, `rewards/rejected`,
/// `rewards/margins`, `rewards/accuracies`, `logps/chosen`, `logps/rejected`).
pub struct Dpo {
    pub params: DpoParams,
    /// (policy chosen, policy rejected, reference chosen, reference rejected) per pair.
    step_logps: std::cell::RefCell<Vec<[f64; 4]>>,
}

impl Dpo {
    pub fn new(params: DpoParams) -> Dpo {
        Dpo {
            params,
            step_logps: Default::default(),
        }
    }
}

impl Objective<Backbone> for Dpo {
    type Batch = PrefBatch;
    fn loss_sum(&self, model: &Backbone, b: &PrefBatch) -> Tensor<1> {
        let model = trained_lm(model);
        let (c, len_c) = sequence_logps(model, &b.chosen);
        let (r, len_r) = sequence_logps(model, &b.rejected);
        let values = |t: &Tensor<1>| -> Vec<f64> {
            t.clone()
                .detach()
                .into_data()
                .iter::<f32>()
                .map(f64::from)
                .collect()
        };
        let (pc, pr, rc, rr) = (
            values(&c),
            values(&r),
            values(&b.ref_chosen),
            values(&b.ref_rejected),
        );
        self.step_logps
            .borrow_mut()
            .extend((0..pc.len()).map(|i| [pc[i], pr[i], rc[i], rr[i]]));
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
        dpo_loss(&policy, Some(&reference), &self.params).sum()
    }
    fn count(&self, b: &PrefBatch) -> f64 {
        b.n
    }
    fn unit(&self) -> &'static str {
        "pairs"
    }
    fn step_metrics(&self) -> Vec<(String, f64)> {
        let seen = std::mem::take(&mut *self.step_logps.borrow_mut());
        if seen.is_empty() {
            return Vec::new();
        }
        let column = |k: usize| seen.iter().map(|v| v[k]).collect::<Vec<_>>();
        let (pc, pr, rc, rr) = (column(0), column(1), column(2), column(3));
        let m = dpo_metrics((&pc, &pr), (&rc, &rr), self.params.beta);
        vec![
            ("rewards/chosen".into(), m.rewards_chosen),
            ("rewards/rejected".into(), m.rewards_rejected),
            ("rewards/accuracies".into(), m.rewards_accuracies),
            ("rewards/margins".into(), m.rewards_margins),
            ("logps/chosen".into(), m.logps_chosen),
            ("logps/rejected".into(), m.logps_rejected),
        ]
    }
}

pub struct Kto {
    pub beta: f64,
}

impl Objective<Backbone> for Kto {
    type Batch = KtoBatch;
    fn loss_sum(&self, model: &Backbone, b: &KtoBatch) -> Tensor<1> {
        let (lp, _) = sequence_logps(trained_lm(model), &b.seqs);
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
    fn unit(&self) -> &'static str {
        "examples"
    }
}

/// One preference pair.
type Pair = Preference;

/// One answer of unpaired feedback, marked desirable or not (KTO).
#[derive(Debug, Clone, serde::Serialize)]
struct Labelled {
    prompt: String,
    completion: String,
    desirable: bool,
}

/// The preference data of a stage, by split: pairs, or unpaired feedback.
enum Feedback {
    Pairs(Vec<Pair>, Vec<Pair>),
    Unpaired(Vec<Labelled>, Vec<Labelled>),
}

/// `kind: dpo`.
#[derive(Default)]
pub struct DpoKind;

/// The policy to tune (and, without `reference`, the frozen reference too).
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model]);
/// A frozen reference other than the starting policy.
const REFERENCE: InputSlot = InputSlot::new("reference", &[ArtifactType::Model]);
/// Preference pairs, or unpaired feedback for KTO.
const DATA: InputSlot = InputSlot::new("data", DATA_INPUT);

impl Kind for DpoKind {
    type Settings = DpoSpec;
    const NAME: &'static str = "dpo";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str = "Direct preference optimisation and its variants (IPO, hinge, robust, conservative,\nSimPO, ORPO, KTO) on preference data.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[MODEL, REFERENCE, DATA]
    }

    fn outputs(&self, d: &DpoSpec) -> Vec<(&'static str, ArtifactType)> {
        super::training::policy_outputs(&d.peft)
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(crate::spec::kind::schema_of::<DpoSpec>(generator))
    }

    fn check(&self, d: &DpoSpec, _stage: &str) -> Vec<Problem> {
        use crate::train::preference::DpoLoss;
        let mut problems = Vec::new();
        if !(d.beta > 0.0 && d.beta.is_finite()) {
            problems.push(Problem::new(
                "beta",
                format!("`beta` must be above 0, not {}", d.beta),
            ));
        }
        if !(0.0..0.5).contains(&d.label_smoothing) {
            problems.push(Problem::new(
                "label_smoothing",
                "`label_smoothing` is a share of mislabelled pairs in [0, 0.5)",
            ));
        }
        if d.reference.is_some() && (!d.loss.uses_reference() || d.reference_free) {
            problems.push(
                Problem::at_key(
                    "reference",
                    "this loss uses no reference model, so `reference` would be ignored",
                )
                .help("remove `reference`, or pick a loss that compares with one"),
            );
        }
        if d.kto && d.loss != DpoLoss::Sigmoid {
            problems.push(Problem::at_key(
                "loss",
                "`kto: true` replaces `loss`; set one or the other",
            ));
        }
        if d.label_column.is_some() && !d.kto {
            problems.push(
                Problem::at_key(
                    "label_column",
                    "`label_column` is unpaired feedback, which only KTO trains on",
                )
                .help("add `kto: true`, or give pairs (prompt, chosen, rejected) without `label_column`"),
            );
        }
        if d.completion_column.is_some() && d.label_column.is_none() {
            problems.push(
                Problem::at_key(
                    "completion_column",
                    "`completion_column` names the answers of unpaired feedback, but there is no `label_column`",
                )
                .help("add `label_column: label` (and `kto: true`), or remove `completion_column`"),
            );
        }
        problems.extend(super::training::lora_problem(&d.peft));
        problems.extend(super::training::length_problem(d.max_length));
        problems.extend(super::training::train_problems(&d.train));
        problems
    }

    fn prompt_template<'s>(&self, d: &'s DpoSpec) -> Option<TemplateOf<'s, PromptTemplate>> {
        Some(TemplateOf::Own(&d.template))
    }

    fn examples(
        &self,
        spec: &DpoSpec,
        ctx: &mut StageContext,
        n: usize,
    ) -> Option<Result<Vec<kind::EncodedExample>>> {
        Some(examples(spec, ctx, n))
    }

    fn run(&self, spec: &DpoSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// The first `n` training pairs (both answers) or unpaired answers, as `run` encodes them.
fn examples(spec: &DpoSpec, ctx: &mut StageContext, n: usize) -> Result<Vec<kind::EncodedExample>> {
    let device = super::training::stage_device(ctx, false)?;
    let feedback = read_feedback(spec, ctx)?;
    let policy = load_checkpoint(ctx, MODEL.key, None, true, &device)?;
    let format = Format::new(&spec.template, policy.chat_template.as_ref());
    let eos = eos_token(&policy.tokenizer, &policy.config);
    let mut convs = Vec::new();
    let mut labels = Vec::new();
    match &feedback {
        Feedback::Pairs(train, _) => {
            for (k, p) in train.iter().take(n).enumerate() {
                for (side, answer) in [("chosen", &p.chosen), ("rejected", &p.rejected)] {
                    let mut conv = p.history.clone();
                    conv.push(Message::new("assistant", answer));
                    convs.push(conv);
                    labels.push(format!("pair {} of {}, {side}", k + 1, train.len()));
                }
            }
        }
        Feedback::Unpaired(train, _) => {
            for (k, x) in train.iter().take(n).enumerate() {
                convs.push(one_turn(&x.prompt, &x.completion));
                let kind = if x.desirable {
                    "desirable"
                } else {
                    "undesirable"
                };
                labels.push(format!("answer {} of {}, {kind}", k + 1, train.len()));
            }
        }
    }
    let whole = tokenize_conversations(&policy.tokenizer, &format, &convs, eos)?;
    // Prompts are cut, not answers, as in training.
    super::conversation::shown_examples(
        &policy.tokenizer,
        whole,
        spec.max_length,
        Truncation::Prompt,
        labels.into_iter(),
    )
}

pub fn run(spec: &DpoSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::training::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    ctx.progress.set_message("reading the preference data");
    let feedback = read_feedback(spec, ctx)?;
    ctx.progress.set_message("loading the policy");
    let policy = load_checkpoint(ctx, MODEL.key, None, true, &device)?;
    let format = Format::new(&spec.template, policy.chat_template.as_ref());
    let eos = eos_token(&policy.tokenizer, &policy.config);
    let ((train_c, train_r), (val_c, val_r)) =
        encode_feedback(&feedback, &policy.tokenizer, &format, eos, spec.max_length)?;

    // Reference log-probabilities, once, cached by reference model and tokens.
    let reference_needed = spec.kto || (spec.loss.uses_reference() && !spec.reference_free);
    let (ref_rel, reference) = match (&spec.reference, reference_needed) {
        (Some(_), true) => (
            REFERENCE.key,
            Some(load_checkpoint(
                ctx,
                REFERENCE.key,
                None,
                true,
                &infer_device,
            )?),
        ),
        (None, true) => (MODEL.key, None),
        (_, false) => (MODEL.key, None),
    };
    let ref_model: Option<Backbone> = match (&reference, reference_needed) {
        (Some(r), _) => Some(r.backbone.clone()),
        (None, true) => Some(policy.backbone.valid()),
        (None, false) => None,
    };
    let mut ref_identity = super::training::input_identity(ctx.input(ref_rel)?);
    // A reference held in its stored low precision computes other log-probabilities.
    if let Some(r) = &reference {
        let dtype = r.backbone.token_table().val().dtype();
        if dtype != burn::tensor::DType::F32 {
            ref_identity.push_str(&format!(";held in {dtype:?}"));
        }
    }
    let ref_logps = |enc: &[Encoded]| {
        reference_logps(
            ref_model.as_ref(),
            &ref_identity,
            &policy.tokenizer,
            ctx.token_cache.as_deref(),
            enc,
            &infer_device,
        )
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
    // KTO's examples: the pairs' answers interleaved (each batch holds both kinds), or the
    // unpaired answers as labelled.
    let kto_rows = |c: &[Encoded], r: &[Encoded], ref_c: &[f32], ref_r: &[f32], labels: &[bool]| {
        if r.is_empty() {
            c.iter()
                .zip(ref_c)
                .zip(labels)
                .map(|((e, x), d)| (e.clone(), *x, *d))
                .collect::<Vec<_>>()
        } else {
            c.iter()
                .zip(ref_c)
                .zip(r.iter().zip(ref_r))
                .flat_map(|((ec, xc), (er, xr))| {
                    [(ec.clone(), *xc, true), (er.clone(), *xr, false)]
                })
                .collect()
        }
    };
    let (train_labels, val_labels): (Vec<bool>, Vec<bool>) = match &feedback {
        Feedback::Pairs(..) => (Vec::new(), Vec::new()),
        Feedback::Unpaired(t, v) => (
            t.iter().map(|l| l.desirable).collect(),
            v.iter().map(|l| l.desirable).collect(),
        ),
    };
    // KTO's held-out examples (unpaired feedback always trains with KTO: validated).
    let val_kto = if spec.kto {
        kto_rows(&val_c, &val_r, &ref_val_c, &ref_val_r, &val_labels)
    } else {
        Vec::new()
    };
    let val_infer = match &feedback {
        Feedback::Pairs(..) => {
            pref_batches(&val_c, &val_r, &ref_val_c, &ref_val_r, batch, &infer_device)
        }
        Feedback::Unpaired(..) => Vec::new(),
    };
    let val_kto_infer = match &feedback {
        Feedback::Pairs(..) => Vec::new(),
        Feedback::Unpaired(..) => kto_batches(&val_kto, batch, &infer_device),
    };
    let measure_now = |m: &Backbone| match &feedback {
        Feedback::Pairs(..) => Measured::Pairs(measure(m, &val_infer, spec.beta)),
        Feedback::Unpaired(..) => Measured::Unpaired(measure_kto(m, &val_kto_infer, spec.beta)),
    };
    let before = measure_now(&policy.backbone.valid());

    let LoadedModel {
        backbone,
        config,
        tokenizer,
        ..
    } = policy;
    let (backbone, adapted) = super::training::apply_peft(backbone, &spec.peft, &device)?;
    let (trained, summary, _) = if spec.kto {
        let train_kto = kto_rows(
            &train_c,
            &train_r,
            &ref_train_c,
            &ref_train_r,
            &train_labels,
        );
        let train_b = kto_batches(&train_kto, batch, &device);
        let val_b = kto_batches(&val_kto, batch, &device);
        super::training::train_logged(
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
        super::training::train_logged(
            backbone,
            &Dpo::new(params),
            &train_b,
            &val_b,
            &spec.train,
            ctx,
        )?
    };
    let inference = trained.valid();
    let after = measure_now(&inference);

    let prompting = format.prompting(&spec.template, &tokenizer)?;
    super::training::save_policy(ctx, inference, &spec.peft, &config, &tokenizer, &prompting)?;

    let (metrics, warnings) = report(&before, &after, &summary);
    let (train_n, val_n) = match &feedback {
        Feedback::Pairs(t, v) => (t.len(), v.len()),
        Feedback::Unpaired(t, v) => (t.len(), v.len()),
    };
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings,
        summary: json!({
            "loss": if spec.kto { "kto".to_owned() } else { format!("{:?}", spec.loss).to_lowercase() },
            "beta": spec.beta,
            "reference": if !reference_needed { "none" } else if spec.reference.is_some() { "the `reference` input" } else if adapted.is_empty() { "a frozen copy of the starting policy" } else { "the starting policy (LoRA adapter off)" },
            "method": super::training::method_name(&spec.peft, &adapted),
            "data": if matches!(feedback, Feedback::Unpaired(..)) { "unpaired feedback" } else { "pairs" },
            "train_examples": train_n,
            "validation_examples": val_n,
            "before": before,
            "after": after,
            "training": summary,
        }),
    })
}

/// The preference data: pairs, or (with `label_column`) unpaired answers labelled desirable
/// or not, split into training and validation.
fn read_feedback(spec: &DpoSpec, ctx: &StageContext) -> Result<Feedback> {
    Ok(match &spec.label_column {
        Some(label) => {
            let (train, val) = labelled(ctx.input(DATA.key)?, spec, label)?;
            if !train.iter().any(|l| l.desirable) || !train.iter().any(|l| !l.desirable) {
                bail!(
                    "KTO needs desirable and undesirable answers in the training data; column `{label}` has only {}",
                    if train.iter().any(|l| l.desirable) {
                        "desirable ones"
                    } else {
                        "undesirable ones (or none)"
                    }
                );
            }
            Feedback::Unpaired(train, val)
        }
        None => {
            let (train, val) = pairs(ctx.input(DATA.key)?, spec)?;
            if train.is_empty() {
                bail!(
                    "no preference pairs (columns `{}`, `{}`, `{}`)",
                    spec.prompt_column,
                    spec.chosen_column,
                    spec.rejected_column
                );
            }
            Feedback::Pairs(train, val)
        }
    })
}

/// The chosen and the rejected answers of one split, tokenized (unpaired: the answers, and
/// none).
type Sides = (Vec<Encoded>, Vec<Encoded>);

/// The sequences scored, tokenized: per split (training, validation), the chosen then the
/// rejected answers of the pairs (as two lists), or the unpaired answers (as one, the other
/// empty).
fn encode_feedback(
    feedback: &Feedback,
    tokenizer: &Tokenizer,
    format: &Format,
    eos: Option<u32>,
    max_length: usize,
) -> Result<(Sides, Sides)> {
    let tokenize = |convs: Vec<Vec<Message>>| -> Result<Vec<Encoded>> {
        let whole = tokenize_conversations(tokenizer, format, &convs, eos)?;
        // Cut prompts, not answers: the answer is what is compared.
        Ok(truncate(whole, max_length, Truncation::Prompt).0)
    };
    let answered = |history: &[Message], answer: &str| -> Vec<Message> {
        let mut conv = history.to_vec();
        conv.push(Message::new("assistant", answer));
        conv
    };
    let sides = |pairs: &[Pair]| -> Result<Sides> {
        Ok((
            tokenize(
                pairs
                    .iter()
                    .map(|p| answered(&p.history, &p.chosen))
                    .collect(),
            )?,
            tokenize(
                pairs
                    .iter()
                    .map(|p| answered(&p.history, &p.rejected))
                    .collect(),
            )?,
        ))
    };
    let answers = |l: &[Labelled]| -> Result<Sides> {
        Ok((
            tokenize(
                l.iter()
                    .map(|x| one_turn(&x.prompt, &x.completion))
                    .collect(),
            )?,
            Vec::new(),
        ))
    };
    Ok(match feedback {
        Feedback::Pairs(train, val) => (sides(train)?, sides(val)?),
        Feedback::Unpaired(train, val) => (answers(train)?, answers(val)?),
    })
}

/// Reference log-probabilities of `enc`, computed once: cached by the reference model's
/// identity and the tokens. Without a reference (reference-free losses) each is 0.
fn reference_logps(
    reference: Option<&Backbone>,
    identity: &str,
    tokenizer: &Tokenizer,
    cache: Option<&Path>,
    enc: &[Encoded],
    device: &Device,
) -> Result<Vec<f32>> {
    let Some(m) = reference else {
        return Ok(vec![0.0; enc.len()]);
    };
    let m = super::model_input::language_model(m)?;
    let seqs: Vec<(Vec<u32>, Vec<bool>)> = enc
        .iter()
        .map(|e| (e.ids.clone(), e.targets.clone()))
        .collect();
    let key =
        crate::data::tokenized::key(tokenizer, &json!({ "reference_logps": identity }), &seqs)?;
    crate::data::tokenized::cached_floats(cache, &key, || {
        let mut out = Vec::with_capacity(enc.len());
        for chunk in enc.chunks(8) {
            let (lp, _) = sequence_logps(m, &lm_batch(chunk, device));
            out.extend(
                lp.try_into_vec_as::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
        }
        Ok(out)
    })
}

/// The stage's metrics (held-out figures before and after) and the pitfalls they show.
fn report(
    before: &Measured,
    after: &Measured,
    summary: &Summary,
) -> (DpoStageMetrics, Vec<String>) {
    let held_out = match (before, after) {
        (Measured::Pairs(Some(b)), Measured::Pairs(Some(a))) => Some(HeldOut::Pairs {
            accuracy_before: Rounded(b.rewards_accuracies),
            accuracy_after: Rounded(a.rewards_accuracies),
            margin_before: Rounded(b.rewards_margins),
            margin_after: Rounded(a.rewards_margins),
        }),
        (Measured::Unpaired(Some(b)), Measured::Unpaired(Some(a))) => Some(HeldOut::Unpaired {
            margin_before: Rounded(b.margin),
            margin_after: Rounded(a.margin),
            desirable_reward_after: Rounded(a.desirable),
            undesirable_reward_after: Rounded(a.undesirable),
        }),
        _ => None,
    };
    let metrics = DpoStageMetrics {
        training: Training::of(summary),
        held_out,
    };
    let mut warnings = guards::fit_warnings(summary);
    let lost = match after {
        Measured::Pairs(Some(a)) => Some((a.rewards_chosen, a.rewards_rejected)),
        Measured::Unpaired(Some(a)) => Some((a.desirable, a.undesirable)),
        _ => None,
    };
    if let Some((good, bad)) = lost
        && good < 0.0
        && bad < good
    {
        warnings.push(format!(
            "both the preferred and the rejected answers lost probability (rewards {good:.3} and {bad:.3}): training pushes the rejected ones down faster; a lower lr or beta keeps the preferred ones likely"
        ));
    }
    (metrics, warnings)
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

/// KTO batches of labelled sequences with their reference log-probabilities.
fn kto_batches(rows: &[(Encoded, f32, bool)], batch: usize, device: &Device) -> Vec<KtoBatch> {
    rows.chunks(batch)
        .map(|c| {
            let enc: Vec<Encoded> = c.iter().map(|(e, _, _)| e.clone()).collect();
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

/// What a preference stage records.
#[derive(Serialize)]
struct DpoStageMetrics {
    #[serde(flatten)]
    training: Training,
    #[serde(flatten)]
    held_out: Option<HeldOut>,
}

/// The held-out figures after training beside those before: TRL's reward accuracy and margin
/// on pairs, or the implied rewards of desirable and undesirable answers for KTO.
#[derive(Serialize)]
#[serde(untagged)]
enum HeldOut {
    Pairs {
        accuracy_before: Rounded,
        accuracy_after: Rounded,
        margin_before: Rounded,
        margin_after: Rounded,
    },
    Unpaired {
        margin_before: Rounded,
        margin_after: Rounded,
        desirable_reward_after: Rounded,
        undesirable_reward_after: Rounded,
    },
}

/// What the held-out data says before and after: TRL's DPO metrics on pairs, or the implied
/// rewards of desirable and undesirable answers on unpaired feedback.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
enum Measured {
    Pairs(Option<DpoMetrics>),
    Unpaired(Option<KtoMetrics>),
}

/// Mean implied reward `beta (log pi - log pi_ref)` of desirable and of undesirable answers,
/// and their difference (the margin).
#[derive(Debug, serde::Serialize)]
struct KtoMetrics {
    desirable: f64,
    undesirable: f64,
    margin: f64,
}

fn measure_kto(model: &Backbone, batches: &[KtoBatch], beta: f64) -> Option<KtoMetrics> {
    let model = model.language_model()?;
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for b in batches {
        let lp = sequence_logps(model, &b.seqs)
            .0
            .try_into_vec_as::<f32>()
            .ok()?;
        let reference = b.reference.clone().try_into_vec_as::<f32>().ok()?;
        let desirable = b.desirable.clone().into_data().try_to_vec::<bool>().ok()?;
        for ((p, r), d) in lp.iter().zip(&reference).zip(desirable) {
            let reward = beta * f64::from(p - r);
            if d {
                good.push(reward)
            } else {
                bad.push(reward)
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (!good.is_empty() && !bad.is_empty()).then(|| KtoMetrics {
        desirable: mean(&good),
        undesirable: mean(&bad),
        margin: mean(&good) - mean(&bad),
    })
}

/// TRL's DPO metrics on held-out pairs (before training the policy equals the reference, so
/// rewards and margins start at 0).
fn measure(model: &Backbone, batches: &[PrefBatch], beta: f64) -> Option<DpoMetrics> {
    let model = model.language_model()?;
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
    let of = |t: &Table| {
        preference_rows(
            t,
            &spec.prompt_column,
            &spec.chosen_column,
            &spec.rejected_column,
            "the dpo stage reads column",
        )
        .map(|rows| rows.into_iter().map(|(p, _)| p).collect())
    };
    crate::stages::tables::split_rows(input, of)
}

/// Unpaired feedback of the train and validation splits: prompt, answer and a desirable
/// label (true/false or 1/0).
fn labelled(
    input: &ResolvedInput,
    spec: &DpoSpec,
    label: &str,
) -> Result<(Vec<Labelled>, Vec<Labelled>)> {
    let completion = spec.completion_column.as_deref().unwrap_or("completion");
    let of = |t: &Table| -> Result<Vec<Labelled>> {
        let idx = t.indices(
            &[
                spec.prompt_column.clone(),
                completion.to_owned(),
                label.to_owned(),
            ],
            "the dpo stage reads column",
        )?;
        let mut out = Vec::new();
        for r in &t.rows {
            let (Some(prompt), Some(answer)) =
                (r.values[idx[0]].as_str(), r.values[idx[1]].as_str())
            else {
                continue;
            };
            let desirable = match &r.values[idx[2]] {
                serde_json::Value::Bool(b) => *b,
                serde_json::Value::Number(n) if n.as_f64() == Some(1.0) => true,
                serde_json::Value::Number(n) if n.as_f64() == Some(0.0) => false,
                other => {
                    return Err(crate::diag::input_error(
                        crate::diag::Diagnostic::new(format!(
                            "{}: `{label}` is {other}; a label is true or false (or 1 or 0)",
                            t.origin(r)
                        ))
                        .help("mark each answer desirable (true, 1) or undesirable (false, 0)"),
                    ));
                }
            };
            out.push(Labelled {
                prompt: prompt.to_owned(),
                completion: answer.to_owned(),
                desirable,
            });
        }
        Ok(out)
    };
    crate::stages::tables::split_rows(input, of)
}
