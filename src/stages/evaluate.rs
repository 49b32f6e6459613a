//! `evaluate`: several models side by side on held-out data. Every enabled check runs on every
//! model: perplexity and next-token accuracy on raw text; exact match, containment, token F1,
//! ROUGE-L and answer perplexity on held-out questions (and every answer, scored); accuracy
//! and macro-F1 through a classification head; greedy answers to sample prompts. Outputs:
//! `results` (`model`, `metric`, `value`), `answers` and `samples`. Each model's evaluation is
//! cached on its own, so a changed model is the only one measured again.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde_json::{Value, json};

use super::answer_scores::{self, AnswerScores};
use super::conversation::{Format, encode_conversations, eos_token, greedy_answers, one_turn};
use super::metrics::{self, Rounded};
use super::model_input::{LoadedModel, load_checkpoint};
use super::tables::{read_split, read_table};
use crate::data::leakage::{self, Key, Part, text_keys};
use crate::data::lm_eval::{Prepared, Task};
use crate::data::table::{ColumnType, Table};
use crate::model::Model;
use crate::model::chat::Message;
use crate::model::sampling::{SamplingConfig, generate};
use crate::spec::StageResult;
use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::kind::{self, DATA_INPUT, InputSlot, Kind, Problem};
use crate::spec::settings::MissingPolicy;
use crate::spec::settings::{
    Input, PromptTemplate, default_eval_tokens, default_max_length, label_column, prompt_column,
    response_column, text_column,
};
use crate::store::ArtifactType;
use crate::train::loss::causal_token_hits;
use crate::train::objectives::{CausalLm, LmBatch};
use crate::train::trainer::evaluate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `evaluate`: the named models side by side on held-out data. Each enabled check adds its
/// metrics for every model. Outputs: `results` (a table: `model`, `metric`, `value`); with
/// `samples`, `samples` (`model`, `prompt`, `response`); with `qa`, `answers` (a row per
/// model and question: `prompt`, `reference`, `answer` and its scores). A model measured
/// before on the same data with the same settings is not measured again (the store keeps each
/// model's evaluation), so a new variant in a recipe costs the evaluation of that variant.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// The models, by the name each gets in the table: `{ base: { from: pretrain }, sft: { from: sft } }`.
    pub models: BTreeMap<String, Input>,
    /// Language modelling on raw text: perplexity and next-token accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<TextEval>,
    /// Held-out questions: each model's greedy answer scored against the reference (exact
    /// match and containment after normalising, SQuAD's token F1, ROUGE-L; the means, and
    /// every answer in the `answers` output), and the perplexity of the reference answer
    /// given the question.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa: Option<QaEval>,
    /// Labelled texts through each model's classification head: accuracy and macro-F1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<ClassificationEval>,
    /// Prompts every model answers (greedy), to read side by side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<SamplesEval>,
    /// A reward model judges each model's greedy answers: the mean score, and the share of
    /// prompts where a model's answer beats the baseline model's (win rate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<RewardEval>,
    /// Benchmarks in lm-evaluation-harness's task format, by the name their metrics get
    /// (`<model>.<benchmark>.<metric>`: `sft.cars_mc.acc`): `{ cars_mc: { task:
    /// ../data/benchmarks/cars_mc.yaml } }`. Each task file (lm-eval 0.4's YAML; its
    /// `data_files` relative to it) is run as lm-eval's HF backend runs it, so the numbers
    /// are lm-eval's: `multiple_choice` (`acc`, `acc_norm`), `loglikelihood` (`perplexity`,
    /// `acc`), `generate_until` (`exact_match`, per filter: `exact_match_<filter>`). Every
    /// document's outcome goes to the `benchmarks` output. The task file and its data enter
    /// the key by content.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub benchmarks: BTreeMap<String, BenchmarkSpec>,
}

/// One lm-eval task.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BenchmarkSpec {
    /// The task file, relative to the recipe.
    pub task: String,
    /// Few-shot examples before each question (default: the task's `num_fewshot`, else 0),
    /// as lm-eval's `--num_fewshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_fewshot: Option<usize>,
    /// Only the first N documents, as lm-eval's `--limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardEval {
    /// A `reward` stage.
    pub model: Input,
    /// Prompts to answer (a dataset's held-out split, or a file).
    pub prompts: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default = "default_eval_tokens")]
    pub max_new_tokens: usize,
    /// The model the others are compared with (default: `base`, else the first by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Also score this many answers per prompt sampled at `temperature` (seeded by the
    /// recipe): `reward_score_sampled`. Greedy answers show what a model says most often;
    /// sampled ones the distribution RL stages (PPO, GRPO) optimise, which can improve while
    /// the greedy answer stays the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    /// Sampling temperature for `samples` (default 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// A held-out text set. From a dataset stage, its `test` split is used, else its `validation`
/// split; a single split or a file is used whole.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TextEval {
    pub data: Input,
    #[serde(default = "text_column")]
    pub column: String,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QaEval {
    pub data: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default = "response_column")]
    pub response_column: String,
    /// How each model is prompted (use the template its SFT stage trained with).
    #[serde(default)]
    pub template: PromptTemplate,
    /// A system turn before every question, as the models were trained to see one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Also score each answer's final number against the reference's (`math_accuracy`, as
    /// GRPO's `math` reward reads them: `\boxed{}`, `####`, else the last number).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub math: bool,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default = "default_eval_tokens")]
    pub max_new_tokens: usize,
    /// A model of the recipe grades every answer against the reference (LLM-as-judge):
    /// `judge_score`, the mean grade scaled to [0, 1], and `judge_unparsed`, the share of
    /// answers whose grade could not be read from the judge's reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<JudgeEval>,
}

/// How a judge model grades answers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JudgeEval {
    /// The judging model (`{ from: stage }`, `{ path }`, `{ hub }`): a chat model.
    pub model: Input,
    /// The grading prompt, with `{question}`, `{reference}`, `{answer}` and `{scale}` filled
    /// in; the default asks for a grade from 1 to `scale` and the number only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rubric: Option<String>,
    /// The top grade (default 5; grades run from 1).
    #[serde(default = "default_scale")]
    pub scale: u32,
    /// How the judge is prompted (default: its own chat template).
    #[serde(default = "model_template")]
    pub template: PromptTemplate,
    /// Tokens the judge may write before its grade (default 8).
    #[serde(default = "default_judge_tokens")]
    pub max_new_tokens: usize,
}

