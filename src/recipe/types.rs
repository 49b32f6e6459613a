//! The recipe language as Rust types. These types are the single source of truth for
//! parsing, for `schemas/recipe.schema.json` (`hone schema`) and for action keys.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::backend::BackendChoice;
pub use crate::data::table::{FileFormat, MissingPolicy};
pub use crate::stages::StageSpec;

/// A recipe file: a DAG of stages plus the settings they share.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "hone recipe")]
pub struct RecipeFile {
    /// Version of the recipe language. Only `1` exists.
    pub version: u32,
    /// Name of the pipeline; names the run directories.
    pub name: String,
    /// Free text for people reading the recipe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seed for every random choice (splits, init, sampling). Part of every action key.
    #[serde(default)]
    pub seed: u64,
    /// Where tensors live: `auto` picks a GPU backend when one was compiled in and found.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Values for `${name}` anywhere in the recipe. Override with `--set vars.name=value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Settings merged under every stage of a kind, keyed by kind: `defaults: { dataset: { dedup: false } }`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "defaults_schema")]
    pub defaults: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// Base recipe(s) to deep-merge under this one (paths relative to this file); this file wins,
    /// and `key: null` removes an inherited key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extends: Option<Extends>,
    /// The stages by name (letters, digits, `_`, `-`). Their order in the file breaks ties in
    /// the run order; the DAG comes from `{ from: ... }` references.
    // The loader types each stage by its kind (`stages::kind`); this field is for the schema.
    #[serde(default)]
    #[schemars(schema_with = "stages_schema")]
    pub stages: BTreeMap<String, serde_json::Value>,
}

/// `stages`: every value one of the kinds' settings, tagged by `kind` (`$defs.StageSpec`).
fn stages_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let variants = crate::stages::kind::schema_variants(generator);
    generator.definitions_mut().insert(
        "StageSpec".into(),
        serde_json::json!({
            "description": "A stage's configuration, tagged by `kind`.",
            "oneOf": variants,
        }),
    );
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": { "$ref": "#/$defs/StageSpec" },
    })
}

/// `defaults` keys: the built-in kinds for editors to complete, and any other name for kinds a
/// program registers (`stages::kind::register`); the loader checks names against both.
fn defaults_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let kinds: serde_json::Map<String, serde_json::Value> = crate::stages::kind::all()
        .into_iter()
        .map(|k| (k.to_owned(), serde_json::json!({ "type": "object" })))
        .collect();
    schemars::json_schema!({
        "type": "object",
        "properties": kinds,
        "additionalProperties": { "type": "object" },
    })
}

/// One base recipe or several, merged in order.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Extends {
    One(String),
    Many(Vec<String>),
}

/// Where a stage reads something from.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Input {
    /// Another stage's artifact: `{ from: stage }`, or one of its outputs: `{ from: stage.output }`.
    Stage(StageRef),
    /// A file or directory outside the store: `{ path: data/qa.jsonl }`.
    Source(SourceFile),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageRef {
    /// `stage` or `stage.output`.
    pub from: String,
}

impl StageRef {
    pub fn stage(&self) -> &str {
        self.from
            .split_once('.')
            .map_or(self.from.as_str(), |(s, _)| s)
    }
    pub fn output(&self) -> Option<&str> {
        self.from.split_once('.').map(|(_, o)| o)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Path relative to the recipe file that wrote it (or to the working directory for `--set`).
    pub path: String,
    /// File format; inferred from the extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FileFormat>,
    /// The path made absolute against the directory it is relative to (filled in by the loader).
    #[serde(skip)]
    #[schemars(skip)]
    pub resolved: PathBuf,
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            from: Option<String>,
            path: Option<String>,
            format: Option<FileFormat>,
        }
        use serde::de::Error;
        match Raw::deserialize(d)? {
            Raw {
                from: Some(from),
                path: None,
                format: None,
            } => Ok(Input::Stage(StageRef { from })),
            Raw { from: Some(_), .. } => Err(D::Error::custom(
                "an input is either `{ from: stage }` or `{ path: file }`, not both",
            )),
            Raw {
                path: Some(path),
                format,
                ..
            } => Ok(Input::Source(SourceFile {
                path,
                format,
                resolved: PathBuf::new(),
            })),
            Raw { .. } => Err(D::Error::custom(
                "an input needs `from: <stage>` (another stage's output) or `path: <file>`",
            )),
        }
    }
}

