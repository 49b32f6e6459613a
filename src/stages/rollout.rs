//! What the RL stages share: prompts (with optional reference answers), sampling answers from
//! the policy, scoring them (a reward model and/or rules), and per-token log-probabilities.

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use tokenizers::Tokenizer;

use super::conversation::Format;
use super::model_input::{LoadedModel, load_checkpoint};
use super::scoring::{RewardText, score};
use super::verifiers;
use crate::data::leakage::normalize;
use crate::data::table::Table;
use crate::model::decoder::LanguageModel;
use crate::model::sampling::{SamplingConfig, generate_groups};
use crate::model::{Backbone, Model};
use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::settings::RewardSource;
use crate::train::objectives::LmBatch;

/// A prompt, and every column of its row (reference answers, what a verifier reads).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PromptRow {
    pub prompt: String,
    pub columns: serde_json::Map<String, serde_json::Value>,
}

impl PromptRow {
    /// The text in `column`, if it holds text.
    pub fn text(&self, column: &str) -> Option<&str> {
        self.columns.get(column).and_then(serde_json::Value::as_str)
    }
}

/// Prompts of the train and validation splits (a file or single split: all train), each with
/// its row's columns; `answer_columns` (what the rules read) must exist.
pub fn read_prompts(
    input: &ResolvedInput,
    prompt_column: &str,
    answer_columns: &[&str],
) -> Result<(Vec<PromptRow>, Vec<PromptRow>)> {
    let of = |t: &Table| -> Result<Vec<PromptRow>> {
        let mut cols = vec![prompt_column.to_owned()];
        cols.extend(answer_columns.iter().map(|c| c.to_string()));
        let idx = t.indices(&cols, "the stage reads column")?;
        Ok(t.rows
            .iter()
            .filter_map(|r| {
                Some(PromptRow {
                    prompt: r.values[idx[0]].as_str()?.to_owned(),
                    columns: t
                        .columns
                        .iter()
                        .cloned()
                        .zip(r.values.iter().cloned())
                        .collect(),
                })
            })
            .collect())
    };
    crate::stages::tables::split_rows(input, of)
}

/// Seconds a verifier program may take on one batch when `reward.timeout` is not set.
pub const DEFAULT_TIMEOUT_S: f64 = 60.0;

/// Scores responses: each reward that is set (a reward model's score, 1 or 0 for each rule and
/// verifier), and their sum weighted by `weights`.
pub struct Scorer {
    pub model: Option<(Model, Tokenizer, RewardText)>,
    exact_match: Option<String>,
    length: Option<(usize, usize)>,
    regex: Option<regex::Regex>,
    math: Option<String>,
    think: bool,
    command: Option<verifiers::Verifier>,
    /// Rewards written in Rust (`custom`), in their order.
    custom: Vec<std::sync::Arc<dyn crate::spec::Reward>>,
    /// (name, weight) of each reward that is set, in the order they add up.
    weights: Vec<(&'static str, f64)>,
    device: Device,
}

impl Scorer {
    /// The scorer of `source`; its reward model (the stage's input `model_input`) loads on
    /// `device`.
    pub fn new(
        source: &RewardSource,
        model_input: &str,
        ctx: &StageContext,
        device: &Device,
    ) -> Result<Scorer> {
        let model = match &source.model {
            Some(_) => {
                let LoadedModel {
                    backbone,
                    score: head,
                    config,
                    tokenizer,
                    chat_template,
                } = load_checkpoint(ctx, model_input, None, false, device)?;
                if head.as_ref().map(|h| h.d_out()) != Some(1) {
                    bail!(
                        "`{model_input}` has no single-score head: train it with a `reward` stage"
                    );
                }
                let text = RewardText::new(
                    &backbone,
                    &tokenizer,
                    &config,
                    chat_template.as_ref(),
                    &super::scoring::trained_template(&config),
                    512,
                );
                Some((
                    Model {
                        backbone,
                        score: head,
                    },
                    tokenizer,
                    text,
                ))
            }
            None => None,
        };
        // The registered rewards the recipe names, resolved when it was loaded.
        let custom: Vec<std::sync::Arc<dyn crate::spec::Reward>> = source
            .custom
            .iter()
            .map(|name| {
                ctx.rewards
                    .iter()
                    .find(|r| r.name() == name)
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("no reward named `{name}` is registered"))
            })
            .collect::<Result<_>>()?;
        Ok(Scorer {
            model,
            exact_match: source.exact_match.clone(),
            length: source.length.as_ref().map(|l| (l.min, l.max)),
            regex: source
                .regex
                .as_deref()
                .map(regex::Regex::new)
                .transpose()
                .context("reward.regex")?,
            math: source.math.clone(),
            think: source.think,
            command: source.command.clone().map(|argv| verifiers::Verifier {
                argv,
                dir: ctx.recipe_dir.clone(),
                timeout: std::time::Duration::from_secs_f64(
                    source.timeout.unwrap_or(DEFAULT_TIMEOUT_S),
                ),
            }),
            weights: source
                .names()
                .into_iter()
                .map(|n| {
                    let name = crate::spec::rewards::BUILTIN_REWARDS
                        .iter()
                        .copied()
                        .chain(custom.iter().map(|r| r.name()))
                        .find(|known| *known == n)
                        .ok_or_else(|| anyhow::anyhow!("no reward named `{n}` is registered"))?;
                    Ok((name, source.weights.get(n).copied().unwrap_or(1.0)))
                })
                .collect::<Result<_>>()?,
            custom,
            device: device.clone(),
        })
    }

