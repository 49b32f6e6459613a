//! The settings types several stage kinds share, written once: inputs (`{ from: stage }`,
//! `{ path: file }`), model inputs, prompt templates, PEFT, the forgetting probe and replay,
//! reward sources, and the default column names. The recipe language parses them, the kinds
//! read them, and the planner finds the DAG's edges in them.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

pub use crate::data::table::{FileFormat, MissingPolicy};

/// Where a stage reads something from.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Input {
    /// Another stage's artifact: `{ from: stage }`, or one of its outputs: `{ from: stage.output }`.
    Stage(StageRef),
    /// A file or directory outside the store: `{ path: data/qa.jsonl }`, or a model from the
    /// Hugging Face cache: `{ hub: org/name, revision: main }`.
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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// File format; inferred from the extension when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FileFormat>,
    /// A model by its Hugging Face Hub id (`HuggingFaceTB/SmolLM2-135M-Instruct`), read from
    /// the local Hugging Face cache (`HF_HUB_CACHE`, `HF_HOME`); instead of `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// With `hub`: the branch, tag or commit (default `main`); the lockfile records the commit
    /// it named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The path made absolute against the directory it is relative to, or the hub model's
    /// snapshot directory (filled in by the loader).
    #[serde(skip)]
    #[schemars(skip)]
    pub resolved: PathBuf,
    /// With `hub`: the commit the revision named, or why it could not be found (filled in by
    /// the loader; validation reports the error).
    #[serde(skip)]
    #[schemars(skip)]
    pub hub_commit: Option<Result<String, String>>,
}

impl SourceFile {
    /// How messages name it: its path, or `hub:org/name@revision`.
    pub fn label(&self) -> String {
        match &self.hub {
            Some(repo) => format!("hub:{repo}@{}", self.revision()),
            None => self.path.clone(),
        }
    }

    /// The hub revision asked for (`main` by default).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            from: Option<String>,
            path: Option<String>,
            format: Option<FileFormat>,
            hub: Option<String>,
            revision: Option<String>,
        }
        use serde::de::Error;
        let raw = Raw::deserialize(d)?;
        let given = [raw.from.is_some(), raw.path.is_some(), raw.hub.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(D::Error::custom(
                "an input is one of `{ from: stage }`, `{ path: file }` or `{ hub: org/name }`, not several",
            ));
        }
        if raw.revision.is_some() && raw.hub.is_none() {
            return Err(D::Error::custom(
                "`revision` goes with `hub: org/name` (a model from the Hugging Face cache)",
            ));
        }
        match raw {
            Raw {
                from: Some(from),
                format: None,
                ..
            } => Ok(Input::Stage(StageRef { from })),
            Raw { from: Some(_), .. } => Err(D::Error::custom(
                "`format` goes with `path:`, not with `from:`",
            )),
            Raw {
                hub: Some(_),
                format: Some(_),
                ..
            } => Err(D::Error::custom(
                "`format` goes with `path:`; a hub model is a model directory",
            )),
            Raw {
                path,
                format,
                hub,
                revision,
                ..
            } if path.is_some() || hub.is_some() => Ok(Input::Source(SourceFile {
                path: path.unwrap_or_default(),
                format,
                hub,
                revision,
                resolved: PathBuf::new(),
                hub_commit: None,
            })),
            Raw { .. } => Err(D::Error::custom(
                "an input needs `from: <stage>` (another stage's output), `path: <file>` or `hub: <org/name>`",
            )),
        }
    }
}

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

pub(crate) fn text_column() -> String {
    "text".into()
}

/// Where a training stage's model comes from.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ModelInput {
    /// A new model, randomly initialised: `{ init: { arch: gpt2, layers: 4, ... } }`.
    Init { init: ModelInit },
    /// A checkpoint: `{ path: models/x }` (HF directory or .gguf), `{ hub: org/name }` (from
    /// the Hugging Face cache) or `{ from: stage }`.
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
            D::Error::custom(format!("{e}; a model is `{{ init: {{ arch: ... }} }}`, `{{ from: stage }}`, `{{ path: dir }}` or `{{ hub: org/name }}`"))
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

