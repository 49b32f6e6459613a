//! `pretrain`: next-token training on raw text, from scratch (`model: { init }`) or continued
//! from a checkpoint. The dataset's `train` split trains; its `validation` split measures
//! perplexity before and after. Output: `model/` (config.json, model.safetensors,
//! tokenizer.json), which transformers loads.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::batches::{batches, encode_texts, packed_batches, text_batches};
use super::guards;
use super::metrics::{self, Forgetting, Rounded, TrainLoss, Training};
use super::model_input::{LoadedModel, load_model_input};
use super::tables::texts_of;
use crate::data::leakage::{Part, text_keys};
use crate::data::masking::{Masked, mask_tokens};
use crate::model::{Backbone, Model, save_hf_dir};
use crate::spec::StageResult;
use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::kind::{self, DATA_INPUT, InputSlot, Kind, Problem};
use crate::spec::settings::ModelInput;
use crate::spec::settings::{
    ForgettingProbe, Input, Replay, default_max_length, is_default, text_column,
};
use crate::store::ArtifactType;
use crate::train::objectives::{CausalLm, MaskedLm, MlmBatch};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PretrainObjective {
    /// Next-token prediction.
    #[default]
    CausalLm,
    /// BERT-style masked tokens (encoders).
    MaskedLm,
}

/// `pretrain`: self-supervised training on raw text. Output: `model` (HF directory with the
/// tokenizer).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretrainSpec {
    pub model: ModelInput,
    /// Required with `model: { init }`; default: the model's own tokenizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Input>,
    /// A dataset stage (its `train` split trains, its `validation` split measures perplexity).
    pub data: Input,
    #[serde(default = "text_column")]
    pub column: String,
    #[serde(default)]
    pub objective: PretrainObjective,
    /// Texts are cut to this many tokens (end-of-text token included); with `packing`, rows
    /// are this long.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Causal LM: several texts per row of `max_length` tokens instead of one padded text per
    /// row, packed best-fit-decreasing (longest first, each into the fullest row with room).
    /// Texts never attend to each other (a block-diagonal mask) and positions restart at each;
    /// a text longer than a row is cut into row-sized pieces rather than truncated.
    #[serde(default, skip_serializing_if = "is_default")]
    pub packing: bool,
    /// Measure perplexity on general text before and after; warn or fail when it rises.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgetting_probe: Option<ForgettingProbe>,
    /// Mix general text into training (next-token loss), against forgetting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

/// `kind: pretrain`.
#[derive(Default)]
pub struct PretrainKind;

/// The model to continue from (absent for `model: { init }`).
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model]);

/// The tokenizer of a new model: a tokenizer stage or a checkpoint's.
const TOKENIZER: InputSlot =
    InputSlot::new("tokenizer", &[ArtifactType::Tokenizer, ArtifactType::Model]);
/// The texts.
const DATA: InputSlot = InputSlot::new("data", DATA_INPUT);

