//! lm-eval tasks ([`crate::data::lm_eval`]) on one model, as lm-evaluation-harness's HF
//! backend runs them, so the same model and data give lm-eval's numbers:
//! - text becomes tokens with the tokenizer's own special tokens (a BOS where its
//!   post-processor adds one), unless the text already starts with the BOS (or EOS) string;
//! - a context's trailing whitespace moves to the start of its continuation, and the
//!   continuation's tokens are those of context + continuation past the context's;
//! - a log-likelihood is the sum of the continuation tokens' log-probabilities (log-softmax
//!   over the whole vocabulary), the input cut from the left to the model's positions; it is
//!   greedy when every continuation token is the argmax;
//! - generation is greedy, ends at a stop token, at `max_gen_toks`, or once the text holds a
//!   stop string (`until`), and is cut at the first stop string.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::model_input::LoadedModel;
use crate::data::lm_eval::{Prepared, Request, Task, exact_match};
use crate::model::sampling::{SamplingConfig, generate_until};

/// Documents scored in one forward pass.
const BATCH: usize = 8;

/// One document's outcome, kept in the stage's `benchmarks` output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DocResult {
    pub doc: usize,
    pub context: String,
    pub target: String,
    /// Each choice's (or the continuation's) log-likelihood.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loglikelihoods: Vec<f64>,
    /// The generated text, cut at the first stop string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// The response after each filter, by filter name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered: BTreeMap<String, String>,
    /// This document's value of each metric.
    pub scores: BTreeMap<String, f64>,
}

/// A task's metrics (means over its documents, `perplexity` as lm-eval aggregates it) and
/// every document's outcome.
pub struct BenchmarkRun {
    pub scores: Vec<(String, f64)>,
    pub docs: Vec<DocResult>,
}

/// How lm-eval's HF backend turns text into ids for this model.
struct Encoder<'m> {
    tok: &'m Tokenizer,
    /// The BOS id (else EOS): what an empty context is scored after.
    prefix_id: Option<u32>,
    /// Its text: a string that starts with it gets no special tokens of its own.
    prefix: Option<String>,
}

impl<'m> Encoder<'m> {
    fn new(m: &'m LoadedModel) -> Encoder<'m> {
        let id = |k: &str| match &m.config[k] {
            serde_json::Value::Number(n) => n.as_u64().map(|v| v as u32),
            serde_json::Value::Array(a) => a.first().and_then(|v| v.as_u64()).map(|v| v as u32),
            _ => None,
        };
        let prefix_id = id("bos_token_id").or_else(|| id("eos_token_id"));
        let prefix = prefix_id
            .and_then(|p| m.tokenizer.decode(&[p], false).ok())
            .filter(|s| !s.is_empty());
        Encoder {
            tok: &m.tokenizer,
            prefix_id,
            prefix,
        }
    }

    fn encode(&self, s: &str, special: bool) -> Result<Vec<u32>> {
        let special = special && !self.prefix.as_deref().is_some_and(|p| s.starts_with(p));
        Ok(self
            .tok
            .encode(s, special)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Context and continuation ids (lm-eval's `_encode_pair`, and its empty-context case).
    fn pair(&self, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        if context.is_empty() {
            let cont = self.encode(continuation, false)?;
            return Ok(match (self.prefix_id, cont.first()) {
                (Some(p), Some(&first)) if p != first => (vec![p], cont),
                (Some(p), None) => (vec![p], cont),
                _ => (
                    cont[..1.min(cont.len())].to_vec(),
                    cont[1.min(cont.len())..].to_vec(),
                ),
            });
        }
        let kept = context.trim_end().len();
        let (context, continuation) = if kept < context.len() {
            (
                &context[..kept],
                format!("{}{continuation}", &context[kept..]),
            )
        } else {
            (context, continuation.to_owned())
        };
        let whole = self.encode(&format!("{context}{continuation}"), true)?;
        let ctx = self.encode(context, true)?;
        let cont = whole.get(ctx.len()..).unwrap_or_default().to_vec();
        Ok((ctx, cont))
    }
}

/// The log-likelihood of each continuation after its context, and whether it is greedy.
fn loglikelihoods(
    m: &LoadedModel,
    requests: &[(Vec<u32>, Vec<u32>)],
    device: &Device,
) -> Vec<(f64, bool)> {
    let max_len = m.backbone.max_positions();
    let mut out = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(BATCH) {
        // The input: context + continuation, cut from the left, without its last token.
        let inputs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(ctx, cont)| {
                let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
                let end = all.len().saturating_sub(1);
                let from = all.len().saturating_sub(max_len + 1).min(end);
                all[from..end].to_vec()
            })
            .collect();
        let longest = inputs.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let (mut ids, mut real) = (Vec::new(), Vec::new());
        for inp in &inputs {
            ids.extend(inp.iter().map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(0i64, longest - inp.len()));
            real.extend(std::iter::repeat_n(true, inp.len()));
            real.extend(std::iter::repeat_n(false, longest - inp.len()));
        }
        let b = inputs.len();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, longest]), device);
        let padding = Tensor::<2, Bool>::from_data(TensorData::new(real, [b, longest]), device);
        let hidden = m.backbone.hidden(ids, Some(padding));
        for (row, ((_, cont), inp)) in chunk.iter().zip(&inputs).enumerate() {
            let n = cont.len().min(inp.len());
            if n == 0 {
                out.push((0.0, true));
                continue;
            }
            // Only the continuation's positions go through the head.
            let h = hidden.clone().narrow(0, row, 1).narrow(1, inp.len() - n, n);
            let logits = m.backbone.lm_logits(h).expect("a decoder");
            let v = logits.dims()[2];
            let logp = crate::model::to_vec(burn::tensor::activation::log_softmax(logits, 2));
            let mut sum = 0f32;
            let mut greedy = true;
            for (i, &t) in cont[cont.len() - n..].iter().enumerate() {
                let row = &logp[i * v..(i + 1) * v];
                sum += row[t as usize];
                let best = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (j, &x)| if x > b.1 { (j, x) } else { b },
                    )
                    .0;
                greedy &= best == t as usize;
            }
            out.push((f64::from(sum), greedy));
        }
    }
    out
}