impl ModelInit {
    /// About how many parameters the model has with a vocabulary of `vocab`: attention and
    /// MLP weights per layer, token (and for GPT-2 and BERT position) embeddings. A float,
    /// since the figures come from a recipe and may be absurd.
    pub fn parameters(&self, vocab: usize) -> f64 {
        let d = self.d_model as f64;
        let (mlp_matrices, default_inner) = match self.arch {
            Arch::Llama => (3.0, d * 8.0 / 3.0),
            Arch::Gpt2 | Arch::Bert => (2.0, 4.0 * d),
        };
        let inner = self.intermediate.map_or(default_inner, |i| i as f64);
        let per_layer = 4.0 * d * d + mlp_matrices * d * inner;
        let positions = match self.arch {
            Arch::Llama => 0.0,
            Arch::Gpt2 | Arch::Bert => self.context as f64 * d,
        };
        self.layers as f64 * per_layer + (vocab as f64 + positions) * d
    }
}

pub(crate) fn default_max_length() -> usize {
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
    /// QLoRA: LoRA adapters on a frozen base held quantised in memory (`quant`, default
    /// `nf4`), dequantised a tile at a time inside each matmul; every LoRA setting applies.
    Qlora(QloraConfig),
}

/// The `peft:` block of `method: qlora`: LoRA's settings and the base's quantisation.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct QloraConfig {
    #[serde(flatten)]
    pub lora: crate::model::lora::LoraConfig,
    /// How the frozen base's projections are held: `nf4` (bitsandbytes' NF4 with
    /// double-quantised scales, ~4.1 bits per weight), `q4_k` or `q8_0` (ggml's blocks). A GGUF
    /// base keeps the blocks its file stores.
    #[serde(default)]
    pub quant: crate::model::quantized::QuantFormat,
}

/// `quant` taken out first, the rest read as LoRA's settings, which refuse unknown keys (serde's
/// `flatten` would pass a misspelt key by in silence).
impl<'de> Deserialize<'de> for QloraConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let quant = match map.remove("quant") {
            Some(q) => serde_json::from_value(q).map_err(D::Error::custom)?,
            None => Default::default(),
        };
        let lora =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Ok(QloraConfig { lora, quant })
    }
}

impl PeftSpec {
    /// The adapters' settings.
    pub fn lora(&self) -> &crate::model::lora::LoraConfig {
        match self {
            PeftSpec::Lora(l) => l,
            PeftSpec::Qlora(q) => &q.lora,
        }
    }

