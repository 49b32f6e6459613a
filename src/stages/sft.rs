//! `sft`: supervised fine-tuning on prompt/response pairs. The loss covers response tokens only
//! (completion-only, TRL's default); full fine-tuning or LoRA. Exact-match accuracy of greedy
//! answers to the validation prompts is measured before and after, so "did it learn to answer"
//! is a number. Outputs `model` (HF directory, LoRA merged in) and, with LoRA, `adapter`.

use anyhow::{Result, bail};
use burn::module::Module;
use burn::prelude::*;
use serde_json::json;
use tokenizers::Tokenizer;

use super::pretrain::{LoadedModel, load_model_input};
use super::tokenizer::EOS;
use super::{ArtifactType, StageResult};
use crate::data::leakage::normalize;
use crate::data::table::Table;
use crate::exec::context::{ResolvedInput, StageContext};
use crate::model::chat::{ChatTemplate, Message};
use crate::model::sampling::{SamplingConfig, generate};
use crate::model::{Backbone, Model, lora, save_hf_dir};
use crate::recipe::types::{MissingPolicy, PeftSpec, PromptTemplate, SftSpec};
use crate::train::objectives::{CausalLm, LmBatch};
use crate::train::trainer::evaluate;

/// (prompt, response) pairs.
type Pairs = Vec<(String, String)>;

/// Turns pairs into prompt text and target text.
pub(super) struct Format {
    template: Option<ChatTemplate>,
    /// Appended to responses (ChatML's end of turn); generation is cut there.
    end: Option<String>,
}

impl Format {
    pub(super) fn new(t: PromptTemplate, model_template: Option<&str>) -> Format {
        match (t, model_template) {
            (PromptTemplate::Plain, _) => Format {
                template: None,
                end: None,
            },
            (PromptTemplate::Model, Some(src)) => Format {
                template: Some(ChatTemplate::new(src, "", "")),
                end: Some("<|im_end|>".into()),
            },
            (PromptTemplate::Chatml | PromptTemplate::Model, _) => Format {
                template: Some(ChatTemplate::chatml()),
                end: Some("<|im_end|>".into()),
            },
        }
    }
    /// The token ids of a formatted prompt.
    pub(super) fn encode_prompt(&self, tok: &Tokenizer, p: &str) -> Result<Vec<u32>> {
        Ok(tok
            .encode(self.prompt(p)?.as_str(), false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
            .get_ids()
            .to_vec())
    }

    pub(super) fn prompt(&self, p: &str) -> Result<String> {
        match &self.template {
            None => Ok(format!("{p}\n")),
            Some(t) => t
                .render(&[Message::new("user", p)], true)
                .map_err(anyhow::Error::msg),
        }
    }
    fn response(&self, r: &str) -> String {
        match &self.end {
            None => r.to_owned(),
            Some(end) => format!("{r}{end}\n"),
        }
    }
    /// A generated answer up to the end-of-turn marker.
    pub(super) fn answer<'a>(&self, generated: &'a str) -> &'a str {
        match &self.end {
            Some(end) => generated.split(end.as_str()).next().unwrap_or(generated),
            None => generated,
        }
    }
}