/// Greedy answers to `contexts`, each cut at its first stop string.
fn answers(
    m: &LoadedModel,
    enc: &Encoder,
    contexts: &[&str],
    until: &[String],
    max_gen_toks: usize,
    device: &Device,
) -> Result<Vec<String>> {
    let max_len = m.backbone.max_positions();
    let keep = max_len.saturating_sub(max_gen_toks).max(1);
    let cfg = SamplingConfig {
        max_new_tokens: max_gen_toks,
        stop_tokens: m.stop_tokens(),
        ..Default::default()
    };
    let stop = |ids: &[u32]| {
        let text = m.tokenizer.decode(ids, false).unwrap_or_default();
        until
            .iter()
            .any(|u| !u.is_empty() && text.contains(u.as_str()))
    };
    let mut out = Vec::with_capacity(contexts.len());
    for chunk in contexts.chunks(BATCH) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|c| {
                let ids = enc.encode(c, true)?;
                Ok(ids[ids.len().saturating_sub(keep)..].to_vec())
            })
            .collect::<Result<_>>()?;
        for ids in generate_until(m.language_model()?, &prompts, &cfg, device, &stop) {
            let mut text = m
                .tokenizer
                .decode(&ids, true)
                .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
            for u in until.iter().filter(|u| !u.is_empty()) {
                if let Some(at) = text.find(u.as_str()) {
                    text.truncate(at);
                }
            }
            out.push(text);
        }
    }
    Ok(out)
}