    /// The names of the rewards, in the order `components` gives them.
    pub fn names(&self) -> Vec<&'static str> {
        self.weights.iter().map(|(n, _)| *n).collect()
    }

    /// The weighted sum of each response's components (as `components` gives them).
    pub fn sum(&self, components: &[Vec<f64>]) -> Vec<f64> {
        let n = components.first().map_or(0, Vec::len);
        (0..n)
            .map(|i| {
                let mut total = 0.0;
                for ((_, w), c) in self.weights.iter().zip(components) {
                    total += w * c[i];
                }
                total
            })
            .collect()
    }

    /// Each reward of each (prompt row, response), one list per reward in `names` order.
    pub fn components(&self, rows: &[(&PromptRow, &str)]) -> Result<Vec<Vec<f64>>> {
        let mut out = Vec::new();
        if let Some((model, tok, text)) = &self.model {
            let mut scores = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(16) {
                let pairs: Vec<(&str, &str)> =
                    chunk.iter().map(|(p, r)| (p.prompt.as_str(), *r)).collect();
                let batch = text.batch(tok, &pairs, &self.device)?;
                let s = score(model, &batch)
                    .try_into_vec_as::<f32>()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                scores.extend(s.into_iter().map(f64::from));
            }
            out.push(scores);
        }
        let rule = |f: &dyn Fn(&PromptRow, &str) -> bool| -> Vec<f64> {
            rows.iter()
                .map(|(row, response)| f64::from(u8::from(f(row, response))))
                .collect()
        };
        if let Some(column) = &self.exact_match {
            out.push(rule(&|row, response| {
                row.text(column)
                    .is_some_and(|a| normalize(a) == normalize(response))
            }));
        }
        if let Some((min, max)) = self.length {
            out.push(rule(&|_, response| {
                (min..=max).contains(&response.split_whitespace().count())
            }));
        }
        if let Some(re) = &self.regex {
            out.push(rule(&|_, response| re.is_match(response)));
        }
        if let Some(column) = &self.math {
            out.push(
                rows.iter()
                    .map(|(row, response)| {
                        row.text(column)
                            .map_or(0.0, |a| verifiers::math_reward(response, a))
                    })
                    .collect(),
            );
        }
        if self.think {
            out.push(
                rows.iter()
                    .map(|(_, response)| verifiers::think_reward(response))
                    .collect(),
            );
        }
        if let Some(v) = &self.command {
            let lines: Vec<serde_json::Value> = rows
                .iter()
                .map(|(row, response)| {
                    let mut line = row.columns.clone();
                    line.insert("prompt".into(), row.prompt.clone().into());
                    line.insert("response".into(), (*response).into());
                    serde_json::Value::Object(line)
                })
                .collect();
            out.push(v.scores(&lines)?);
        }
        for reward in &self.custom {
            let answers: Vec<crate::spec::Answer<'_>> = rows
                .iter()
                .map(|(row, response)| crate::spec::Answer {
                    prompt: &row.prompt,
                    response,
                    row: &row.columns,
                })
                .collect();
            let scores = reward
                .scores(&answers)
                .with_context(|| format!("reward `{}`", reward.name()))?;
            if scores.len() != rows.len() {
                bail!(
                    "reward `{}` gave {} scores for {} answers",
                    reward.name(),
                    scores.len(),
                    rows.len()
                );
            }
            if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
                bail!(
                    "reward `{}` gave a score that is not finite: {bad}",
                    reward.name()
                );
            }
            out.push(scores);
        }
        Ok(out)
    }
}