fn default_scale() -> u32 {
    5
}

fn default_judge_tokens() -> usize {
    8
}

fn model_template() -> PromptTemplate {
    PromptTemplate::Named(crate::spec::settings::NamedTemplate::Model)
}

/// The judge's default rubric.
const RUBRIC: &str = "Grade an answer to a question against the reference answer.\n\nQuestion: {question}\nReference answer: {reference}\nAnswer to grade: {answer}\n\nHow correct and complete is the answer, from 1 (wrong) to {scale} (as good as the reference)? Reply with the number only.";

/// `template` with each `{name}` of `values` replaced in one pass, so a value holding a
/// placeholder's text (a question that says `{answer}`) is left as it is.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = values.iter().find_map(|(name, value)| {
            after
                .strip_prefix(name)
                .and_then(|t| t.strip_prefix('}'))
                .map(|t| (value, t))
        });
        match hit {
            Some((value, t)) => {
                out.push_str(value);
                rest = t;
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The grade in a judge's reply: the first whole number in it, if it lies in 1..=`scale`.
fn parse_grade(reply: &str, scale: u32) -> Option<u32> {
    let digits: String = reply
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|g| (1..=scale).contains(g))
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassificationEval {
    pub data: Input,
    #[serde(default = "text_column")]
    pub text_column: String,
    #[serde(default = "label_column")]
    pub label_column: String,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SamplesEval {
    pub prompts: Vec<String>,
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default = "default_eval_tokens")]
    pub max_new_tokens: usize,
}

/// Metrics of one model, in the order they were measured.
type Scores = Vec<(String, f64)>;

/// `kind: evaluate`.
#[derive(Default)]
pub struct EvaluateKind;

/// The models compared, by name.
const MODELS: InputSlot = InputSlot::new("models.*", &[ArtifactType::Model]);
const PERPLEXITY_DATA: InputSlot = InputSlot::new("perplexity.data", DATA_INPUT);
const QA_DATA: InputSlot = InputSlot::new("qa.data", DATA_INPUT);
/// The model grading answers to the held-out questions.
const JUDGE_MODEL: InputSlot = InputSlot::new("qa.judge.model", &[ArtifactType::Model]);
const CLASSIFICATION_DATA: InputSlot = InputSlot::new("classification.data", DATA_INPUT);
/// The judge: only a reward model scores answers.
const REWARD_MODEL: InputSlot = InputSlot::new("reward.model", &[ArtifactType::RewardModel]);
const REWARD_PROMPTS: InputSlot = InputSlot::new("reward.prompts", DATA_INPUT);

impl Kind for EvaluateKind {
    type Settings = EvaluateSpec;
    const NAME: &'static str = "evaluate";
    /// 2: answers scored by containment, token F1 and ROUGE-L too; the `answers` output.
    const VERSION: Option<&'static str> = Some("2");
    const DESCRIPTION: &'static str = "Models side by side on held-out data: perplexity, token accuracy, exact match,\nclassification accuracy, generation samples.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[
            MODELS,
            PERPLEXITY_DATA,
            QA_DATA,
            JUDGE_MODEL,
            CLASSIFICATION_DATA,
            REWARD_MODEL,
            REWARD_PROMPTS,
        ]
    }

    fn outputs(&self, e: &EvaluateSpec) -> Vec<(&'static str, ArtifactType)> {
        let mut v = vec![("results", ArtifactType::Table)];
        if e.samples.is_some() {
            v.push(("samples", ArtifactType::Table));
        }
        if e.qa.is_some() {
            v.push(("answers", ArtifactType::Table));
        }
        if !e.benchmarks.is_empty() {
            v.push(("benchmarks", ArtifactType::Table));
        }
        v
    }

    fn artifact_type(&self, _: &EvaluateSpec) -> ArtifactType {
        ArtifactType::Dataset
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<Value> {
        Some(kind::schema_of::<EvaluateSpec>(generator))
    }

    fn check(&self, e: &EvaluateSpec, stage: &str) -> Vec<Problem> {
        let at = format!("stages.{stage}");
        let mut problems = Vec::new();
        if e.models.is_empty() {
            problems.push(
                Problem::new("models", format!("`{at}` evaluates no model"))
                    .help("name the models to compare: `models: { base: { from: pretrain }, sft: { from: sft } }`"),
            );
        }
        problems.extend(kind::plain_name_problems(
            e.models.keys(),
            "models",
            "model name",
            "a column of the results",
        ));
        if e.perplexity.is_none()
            && e.qa.is_none()
            && e.classification.is_none()
            && e.samples.is_none()
            && e.reward.is_none()
            && e.benchmarks.is_empty()
        {
            problems.push(
                Problem::at_key("", format!("`{at}` has nothing to measure")).help(
                    "add at least one of `perplexity`, `qa`, `classification`, `samples`, `reward`, `benchmarks`",
                ),
            );
        }
        problems.extend(kind::plain_name_problems(
            e.benchmarks.keys(),
            "benchmarks",
            "benchmark name",
            "the benchmark's metrics",
        ));
        if let Some(j) = e.qa.as_ref().and_then(|q| q.judge.as_ref())
            && j.scale < 2
        {
            problems.push(
                Problem::new("qa.judge.scale", "`scale` must be at least 2")
                    .help("grades run from 1 to `scale`; 5 is the default"),
            );
        }
        if let Some(r) = &e.reward {
            if r.samples == Some(0) {
                problems.push(
                    Problem::new("reward.samples", "`reward.samples` must be at least 1")
                        .help("leave it out to score greedy answers only"),
                );
            }
            if r.temperature.is_some_and(|t| !(t > 0.0 && t.is_finite())) {
                problems.push(
                    Problem::new("reward.temperature", "`reward.temperature` must be above 0")
                        .help("sampled answers need a temperature; 1.0 samples the model as it is"),
                );
            }
            if r.temperature.is_some() && r.samples.is_none() {
                problems.push(
                    Problem::at_key(
                        "reward.temperature",
                        "`reward.temperature` is set but `reward.samples` is not",
                    )
                    .help("add `samples: 8` to also score sampled answers"),
                );
            }
        }
        problems
    }

    fn checks_training_data_of(&self) -> Option<InputSlot> {
        Some(MODELS)
    }

    fn referenced_files(
        &self,
        e: &EvaluateSpec,
        recipe_dir: &std::path::Path,
    ) -> Result<Vec<(String, std::path::PathBuf)>, Problem> {
        let mut files = Vec::new();
        for (name, b) in &e.benchmarks {
            let key = format!("benchmarks.{name}.task");
            let path = recipe_dir.join(&b.task);
            let config = Task::parse(&path)
                .and_then(|c| Task::data_files(&c, &path))
                .map_err(|err| {
                    Problem::new(&key, format!("{err:#}")).help(
                        "an lm-eval 0.4 task file: `dataset_path: json`, `dataset_kwargs: { data_files: { test: file.jsonl } }`, `test_split`, `output_type`, `doc_to_text`, ...",
                    )
                })?;
            files.push((key.clone(), path));
            for (i, (split, file)) in config.into_iter().enumerate() {
                if !file.is_file() {
                    return Err(Problem::new(
                        &key,
                        format!(
                            "the task's `{split}` data file {} does not exist",
                            file.display()
                        ),
                    )
                    .help("`data_files` paths are relative to the task file"));
                }
                files.push((format!("benchmarks.{name}.data.{i}"), file));
            }
        }
        Ok(files)
    }

    fn summary_table(&self, summary: &Value) -> Option<String> {
        format_table(summary)
    }

    fn run(&self, spec: &EvaluateSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

pub fn run(spec: &EvaluateSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::training::stage_device(ctx, false)?;
    let texts = match &spec.perplexity {
        Some(t) => Some(super::tables::texts_of(
            &held_out(ctx.input(PERPLEXITY_DATA.key)?)?,
            &t.column,
        )?),
        None => None,
    };
    let qa = match &spec.qa {
        Some(q) => Some(
            pairs_of(
                &held_out(ctx.input(QA_DATA.key)?)?,
                &q.prompt_column,
                &q.response_column,
            )?
            .iter()
            .map(|(p, r)| {
                let system = q.system.iter().map(|s| Message::new("system", s));
                system.chain(one_turn(p, r)).collect()
            })
            .collect::<Vec<Vec<Message>>>(),
        ),
        None => None,
    };
    let labelled = match &spec.classification {
        Some(c) => Some(labelled_of(
            &held_out(ctx.input(CLASSIFICATION_DATA.key)?)?,
            &c.text_column,
            &c.label_column,
        )?),
        None => None,
    };

    let reward_eval = match &spec.reward {
        Some(r) => {
            let (train, val) = super::rollout::read_prompts(
                ctx.input(REWARD_PROMPTS.key)?,
                &r.prompt_column,
                &[],
            )?;
            // Held-out prompts when the dataset has them.
            let prompts = if val.is_empty() { train } else { val };
            let source = crate::spec::settings::RewardSource {
                model: Some(r.model.clone()),
                ..Default::default()
            };
            let scorer = super::rollout::Scorer::new(&source, REWARD_MODEL.key, ctx, &device)?;
            Some((r, prompts, scorer))
        }
        None => None,
    };
    // The benchmarks' documents, prepared once for every model, and what keys them.
    let mut benchmarks: Vec<(String, Task, Vec<Prepared>)> = Vec::new();
    let mut benchmark_bytes = Vec::new();
    for (name, b) in &spec.benchmarks {
        let path = ctx.recipe_dir.join(&b.task);
        let task = Task::load(&path).map_err(|e| crate::spec::context::SettingError {
            key: format!("benchmarks.{name}.task"),
            message: format!("{e:#}"),
            help: None,
        })?;
        let prepared = task.prepare(b.num_fewshot, b.limit)?;
        benchmark_bytes.extend(name.as_bytes());
        benchmark_bytes.extend(std::fs::read(&path)?);
        for (_, file) in Task::data_files(&task.config, &path)? {
            benchmark_bytes.extend(std::fs::read(&file)?);
        }
        benchmarks.push((name.clone(), task, prepared));
    }
    let benchmark_identity =
        (!benchmarks.is_empty()).then(|| crate::store::hash::hash_bytes(&benchmark_bytes));
    // Each model's reward-model score per prompt, for win rates.
    let mut judged: BTreeMap<String, Vec<f64>> = BTreeMap::new();

    // Evaluation examples, to check against what each model trained on.
    // (name in the summary, name in a warning, keys)
    let mut eval_keys: Vec<(String, String, Vec<Key>)> = Vec::new();
    let mut check = |name: &str, label: String, keys: Vec<Key>| {
        eval_keys.push((name.to_owned(), label, keys));
    };
    if let Some(t) = &texts {
        let keys = text_keys("perplexity", Part::Text, t);
        check("perplexity", "perplexity evaluation".into(), keys);
    }
    if let Some(q) = &qa {
        let keys = super::conversation::conversation_keys("qa", q);
        check("qa", "qa evaluation".into(), keys);
    }
    if let Some(l) = &labelled {
        let l: Vec<String> = l.iter().map(|(t, _)| t.clone()).collect();
        let keys = text_keys("classification", Part::Text, &l);
        check("classification", "classification evaluation".into(), keys);
    }
    // A benchmark's questions in a model's training data make its score meaningless.
    for (name, _, prepared) in &benchmarks {
        let keys = prepared
            .iter()
            .enumerate()
            .flat_map(|(i, p)| {
                p.texts
                    .iter()
                    .map(move |t| Key::text(format!("{name} document {}", i + 1), Part::Text, t))
            })
            .collect();
        check(name, format!("benchmark `{name}`"), keys);
    }
    let mut warnings = Vec::new();
    let mut leaked = serde_json::Map::new();
    for (model, inputs) in &ctx.training_data {
        // Each text cell on its own, and each row by its parts (conversation turns included).
        let mut trained_on = Vec::new();
        for input in inputs {
            let t = read_table(input, MissingPolicy::Null)?;
            let columns = leakage::text_columns(&t);
            for c in t.text_columns() {
                let part = Part::of_column(&c);
                let i = t.indices(std::slice::from_ref(&c), "the stage reads column")?[0];
                trained_on.extend(t.rows.iter().filter_map(|r| {
                    let text = r.values[i].as_str().filter(|s| !s.is_empty())?;
                    Some(Key::text(t.origin(r), part, text))
                }));
            }
            trained_on.extend(leakage::table_keys(&t, &columns)?);
        }
        for (check, name, keys) in &eval_keys {
            let against = format!("the training data of `{model}`");
            let (n, w) = super::guards::leakage_warnings(&[(name, keys, &against, &trained_on)]);
            if n > 0 {
                leaked.insert(format!("{model}.{check}"), n.into());
            }
            warnings.extend(w);
        }
    }

    let mut results: BTreeMap<String, Scores> = BTreeMap::new();
    let mut sample_rows = Vec::new();
    let mut answer_rows: Vec<AnswerRow> = Vec::new();
    let mut reused = Vec::new();
    let mut benchmark_rows: Vec<Vec<Value>> = Vec::new();
    // The judge is loaded the first time a model's answers need grading (not when every
    // evaluation comes from the cache).
    let judge_model: std::cell::OnceCell<LoadedModel> = std::cell::OnceCell::new();
    let load_judge = || -> Result<&LoadedModel> {
        if let Some(m) = judge_model.get() {
            return Ok(m);
        }
        ctx.progress.set_message("loading the judge");
        let m = load_checkpoint(ctx, JUDGE_MODEL.key, None, true, &device)
            .context("the judge (`qa.judge.model`)")?;
        Ok(judge_model.get_or_init(|| m))
    };
    let grader = spec
        .qa
        .as_ref()
        .and_then(|q| q.judge.as_ref())
        .map(|j| (j, &load_judge as &JudgeLoader));
    let data = EvalData {
        benchmarks: &benchmarks,
        grader,
        texts: texts.as_deref(),
        qa: qa.as_deref(),
        labelled: labelled.as_deref(),
        judge: reward_eval.as_ref().map(|(cfg, prompts, scorer)| Judge {
            cfg,
            prompts,
            scorer,
            seed: ctx.seed,
        }),
    };
    ctx.progress.set_length(spec.models.len() as u64);
    for (k, name) in spec.models.keys().enumerate() {
        ctx.check_cancelled()?;
        ctx.progress.set_position(k as u64);
        ctx.progress.set_message(name.clone());
        // A model evaluated before on the same data and settings is not evaluated again:
        // a new variant in a recipe costs the evaluation of that variant only.
        let key = model_eval_key(spec, ctx, name, benchmark_identity.as_deref())?;
        let (evaluated, hit) =
            crate::data::tokenized::cached_json(ctx.token_cache.as_deref(), &key, || {
                ctx.progress.set_message(format!("loading {name}"));
                let m = load_checkpoint(ctx, &format!("models.{name}"), None, false, &device)
                    .with_context(|| format!("model `{name}`"))?;
                evaluate_model(spec, &data, name, &m, &ctx.progress, &device)
            })?;
        if hit {
            reused.push(name.clone());
        }
        sample_rows.extend(evaluated.samples.iter().map(|(p, r)| {
            vec![
                Value::String(name.clone()),
                Value::String(p.clone()),
                Value::String(r.clone()),
            ]
        }));
        answer_rows.extend(evaluated.answers.iter().map(|a| AnswerRow {
            model: name.clone(),
            ..a.clone()
        }));
        benchmark_rows.extend(evaluated.benchmark_docs.iter().map(|(bench, d)| {
            vec![
                json!(name),
                json!(bench),
                json!(d.doc),
                json!(d.context),
                json!(d.target),
                json!(d.response),
                json!(serde_json::to_string(&d.filtered).unwrap_or_default()),
                json!(serde_json::to_string(&d.loglikelihoods).unwrap_or_default()),
                json!(serde_json::to_string(&d.scores).unwrap_or_default()),
            ]
        }));
        if let Some(per_prompt) = evaluated.judged {
            judged.insert(name.clone(), per_prompt);
        }
        results.insert(
            name.clone(),
            evaluated
                .scores
                .into_iter()
                .map(|(m, v)| (m, v.unwrap_or(f64::NAN)))
                .collect(),
        );
    }

    // Win rate against the baseline: the share of prompts where a model's answer scores
    // higher (a tie counts half).
    if let Some((cfg, _, _)) = &reward_eval {
        let baseline = cfg
            .baseline
            .clone()
            .filter(|b| judged.contains_key(b))
            .or_else(|| judged.contains_key("base").then(|| "base".to_owned()))
            .or_else(|| judged.keys().next().cloned());
        if let Some(b) = baseline {
            let base = judged[&b].clone();
            for (name, s) in &judged {
                if *name == b {
                    continue;
                }
                let wins: f64 = s
                    .iter()
                    .zip(&base)
                    .map(|(x, y)| {
                        if x > y {
                            1.0
                        } else if x == y {
                            0.5
                        } else {
                            0.0
                        }
                    })
                    .sum();
                if let Some(scores) = results.get_mut(name) {
                    scores.push((format!("win_rate_vs_{b}"), wins / base.len().max(1) as f64));
                }
            }
        }
    }

    let mut rows = Vec::new();
    // Every model's every metric, as `<model>.<metric>`.
    let mut metrics: BTreeMap<String, Rounded> = BTreeMap::new();
    for (model, scores) in &results {
        for (metric, value) in scores {
            rows.push(vec![json!(model), json!(metric), json!(Rounded(*value))]);
            metrics.insert(format!("{model}.{metric}"), Rounded(*value));
        }
    }
    let results_table = table(ctx, &["model", "metric", "value"], rows);
    ctx.write_table("results", &results_table)?;
    if spec.samples.is_some() {
        let samples_table = table(ctx, &["model", "prompt", "response"], sample_rows.clone());
        ctx.write_table("samples", &samples_table)?;
    }
    if spec.qa.is_some() {
        let judged = spec.qa.as_ref().is_some_and(|q| q.judge.is_some());
        ctx.write_table("answers", &answers_table(ctx, &answer_rows, judged))?;
    }
    if !spec.benchmarks.is_empty() {
        // Every document of every benchmark, per model; lists and maps as JSON text.
        let mut t = table(
            ctx,
            &[
                "model",
                "benchmark",
                "doc",
                "context",
                "target",
                "response",
                "filtered",
                "loglikelihoods",
                "scores",
            ],
            benchmark_rows,
        );
        for (ty, name) in t.types.iter_mut().zip(["model", "benchmark", "doc"]) {
            *ty = if name == "doc" {
                ColumnType::Int
            } else {
                ColumnType::Text
            };
        }
        for ty in t.types.iter_mut().skip(3) {
            *ty = ColumnType::Text;
        }
        ctx.write_table("benchmarks", &t)?;
    }
    warnings.extend(pitfalls(&results));
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings,
        summary: json!({
            "leaked_examples": leaked,
            "table": comparison(spec, &results),
            "samples": sample_rows,
            "answers": answer_rows,
            "reused": reused,
        }),
    })
}

