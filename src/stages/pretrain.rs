//! `pretrain`: next-token training on raw text, from scratch (`model: { init }`) or continued
//! from a checkpoint. The dataset's `train` split trains; its `validation` split measures
//! perplexity before and after. Output: `model/` (config.json, model.safetensors,
//! tokenizer.json), which transformers loads.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::guards;
use super::kind::{self, DATA_INPUT, InputSlot, Kind, Problem};
use super::tokenizer::{EOS, load_tokenizer};
use super::{ArtifactType, StageResult, texts_of};
use crate::data::masking::{Masked, mask_tokens};
use crate::data::tokenized::Encoded;
use crate::model::{Backbone, Model, bert, gpt2, llama, save_hf_dir};
use crate::recipe::types::{Arch, ModelInit, ModelInput, PretrainObjective, PretrainSpec};
use crate::stages::context::{ResolvedInput, StageContext};
use crate::train::objectives::{CausalLm, LmBatch, MaskedLm, MlmBatch};

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

    fn inputs(&self) -> &'static [InputSlot] {
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
        use crate::recipe::types::Arch;
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
        problems.extend(super::train_problem(&p.train));
        problems
    }

    fn trains_on(&self, _: &PretrainSpec) -> &'static [InputSlot] {
        &[DATA, guards::REPLAY_DATA]
    }

    fn run(&self, spec: &PretrainSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

pub fn run(spec: &PretrainSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::stage_device(ctx, true)?;
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
        ..
    } = load_model_input(&spec.model, spec.tokenizer.is_some(), causal, ctx, &device)?;

    ctx.progress.set_message("tokenizing");
    let batch = spec.train.batch_size.max(1);
    let eos = super::sft::eos_token(&tokenizer, &config);
    let infer_device = device.clone().without_autodiff();
    let probe = match &spec.forgetting_probe {
        Some(p) => Some(super::guards::Probe::before(
            p,
            ctx,
            &backbone.valid(),
            &tokenizer,
            eos,
            &infer_device,
        )?),
        None => None,
    };
    let (leaked, mut warnings) =
        super::guards::leakage_warnings(&[("validation", &val_texts, "training", &train_texts)]);
    let (trained, summary, mean_tps) = if causal {
        // Packed texts are cut into row-sized pieces and kept whole; unpacked ones are cut.
        let limit = (!spec.packing).then_some(spec.max_length);
        let encode = |texts: &[String], limit: Option<usize>| {
            let how = json!({ "encode": "texts", "eos": eos, "max_length": limit });
            super::encode_cached(ctx, &tokenizer, &how, texts, || {
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
        super::train_logged(
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
        super::train_logged(
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
    save_hf_dir(
        &Model::new(trained.valid()),
        &config,
        Some(&tokenizer),
        &dir,
    )?;

    let mut metrics = serde_json::Map::new();
    let round = |x: f64| (x * 1e4).round() / 1e4;
    metrics.insert("steps".into(), summary.steps.into());
    metrics.insert("train_loss_first".into(), round(summary.first_loss).into());
    metrics.insert("train_loss_last".into(), round(summary.last_loss).into());
    // Masked LM: the perplexity of the masked tokens (not comparable to a decoder's).
    let ppl = if causal { "val_ppl" } else { "val_mlm_ppl" };
    if let (Some(before), Some(after)) = (summary.initial_eval, summary.final_eval) {
        metrics.insert(format!("{ppl}_before"), round(before.exp()).into());
        metrics.insert(format!("{ppl}_after"), round(after.exp()).into());
    }
    if leaked > 0 {
        metrics.insert("leaked_examples".into(), leaked.into());
    }
    let probe_summary = match &probe {
        Some(p) => Some(p.after(&trained.valid(), &mut metrics, &mut warnings)?),
        None => None,
    };
    warnings.extend(super::guards::fit_warnings(&summary, &mut metrics));
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
        metrics,
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
    super::split_rows(input, |t| texts_of(t, column))
}

/// Token sequences (each text, then end-of-text, cut to `max_len`) in batches.
pub(super) fn batches(
    tokenizer: &Tokenizer,
    texts: &[String],
    eos: Option<u32>,
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Result<Vec<LmBatch>> {
    Ok(text_batches(
        &encode_texts(tokenizer, texts, eos, Some(max_len))?,
        batch,
        device,
    ))
}

/// Each text's tokens then end-of-text, every token a target; cut to `max_len` when given.
pub(super) fn encode_texts(
    tokenizer: &Tokenizer,
    texts: &[String],
    eos: Option<u32>,
    max_len: Option<usize>,
) -> Result<Vec<Encoded>> {
    texts
        .iter()
        .map(|t| {
            let enc = tokenizer
                .encode(t.as_str(), false)
                .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
            let mut ids = enc.get_ids().to_vec();
            ids.extend(eos);
            if let Some(m) = max_len {
                ids.truncate(m.max(2));
            }
            let targets = vec![true; ids.len()];
            Ok(Encoded { ids, targets })
        })
        .collect()
}

/// One sequence per row (sequences shorter than two tokens predict nothing and are dropped).
pub(super) fn text_batches(encoded: &[Encoded], batch: usize, device: &Device) -> Vec<LmBatch> {
    let seqs: Vec<Vec<u32>> = encoded
        .iter()
        .filter(|e| e.ids.len() >= 2)
        .map(|e| e.ids.clone())
        .collect();
    seqs.chunks(batch)
        .map(|c| LmBatch::from_sequences(c, device))
        .collect()
}

/// Packed rows in batches (see [`bfd_rows`]).
pub(super) fn packed_batches(
    encoded: &[Encoded],
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Vec<LmBatch> {
    let (rows, docs) = bfd_rows(encoded, max_len);
    rows.chunks(batch)
        .zip(docs.chunks(batch))
        .map(|(r, d)| LmBatch::packed(r, d, device))
        .collect()
}

/// Best-fit-decreasing packing (TRL's `bfd`): a text longer than a row is cut into row-sized
/// pieces; the pieces, longest first, each go into the fullest row that still has room for
/// them, so no piece spans two rows. Returns the rows' tokens and, per token, the number of
/// the piece it belongs to (pieces are the documents of `LmBatch::packed`).
fn bfd_rows(encoded: &[Encoded], max_len: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    use std::collections::{BTreeMap, BTreeSet};
    let max_len = max_len.max(2);
    let mut pieces: Vec<&[u32]> = encoded.iter().flat_map(|e| e.ids.chunks(max_len)).collect();
    // Longest first; the sort is stable, so equal lengths keep their order and the packing is
    // the same on every run.
    pieces.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let (mut rows, mut docs): (Vec<Vec<u32>>, Vec<Vec<u32>>) = (Vec::new(), Vec::new());
    // Rows that still have room, by how much (the first row of each size first).
    let mut by_room: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (d, piece) in pieces.iter().enumerate() {
        let best = by_room
            .range(piece.len()..)
            .next()
            .map(|(&room, rows)| (room, *rows.first().expect("no empty sets")));
        let i = match best {
            Some((room, i)) => {
                let set = by_room.get_mut(&room).expect("just found");
                set.remove(&i);
                if set.is_empty() {
                    by_room.remove(&room);
                }
                i
            }
            None => {
                rows.push(Vec::with_capacity(max_len));
                docs.push(Vec::with_capacity(max_len));
                rows.len() - 1
            }
        };
        rows[i].extend_from_slice(piece);
        docs[i].extend(std::iter::repeat_n(d as u32, piece.len()));
        let room = max_len - rows[i].len();
        if room > 0 {
            by_room.entry(room).or_default().insert(i);
        }
    }
    (rows, docs)
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

/// The model of a training stage and its tokenizer: a new decoder (`init`, seeded from the
/// recipe) or a checkpoint; the stage's `tokenizer` input, when given, wins over the model's.
/// A training stage's starting model.
pub(super) struct LoadedModel {
    pub backbone: Backbone,
    /// The checkpoint's classification / score head, if it has one.
    pub score: Option<crate::model::layers::Proj>,
    pub config: Value,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}

pub(super) fn load_model_input(
    model: &ModelInput,
    has_tokenizer: bool,
    need_decoder: bool,
    ctx: &mut StageContext,
    device: &Device,
) -> Result<LoadedModel> {
    let stage_tokenizer = if has_tokenizer {
        Some(load_tokenizer(ctx.input("tokenizer")?)?)
    } else {
        None
    };
    match model {
        ModelInput::Init { init } => {
            let tokenizer = stage_tokenizer.context("a new model needs a `tokenizer`")?;
            // Seed right before the random init: the init is then a function of the seed.
            device.seed(ctx.seed);
            let (backbone, config) = init_model(init, &tokenizer, device)?;
            Ok(LoadedModel {
                backbone,
                score: None,
                config,
                tokenizer,
                chat_template: None,
            })
        }
        ModelInput::Input(_) => {
            load_checkpoint(ctx, "model", stage_tokenizer, need_decoder, device)
        }
    }
}

/// A checkpoint input (`rel` of the stage): a file path or a model artifact, laid out as a
/// directory. `tokenizer`, when given, wins over the checkpoint's own.
pub(super) fn load_checkpoint(
    ctx: &StageContext,
    rel: &str,
    tokenizer: Option<Tokenizer>,
    need_decoder: bool,
    device: &Device,
) -> Result<LoadedModel> {
    let path = match ctx.input(rel)? {
        ResolvedInput::File { path, .. } => path.clone(),
        ResolvedInput::Artifact(view) => {
            let out = if view.outputs.contains_key("model") {
                "model"
            } else {
                view.outputs
                    .keys()
                    .next()
                    .map(String::as_str)
                    .unwrap_or("model")
            };
            view.materialize(out, &ctx.work_dir()?.join(rel))?
        }
    };
    let loaded = crate::model::load(&path, device)
        .with_context(|| format!("cannot load {}", path.display()))?;
    if need_decoder && !loaded.model.backbone.is_decoder() {
        bail!(
            "this stage needs a decoder; {} is an encoder",
            path.display()
        );
    }
    let tokenizer = tokenizer.or(loaded.tokenizer).with_context(|| {
        format!(
            "{} has no tokenizer; add `tokenizer:` to the stage",
            path.display()
        )
    })?;
    Ok(LoadedModel {
        backbone: loaded.model.backbone,
        score: loaded.model.score,
        config: loaded.config,
        tokenizer,
        chat_template: loaded.chat_template,
    })
}

impl LoadedModel {
    /// Tokens that end a generated answer: end-of-text, ChatML's end of turn, the config's EOS.
    pub(super) fn stop_tokens(&self) -> Vec<u32> {
        let mut stops: Vec<u32> = self.tokenizer.token_to_id(EOS).into_iter().collect();
        stops.extend(self.tokenizer.token_to_id("<|im_end|>"));
        stops.extend(self.config["eos_token_id"].as_u64().map(|v| v as u32));
        stops.sort_unstable();
        stops.dedup();
        stops
    }
}

/// A new decoder sized by `init`, its vocabulary the tokenizer's; returns it with an HF
/// `config.json`.
fn init_model(
    init: &ModelInit,
    tokenizer: &Tokenizer,
    device: &Device,
) -> Result<(Backbone, Value)> {
    let vocab = tokenizer.get_vocab_size(true);
    let eos = tokenizer.token_to_id(EOS);
    match init.arch {
        Arch::Gpt2 => {
            let config = json!({
                "model_type": "gpt2", "vocab_size": vocab, "n_positions": init.context, "n_embd": init.d_model,
                "n_layer": init.layers, "n_head": init.heads, "n_inner": init.intermediate, "layer_norm_epsilon": 1e-5,
                "activation_function": "gelu_new", "bos_token_id": eos, "eos_token_id": eos, "tie_word_embeddings": true,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
            });
            let c: gpt2::Gpt2Config = serde_json::from_value(config.clone())?;
            Ok((Backbone::Gpt2(gpt2::Gpt2::init(&c, device)), config))
        }
        Arch::Llama => {
            // SwiGLU keeps the MLP's parameter count near 4 d^2 with a width of 8/3 d.
            let inner = init
                .intermediate
                .unwrap_or((init.d_model * 8 / 3).div_ceil(8) * 8);
            let config = json!({
                "model_type": "llama", "vocab_size": vocab, "hidden_size": init.d_model, "intermediate_size": inner,
                "num_hidden_layers": init.layers, "num_attention_heads": init.heads,
                "num_key_value_heads": init.kv_heads.unwrap_or(init.heads), "max_position_embeddings": init.context,
                "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu",
                "bos_token_id": eos, "eos_token_id": eos,
            });
            let c: llama::LlamaConfig = serde_json::from_value(config.clone())?;
            Ok((Backbone::Llama(llama::Llama::init(&c, device)), config))
        }
        Arch::Bert => {
            let config = json!({
                "model_type": "bert", "vocab_size": vocab, "hidden_size": init.d_model,
                "num_hidden_layers": init.layers, "num_attention_heads": init.heads,
                "intermediate_size": init.intermediate.unwrap_or(4 * init.d_model),
                "max_position_embeddings": init.context, "type_vocab_size": 2,
                "layer_norm_eps": 1e-12, "hidden_act": "gelu",
                "pad_token_id": tokenizer.token_to_id("[PAD]").unwrap_or(0),
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            });
            let c: bert::BertConfig = serde_json::from_value(config.clone())?;
            Ok((Backbone::Bert(bert::Bert::init(&c, device)), config))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfd_keeps_pieces_whole_and_fills_rows_best_first() {
        let enc = |lens: &[usize]| -> Vec<Encoded> {
            let mut next = 0u32;
            lens.iter()
                .map(|&n| Encoded {
                    ids: (0..n)
                        .map(|_| {
                            next += 1;
                            next
                        })
                        .collect(),
                    targets: vec![true; n],
                })
                .collect()
        };
        // 6, 5, 4, 3, 2, 2 into rows of 8: 6+2, 5+3, 4+2.
        let (rows, docs) = bfd_rows(&enc(&[3, 2, 6, 4, 2, 5]), 8);
        let mut lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        lens.sort();
        assert_eq!(lens, [6, 8, 8]);
        // Every token once; each piece in one row, contiguous.
        let mut all: Vec<u32> = rows.concat();
        all.sort();
        assert_eq!(all, (1..=22).collect::<Vec<u32>>());
        let mut seen = std::collections::BTreeSet::new();
        for d in &docs {
            for (j, id) in d.iter().enumerate() {
                if j == 0 || d[j - 1] != *id {
                    assert!(
                        seen.insert(*id),
                        "piece {id} spans rows or is split: {docs:?}"
                    );
                }
            }
        }
        // A text longer than a row is cut into row-sized pieces.
        let (rows, _) = bfd_rows(&enc(&[19]), 8);
        let mut lens: Vec<usize> = rows.iter().map(Vec::len).collect();
        lens.sort();
        assert_eq!(lens, [3, 8, 8]);
    }
}