/// The first index of the largest value (numpy's `argmax`).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    values
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |b, (i, x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// Runs `task`'s prepared documents on `m`.
pub(crate) fn run(
    task: &Task,
    prepared: &[Prepared],
    m: &LoadedModel,
    device: &Device,
) -> Result<BenchmarkRun> {
    anyhow::ensure!(
        m.backbone.is_decoder(),
        "lm-eval tasks need a decoder; this model is an encoder"
    );
    let enc = Encoder::new(m);
    let delim = &task.config.target_delimiter;
    let mut docs: Vec<DocResult> = prepared
        .iter()
        .enumerate()
        .map(|(i, p)| DocResult {
            doc: i,
            context: p.context.clone(),
            target: match &p.request {
                Request::Choices { choices, gold } => usize::try_from(*gold)
                    .ok()
                    .and_then(|g| choices.get(g).cloned())
                    .unwrap_or_default(),
                Request::Continuation(t) => t.clone(),
                Request::Generate { gold } => gold.clone(),
            },
            loglikelihoods: Vec::new(),
            response: None,
            filtered: BTreeMap::new(),
            scores: BTreeMap::new(),
        })
        .collect();
    let names: Vec<&str> = task.metrics.iter().map(|m| m.metric.as_str()).collect();
    // Every (document, continuation) scored, in order.
    let mut requests = Vec::new();
    for p in prepared {
        match &p.request {
            Request::Choices { choices, .. } => {
                for c in choices {
                    requests.push(enc.pair(&p.context, &format!("{delim}{c}"))?);
                }
            }
            Request::Continuation(t) => requests.push(enc.pair(&p.context, t)?),
            Request::Generate { .. } => {}
        }
    }
    let mut scored = loglikelihoods(m, &requests, device).into_iter();
    let mut mean: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let mut add = |key: String, v: f64| {
        let e = mean.entry(key).or_insert((0.0, 0));
        e.0 += v;
        e.1 += 1;
    };
    let (until, max_gen_toks) = task.generation();
    let contexts: Vec<&str> = prepared
        .iter()
        .filter(|p| matches!(p.request, Request::Generate { .. }))
        .map(|p| p.context.as_str())
        .collect();
    let mut generated = answers(m, &enc, &contexts, &until, max_gen_toks, device)?.into_iter();
    let mut lls_total = (0.0, 0usize);
    for (p, d) in prepared.iter().zip(&mut docs) {
        match &p.request {
            Request::Choices { choices, gold } => {
                let lls: Vec<f64> = scored
                    .by_ref()
                    .take(choices.len())
                    .map(|(l, _)| l)
                    .collect();
                let pick = |lengths: &dyn Fn(&str) -> usize| {
                    argmax(
                        lls.iter()
                            .zip(choices)
                            .map(|(l, c)| l / lengths(c).max(1) as f64),
                    )
                };
                for name in &names {
                    let pred = match *name {
                        "acc" => argmax(lls.iter().copied()),
                        "acc_norm" => pick(&|c| c.chars().count()),
                        _ => pick(&|c| c.len()),
                    };
                    let v = if pred as i64 == *gold { 1.0 } else { 0.0 };
                    d.scores.insert((*name).to_owned(), v);
                    add((*name).to_owned(), v);
                }
                d.loglikelihoods = lls;
            }
            Request::Continuation(_) => {
                let (ll, greedy) = scored.next().context("a scored continuation")?;
                d.loglikelihoods = vec![ll];
                lls_total.0 += ll;
                lls_total.1 += 1;
                if names.contains(&"acc") {
                    let v = if greedy { 1.0 } else { 0.0 };
                    d.scores.insert("acc".into(), v);
                    add("acc".into(), v);
                }
                if names.contains(&"perplexity") {
                    d.scores.insert("perplexity".into(), ll);
                }
            }
            Request::Generate { gold } => {
                let response = generated.next().context("a generated answer")?;
                for filter in &task.filters {
                    let filtered = filter.apply(&response);
                    for metric in &task.metrics {
                        let key = if filter.name == "none" {
                            metric.metric.clone()
                        } else {
                            format!("{}_{}", metric.metric, filter.name)
                        };
                        let v = exact_match(metric, &filtered, gold)?;
                        d.scores.insert(key.clone(), v);
                        add(key, v);
                    }
                    d.filtered.insert(filter.name.clone(), filtered);
                }
                d.response = Some(response);
            }
        }
    }
    let mut scores: Vec<(String, f64)> = mean
        .into_iter()
        .map(|(k, (sum, n))| (k, sum / n.max(1) as f64))
        .collect();
    if names.contains(&"perplexity") && lls_total.1 > 0 {
        scores.push((
            "perplexity".into(),
            (-lls_total.0 / lls_total.1 as f64).exp(),
        ));
    }
    Ok(BenchmarkRun { scores, docs })
}