/// The rows an evaluation reads: a dataset's `test` split, else its `validation` split (the
/// held-out data); a single split or a file whole.
/// Perplexity and next-token accuracy of a decoder on held-out text.
fn perplexity(
    name: &str,
    m: &LoadedModel,
    cfg: &TextEval,
    texts: &[String],
    device: &Device,
) -> Result<Scores> {
    if !m.backbone.is_decoder() {
        bail!(
            "model `{name}` is an encoder: it has no perplexity; evaluate it with `classification`"
        );
    }
    let eos = eos_token(&m.tokenizer, &m.config);
    let batches = super::batches::batches(&m.tokenizer, texts, eos, cfg.max_length, 8, device)?;
    let nll = evaluate(&m.backbone, &CausalLm, &batches);
    Ok(vec![
        ("perplexity".into(), nll.exp()),
        ("token_accuracy".into(), token_accuracy(m, &batches)),
    ])
}

/// Greedy answers to held-out questions (one-turn conversations) scored against the
/// references (exact match, containment, token F1, ROUGE-L: their means, and each answer's),
/// and the perplexity of the reference answers.
fn answers(
    name: &str,
    m: &LoadedModel,
    cfg: &QaEval,
    pairs: &[Vec<Message>],
    device: &Device,
) -> Result<(Scores, Vec<AnswerRow>)> {
    if !m.backbone.is_decoder() {
        bail!("model `{name}` is an encoder: it cannot answer questions");
    }
    let format = Format::new(&cfg.template, m.chat_template.as_ref());
    let sampling = SamplingConfig {
        max_new_tokens: cfg.max_new_tokens,
        stop_tokens: m.stop_tokens(),
        ..Default::default()
    };
    let answered = greedy_answers(&m.backbone, &m.tokenizer, &format, pairs, &sampling, device)?;
    let rows: Vec<AnswerRow> = answered
        .into_iter()
        .map(|a| {
            let s = AnswerScores::of(&a.answer, &a.reference);
            let math = cfg
                .math
                .then(|| super::verifiers::math_reward(&a.answer, &a.reference));
            AnswerRow {
                model: name.to_owned(),
                prompt: a.prompt,
                reference: a.reference,
                answer: a.answer.trim().to_owned(),
                exact_match: s.exact_match,
                contains: s.contains,
                token_f1: s.token_f1,
                rouge_l: s.rouge_l,
                judge: None,
                judge_reply: None,
                math,
            }
        })
        .collect();
    let all: Vec<AnswerScores> = rows
        .iter()
        .map(|r| AnswerScores {
            exact_match: r.exact_match,
            contains: r.contains,
            token_f1: r.token_f1,
            rouge_l: r.rouge_l,
        })
        .collect();
    let means = AnswerScores::mean(&all).unwrap_or([f64::NAN; 4]);
    let mut scores: Scores = answer_scores::NAMES
        .iter()
        .zip(means)
        .map(|(n, v)| ((*n).to_owned(), v))
        .collect();
    if cfg.math {
        let math: Vec<f64> = rows.iter().filter_map(|r| r.math).collect();
        let accuracy = math.iter().sum::<f64>() / math.len().max(1) as f64;
        scores.push(("math_accuracy".into(), accuracy));
    }
    let eos = eos_token(&m.tokenizer, &m.config);
    let batches =
        encode_conversations(&m.tokenizer, &format, pairs, eos, cfg.max_length, 8, device)?;
    scores.push((
        "answer_perplexity".into(),
        evaluate(&m.backbone, &CausalLm, &batches).exp(),
    ));
    Ok((scores, rows))
}