/// `dataset`: read a table, clean it, split it deterministically, check it for leakage.
/// Outputs: `train`, plus `validation` / `test` when split off (role `train`);
/// `test` alone for role `eval`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The rows: a JSONL/CSV/Parquet file, or another dataset stage (`{ from: raw.train }`).
    pub source: Input,
    /// Renames, `{ old_name: new_name }`; other columns keep their names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub columns: BTreeMap<String, String>,
    /// Keep only these columns (names after renaming), in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<String>>,
    /// Drop rows identical to an earlier row (the count is reported).
    #[serde(default = "yes")]
    pub dedup: bool,
    /// A row without a column other rows have: `error` (default) names the file and line;
    /// `null` keeps the row with an empty value.
    #[serde(default)]
    pub missing: MissingPolicy,
    /// Held-out splits.
    #[serde(default)]
    pub split: SplitSpec,
    /// `eval`: this dataset is for evaluation only; every `train`-role dataset of the recipe is
    /// checked against it for leakage.
    #[serde(default)]
    pub role: DatasetRole,
    /// Columns whose text identifies an example for leakage checks and split grouping
    /// (default: every text column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leakage_key: Option<Vec<String>>,
    /// What an overlap between splits, or with an `eval` dataset, does: `error` (default) or `warn`.
    #[serde(default)]
    pub on_leak: OnLeak,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetRole {
    #[default]
    Train,
    Eval,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnLeak {
    #[default]
    Error,
    Warn,
}

/// Sizes of held-out splits: a fraction in (0, 1) or a whole number of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<f64>,
}

impl DatasetSpec {
    /// Output names, in a stable order.
    pub fn outputs(&self) -> Vec<&'static str> {
        match self.role {
            DatasetRole::Eval => vec!["test"],
            DatasetRole::Train => {
                let mut v = vec!["train"];
                if self.split.validation.is_some_and(|x| x > 0.0) {
                    v.push("validation");
                }
                if self.split.test.is_some_and(|x| x > 0.0) {
                    v.push("test");
                }
                v
            }
        }
    }
}

/// `tokenizer`: train a tokenizer on a dataset's text (`data`), or take the tokenizer of a
/// checkpoint (`from_model`). Output: `tokenizer` (`tokenizer.json`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    /// A dataset to train on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Input>,
    /// What to train: `bpe` (byte-level, GPT-2 style, for decoders) or `wordpiece` (BERT style,
    /// lowercased, with [CLS] [SEP] [MASK] [PAD] [UNK], for encoders and masked-LM pretraining).
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: TokenizerAlgorithm,
    /// The text column of `data`.
    #[serde(default = "text_column")]
    pub column: String,
    /// Target vocabulary size (the 256 byte tokens and special tokens included).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Merge pairs seen fewer times than this are not learned.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// More special tokens, each one id that text never splits (e.g. ChatML's
    /// `[<|im_start|>, <|im_end|>]` for `template: chatml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub special_tokens: Vec<String>,
    /// A checkpoint (HF directory, `tokenizer.json`, or a model stage) whose tokenizer to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_model: Option<Input>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerAlgorithm {
    #[default]
    Bpe,
    Wordpiece,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn text_column() -> String {
    "text".into()
}
fn default_vocab() -> usize {
    1024
}
fn default_min_frequency() -> u64 {
    2
}

/// Where a training stage's model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelInput {
    /// A new model, randomly initialised: `{ init: { arch: gpt2, layers: 4, ... } }`.
    Init { init: ModelInit },
    /// A checkpoint: `{ path: models/x }` (HF directory or .gguf) or `{ from: stage }`.
    Input(Input),
}

impl<'de> Deserialize<'de> for ModelInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        if v.get("init").is_some() {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Init {
                init: ModelInit,
            }
            let i: Init = serde_json::from_value(v).map_err(D::Error::custom)?;
            return Ok(ModelInput::Init { init: i.init });
        }
        Input::deserialize(v).map(ModelInput::Input).map_err(|e| {
            D::Error::custom(format!("{e}; a model is `{{ init: {{ arch: ... }} }}`, `{{ from: stage }}` or `{{ path: dir }}`"))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gpt2,
    Llama,
    /// A BERT encoder (for `objective: masked_lm`, and classifiers).
    Bert,
}

/// Shape of a new decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelInit {
    pub arch: Arch,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    /// Key/value heads (Llama grouped-query attention); default: `heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_heads: Option<usize>,
    /// Longest sequence (positions).
    pub context: usize,
    /// MLP width; default 4 x d_model (GPT-2) or 8/3 x d_model rounded (Llama).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<usize>,
}

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

fn default_max_length() -> usize {
    128
}