/// Sampled answers: for every prompt, `group` completions (token ids, ending with a stop
/// token when one was produced) and their decoded text.
pub struct Rollout {
    pub prompt_ids: Vec<Vec<u32>>,
    /// (prompt index, completion ids, completion text)
    pub completions: Vec<(usize, Vec<u32>, String)>,
}

pub fn rollout(
    policy: &Backbone,
    tok: &Tokenizer,
    format: &Format,
    prompts: &[PromptRow],
    group: usize,
    sampling: &SamplingConfig,
    device: &Device,
) -> Result<Rollout> {
    let prompt_ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| format.encode_prompt(tok, &p.prompt))
        .collect::<Result<_>>()?;
    // Each prompt encoded once, its group decoded as rows of one batch.
    let policy = super::model_input::language_model(policy)?;
    let outs = generate_groups(policy, &prompt_ids, group, sampling, device);
    let mut completions = Vec::with_capacity(outs.len());
    for (k, out) in outs.into_iter().enumerate() {
        let text = tok
            .decode(&out, true)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
        completions.push((k / group, out, format.answer(&text).trim().to_owned()));
    }
    Ok(Rollout {
        prompt_ids,
        completions,
    })
}

impl Rollout {
    /// Each reward of each completion (`Scorer::components`); `prompts` are the rollout's.
    pub fn scored(&self, prompts: &[PromptRow], scorer: &Scorer) -> Result<Vec<Vec<f64>>> {
        let rows: Vec<(&PromptRow, &str)> = self
            .completions
            .iter()
            .map(|(p, _, text)| (&prompts[*p], text.as_str()))
            .collect();
        scorer.components(&rows)
    }

    /// Prompt + completion rows with the completion tokens as targets.
    pub fn batch(&self, device: &Device) -> LmBatch {
        let (mut seqs, mut targets) = (Vec::new(), Vec::new());
        for (p, ids, _) in &self.completions {
            let prompt = &self.prompt_ids[*p];
            seqs.push([prompt.as_slice(), ids.as_slice()].concat());
            targets.push(
                std::iter::repeat_n(false, prompt.len())
                    .chain(std::iter::repeat_n(true, ids.len()))
                    .collect(),
            );
        }
        LmBatch::with_targets(&seqs, &targets, device)
    }
}

/// Per-token log-probabilities of the targets `[b, s-1]` (position t holds token t+1's), and
/// the target mask aligned with them. `temperature` divides the logits first, as sampling
/// did (TRL scores PPO rollouts so): the ratios and KL estimates then refer to the
/// distribution the tokens came from.
pub fn token_logps(
    model: LanguageModel<'_>,
    b: &LmBatch,
    temperature: f64,
) -> (Tensor<2>, Tensor<2>) {
    let hidden = model.hidden(b.ids.clone(), Some(b.padding.clone()));
    let lp = model
        .next_token_nll_at(hidden, b.ids.clone(), temperature, &b.target_rows)
        .neg();
    let s = b.ids.dims()[1];
    let mask = b.target_mask.clone().narrow(1, 1, s - 1);
    (lp * mask.clone(), mask)
}

/// How a stage's policy answers prompts: its tokenizer, prompt format, sampling settings and
/// inference device.
#[derive(Clone, Copy)]
pub struct Answering<'a> {
    pub tok: &'a Tokenizer,
    pub format: &'a Format,
    pub sampling: &'a SamplingConfig,
    pub device: &'a Device,
}

