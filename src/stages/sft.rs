//! `sft`: supervised fine-tuning on prompt/response pairs. The loss covers response tokens only
//! (completion-only, TRL's default); full fine-tuning or LoRA. Exact-match accuracy of greedy
//! answers to the validation prompts is measured before and after, so "did it learn to answer"
//! is a number. Outputs `model` (an HF directory; with LoRA on a checkpoint, its adapter on that
//! base, `model::layered`) and, with LoRA, `adapter`.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde_json::{Value, json};

use super::classify;
use super::conversation::{
    Conversations, Format, before_and_after, conversation_batches, conversation_keys, eos_token,
    greedy_answers, one_turn, parse_messages, tokenize_conversations, truncate,
};
use super::guards;
use super::metrics::{self, Forgetting, Rounded, TrainLoss, Training};
use super::model_input::{LoadedModel, load_model_input};
use crate::data::table::Table;
use crate::model::sampling::SamplingConfig;
use crate::model::{Backbone, Model, lora, save_hf_dir};
use crate::spec::StageResult;
use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::kind::{self, DATA_INPUT, InputSlot, Kind, Problem, TemplateOf};
use crate::spec::settings::{
    ForgettingProbe, Input, ModelInput, Replay, default_eval_tokens, default_max_length,
    is_default, label_column, prompt_column, response_column, text_column,
};
use crate::spec::settings::{MissingPolicy, PeftSpec, PromptTemplate, Truncation};
use crate::store::ArtifactType;
use crate::train::objectives::{CausalLm, LmBatch};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What `sft` trains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SftTask {
    /// Prompt/response pairs, loss on the response (instruction tuning).
    #[default]
    Instruction,
    /// Text/label pairs through a classification head (e.g. sentiment).
    Classification,
    /// OpenAI-style conversations (a `messages` list of `{ role, content }`), rendered with
    /// the chat template; the loss covers the assistant turns.
    Chat,
}

/// `sft`: supervised fine-tuning. Instruction data trains the response tokens only;
/// classification data trains a head on the text. Outputs: `model` (HF directory; with LoRA on
/// a checkpoint, the adapter stored on its base, which readers fold in) and, with LoRA,
/// `adapter` (PEFT layout).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftSpec {
    #[serde(default)]
    pub task: SftTask,
    pub model: ModelInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Input>,
    /// A dataset stage with prompt and response columns (`train`; `validation` is evaluated).
    pub data: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default = "response_column")]
    pub response_column: String,
    /// Chat: the column holding each conversation's messages.
    #[serde(default = "messages_column", skip_serializing_if = "is_messages")]
    pub messages_column: String,
    /// Classification: the text and label columns (labels: integers, or text mapped to ids in
    /// sorted order).
    #[serde(default = "text_column")]
    pub text_column: String,
    #[serde(default = "label_column")]
    pub label_column: String,
    /// Classification: number of labels (default: from the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftSpec>,
    /// Prompt + response are cut to this many tokens, as `truncation` says.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// What happens to an example longer than `max_length`: `end` cuts its end (default),
    /// `prompt` cuts the start of the text before the last answer so the answer survives,
    /// `drop` leaves the example out. The count of affected examples is reported.
    #[serde(default, skip_serializing_if = "is_default")]
    pub truncation: Truncation,
    /// Several examples a training row, packed best-fit-decreasing into rows of `max_length`
    /// (as pretraining packs; TRL's `padding_free`): positions restart and attention stays
    /// inside each example, and the loss stays on the answers. `batch_size` counts rows.
    /// Validation is not packed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    /// New tokens generated per validation prompt for exact-match accuracy.
    #[serde(default = "default_eval_tokens")]
    pub eval_max_new_tokens: usize,
    /// Measure perplexity on general text before and after; warn or fail when it rises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgetting_probe: Option<ForgettingProbe>,
    /// Mix general text into training (next-token loss), against forgetting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

fn messages_column() -> String {
    "messages".into()
}

fn is_messages(s: &str) -> bool {
    s == "messages"
}