impl Kind for PretrainKind {
    type Settings = PretrainSpec;
    const NAME: &'static str = "pretrain";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str =
        "Self-supervised pretraining (next-token prediction) from scratch or from a model.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[
            MODEL,
            TOKENIZER,
            DATA,
            guards::PROBE_DATA,
            guards::REPLAY_DATA,
        ]
    }

    fn outputs(&self, _: &PretrainSpec) -> Vec<(&'static str, ArtifactType)> {
        vec![("model", ArtifactType::Model)]
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<Value> {
        Some(kind::schema_of::<PretrainSpec>(generator))
    }

    fn check(&self, p: &PretrainSpec, stage: &str) -> Vec<Problem> {
        use crate::spec::settings::Arch;
        let mut problems = Vec::new();
        if p.objective == PretrainObjective::MaskedLm {
            problems.extend(guards::misplaced(
                [p.forgetting_probe.is_some(), p.replay.is_some()],
                "next-token models (`causal_lm`), not `masked_lm`",
            ));
        }
        if p.packing && p.objective == PretrainObjective::MaskedLm {
            problems.push(
                Problem::new(
                    "packing",
                    "`packing` is for `causal_lm`: masked-LM texts are encoded one per row",
                )
                .help("remove `packing`"),
            );
        }
        if let ModelInput::Init { init } = &p.model {
            let encoder = init.arch == Arch::Bert;
            if encoder != (p.objective == PretrainObjective::MaskedLm) {
                let (what, help) = if encoder {
                    (
                        "a BERT encoder cannot be trained with `causal_lm`",
                        "set `objective: masked_lm`, or init a decoder (`arch: gpt2` or `llama`)",
                    )
                } else {
                    (
                        "`masked_lm` trains an encoder",
                        "init one with `arch: bert` (and a `wordpiece` tokenizer, which has [MASK]), or use `objective: causal_lm`",
                    )
                };
                problems.push(
                    Problem::new("model.init.arch", format!("stage `{stage}`: {what}")).help(help),
                );
            }
            if p.tokenizer.is_none() {
                problems.push(
                    Problem::at_key(
                        "model",
                        "a new model (`model: { init }`) needs a `tokenizer`",
                    )
                    .help("add `tokenizer: { from: <tokenizer stage> }`"),
                );
            }
            for (key, value) in [
                ("layers", init.layers),
                ("d_model", init.d_model),
                ("context", init.context),
            ] {
                if value == 0 {
                    problems.push(Problem::new(
                        format!("model.init.{key}"),
                        format!("`{key}` must be at least 1"),
                    ));
                }
            }
            // The vocabulary comes from the tokenizer at run time; the rest is known now.
            if let Some(why) = crate::backend::training_memory_problem(init.parameters(0)) {
                problems.push(
                    Problem::at_key("model.init", why)
                        .help("make the model smaller: fewer `layers`, a smaller `d_model`"),
                );
            }
            if init.heads == 0
                || init.d_model % init.heads != 0
                || (init.d_model / init.heads.max(1)) % 2 != 0
            {
                problems.push(Problem::new(
                    "model.init.heads",
                    format!(
                        "d_model {} must split into {} heads of an even size",
                        init.d_model, init.heads
                    ),
                ));
            }
            if init
                .kv_heads
                .is_some_and(|kv| kv == 0 || init.heads % kv != 0)
            {
                problems.push(Problem::new(
                    "model.init.kv_heads",
                    "heads must be a multiple of kv_heads",
                ));
            }
            if p.max_length > init.context {
                problems.push(Problem::new(
                    "max_length",
                    format!(
                        "max_length {} exceeds the model's context {}",
                        p.max_length, init.context
                    ),
                ));
            }
        }
        problems.extend(super::training::length_problem(p.max_length));
        problems.extend(super::training::train_problems(&p.train));
        problems
    }

    fn trains_on(&self, _: &PretrainSpec) -> &'static [InputSlot] {
        &[DATA, guards::REPLAY_DATA]
    }

    fn run(&self, spec: &PretrainSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// What a pretraining stage records.
#[derive(Serialize)]
struct PretrainMetrics {
    #[serde(flatten)]
    training: Training,
    #[serde(flatten)]
    loss: TrainLoss,
    #[serde(flatten)]
    perplexity: Option<Perplexity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leaked_examples: Option<usize>,
    #[serde(flatten)]
    forgetting: Option<Forgetting>,
}

/// Validation perplexity before and after: of every next token for a decoder, of the masked
/// tokens for an encoder (the two are not comparable, so they carry different names).
#[derive(Serialize)]
#[serde(untagged)]
enum Perplexity {
    Tokens {
        val_ppl_before: Rounded,
        val_ppl_after: Rounded,
    },
    MaskedTokens {
        val_mlm_ppl_before: Rounded,
        val_mlm_ppl_after: Rounded,
    },
}

pub fn run(spec: &PretrainSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::training::stage_device(ctx, true)?;
    ctx.progress.set_message("reading texts");
    let (train_texts, val_texts) = split_texts(ctx.input(DATA.key)?, &spec.column)?;
    if train_texts.is_empty() {
        bail!("column `{}` of the training data has no text", spec.column);
    }

    ctx.progress.set_message("building the model");
    let causal = spec.objective == PretrainObjective::CausalLm;
    let LoadedModel {
        mut backbone,
        config,
        tokenizer,
        chat_template,
        ..
    } = load_model_input(
        &spec.model,
        MODEL.key,
        spec.tokenizer.is_some().then_some(TOKENIZER.key),
        causal,
        ctx,
        &device,
    )?;

    ctx.progress.set_message("tokenizing");
    let batch = spec.train.batch_size.max(1);
    let eos = super::conversation::eos_token(&tokenizer, &config);
    let infer_device = device.clone().without_autodiff();
    let probe = guards::Probe::before(
        spec.forgetting_probe.as_ref(),
        ctx,
        &backbone.valid(),
        &tokenizer,
        eos,
        &infer_device,
    )?;
    let (leaked, mut warnings) = super::guards::leakage_warnings(&[(
        "validation",
        &text_keys("validation", Part::Text, &val_texts),
        "training",
        &text_keys("training", Part::Text, &train_texts),
    )]);
    let (trained, summary, mean_tps) = if causal {
        // Packed texts are cut into row-sized pieces and kept whole; unpacked ones are cut.
        let limit = (!spec.packing).then_some(spec.max_length);
        let encode = |texts: &[String], limit: Option<usize>| {
            let how = json!({ "encode": "texts", "eos": eos, "max_length": limit });
            super::training::encode_cached(ctx, &tokenizer, &how, texts, || {
                encode_texts(&tokenizer, texts, eos, limit)
            })
        };
        let train_encoded = encode(&train_texts, limit)?;
        let train_batches = if spec.packing {
            packed_batches(&train_encoded, spec.max_length, batch, &device)
        } else {
            text_batches(&train_encoded, batch, &device)
        };
        let mut train_batches = train_batches;
        if let Some(replay) = &spec.replay {
            train_batches.extend(super::guards::replay_batches(
                replay,
                ctx,
                train_texts.len(),
                |texts| batches(&tokenizer, texts, eos, spec.max_length, batch, &device),
            )?);
        }
        let val_batches = text_batches(&encode(&val_texts, Some(spec.max_length))?, batch, &device);
        ctx.check_cancelled()?;
        super::training::train_logged(
            backbone,
            &CausalLm,
            &train_batches,
            &val_batches,
            &spec.train,
            ctx,
        )?
    } else {
        let Backbone::Bert(bert) = &mut backbone else {
            bail!("`masked_lm` trains a BERT encoder; this model is a decoder (use `causal_lm`)");
        };
        bert.ensure_mlm_head(&device);
        let masking = |texts: &[String], fixed: bool| {
            masked_batches(
                &tokenizer,
                texts,
                spec.max_length,
                batch,
                fixed.then_some(ctx.seed),
                &device,
            )
        };
        let train_batches = masking(&train_texts, false)?;
        let val_batches = masking(&val_texts, true)?;
        ctx.check_cancelled()?;
        super::training::train_logged(
            backbone,
            &MaskedLm,
            &train_batches,
            &val_batches,
            &spec.train,
            ctx,
        )?
    };

    ctx.progress.set_message("saving");
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    // Continued pretraining keeps the chat format the model came with.
    let prompting = chat_template.map(|chat| crate::model::serving::Prompting {
        chat,
        recipe_template: None,
    });
    save_hf_dir(
        &Model::new(trained.valid()),
        &config,
        Some(&tokenizer),
        prompting.as_ref(),
        &dir,
    )?;

    let (probe_metrics, probe_summary) =
        guards::Probe::after(probe.as_ref(), &trained.valid(), &mut warnings)?;
    let perplexity = match (summary.initial_eval, summary.final_eval) {
        (Some(before), Some(after)) => {
            let (before, after) = (Rounded(before.exp()), Rounded(after.exp()));
            Some(if causal {
                Perplexity::Tokens {
                    val_ppl_before: before,
                    val_ppl_after: after,
                }
            } else {
                Perplexity::MaskedTokens {
                    val_mlm_ppl_before: before,
                    val_mlm_ppl_after: after,
                }
            })
        }
        _ => None,
    };
    let metrics = PretrainMetrics {
        training: Training::of(&summary),
        loss: TrainLoss::of(&summary),
        perplexity,
        leaked_examples: (leaked > 0).then_some(leaked),
        forgetting: probe_metrics,
    };
    warnings.extend(super::guards::fit_warnings(&summary));
    let summary_json = json!({
        "forgetting_probe": probe_summary,
        "model": config.get("model_type"),
        "objective": if causal { "causal_lm" } else { "masked_lm" },
        "parameters": trained.num_params(),
        "train_texts": train_texts.len(),
        "validation_texts": val_texts.len(),
        "tokens_per_s": mean_tps.round(),
        "training": summary,
    });
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings,
        summary: summary_json,
    })
}