/// Answers to held-out prompts and how each reward scored them.
pub struct Measured {
    /// The mean reward.
    pub mean: f64,
    /// The mean of each reward, by name.
    pub components: Vec<(&'static str, f64)>,
    /// (prompt index, answer, each reward's score), prompt-major.
    pub answers: Vec<(usize, String, Vec<f64>)>,
}

/// The rewards of answers to `prompts` (the before/after measure of RL stages): greedy ones
/// with `samples == 1`, else `samples` answers per prompt drawn as in training, from a fixed
/// seed (the same draws before and after); their mean, each reward's, and every answer.
pub fn measure(
    policy: &Backbone,
    how: &Answering,
    prompts: &[PromptRow],
    scorer: &Scorer,
    samples: usize,
) -> Result<Option<Measured>> {
    if prompts.is_empty() {
        return Ok(None);
    }
    let cfg = if samples <= 1 {
        SamplingConfig {
            temperature: 0.0,
            ..how.sampling.clone()
        }
    } else {
        SamplingConfig {
            seed: 0x5eed,
            ..how.sampling.clone()
        }
    };
    let how = Answering {
        sampling: &cfg,
        ..*how
    };
    let r = rollout(
        policy,
        how.tok,
        how.format,
        prompts,
        samples.max(1),
        how.sampling,
        how.device,
    )?;
    let components = r.scored(prompts, scorer)?;
    let rewards = scorer.sum(&components);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok(Some(Measured {
        mean: mean(&rewards),
        components: scorer
            .names()
            .into_iter()
            .zip(&components)
            .map(|(n, c)| (n, mean(c)))
            .collect(),
        answers: r
            .completions
            .into_iter()
            .enumerate()
            .map(|(i, (p, _, text))| (p, text, components.iter().map(|c| c[i]).collect()))
            .collect(),
    }))
}

/// The scores of `group` answers to each prompt (prompt-major order), sampled as `how` says.
pub fn judged(
    policy: &Backbone,
    how: &Answering,
    prompts: &[PromptRow],
    scorer: &Scorer,
    group: usize,
) -> Result<Vec<f64>> {
    let r = rollout(
        policy,
        how.tok,
        how.format,
        prompts,
        group,
        how.sampling,
        how.device,
    )?;
    Ok(scorer.sum(&r.scored(prompts, scorer)?))
}

/// What every RL stage sets up the same way before training: its prompts (the held-out ones
/// measure the reward before and after), the policy checkpoint (input `model`), the prompt
/// format with every prompt checked to tokenize, and the sampling settings.
pub struct RlSetup {
    pub train_prompts: Vec<PromptRow>,
    pub val_prompts: Vec<PromptRow>,
    pub backbone: Backbone,
    pub config: serde_json::Value,
    pub tokenizer: Tokenizer,
    pub format: Format,
    pub sampling: SamplingConfig,
}

/// How an RL stage asks for its set-up.
pub struct RlSettings<'a> {
    /// The stage's inputs: its prompts and the policy it starts from.
    pub prompts_input: &'a str,
    pub policy_input: &'a str,
    pub prompt_column: &'a str,
    /// The reference-answer columns the rule rewards read.
    pub answer_columns: Vec<&'a str>,
    pub template: &'a crate::spec::settings::PromptTemplate,
    pub max_new_tokens: usize,
    pub temperature: f64,
}

impl RlSetup {
    pub fn new(s: &RlSettings, ctx: &mut StageContext, device: &Device) -> Result<RlSetup> {
        ctx.progress.set_message("reading prompts");
        let (train_prompts, val_prompts) = read_prompts(
            ctx.input(s.prompts_input)?,
            s.prompt_column,
            &s.answer_columns,
        )?;
        if train_prompts.is_empty() {
            bail!("no prompts in column `{}`", s.prompt_column);
        }
        ctx.progress.set_message("loading the policy");
        let loaded = load_checkpoint(ctx, s.policy_input, None, true, device)?;
        let sampling = SamplingConfig {
            max_new_tokens: s.max_new_tokens,
            temperature: s.temperature,
            stop_tokens: loaded.stop_tokens(),
            ..Default::default()
        };
        let LoadedModel {
            backbone,
            config,
            tokenizer,
            chat_template,
            ..
        } = loaded;
        let format = Format::new(s.template, chat_template.as_ref());
        for p in train_prompts.iter().chain(&val_prompts) {
            format.encode_prompt(&tokenizer, &p.prompt)?;
        }
        Ok(RlSetup {
            train_prompts,
            val_prompts,
            backbone,
            config,
            tokenizer,
            format,
            sampling,
        })
    }
}

/// The prompts the before/after reward is measured on: the held-out ones, else the training
/// ones.
pub fn measured_prompts<'a>(train: &'a [PromptRow], val: &'a [PromptRow]) -> &'a [PromptRow] {
    if val.is_empty() { train } else { val }
}

/// The held-out answers before and after training, each with every reward's score, for
/// `hone show --examples` and the report (the first `ANSWERS_KEPT` prompts).
pub fn answer_rows(
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
            let mut row = serde_json::json!({
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

/// Each reward's held-out mean before and after (`reward_<name>_before` / `_after`: a
/// verifier's accuracy), when there are several rewards (one is the stage's score itself).
pub fn per_reward_metrics(
    before: Option<&Measured>,
    after: Option<&Measured>,
) -> Vec<(String, f64)> {
    let (Some(b), Some(a)) = (before, after) else {
        return Vec::new();
    };
    if b.components.len() < 2 {
        return Vec::new();
    }
    b.components
        .iter()
        .zip(&a.components)
        .flat_map(|((name, vb), (_, va))| {
            [
                (format!("reward_{name}_before"), *vb),
                (format!("reward_{name}_after"), *va),
            ]
        })
        .collect()
}