/// Catastrophic-forgetting probe: general text whose perplexity is measured before and after
/// the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgettingProbe {
    /// A dataset (all its splits) or a file with a text column.
    pub data: Input,
    #[serde(default = "text_column")]
    pub column: String,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// The largest allowed rise of the probe's perplexity (0.25: 25%).
    #[serde(default = "default_max_increase")]
    pub max_increase: f64,
    /// Fail the stage (nothing committed) instead of warning.
    #[serde(default)]
    pub fail: bool,
}

fn default_max_increase() -> f64 {
    0.25
}

/// Replay: general text mixed into training (next-token loss on all of it), against
/// forgetting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    pub data: Input,
    #[serde(default = "text_column")]
    pub column: String,
    /// Replay texts per training example (0.2: one in six sequences is replay).
    #[serde(default = "default_replay_ratio")]
    pub ratio: f64,
}

fn default_replay_ratio() -> f64 {
    0.2
}

/// How a conversation (or a prompt/response pair, a one-turn conversation) becomes text: a
/// named template, or a Jinja chat template of the recipe's own.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PromptTemplate {
    Named(NamedTemplate),
    Custom(CustomTemplate),
}

impl Default for PromptTemplate {
    fn default() -> Self {
        PromptTemplate::Named(NamedTemplate::Plain)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NamedTemplate {
    /// Each user turn as `{content}\n`, each answer as `{content}`, the end-of-text token last.
    #[default]
    Plain,
    /// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n`, answers after `<|im_start|>assistant\n`.
    Chatml,
    /// The chat template shipped with the model (ChatML when it has none).
    Model,
}

/// A chat template written in the recipe, with Hugging Face's conventions: it sees `messages`
/// (`role`, `content`), `add_generation_prompt`, `bos_token` and `eos_token`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomTemplate {
    pub jinja: String,
    /// The text that ends an answer (generation stops there), e.g. `<|im_end|>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_turn: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bos_token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub eos_token: String,
}

impl<'de> Deserialize<'de> for PromptTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        if v.is_string() {
            return NamedTemplate::deserialize(v)
                .map(PromptTemplate::Named)
                .map_err(D::Error::custom);
        }
        CustomTemplate::deserialize(v)
            .map(PromptTemplate::Custom)
            .map_err(|e| {
                D::Error::custom(format!(
                    "{e}; a template is `plain`, `chatml`, `model`, or `{{ jinja: \"...\", end_of_turn: ... }}`"
                ))
            })
    }
}

/// Parameter-efficient fine-tuning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum PeftSpec {
    /// LoRA adapters (PEFT conventions); the base model stays frozen.
    Lora(crate::model::lora::LoraConfig),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    #[default]
    End,
    Prompt,
    Drop,
}

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
/// classification data trains a head on the text. Outputs: `model` (HF directory; LoRA merged
/// in) and, with LoRA, `adapter` (PEFT layout).
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

fn prompt_column() -> String {
    "prompt".into()
}
fn response_column() -> String {
    "response".into()
}
fn messages_column() -> String {
    "messages".into()
}
fn is_messages(s: &str) -> bool {
    s == "messages"
}
fn label_column() -> String {
    "label".into()
}
fn default_eval_tokens() -> usize {
    32
}

/// `generate`: a model's responses to a set of prompts. Output: `responses` (a table with
/// columns `prompt` and `response`) that dataset, training and evaluation stages can read.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// A checkpoint (`{ path: ... }`, HF directory or .gguf) or a model stage (`{ from: sft }`).
    pub model: Input,
    /// A dataset (or a JSONL/CSV/Parquet file) with a prompt column.
    pub prompts: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default)]
    pub template: PromptTemplate,
    /// Decoding: greedy by default (`temperature: 0`); the model's end tokens always stop.
    #[serde(default)]
    pub sampling: crate::model::sampling::SamplingConfig,
}

/// `evaluate`: the named models side by side on held-out data. Each enabled check adds its
/// metrics for every model. Outputs: `results` (a table: `model`, `metric`, `value`) and, with
/// `samples`, `samples` (`model`, `prompt`, `response`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateSpec {
    /// The models, by the name each gets in the table: `{ base: { from: pretrain }, sft: { from: sft } }`.
    pub models: BTreeMap<String, Input>,
    /// Language modelling on raw text: perplexity and next-token accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<TextEval>,
    /// Held-out questions: exact match of the greedy answer, and the perplexity of the
    /// reference answer given the question.
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
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default = "default_eval_tokens")]
    pub max_new_tokens: usize,
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