/// Accuracy and macro-F1 of a model's classification head on labelled texts.
fn classification(
    name: &str,
    m: &LoadedModel,
    cfg: &ClassificationEval,
    labelled: &[(String, Value)],
    device: &Device,
) -> Result<Scores> {
    let model = Model {
        backbone: m.backbone.clone(),
        score: m.score.clone(),
    };
    let heads = model.num_labels().with_context(|| {
        format!("model `{name}` has no classification head (train one with `sft`, `task: classification`)")
    })?;
    let rows = label_ids(&m.config, labelled);
    if let Some((_, bad)) = rows.iter().find(|(_, l)| *l >= heads) {
        bail!("the data has label id {bad}; model `{name}` has {heads} labels");
    }
    let batches = super::classify::encode(&m.tokenizer, &rows, cfg.max_length, 16, device)?;
    Ok(match super::classify::accuracy(&model, &batches, heads) {
        Some(c) => vec![
            ("accuracy".into(), c.accuracy),
            ("macro_f1".into(), c.macro_f1),
        ],
        None => Vec::new(),
    })
}

/// The reward model judging each model's answers to the same prompts.
struct Judge<'a> {
    cfg: &'a RewardEval,
    prompts: &'a [super::rollout::PromptRow],
    scorer: &'a super::rollout::Scorer,
    /// The same seed for every model's sampled answers: differences come from the models.
    seed: u64,
}