/// `kind: sft`.
#[derive(Default)]
pub struct SftKind;

/// The model to fine-tune.
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model]);

/// The tokenizer of a new model: a tokenizer stage or a checkpoint's.
const TOKENIZER: InputSlot =
    InputSlot::new("tokenizer", &[ArtifactType::Tokenizer, ArtifactType::Model]);
/// The examples.
const DATA: InputSlot = InputSlot::new("data", DATA_INPUT);

impl Kind for SftKind {
    type Settings = SftSpec;
    const NAME: &'static str = "sft";
    /// 2: token F1 and ROUGE-L of the validation answers before and after join exact match in
    /// the metrics.
    const VERSION: Option<&'static str> = Some("2");
    const DESCRIPTION: &'static str =
        "Supervised fine-tuning on prompt/response pairs (loss on the response), full or LoRA.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[
            MODEL,
            TOKENIZER,
            DATA,
            guards::PROBE_DATA,
            guards::REPLAY_DATA,
        ]
    }

    fn outputs(&self, s: &SftSpec) -> Vec<(&'static str, ArtifactType)> {
        super::training::policy_outputs(&s.peft)
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(kind::schema_of::<SftSpec>(generator))
    }

    fn check(&self, p: &SftSpec, _stage: &str) -> Vec<Problem> {
        use crate::spec::settings::ModelInput;
        let mut problems = Vec::new();
        if p.task == SftTask::Classification {
            problems.extend(guards::misplaced(
                [p.forgetting_probe.is_some(), p.replay.is_some()],
                "language-model SFT (`instruction`, `chat`), not `classification`",
            ));
            if p.packing {
                problems.push(
                    Problem::at_key(
                        "packing",
                        "`packing` works with language-model SFT (`instruction`, `chat`), not `classification`",
                    )
                    .help("remove `packing`"),
                );
            }
        }
        if let Some(r) = &p.replay
            && !(r.ratio > 0.0 && r.ratio.is_finite())
        {
            problems.push(Problem::new(
                "replay.ratio",
                format!("replay ratio must be above 0, not {}", r.ratio),
            ));
        }
        if matches!(p.model, ModelInput::Init { .. }) && p.tokenizer.is_none() {
            problems.push(
                Problem::at_key(
                    "model",
                    "a new model (`model: { init }`) needs a `tokenizer`",
                )
                .help("fine-tune a pretrained model instead: `model: { from: <pretrain stage> }`"),
            );
        }
        problems.extend(super::training::lora_problem(&p.peft));
        problems.extend(super::training::length_problem(p.max_length));
        problems.extend(super::training::train_problems(&p.train));
        problems
    }

    fn trains_on(&self, _: &SftSpec) -> &'static [InputSlot] {
        &[DATA, guards::REPLAY_DATA]
    }

    fn prompt_template<'s>(&self, s: &'s SftSpec) -> Option<TemplateOf<'s, PromptTemplate>> {
        Some(TemplateOf::Own(&s.template))
    }

    fn examples(
        &self,
        spec: &SftSpec,
        ctx: &mut StageContext,
        n: usize,
    ) -> Option<Result<Vec<kind::EncodedExample>>> {
        (spec.task != SftTask::Classification).then(|| examples(spec, ctx, n))
    }

    fn run(&self, spec: &SftSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// The first `n` training conversations as `run` encodes them.
fn examples(spec: &SftSpec, ctx: &mut StageContext, n: usize) -> Result<Vec<kind::EncodedExample>> {
    let device = super::training::stage_device(ctx, false)?;
    let (train, _) = conversations(ctx.input(DATA.key)?, spec)?;
    let LoadedModel {
        config,
        tokenizer,
        chat_template,
        ..
    } = load_model_input(
        &spec.model,
        MODEL.key,
        spec.tokenizer.is_some().then_some(TOKENIZER.key),
        true,
        ctx,
        &device,
    )?;
    let format = Format::new(&spec.template, chat_template.as_ref());
    let eos = eos_token(&tokenizer, &config);
    let shown = &train[..n.min(train.len())];
    let whole = tokenize_conversations(&tokenizer, &format, shown, eos)?;
    super::conversation::shown_examples(
        &tokenizer,
        whole,
        spec.max_length,
        spec.truncation,
        (1..).map(|k| format!("train {k} of {}", train.len())),
    )
}

/// What a generative fine-tuning stage records.
#[derive(Serialize)]
struct SftMetrics {
    #[serde(flatten)]
    training: Training,
    #[serde(flatten)]
    loss: TrainLoss,
    #[serde(flatten)]
    answers: Option<AnswerQuality>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaked_examples: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    truncated_examples: Option<usize>,
    #[serde(flatten)]
    forgetting: Option<Forgetting>,
}

/// How greedy answers to the validation prompts compare with the references, before and
/// after training: exact match (after normalising), SQuAD token F1 and ROUGE-L (partial credit
/// for a right answer in other words).
#[derive(Serialize)]
struct AnswerQuality {
    exact_match_before: Rounded,
    exact_match_after: Rounded,
    token_f1_before: Rounded,
    token_f1_after: Rounded,
    rouge_l_before: Rounded,
    rouge_l_after: Rounded,
}

/// What a classification stage records.
#[derive(Serialize)]
struct ClassificationMetrics {
    #[serde(flatten)]
    training: Training,
    #[serde(flatten)]
    accuracy: Option<Accuracy>,
}

/// Validation accuracy before and after, and the macro F1 the trained head reaches.
#[derive(Serialize)]
struct Accuracy {
    accuracy_before: Rounded,
    accuracy_after: Rounded,
    macro_f1_after: Rounded,
}

pub fn run(spec: &SftSpec, ctx: &mut StageContext) -> Result<StageResult> {
    if spec.task == SftTask::Classification {
        return run_classification(spec, ctx);
    }
    let device = super::training::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    ctx.progress.set_message("reading examples");
    let (train_pairs, val_pairs) = conversations(ctx.input(DATA.key)?, spec)?;
    if train_pairs.is_empty() {
        bail!(
            "the training data has no examples (columns `{}`/`{}`, or `{}` for chat)",
            spec.prompt_column,
            spec.response_column,
            spec.messages_column
        );
    }
    ctx.progress.set_message("loading the model");
    let loaded = load_model_input(
        &spec.model,
        MODEL.key,
        spec.tokenizer.is_some().then_some(TOKENIZER.key),
        true,
        ctx,
        &device,
    )?;
    let stops = loaded.stop_tokens();
    let LoadedModel {
        backbone,
        config,
        tokenizer,
        chat_template,
        ..
    } = loaded;
    let format = Format::new(&spec.template, chat_template.as_ref());
    let eos = eos_token(&tokenizer, &config);

    ctx.progress.set_message("tokenizing");
    let batch = spec.train.batch_size.max(1);
    // The template's identity (the model's own when `template: model`) is part of the key.
    // The cache holds whole examples, so changing `max_length` or `truncation` reuses it.
    let how = json!({
        "encode": "conversations", "template": spec.template, "model_template": chat_template.as_ref().map(|t| &t.source),
        "eos": eos,
    });
    let mut too_long = 0;
    let mut encode = |convs: &Conversations, pack: bool| -> Result<Vec<LmBatch>> {
        let whole = super::training::encode_cached(ctx, &tokenizer, &how, convs, || {
            tokenize_conversations(&tokenizer, &format, convs, eos)
        })?;
        let (cut, long) = truncate(whole, spec.max_length, spec.truncation);
        too_long += long;
        Ok(match pack {
            true => super::batches::packed_example_batches(&cut, spec.max_length, batch, &device),
            false => conversation_batches(&cut, batch, &device),
        })
    };
    let train_batches = encode(&train_pairs, spec.packing)?;
    let val_batches = encode(&val_pairs, false)?;
    let mut train_batches = train_batches;
    if let Some(replay) = &spec.replay {
        train_batches.extend(guards::replay_batches(
            replay,
            ctx,
            train_pairs.len(),
            |texts| {
                super::batches::batches(&tokenizer, texts, eos, spec.max_length, batch, &device)
            },
        )?);
    }
    let (leaked, mut warnings) = guards::leakage_warnings(&[(
        "validation",
        &conversation_keys("validation", &val_pairs),
        "training",
        &conversation_keys("training", &train_pairs),
    )]);
    let sampling = SamplingConfig {
        max_new_tokens: spec.eval_max_new_tokens,
        stop_tokens: stops,
        ..Default::default()
    };

    let probe = guards::Probe::before(
        spec.forgetting_probe.as_ref(),
        ctx,
        &backbone.valid(),
        &tokenizer,
        eos,
        &infer_device,
    )?;
    ctx.progress
        .set_message("answering validation prompts (before)");
    let before = greedy_answers(
        &backbone.valid(),
        &tokenizer,
        &format,
        &val_pairs,
        &sampling,
        &infer_device,
    )?;
    ctx.check_cancelled()?;

    let (backbone, adapted) = super::training::apply_peft(backbone, &spec.peft, &device)?;
    let (trained, summary, _) = super::training::train_logged(
        backbone,
        &CausalLm,
        &train_batches,
        &val_batches,
        &spec.train,
        ctx,
    )?;

    ctx.progress
        .set_message("answering validation prompts (after)");
    let inference = trained.valid();
    let after = greedy_answers(
        &inference,
        &tokenizer,
        &format,
        &val_pairs,
        &sampling,
        &infer_device,
    )?;
    let (forgetting, probe_summary) =
        guards::Probe::after(probe.as_ref(), &inference, &mut warnings)?;

    let prompting = format.prompting(&spec.template, &tokenizer)?;
    super::training::save_policy(ctx, inference, &spec.peft, &config, &tokenizer, &prompting)?;

    let (quality, answer_rows) = before_and_after(&before, &after);
    if too_long > 0 {
        warnings.push(truncation_warning(spec, too_long));
    }
    warnings.extend(guards::fit_warnings(&summary));
    let metrics = SftMetrics {
        training: Training::of(&summary),
        loss: TrainLoss::of(&summary),
        answers: quality.as_ref().map(|[b, a]| AnswerQuality {
            exact_match_before: Rounded(b.exact_match),
            exact_match_after: Rounded(a.exact_match),
            token_f1_before: Rounded(b.token_f1),
            token_f1_after: Rounded(a.token_f1),
            rouge_l_before: Rounded(b.rouge_l),
            rouge_l_after: Rounded(a.rouge_l),
        }),
        leaked_examples: (leaked > 0).then_some(leaked),
        truncated_examples: (too_long > 0).then_some(too_long),
        forgetting,
    };
    let summary_json = json!({
        "forgetting_probe": probe_summary,
        "method": super::training::method_name(&spec.peft, &adapted),
        "adapted_modules": adapted.len(),
        "trainable_parameters": trainable(&trained),
        "train_pairs": train_pairs.len(),
        "validation_pairs": val_pairs.len(),
        "exact_match_before": quality.as_ref().map(|[b, _]| b.exact_match),
        "exact_match_after": quality.as_ref().map(|[_, a]| a.exact_match),
        "answers": answer_rows,
        "training": summary,
    });
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings,
        summary: summary_json,
    })
}