    /// How the frozen base is quantised, for QLoRA.
    pub fn quant(&self) -> Option<crate::model::quantized::QuantFormat> {
        match self {
            PeftSpec::Lora(_) => None,
            PeftSpec::Qlora(q) => Some(q.quant),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    #[default]
    End,
    Prompt,
    Drop,
}

pub(crate) fn prompt_column() -> String {
    "prompt".into()
}

pub(crate) fn response_column() -> String {
    "response".into()
}

pub(crate) fn label_column() -> String {
    "label".into()
}

pub(crate) fn default_eval_tokens() -> usize {
    32
}

pub(crate) fn chosen_column() -> String {
    "chosen".into()
}

pub(crate) fn rejected_column() -> String {
    "rejected".into()
}

/// Where an RL stage's rewards come from: a reward model, rules and verifiers; each is scored
/// and logged on its own (`rewards/<name>/mean`) and the reward is their sum, each times its
/// weight.
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
    /// 1 when the response's final result (the last `\boxed{}`, else what follows `####`,
    /// else the last number) equals the one in this column as a number (`1/2`, `0.5` and `50%`
    /// are equal), else 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub math: Option<String>,
    /// 1 when the response thinks in one `<think>...</think>` and then answers, else 0.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub think: bool,
    /// A verifier program and its arguments (`[python3, verify.py]`): it reads one JSON object
    /// a line on stdin (`prompt`, `response`, and the row's columns) and writes one number a
    /// line. It runs in the recipe's directory; arguments that are files there enter the
    /// action key by their content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Rewards written in Rust that the program running hone registered
    /// (`Registry::register_reward`), by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<String>,
    /// Seconds one call of `command` (one batch of answers) may take (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Weight of each reward by name (`model`, `exact_match`, `length`, `regex`, `math`,
    /// `think`, `command`, or a registered reward's); 1 for any not named.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub weights: std::collections::BTreeMap<String, f64>,
}

impl RewardSource {
    /// The names of the rewards that are set, in the order they add up: the built-in ones,
    /// then the registered ones (`custom`).
    pub fn names(&self) -> Vec<&str> {
        [
            ("model", self.model.is_some()),
            ("exact_match", self.exact_match.is_some()),
            ("length", self.length.is_some()),
            ("regex", self.regex.is_some()),
            ("math", self.math.is_some()),
            ("think", self.think),
            ("command", self.command.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .chain(self.custom.iter().map(String::as_str))
        .collect()
    }

    /// What is wrong with these rewards, for `stages.<stage>.reward` (the same for every RL
    /// stage that takes them).
    pub fn problems(&self, stage: &str) -> Vec<crate::spec::kind::Problem> {
        use crate::spec::kind::Problem;
        let mut problems = Vec::new();
        let r = self;
        let names = r.names();
        if names.is_empty() {
            problems.push(
                Problem::at_key("reward", format!("`stages.{stage}.reward` gives no reward"))
                    .help("set `model: { from: <reward stage> }`, a verifier (`math: <answer column>`, `think: true`), or a rule: `exact_match: <answer column>`, `length: { min, max }`, `regex: ...`"),
            );
        }
        for (i, name) in r.custom.iter().enumerate() {
            if r.custom[..i].contains(name) {
                problems.push(Problem::new(
                    format!("reward.custom.{i}"),
                    format!("`{name}` is named twice"),
                ));
            }
        }
        for (name, w) in &r.weights {
            if !names.contains(&name.as_str()) {
                problems.push(
                    Problem::new(
                        format!("reward.weights.{name}"),
                        format!("a weight for `{name}`, which is not one of this stage's rewards"),
                    )
                    .help(format!("rewards set here: {}", names.join(", "))),
                );
            } else if !w.is_finite() {
                problems.push(Problem::new(
                    format!("reward.weights.{name}"),
                    format!("the weight of `{name}` is not a finite number"),
                ));
            }
        }
        if let Some(re) = &r.regex
            && let Err(e) = regex::Regex::new(re)
        {
            problems.push(Problem::new(
                "reward.regex",
                format!("invalid regular expression: {e}"),
            ));
        }
        if let Some(l) = &r.length
            && l.min > l.max
        {
            problems.push(Problem::at_key(
                "reward.length",
                format!("length rule: min {} is above max {}", l.min, l.max),
            ));
        }
        if let Some(c) = &r.command
            && c.first().is_none_or(|p| p.trim().is_empty())
        {
            problems.push(
                Problem::new("reward.command", "`command` names no program")
                    .help("write the program and its arguments: `command: [python3, verify.py]`"),
            );
        }
        if let Some(t) = r.timeout
            && !(t > 0.0 && t.is_finite())
        {
            problems.push(Problem::new(
                "reward.timeout",
                format!("`timeout: {t}` is not a positive number of seconds"),
            ));
        }
        problems
    }

    /// The reference-answer columns the rules read.
    pub fn answer_columns(&self) -> Vec<&str> {
        let mut columns: Vec<&str> = self
            .exact_match
            .iter()
            .chain(&self.math)
            .map(String::as_str)
            .collect();
        columns.dedup();
        columns
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LengthRule {
    pub min: usize,
    pub max: usize,
}

pub(crate) fn default_rl_tokens() -> usize {
    32
}

pub(crate) fn default_epsilon() -> f64 {
    0.2
}