/// `reward`: a reward model, a scalar head on an encoder (BERT/MiniLM, through its pooler) or a
/// decoder (pooled at the last real token), trained on preference pairs with the
/// Bradley-Terry loss. Output: `model` (HF directory, typed as a reward model, so only stages
/// that want one accept it).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardSpec {
    pub model: ModelInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<Input>,
    /// A dataset with prompt, chosen and rejected columns (`train`; `validation` measures
    /// pairwise accuracy).
    pub data: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default = "chosen_column")]
    pub chosen_column: String,
    #[serde(default = "rejected_column")]
    pub rejected_column: String,
    /// A column with each pair's required margin (`-log sigmoid(r_c - r_r - margin)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margin_column: Option<String>,
    /// Regression instead of pairs: rows of prompt, `response_column` and this numeric score,
    /// fitted with the squared error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_column: Option<String>,
    #[serde(default = "response_column")]
    pub response_column: String,
    /// Reward centering: adds `coefficient * (r_c + r_r)^2` (TRL suggests 0.01); 0 is off.
    #[serde(default)]
    pub center_rewards: f64,
    /// How a decoder sees prompt + response (encoders get the pair as two segments).
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftSpec>,
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

fn chosen_column() -> String {
    "chosen".into()
}
fn rejected_column() -> String {
    "rejected".into()
}

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
    /// Another reference model (default: the starting policy).
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

/// Where an RL stage's rewards come from: a reward model and/or rules; what is set adds up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardSource {
    /// A `reward` stage's model (`{ from: rm }`), scoring prompt + response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Input>,
    /// 1 when the response equals the prompt's reference answer in this column (after
    /// normalising case, punctuation and spaces), else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<String>,
    /// 1 when the response has between `min` and `max` words, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<LengthRule>,
    /// 1 when the response matches this regular expression, else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LengthRule {
    pub min: usize,
    pub max: usize,
}

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
fn default_rl_tokens() -> usize {
    32
}
fn default_rl_temperature() -> f64 {
    1.0
}
fn default_epsilon() -> f64 {
    0.2
}

/// `ppo`: RLHF with PPO (TRL's OpenAI-style trainer). For each batch of prompts the policy
/// samples answers; the reward model scores them (minus `missing_eos_penalty` for answers
/// that never ended); every answer token gets `-kl_coef * KL` to the starting policy, and the
/// score lands on the answer's last token; GAE gives advantages (whitened) and returns; then
/// `ppo_epochs` passes of clipped policy and value losses. The value model starts from the
/// reward model when they share a vocabulary, else from the policy with a new scalar head.
/// Outputs: `model` and, with LoRA, `adapter`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PpoSpec {
    pub model: Input,
    /// A `reward` stage's model; anything else fails validation.
    pub reward_model: Input,
    pub prompts: Input,
    #[serde(default = "prompt_column")]
    pub prompt_column: String,
    #[serde(default = "default_kl_coef")]
    pub kl_coef: f64,
    #[serde(default)]
    pub kl_estimator: crate::train::rl::KlEstimator,
    #[serde(default = "default_epsilon")]
    pub cliprange: f64,
    #[serde(default = "default_epsilon")]
    pub cliprange_value: f64,
    #[serde(default = "default_vf_coef")]
    pub vf_coef: f64,
    #[serde(default = "default_gamma")]
    pub gamma: f64,
    #[serde(default = "default_lambda")]
    pub lam: f64,
    /// Optimisation passes over each batch of rollouts.
    #[serde(default = "default_ppo_epochs")]
    pub ppo_epochs: usize,
    #[serde(default = "default_ppo_temperature")]
    pub temperature: f64,
    #[serde(default = "default_rl_tokens")]
    pub max_new_tokens: usize,
    /// Subtracted from the score of an answer that did not end with an end token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_eos_penalty: Option<f64>,
    #[serde(default)]
    pub template: PromptTemplate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft: Option<PeftSpec>,
    /// `batch_size` is prompts per rollout; an epoch is a pass over the prompts.
    #[serde(default)]
    pub train: crate::train::trainer::TrainConfig,
}

fn default_kl_coef() -> f64 {
    0.05
}
fn default_vf_coef() -> f64 {
    0.1
}
fn default_gamma() -> f64 {
    1.0
}
fn default_lambda() -> f64 {
    0.95
}
fn default_ppo_epochs() -> usize {
    4
}
fn default_ppo_temperature() -> f64 {
    0.7
}

/// `export`: the model of a stage as an HF directory outside the store (`to`, relative to the
/// recipe), with a `README.md` model card naming where it came from. The directory is
/// (re)written whenever it is missing or differs, also when the stage itself is cached.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// A model stage (`{ from: dpo }`); with LoRA stages, the merged model.
    pub model: Input,
    /// The directory to write, relative to the recipe file.
    pub to: String,
}