impl Judge<'_> {
    /// The mean score of greedy answers (and of sampled ones with `samples`), and the greedy
    /// score per prompt (for win rates).
    fn scores(
        &self,
        name: &str,
        m: &LoadedModel,
        progress: &crate::spec::context::Progress,
        device: &Device,
    ) -> Result<(Scores, Vec<f64>)> {
        if !m.backbone.is_decoder() {
            bail!("model `{name}` is an encoder: it cannot answer prompts for the reward model");
        }
        progress.set_message(format!("{name}: answers for the reward model"));
        let cfg = self.cfg;
        let format = Format::new(&cfg.template, m.chat_template.as_ref());
        let sampling = SamplingConfig {
            max_new_tokens: cfg.max_new_tokens,
            stop_tokens: m.stop_tokens(),
            ..Default::default()
        };
        let how = super::rollout::Answering {
            tok: &m.tokenizer,
            format: &format,
            sampling: &sampling,
            device,
        };
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
        let greedy = super::rollout::judged(&m.backbone, &how, self.prompts, self.scorer, 1)?;
        let mut scores = vec![("reward_score".into(), mean(&greedy))];
        if let Some(n) = cfg.samples {
            progress.set_message(format!("{name}: {n} sampled answers a prompt"));
            let sampled = SamplingConfig {
                temperature: cfg.temperature.unwrap_or(1.0),
                seed: self.seed,
                ..sampling.clone()
            };
            let how = super::rollout::Answering {
                sampling: &sampled,
                ..how
            };
            let s = super::rollout::judged(&m.backbone, &how, self.prompts, self.scorer, n)?;
            scores.push(("reward_score_sampled".into(), mean(&s)));
        }
        Ok((scores, greedy))
    }
}