fn truncation_warning(spec: &SftSpec, too_long: usize) -> String {
    let what = match spec.truncation {
        Truncation::Drop => "left out",
        Truncation::Prompt => "cut at the start of the prompt",
        Truncation::End => "cut at the end",
    };
    format!(
        "{too_long} examples are longer than max_length {} and were {what}",
        spec.max_length
    )
}

/// Parameters that train (LoRA: adapters only).
fn trainable(model: &Backbone) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if p.is_require_grad() {
                self.0 += p.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    c.0
}

/// The conversations of the train and validation splits: prompt/response pairs (`task:
/// instruction`) or message lists (`task: chat`).
fn conversations(input: &ResolvedInput, spec: &SftSpec) -> Result<(Conversations, Conversations)> {
    let chat = spec.task == SftTask::Chat;
    let of = |t: &Table| -> Result<Conversations> {
        if chat {
            let i = t.indices(
                std::slice::from_ref(&spec.messages_column),
                "the sft stage reads column",
            )?[0];
            return t
                .rows
                .iter()
                .map(|r| {
                    parse_messages(&r.values[i])
                        .with_context(|| format!("{}: bad `{}`", t.origin(r), spec.messages_column))
                })
                .collect();
        }
        let idx = t.indices(
            &[spec.prompt_column.clone(), spec.response_column.clone()],
            "the sft stage reads column",
        )?;
        Ok(t.rows
            .iter()
            .filter_map(|r| {
                Some(one_turn(
                    r.values[idx[0]].as_str()?,
                    r.values[idx[1]].as_str()?,
                ))
            })
            .collect())
    };
    crate::stages::tables::split_rows(input, of)
}