/// Training and validation texts: a whole dataset artifact gives its `train` and
/// `validation` splits; a single split or a file trains and has no validation.
pub(super) fn split_texts(
    input: &ResolvedInput,
    column: &str,
) -> Result<(Vec<String>, Vec<String>)> {
    super::tables::split_rows(input, |t| texts_of(t, column))
}

/// Masked-token batches: each text encoded with the tokenizer's special tokens ([CLS] ...
/// [SEP]), cut to `max_len`, 15% of its other tokens corrupted (see `data::masking`): once,
/// from `fixed_seed` (validation), or anew at every training step (`None`).
fn masked_batches(
    tok: &Tokenizer,
    texts: &[String],
    max_len: usize,
    batch: usize,
    fixed_seed: Option<u64>,
    device: &Device,
) -> Result<Vec<MlmBatch>> {
    let mask_id = ["[MASK]", "<mask>"]
        .iter()
        .find_map(|t| tok.token_to_id(t))
        .context("`masked_lm` needs a tokenizer with a mask token ([MASK] or <mask>); train one with `algorithm: wordpiece`")?;
    let vocab = tok.get_vocab_size(true);
    let mut rng = crate::rng::SplitMix64::new(fixed_seed.unwrap_or(0));
    let rate = 0.15;
    let mut seqs = Vec::with_capacity(texts.len());
    for t in texts {
        let enc = tok
            .encode(t.as_str(), true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        let n = enc.get_ids().len().min(max_len.max(2));
        let special: Vec<bool> = enc.get_special_tokens_mask()[..n]
            .iter()
            .map(|&m| m == 1)
            .collect();
        seqs.push(match fixed_seed {
            Some(_) => mask_tokens(
                &enc.get_ids()[..n],
                &special,
                mask_id,
                vocab,
                rate,
                &mut rng,
            ),
            // Dynamic: keep the tokens, mark the maskable ones.
            None => Masked {
                input: enc.get_ids()[..n].to_vec(),
                labels: enc.get_ids()[..n].to_vec(),
                selected: special.iter().map(|s| !s).collect(),
            },
        });
    }
    Ok(seqs
        .chunks(batch)
        .map(|c| match fixed_seed {
            Some(_) => MlmBatch::fixed(c, device),
            None => MlmBatch::dynamic(c, mask_id, vocab, rate, device),
        })
        .collect())
}