/// What every model is measured on, read once for all of them.
struct EvalData<'a> {
    /// lm-eval tasks: name, task, its documents prepared.
    benchmarks: &'a [(String, Task, Vec<Prepared>)],
    texts: Option<&'a [String]>,
    qa: Option<&'a [Vec<Message>]>,
    labelled: Option<&'a [(String, Value)]>,
    judge: Option<Judge<'a>>,
    /// How answers to the held-out questions are graded, and the judge (loaded on first use).
    grader: Option<(&'a JudgeEval, &'a JudgeLoader<'a>)>,
}

/// Gives the judge model, loading it the first time.
type JudgeLoader<'a> = dyn Fn() -> Result<&'a LoadedModel> + 'a;

/// One model's evaluation, as cached: its scores (`None` for a metric with nothing to
/// measure), greedy answers to the samples and to the held-out questions, and the reward
/// model's score of each greedy answer (for win rates).
#[derive(Serialize, Deserialize)]
struct ModelEval {
    scores: Vec<(String, Option<f64>)>,
    samples: Vec<(String, String)>,
    answers: Vec<AnswerRow>,
    judged: Option<Vec<f64>>,
    /// Each benchmark document's outcome, by benchmark name.
    #[serde(default)]
    benchmark_docs: Vec<(String, super::benchmarks::DocResult)>,
}

/// A held-out question, its reference, one model's answer and how close it came.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AnswerRow {
    model: String,
    prompt: String,
    reference: String,
    answer: String,
    exact_match: f64,
    contains: f64,
    token_f1: f64,
    rouge_l: f64,
    /// The judge's grade, scaled to [0, 1] (`None`: no judge, or its reply held no grade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    judge: Option<f64>,
    /// What the judge wrote (its grade is read from this; `judge` is null when none was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    judge_reply: Option<String>,
    /// 1 when the answer's final number is the reference's (`qa.math`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    math: Option<f64>,
}

/// The key of one model's evaluation: the model's files, every data input's, the settings
/// (models aside), seed, backend and hone's version. Two stages (or two recipes) that measure
/// the same model the same way share it.
fn model_eval_key(
    spec: &EvaluateSpec,
    ctx: &StageContext,
    name: &str,
    benchmarks: Option<&str>,
) -> Result<String> {
    let mut settings = serde_json::to_value(spec)?;
    settings["models"] = Value::Null;
    let data: BTreeMap<&str, String> = ctx
        .inputs
        .iter()
        .filter(|(k, _)| !k.starts_with("models."))
        .map(|(k, v)| (k.as_str(), super::training::input_identity(v)))
        .collect();
    let material = json!({
        "evaluate_model": 1,
        // The kind's version moves when its outputs change: old evaluations must not be reused.
        "kind_version": <EvaluateKind as Kind>::VERSION,
        "hone": env!("CARGO_PKG_VERSION"),
        "format": crate::store::CACHE_FORMAT,
        "backend": format!("{:?}", ctx.backend),
        "seed": ctx.seed,
        "model": super::training::input_identity(ctx.input(&format!("models.{name}"))?),
        "data": data,
        "settings": settings,
    });
    let mut material = material;
    if spec.qa.as_ref().is_some_and(|q| q.judge.is_some()) {
        // Judged answers made before the judge's replies were kept must not be reused.
        material["judge_replies"] = true.into();
    }
    if let Some(files) = benchmarks {
        // The task files and their data, by content.
        material["benchmark_files"] = files.into();
    }
    Ok(format!(
        "eval-{}",
        crate::store::hash::hash_bytes(serde_json::to_string(&material)?.as_bytes())
    ))
}