type Examples = Vec<(String, usize)>;

fn run_classification(spec: &SftSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::training::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    ctx.progress.set_message("reading examples");
    let (train_rows, val_rows, names) =
        classification_examples(ctx.input(DATA.key)?, &spec.text_column, &spec.label_column)?;
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
    } = load_model_input(
        &spec.model,
        MODEL.key,
        spec.tokenizer.is_some().then_some(TOKENIZER.key),
        false,
        ctx,
        &device,
    )?;
    let model = match score {
        Some(head) if head.d_out() == num_labels => Model {
            backbone,
            score: Some(head),
        },
        _ => Model::with_new_head(backbone, num_labels, &device),
    };
    let batch = spec.train.batch_size.max(1);
    let train_batches = classify::encode(&tokenizer, &train_rows, spec.max_length, batch, &device)?;
    let val_batches = classify::encode(&tokenizer, &val_rows, spec.max_length, batch, &device)?;
    let val_infer = classify::encode(&tokenizer, &val_rows, spec.max_length, batch, &infer_device)?;
    let before = classify::accuracy(&model.valid(), &val_infer, num_labels);

    let model = crate::stages::training::with_peft(model, &spec.peft, &device)?;
    let (trained, summary, _) = super::training::train_logged(
        model,
        &classify::Classification,
        &train_batches,
        &val_batches,
        &spec.train,
        ctx,
    )?;
    let mut inference = trained.valid();
    let after = classify::accuracy(&inference, &val_infer, num_labels);

    if let Some(peft) = &spec.peft {
        let dir = ctx.output_dir("adapter", ArtifactType::Model)?;
        lora::save_peft(&mut inference.backbone, peft.lora(), "model", &dir)?;
        super::training::save_adapter_tokenizer(&dir, &config, &tokenizer, None)?;
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
    save_hf_dir(&inference, &config, Some(&tokenizer), None, &dir)?;

    let metrics = ClassificationMetrics {
        training: Training::steps(&summary),
        accuracy: before.as_ref().zip(after.as_ref()).map(|(b, a)| Accuracy {
            accuracy_before: Rounded(b.accuracy),
            accuracy_after: Rounded(a.accuracy),
            macro_f1_after: Rounded(a.macro_f1),
        }),
    };
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
        metrics: metrics::record(&metrics),
        warnings,
        summary: summary_json,
    })
}

/// Train and validation examples, and the label names (ids in sorted order of text labels,
/// or the integers themselves).
fn classification_examples(
    input: &ResolvedInput,
    text: &str,
    label: &str,
) -> Result<(Examples, Examples, Vec<String>)> {
    let tables: Vec<(String, Table)> = match input {
        ResolvedInput::Artifact(view) => {
            let mut out = Vec::new();
            for split in view.outputs.keys() {
                if let Some(t) = super::tables::read_split(view, split)? {
                    out.push((split.clone(), t));
                }
            }
            out
        }
        file => vec![(
            "train".into(),
            super::tables::read_table(file, MissingPolicy::Null)?,
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
    let (ids, names) = classify::label_ids(raw.iter().map(|(_, _, v)| v));
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