pub fn run(spec: &SftSpec, ctx: &mut StageContext) -> Result<StageResult> {
    if spec.task == crate::recipe::types::SftTask::Classification {
        return super::classify::run(spec, ctx);
    }
    let device = super::stage_device(ctx, true)?;
    let infer_device = device.clone().without_autodiff();
    ctx.progress.set_message("reading pairs");
    let (train_pairs, val_pairs) = pairs(
        ctx.input("data")?,
        &spec.prompt_column,
        &spec.response_column,
    )?;
    if train_pairs.is_empty() {
        bail!("the training data has no prompt/response pairs");
    }
    ctx.progress.set_message("loading the model");
    let loaded = load_model_input(&spec.model, spec.tokenizer.is_some(), true, ctx, &device)?;
    let stops = loaded.stop_tokens();
    let LoadedModel {
        backbone,
        config,
        tokenizer,
        chat_template,
        ..
    } = loaded;
    let format = Format::new(spec.template, chat_template.as_deref());
    let eos = eos_token(&tokenizer, &config);

    ctx.progress.set_message("tokenizing");
    let batch = spec.train.batch_size.max(1);
    let train_batches = encode_pairs(
        &tokenizer,
        &format,
        &train_pairs,
        eos,
        spec.max_length,
        batch,
        &device,
    )?;
    let val_batches = encode_pairs(
        &tokenizer,
        &format,
        &val_pairs,
        eos,
        spec.max_length,
        batch,
        &device,
    )?;
    let sampling = SamplingConfig {
        max_new_tokens: spec.eval_max_new_tokens,
        stop_tokens: stops,
        ..Default::default()
    };

    ctx.progress
        .set_message("answering validation prompts (before)");
    let before = exact_match(
        &backbone.valid(),
        &tokenizer,
        &format,
        &val_pairs,
        &sampling,
        &infer_device,
    )?;
    ctx.check_cancelled()?;

    let (backbone, adapted) = match &spec.peft {
        Some(PeftSpec::Lora(cfg)) => {
            lora::apply(backbone, cfg, &device).map_err(anyhow::Error::msg)?
        }
        None => (backbone, Vec::new()),
    };
    let (trained, summary, _) = super::train_logged(
        backbone,
        &CausalLm,
        &train_batches,
        &val_batches,
        &spec.train,
        ctx,
    )?;

    ctx.progress
        .set_message("answering validation prompts (after)");
    let mut inference = trained.valid();
    let after = exact_match(
        &inference,
        &tokenizer,
        &format,
        &val_pairs,
        &sampling,
        &infer_device,
    )?;
    let val_loss_after = if val_batches.is_empty() {
        None
    } else {
        Some(evaluate(&trained, &CausalLm, &val_batches))
    };

    ctx.progress.set_message("saving");
    if let Some(PeftSpec::Lora(cfg)) = &spec.peft {
        let dir = ctx.output_dir("adapter", ArtifactType::Model)?;
        lora::save_peft(&mut inference, cfg, "model", &dir)?;
    }
    let mut merged = inference;
    lora::merge_and_unload(&mut merged);
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    save_hf_dir(&Model::new(merged), &config, Some(&tokenizer), &dir)?;

    let mut metrics = serde_json::Map::new();
    let round = |x: f64| (x * 1e4).round() / 1e4;
    metrics.insert("steps".into(), summary.steps.into());
    metrics.insert("train_loss_first".into(), round(summary.first_loss).into());
    metrics.insert("train_loss_last".into(), round(summary.last_loss).into());
    if let (Some(b), Some(a)) = (before, after) {
        metrics.insert("exact_match_before".into(), round(b).into());
        metrics.insert("exact_match_after".into(), round(a).into());
    }
    let mut warnings = Vec::new();
    if (summary.first_loss - summary.last_loss) / summary.first_loss.abs().max(1e-9) < 0.05 {
        warnings.push(format!("underfitting: the training loss barely fell ({:.3} -> {:.3}); train longer or raise lr", summary.first_loss, summary.last_loss));
    }
    if let (Some(v), true) = (val_loss_after, summary.last_loss > 0.0)
        && v > 2.0 * summary.last_loss
        && v - summary.last_loss > 0.5
    {
        warnings.push(format!(
            "overfitting: validation loss {v:.3} is far above the training loss {:.3}",
            summary.last_loss
        ));
    }
    let summary_json = json!({
        "method": if adapted.is_empty() { "full fine-tuning" } else { "LoRA" },
        "adapted_modules": adapted.len(),
        "trainable_parameters": trainable(&trained),
        "train_pairs": train_pairs.len(),
        "validation_pairs": val_pairs.len(),
        "exact_match_before": before,
        "exact_match_after": after,
        "training": summary,
    });
    Ok(StageResult {
        metrics,
        warnings,
        summary: summary_json,
    })
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

/// (prompt, response) pairs of the train and validation splits.
fn pairs(input: &ResolvedInput, prompt: &str, response: &str) -> Result<(Pairs, Pairs)> {
    let of = |t: &Table| -> Result<Pairs> {
        let idx = t.indices(
            &[prompt.to_owned(), response.to_owned()],
            "the sft stage reads column",
        )?;
        Ok(t.rows
            .iter()
            .filter_map(|r| {
                Some((
                    r.values[idx[0]].as_str()?.to_owned(),
                    r.values[idx[1]].as_str()?.to_owned(),
                ))
            })
            .collect())
    };
    match input {
        ResolvedInput::Artifact(view) if view.outputs.len() > 1 => {
            let part = |split| -> Result<Pairs> {
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

/// The end-of-text token appended to training texts: the tokenizer's `<|endoftext|>`, else the
/// config's `eos_token_id`.
pub(super) fn eos_token(tok: &Tokenizer, config: &serde_json::Value) -> Option<u32> {
    tok.token_to_id(EOS)
        .or_else(|| config["eos_token_id"].as_u64().map(|v| v as u32))
}

/// Batches whose targets are the response tokens (and the end-of-text token).
pub(super) fn encode_pairs(
    tok: &Tokenizer,
    format: &Format,
    pairs: &[(String, String)],
    eos: Option<u32>,
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Result<Vec<LmBatch>> {
    let enc = |s: &str| -> Result<Vec<u32>> {
        Ok(tok
            .encode(s, false)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
            .get_ids()
            .to_vec())
    };
    let mut seqs = Vec::new();
    let mut targets = Vec::new();
    for (p, r) in pairs {
        let prompt = enc(&format.prompt(p)?)?;
        let mut response = enc(&format.response(r))?;
        response.extend(eos);
        let mut seq = prompt.clone();
        seq.extend(&response);
        let mut target = vec![false; prompt.len()];
        target.extend(std::iter::repeat_n(true, response.len()));
        seq.truncate(max_len);
        target.truncate(max_len);
        if target.iter().any(|t| *t) {
            seqs.push(seq);
            targets.push(target);
        }
    }
    Ok(seqs
        .chunks(batch)
        .zip(targets.chunks(batch))
        .map(|(s, t)| LmBatch::with_targets(s, t, device))
        .collect())
}

/// Share of validation prompts whose greedy answer equals the reference (after normalising
/// case, punctuation and spaces); `None` without validation pairs.
pub(super) fn exact_match(
    model: &Backbone,
    tok: &Tokenizer,
    format: &Format,
    pairs: &[(String, String)],
    sampling: &SamplingConfig,
    device: &Device,
) -> Result<Option<f64>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut hits = 0;
    for chunk in pairs.chunks(16) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(p, _)| format.encode_prompt(tok, p))
            .collect::<Result<_>>()?;
        let outputs = generate(model, &prompts, sampling, device);
        for ((_, want), out) in chunk.iter().zip(outputs) {
            let text = tok.decode(&out, true).map_err(|e| anyhow::anyhow!("{e}"))?;
            if normalize(format.answer(&text)) == normalize(want) {
                hits += 1;
            }
        }
    }
    Ok(Some(hits as f64 / pairs.len() as f64))
}