/// Every enabled check on one model.
fn evaluate_model(
    spec: &EvaluateSpec,
    data: &EvalData,
    name: &str,
    m: &LoadedModel,
    progress: &crate::spec::context::Progress,
    device: &Device,
) -> Result<ModelEval> {
    let mut scores = Scores::new();
    let mut out = ModelEval {
        scores: Vec::new(),
        samples: Vec::new(),
        answers: Vec::new(),
        judged: None,
        benchmark_docs: Vec::new(),
    };
    for (bench, task, prepared) in data.benchmarks {
        progress.set_message(format!("{name}: {bench} ({} documents)", prepared.len()));
        let run = super::benchmarks::run(task, prepared, m, device)
            .with_context(|| format!("benchmark `{bench}` on model `{name}`"))?;
        scores.extend(
            run.scores
                .into_iter()
                .map(|(metric, v)| (format!("{bench}.{metric}"), v)),
        );
        out.benchmark_docs
            .extend(run.docs.into_iter().map(|d| (bench.clone(), d)));
    }
    if let (Some(cfg), Some(texts)) = (&spec.perplexity, data.texts) {
        progress.set_message(format!("{name}: perplexity"));
        scores.extend(perplexity(name, m, cfg, texts, device)?);
    }
    if let (Some(cfg), Some(pairs)) = (&spec.qa, data.qa) {
        progress.set_message(format!("{name}: answering questions"));
        let (s, mut rows) = answers(name, m, cfg, pairs, device)?;
        scores.extend(s);
        if let Some((j, judge)) = data.grader {
            let judge = judge()?;
            progress.set_message(format!("{name}: the judge grades its answers"));
            scores.extend(grade(j, judge, &mut rows, device)?);
        }
        out.answers = rows;
    }
    if let (Some(cfg), Some(labelled)) = (&spec.classification, data.labelled) {
        progress.set_message(format!("{name}: classifying"));
        scores.extend(classification(name, m, cfg, labelled, device)?);
    }
    if let Some(judge) = &data.judge {
        let (s, per_prompt) = judge.scores(name, m, progress, device)?;
        scores.extend(s);
        out.judged = Some(per_prompt);
    }
    if let Some(cfg) = &spec.samples
        && m.backbone.is_decoder()
    {
        progress.set_message(format!("{name}: samples"));
        out.samples = samples(m, cfg, device)?;
    }
    out.scores = scores
        .into_iter()
        .map(|(k, v)| (k, v.is_finite().then_some(v)))
        .collect();
    Ok(out)
}

/// The judge's grade of every answer (each row's `judge`), and the metrics: `judge_score`,
/// the mean scaled grade of the answers it graded, and `judge_unparsed`, the share it did not.
fn grade(
    j: &JudgeEval,
    judge: &LoadedModel,
    rows: &mut [AnswerRow],
    device: &Device,
) -> Result<Scores> {
    let judge_lm = judge
        .language_model()
        .context("the judge cannot write grades")?;
    let format = Format::new(&j.template, judge.chat_template.as_ref());
    let sampling = SamplingConfig {
        max_new_tokens: j.max_new_tokens,
        stop_tokens: judge.stop_tokens(),
        ..Default::default()
    };
    let rubric = j.rubric.as_deref().unwrap_or(RUBRIC);
    for chunk in rows.chunks_mut(16) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|r| {
                let scale = j.scale.to_string();
                let text = fill(
                    rubric,
                    &[
                        ("question", &r.prompt),
                        ("reference", &r.reference),
                        ("answer", &r.answer),
                        ("scale", &scale),
                    ],
                );
                format.encode_prompt(&judge.tokenizer, &text)
            })
            .collect::<Result<_>>()?;
        for (r, ids) in chunk
            .iter_mut()
            .zip(generate(judge_lm, &prompts, &sampling, device))
        {
            let reply = judge
                .tokenizer
                .decode(&ids, true)
                .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
            let reply = format.answer(&reply).to_owned();
            r.judge =
                parse_grade(&reply, j.scale).map(|g| f64::from(g - 1) / f64::from(j.scale - 1));
            r.judge_reply = Some(reply);
        }
    }
    let graded: Vec<f64> = rows.iter().filter_map(|r| r.judge).collect();
    let n = rows.len().max(1) as f64;
    Ok(vec![
        (
            "judge_score".into(),
            if graded.is_empty() {
                f64::NAN
            } else {
                graded.iter().sum::<f64>() / graded.len() as f64
            },
        ),
        (
            "judge_unparsed".into(),
            (rows.len() - graded.len()) as f64 / n,
        ),
    ])
}

/// The per-example answers as a table: a row per model and question.
fn answers_table(ctx: &StageContext, rows: &[AnswerRow], judged: bool) -> Table {
    let mut columns = vec![
        "model",
        "prompt",
        "reference",
        "answer",
        "exact_match",
        "contains",
        "token_f1",
        "rouge_l",
    ];
    if judged {
        columns.extend(["judge", "judge_reply"]);
    }
    let math = rows.iter().any(|r| r.math.is_some());
    if math {
        columns.push("math");
    }
    let mut t = table(
        ctx,
        &columns,
        rows.iter()
            .map(|r| {
                let mut row = vec![
                    json!(r.model),
                    json!(r.prompt),
                    json!(r.reference),
                    json!(r.answer),
                    json!(r.exact_match),
                    json!(r.contains),
                    json!(r.token_f1),
                    json!(r.rouge_l),
                ];
                if judged {
                    row.extend([json!(r.judge), json!(r.judge_reply)]);
                }
                if math {
                    row.push(json!(r.math));
                }
                row
            })
            .collect(),
    );
    for (ty, name) in t.types.iter_mut().zip(&columns) {
        *ty = match *name {
            "model" | "prompt" | "reference" | "answer" | "judge_reply" => ColumnType::Text,
            _ => ColumnType::Float,
        };
    }
    t
}

fn held_out(input: &ResolvedInput) -> Result<Table> {
    if let ResolvedInput::Artifact(view) = input
        && view.outputs.len() > 1
    {
        for split in ["test", "validation"] {
            if let Some(t) = read_split(view, split)? {
                return Ok(t);
            }
        }
        bail!(
            "`{}` has no held-out split (test or validation): evaluating on training data says nothing about generalisation; split one off, or name a split (`{}.train`) to do it anyway",
            view.label,
            view.label
        );
    }
    read_table(input, MissingPolicy::Null)
}

fn pairs_of(t: &Table, prompt: &str, response: &str) -> Result<Vec<(String, String)>> {
    let idx = t.indices(
        &[prompt.to_owned(), response.to_owned()],
        "the evaluate stage reads column",
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
}

/// Texts with their label values.
fn labelled_of(t: &Table, text: &str, label: &str) -> Result<Vec<(String, Value)>> {
    let idx = t.indices(
        &[text.to_owned(), label.to_owned()],
        "the evaluate stage reads column",
    )?;
    let raw: Vec<(String, Value)> = t
        .rows
        .iter()
        .filter_map(|r| {
            Some((
                r.values[idx[0]].as_str()?.to_owned(),
                r.values[idx[1]].clone(),
            ))
        })
        .collect();
    Ok(raw)
}

/// Label ids as the model was trained on them: through its `label2id` when that names every
/// label of the data, else as `sft` numbers them (integers as is, text in sorted order).
fn label_ids(config: &Value, rows: &[(String, Value)]) -> Vec<(String, usize)> {
    let by_name = config["label2id"].as_object().and_then(|m| {
        rows.iter()
            .map(|(_, v)| m.get(v.as_str()?)?.as_u64().map(|i| i as usize))
            .collect::<Option<Vec<usize>>>()
    });
    let ids = by_name.unwrap_or_else(|| super::classify::label_ids(rows.iter().map(|(_, v)| v)).0);
    rows.iter().map(|(t, _)| t.clone()).zip(ids).collect()
}

fn token_accuracy(m: &LoadedModel, batches: &[LmBatch]) -> f64 {
    let Some(lm) = m.backbone.language_model() else {
        return f64::NAN;
    };
    let (mut hits, mut n) = (0.0, 0.0);
    for b in batches {
        let predicted = lm.next_token_argmax(lm.hidden(b.ids.clone(), Some(b.padding.clone())));
        let (h, c) = causal_token_hits(predicted, b.ids.clone(), b.target_mask.clone());
        hits += h;
        n += c;
    }
    if n > 0.0 { hits / n } else { f64::NAN }
}

fn samples(m: &LoadedModel, cfg: &SamplesEval, device: &Device) -> Result<Vec<(String, String)>> {
    let format = Format::new(&cfg.template, m.chat_template.as_ref());
    let sampling = SamplingConfig {
        max_new_tokens: cfg.max_new_tokens,
        stop_tokens: m.stop_tokens(),
        ..Default::default()
    };
    let ids: Vec<Vec<u32>> = cfg
        .prompts
        .iter()
        .map(|p| format.encode_prompt(&m.tokenizer, p))
        .collect::<Result<_>>()?;
    let outs = generate(m.language_model()?, &ids, &sampling, device);
    cfg.prompts
        .iter()
        .zip(outs)
        .map(|(p, out)| {
            let text = m
                .tokenizer
                .decode(&out, true)
                .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
            Ok((p.clone(), format.answer(&text).trim().to_owned()))
        })
        .collect()
}

fn table(ctx: &StageContext, columns: &[&str], rows: Vec<Vec<Value>>) -> Table {
    let types = columns
        .iter()
        .map(|c| {
            if *c == "value" {
                ColumnType::Float
            } else {
                ColumnType::Text
            }
        })
        .collect();
    Table::numbered(ctx.stage.clone(), false, columns, types, rows)
}

/// The comparison as the CLI prints it: a row per model in the recipe's order, a column per
/// metric.
fn comparison(spec: &EvaluateSpec, results: &BTreeMap<String, Scores>) -> Value {
    let mut columns: Vec<String> = Vec::new();
    for scores in results.values() {
        for (m, _) in scores {
            if !columns.contains(m) {
                columns.push(m.clone());
            }
        }
    }
    let rows: Vec<Value> = spec
        .models
        .keys()
        .map(|name| {
            let scores = &results[name];
            let values: Vec<Value> = columns
                .iter()
                .map(|c| {
                    scores
                        .iter()
                        .find(|(m, _)| m == c)
                        .map_or(Value::Null, |(_, v)| json!(Rounded(*v)))
                })
                .collect();
            json!({ "model": name, "values": values })
        })
        .collect();
    json!({ "columns": columns, "rows": rows })
}

/// Warnings a person should see: a model whose perplexity is far above the best model's on
/// the same text lost general language ability (catastrophic forgetting).
fn pitfalls(results: &BTreeMap<String, Scores>) -> Vec<String> {
    let ppl: Vec<(&String, f64)> = results
        .iter()
        .filter_map(|(m, s)| {
            s.iter()
                .find(|(n, _)| n == "perplexity")
                .map(|(_, v)| (m, *v))
        })
        .collect();
    let Some((best_name, best)) = ppl.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)) else {
        return Vec::new();
    };
    ppl.iter()
        .filter(|(_, v)| *v > best * 1.5)
        .map(|(m, v)| {
            format!(
                "catastrophic forgetting? `{m}` has perplexity {v:.2} on the held-out text, `{best_name}` {best:.2}"
            )
        })
        .collect()
}

/// The comparison table of an evaluate stage's summary, as aligned text (`None` for other
/// stages' summaries).
fn format_table(summary: &Value) -> Option<String> {
    let t = summary.get("table")?;
    let columns: Vec<&str> = t["columns"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let rows = t["rows"].as_array()?;
    let name_w = rows
        .iter()
        .filter_map(|r| r["model"].as_str().map(str::len))
        .max()
        .unwrap_or(5)
        .max(5);
    let widths: Vec<usize> = columns.iter().map(|c| c.len().max(8)).collect();
    let mut out = format!("    {:<name_w$}", "model");
    for (c, w) in columns.iter().zip(&widths) {
        out += &format!("  {c:>w$}");
    }
    out.push('\n');
    for r in rows {
        out += &format!("    {:<name_w$}", r["model"].as_str().unwrap_or(""));
        let values = r["values"].as_array().cloned().unwrap_or_default();
        for (v, w) in values.iter().zip(&widths) {
            let cell = v
                .as_f64()
                .map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"));
            out += &format!("  {cell:>w$}");
        }
        out.push('\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::parse_grade;

    #[test]
    fn a_rubric_is_filled_in_one_pass() {
        let got = super::fill(
            "Q: {question} A: {answer} of {scale} {other}",
            &[
                ("question", "what is {answer}?"),
                ("answer", "42"),
                ("scale", "5"),
            ],
        );
        assert_eq!(got, "Q: what is {answer}? A: 42 of 5 {other}");
    }

    #[test]
    fn a_grade_is_the_first_number_in_range() {
        assert_eq!(parse_grade("4", 5), Some(4));
        assert_eq!(parse_grade(" Grade: 5/5.", 5), Some(5));
        assert_eq!(parse_grade("I would say 3 out of 5", 5), Some(3));
        assert_eq!(parse_grade("7", 5), None);
        assert_eq!(parse_grade("0", 5), None);
        assert_eq!(parse_grade("excellent", 5), None);
        assert_eq!(parse_grade("10", 10), Some(10));
    }
}
