//! Benchmarks in lm-evaluation-harness's task format (lm-eval 0.4's task YAML): the task file,
//! its documents, and each document's request as lm-eval builds it: the context (description,
//! few-shot examples, question) and what the model is asked (the log-likelihood of each choice,
//! of a continuation, or a generation). The model side is `stages::benchmarks`.
//!
//! What hone reads, and how (each as lm-eval 0.4.13 does unless said):
//! - `dataset_path: json` with `dataset_kwargs: { data_files: ... }` (a path, a list, or a
//!   map of split to paths; a path or list is the split `train`). Relative paths resolve
//!   against the task file's directory (lm-eval resolves them against its working directory:
//!   run it from the task's directory to read the same files). Hub datasets and Python
//!   (`!function`, `process_docs`) are refused with what to do instead.
//! - `test_split`, else `validation_split`, is evaluated; few-shot examples come from
//!   `fewshot_split`, else `training_split`, else `validation_split`, else `test_split`.
//! - `doc_to_text`, `doc_to_target`, `doc_to_choice`, `description`: a column name gives the
//!   column's value, anything else is a Jinja template rendered over the document (undefined
//!   names are errors; nothing is stripped). A target that renders as digits is an index into
//!   the choices.
//! - Few-shot examples: `random.Random(1234).sample(...)` per task, drawn in document order
//!   ([`super::python_random`]), one more drawn and the document itself removed when the
//!   examples come from the evaluated split; `fewshot_config: { sampler: first_n }`.
//! - `output_type`: `multiple_choice` (`acc`, `acc_norm`, `acc_bytes`), `loglikelihood`
//!   (`perplexity`, `acc`), `generate_until` (`exact_match` with `ignore_case`,
//!   `ignore_punctuation`, `ignore_numbers`, `regexes_to_ignore`; `filter_list` with `regex`,
//!   `take_first`, `lowercase`, `uppercase`, `remove_whitespace`), greedy decoding only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::python_random::PythonRandom;

/// The seed lm-eval gives every task's few-shot sampler (`--seed`'s fourth value).
pub const FEWSHOT_SEED: i128 = 1234;

/// A task file's settings, with lm-eval's names and defaults. Keys hone does not implement
/// are refused rather than ignored, so a number is never lm-eval's in name only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub task: String,
    #[serde(default)]
    pub tag: Option<serde_yaml::Value>,
    pub dataset_path: String,
    #[serde(default)]
    pub dataset_name: Option<String>,
    #[serde(default)]
    pub dataset_kwargs: Option<DatasetKwargs>,
    #[serde(default)]
    pub training_split: Option<String>,
    #[serde(default)]
    pub validation_split: Option<String>,
    #[serde(default)]
    pub test_split: Option<String>,
    #[serde(default)]
    pub fewshot_split: Option<String>,
    #[serde(default)]
    pub output_type: OutputType,
    #[serde(default)]
    pub doc_to_text: Option<FieldSpec>,
    #[serde(default)]
    pub doc_to_target: Option<FieldSpec>,
    #[serde(default)]
    pub doc_to_choice: Option<ChoiceSpec>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "space")]
    pub target_delimiter: String,
    #[serde(default = "blank_line")]
    pub fewshot_delimiter: String,
    #[serde(default)]
    pub num_fewshot: Option<usize>,
    #[serde(default)]
    pub fewshot_config: Option<FewshotConfig>,
    #[serde(default)]
    pub metric_list: Option<Vec<MetricEntry>>,
    #[serde(default)]
    pub generation_kwargs: Option<GenerationKwargs>,
    #[serde(default)]
    pub filter_list: Option<Vec<FilterEnsemble>>,
    #[serde(default = "one")]
    pub repeats: usize,
    #[serde(default)]
    pub should_decontaminate: bool,
    #[serde(default)]
    pub doc_to_decontamination_query: Option<String>,
    #[serde(default)]
    pub metadata: Option<serde_yaml::Value>,
}

fn space() -> String {
    " ".into()
}
fn blank_line() -> String {
    "\n\n".into()
}
fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetKwargs {
    pub data_files: DataFiles,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DataFiles {
    One(String),
    Many(Vec<String>),
    Splits(BTreeMap<String, OneOrMany>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputType {
    MultipleChoice,
    Loglikelihood,
    LoglikelihoodRolling,
    #[default]
    GenerateUntil,
}

/// `doc_to_text` / `doc_to_target`: a column name or a Jinja template, or a number.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    Text(String),
    Number(i64),
}

/// `doc_to_choice`: a column, a template rendering a list, a list, or a map (its values).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChoiceSpec {
    Text(String),
    List(Vec<String>),
    Map(serde_yaml::Mapping),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewshotConfig {
    #[serde(default)]
    pub sampler: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricEntry {
    pub metric: String,
    #[serde(default)]
    pub aggregation: Option<String>,
    #[serde(default)]
    pub higher_is_better: Option<bool>,
    #[serde(default)]
    pub ignore_case: bool,
    #[serde(default)]
    pub ignore_punctuation: bool,
    #[serde(default)]
    pub ignore_numbers: bool,
    #[serde(default)]
    pub regexes_to_ignore: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationKwargs {
    #[serde(default)]
    pub until: Option<OneOrMany>,
    #[serde(default)]
    pub max_gen_toks: Option<usize>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterEnsemble {
    pub name: String,
    pub filter: Vec<FilterStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterStep {
    pub function: String,
    #[serde(default)]
    pub regex_pattern: Option<String>,
    #[serde(default)]
    pub group_select: Option<i64>,
    #[serde(default)]
    pub fallback: Option<String>,
}

/// A task file and its documents, by split.
pub struct Task {
    pub config: TaskConfig,
    pub path: PathBuf,
    splits: BTreeMap<String, Vec<Map<String, Value>>>,
    /// The metrics each filter's responses are scored with, checked at load.
    pub metrics: Vec<MetricEntry>,
    pub filters: Vec<Filter>,
}

/// What the model is asked about one document.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// The log-likelihood of `target_delimiter + choice` for each choice; `gold` indexes the
    /// right one (-100 when the target names none, as lm-eval).
    Choices { choices: Vec<String>, gold: i64 },
    /// The log-likelihood of the target itself (no delimiter).
    Continuation(String),
    /// A greedy answer, cut at the first stop string, compared with `gold`.
    Generate { gold: String },
}

/// One evaluated document: its context and request.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub context: String,
    /// The document's text fields (its question, passage, ...): what a model's training
    /// data must not hold.
    pub texts: Vec<String>,
    pub request: Request,
}

/// One `filter_list` entry, compiled.
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    steps: Vec<FilterFn>,
}

#[derive(Debug, Clone)]
enum FilterFn {
    Regex {
        regex: regex::Regex,
        group_select: i64,
        fallback: String,
    },
    TakeFirst,
    Lowercase,
    Uppercase,
    RemoveWhitespace,
}

impl Filter {
    fn none() -> Filter {
        Filter {
            name: "none".into(),
            steps: vec![FilterFn::TakeFirst],
        }
    }

    /// The response as the filter leaves it.
    pub fn apply(&self, response: &str) -> String {
        let mut s = response.to_owned();
        for step in &self.steps {
            s = match step {
                FilterFn::TakeFirst => s,
                FilterFn::Lowercase => s.to_lowercase(),
                FilterFn::Uppercase => s.to_uppercase(),
                FilterFn::RemoveWhitespace => s.trim().to_owned(),
                FilterFn::Regex {
                    regex,
                    group_select,
                    fallback,
                } => regex_filter(regex, *group_select, fallback, &s),
            };
        }
        s
    }
}

/// lm-eval's `regex` filter: `re.findall`, the `group_select`-th match (negative from the
/// end); a match of a pattern with several groups is its first non-empty group; stripped;
/// `fallback` when nothing matches.
fn regex_filter(regex: &regex::Regex, group_select: i64, fallback: &str, s: &str) -> String {
    let groups = regex.captures_len() - 1;
    let found: Vec<String> = regex
        .captures_iter(s)
        .map(|c| match groups {
            0 => c[0].to_owned(),
            1 => c.get(1).map_or("", |m| m.as_str()).to_owned(),
            _ => (1..=groups)
                .filter_map(|g| c.get(g).map(|m| m.as_str()))
                .find(|m| !m.is_empty())
                .unwrap_or(fallback)
                .to_owned(),
        })
        .collect();
    let n = found.len() as i64;
    let at = if group_select < 0 {
        n + group_select
    } else {
        group_select
    };
    if found.is_empty() || at < 0 || at >= n {
        // lm-eval indexes the matches and fails past them; an empty list is its fallback.
        return fallback.to_owned();
    }
    found[at as usize].trim().to_owned()
}

/// lm-eval's `exact_match` with its options: each regex removed, then case, punctuation and
/// digits dropped as asked, then equality (no whitespace is stripped).
pub fn exact_match(metric: &MetricEntry, prediction: &str, reference: &str) -> Result<f64> {
    let mut p = prediction.to_owned();
    let mut r = reference.to_owned();
    for rx in &metric.regexes_to_ignore {
        let re = regex::Regex::new(rx).with_context(|| format!("regexes_to_ignore: `{rx}`"))?;
        p = re.replace_all(&p, "").into_owned();
        r = re.replace_all(&r, "").into_owned();
    }
    if metric.ignore_case {
        p = p.to_lowercase();
        r = r.to_lowercase();
    }
    if metric.ignore_punctuation {
        p.retain(|c| !c.is_ascii_punctuation());
        r.retain(|c| !c.is_ascii_punctuation());
    }
    if metric.ignore_numbers {
        p.retain(|c| !c.is_ascii_digit());
        r.retain(|c| !c.is_ascii_digit());
    }
    Ok(if p == r { 1.0 } else { 0.0 })
}

/// The metrics an output type can give, and its default list (lm-eval's registry).
fn metrics_of(output: OutputType) -> (&'static [&'static str], &'static [&'static str]) {
    match output {
        OutputType::MultipleChoice => (&["acc", "acc_norm", "acc_bytes"], &["acc", "acc_norm"]),
        OutputType::Loglikelihood => (&["perplexity", "acc"], &["perplexity", "acc"]),
        OutputType::GenerateUntil => (&["exact_match"], &["exact_match"]),
        OutputType::LoglikelihoodRolling => (&[], &[]),
    }
}

impl Task {
    /// The data files the task file names, by split, resolved against its directory.
    pub fn data_files(config: &TaskConfig, task_path: &Path) -> Result<Vec<(String, PathBuf)>> {
        if config.dataset_path != "json" {
            bail!(
                "`dataset_path: {}`: hone reads local JSON Lines files only: `dataset_path: json` with `dataset_kwargs: {{ data_files: {{ test: file.jsonl }} }}`",
                config.dataset_path
            );
        }
        let Some(kwargs) = &config.dataset_kwargs else {
            bail!(
                "`dataset_path: json` needs `dataset_kwargs: {{ data_files: {{ test: file.jsonl }} }}`"
            );
        };
        let by_split: Vec<(String, String)> = match &kwargs.data_files {
            DataFiles::One(p) => vec![("train".into(), p.clone())],
            DataFiles::Many(v) => v.iter().map(|p| ("train".into(), p.clone())).collect(),
            DataFiles::Splits(m) => m
                .iter()
                .flat_map(|(split, files)| files.to_vec().into_iter().map(|f| (split.clone(), f)))
                .collect(),
        };
        let dir = task_path.parent().unwrap_or(Path::new("."));
        Ok(by_split
            .into_iter()
            .map(|(split, file)| (split, dir.join(file)))
            .collect())
    }

    /// Reads and checks a task file.
    pub fn parse(path: &Path) -> Result<TaskConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the task file {}", path.display()))?;
        if text.contains("!function") {
            bail!(
                "{}: `!function` (Python code) cannot run in hone: write the field as a column name or a Jinja template",
                path.display()
            );
        }
        let config: TaskConfig = serde_yaml::from_str(&text).map_err(|e| {
            let at = e
                .location()
                .map_or(String::new(), |l| format!(":{}:{}", l.line(), l.column()));
            anyhow::anyhow!(
                "{}{at}: {e}{}",
                path.display(),
                if e.to_string().contains("unknown field") {
                    " (hone implements these lm-eval task keys; `include`, `process_docs`, `process_results` and hub datasets are not among them)"
                } else {
                    ""
                }
            )
        })?;
        Ok(config)
    }

    /// Loads a task file and its documents.
    pub fn load(path: &Path) -> Result<Task> {
        let config = Self::parse(path)?;
        let at = path.display();
        if config.output_type == OutputType::LoglikelihoodRolling {
            bail!("{at}: `output_type: loglikelihood_rolling` is not implemented in hone");
        }
        if config.repeats != 1 {
            bail!(
                "{at}: `repeats: {}`: hone answers each document once",
                config.repeats
            );
        }
        if let Some(g) = &config.generation_kwargs
            && (g.do_sample == Some(true) || g.temperature.is_some_and(|t| t > 0.0))
        {
            bail!("{at}: hone's benchmarks decode greedily: set `do_sample: false`");
        }
        if let Some(sampler) = config
            .fewshot_config
            .as_ref()
            .and_then(|f| f.sampler.as_deref())
            && !matches!(sampler, "default" | "first_n")
        {
            bail!("{at}: few-shot sampler `{sampler}`: hone has `default` and `first_n`");
        }
        let (allowed, defaults) = metrics_of(config.output_type);
        let metrics: Vec<MetricEntry> = match &config.metric_list {
            Some(list) => list.clone(),
            None => defaults
                .iter()
                .map(|m| MetricEntry {
                    metric: (*m).into(),
                    aggregation: None,
                    higher_is_better: None,
                    ignore_case: false,
                    ignore_punctuation: false,
                    ignore_numbers: false,
                    regexes_to_ignore: Vec::new(),
                })
                .collect(),
        };
        for m in &metrics {
            if !allowed.contains(&m.metric.as_str()) {
                bail!(
                    "{at}: metric `{}` for `{:?}` tasks is not one hone computes ({})",
                    m.metric,
                    config.output_type,
                    allowed.join(", ")
                );
            }
            if m.aggregation.as_deref().is_some_and(|a| a != "mean") {
                bail!(
                    "{at}: metric `{}`: only `aggregation: mean` is implemented",
                    m.metric
                );
            }
        }
        let filters = match &config.filter_list {
            None => vec![Filter::none()],
            Some(list) => list
                .iter()
                .map(|f| compile_filter(f).with_context(|| format!("{at}: filter `{}`", f.name)))
                .collect::<Result<_>>()?,
        };
        let mut splits: BTreeMap<String, Vec<Map<String, Value>>> = BTreeMap::new();
        for (split, file) in Self::data_files(&config, path).with_context(|| at.to_string())? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{at}: cannot read the data file {}", file.display()))?;
            let rows = splits.entry(split).or_default();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a JSON object", file.display(), i + 1))?;
                match v {
                    Value::Object(m) => rows.push(m),
                    _ => bail!("{}:{}: not a JSON object", file.display(), i + 1),
                }
            }
        }
        let task = Task {
            config,
            path: path.to_path_buf(),
            splits,
            metrics,
            filters,
        };
        task.eval_docs()?;
        Ok(task)
    }

    fn split(&self, name: &str) -> Result<&[Map<String, Value>]> {
        self.splits.get(name).map(Vec::as_slice).with_context(|| {
            format!(
                "{}: no split `{name}` in `data_files` (it has {})",
                self.path.display(),
                self.splits.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    /// The documents evaluated: `test_split`, else `validation_split`.
    pub fn eval_docs(&self) -> Result<&[Map<String, Value>]> {
        let c = &self.config;
        match c.test_split.as_deref().or(c.validation_split.as_deref()) {
            Some(s) => self.split(s),
            None => bail!(
                "{}: name the evaluated split: `test_split` (or `validation_split`)",
                self.path.display()
            ),
        }
    }

    fn fewshot_docs(&self) -> Result<&[Map<String, Value>]> {
        let c = &self.config;
        let split = c
            .fewshot_split
            .as_deref()
            .or(c.training_split.as_deref())
            .or(c.validation_split.as_deref())
            .or(c.test_split.as_deref())
            .context("no split to draw few-shot examples from")?;
        self.split(split)
    }

    /// Every evaluated document's context and request, the first `limit` of them, with
    /// `num_fewshot` examples (the task's own unless given).
    pub fn prepare(
        &self,
        num_fewshot: Option<usize>,
        limit: Option<usize>,
    ) -> Result<Vec<Prepared>> {
        let docs = self.eval_docs()?;
        let docs = &docs[..limit.unwrap_or(docs.len()).min(docs.len())];
        let render = Renderer::new(self)?;
        let n = num_fewshot.or(self.config.num_fewshot).unwrap_or(0);
        let c = &self.config;
        let eval_is_pool = c.fewshot_split == c.test_split;
        let first_n =
            c.fewshot_config.as_ref().and_then(|f| f.sampler.as_deref()) == Some("first_n");
        let mut rng = PythonRandom::new(FEWSHOT_SEED);
        let pool = if n > 0 { self.fewshot_docs()? } else { &[] };
        let mut out = Vec::with_capacity(docs.len());
        for doc in docs {
            let examples: Vec<&Map<String, Value>> = if n == 0 {
                Vec::new()
            } else if first_n {
                pool.iter()
                    .filter(|x| !(eval_is_pool && *x == doc))
                    .take(n)
                    .collect()
            } else {
                fn draw<'d>(
                    rng: &mut PythonRandom,
                    from: &[&'d Map<String, Value>],
                    k: usize,
                    path: &Path,
                ) -> Result<Vec<&'d Map<String, Value>>> {
                    if k > from.len() {
                        bail!(
                            "{}: {k} few-shot examples asked of a split of {}",
                            path.display(),
                            from.len()
                        );
                    }
                    Ok(rng
                        .sample(from.len(), k)
                        .into_iter()
                        .map(|i| from[i])
                        .collect())
                }
                let all: Vec<&Map<String, Value>> = pool.iter().collect();
                if eval_is_pool {
                    let mut picked: Vec<_> = draw(&mut rng, &all, n + 1, &self.path)?
                        .into_iter()
                        .filter(|x| *x != doc)
                        .take(n)
                        .collect();
                    if picked.len() < n {
                        let others: Vec<_> = all.iter().copied().filter(|x| *x != doc).collect();
                        picked = draw(&mut rng, &others, n, &self.path)?;
                    }
                    picked
                } else {
                    draw(&mut rng, &all, n, &self.path)?
                }
            };
            let mut context = render.description(doc)?;
            for ex in examples {
                context.push_str(&render.text(ex)?);
                let answer = match (render.target(ex)?, render.choices(ex)?) {
                    (Target::Index(i), Some(choices)) => choices
                        .get(usize::try_from(i).unwrap_or(usize::MAX))
                        .cloned()
                        .with_context(|| format!("target {i} is not one of {choices:?}"))?,
                    (Target::Index(i), None) => i.to_string(),
                    (Target::Text(t), _) => t,
                };
                if !answer.is_empty() {
                    context.push_str(&c.target_delimiter);
                    context.push_str(&answer);
                    context.push_str(&c.fewshot_delimiter);
                }
            }
            context.push_str(&render.text(doc)?);
            let target = render.target(doc)?;
            let request = match c.output_type {
                OutputType::MultipleChoice => {
                    let choices = render.choices(doc)?.with_context(|| {
                        format!(
                            "{}: `multiple_choice` needs `doc_to_choice`",
                            self.path.display()
                        )
                    })?;
                    let gold = match target {
                        Target::Index(i) if i >= 0 && (i as usize) < choices.len() => i,
                        Target::Index(_) => -100,
                        Target::Text(t) => choices
                            .iter()
                            .position(|c| *c == t)
                            .map_or(-100, |i| i as i64),
                    };
                    Request::Choices { choices, gold }
                }
                OutputType::Loglikelihood => Request::Continuation(match target {
                    Target::Text(t) => t,
                    Target::Index(i) => i.to_string(),
                }),
                _ => Request::Generate {
                    gold: match (target, render.choices(doc)?) {
                        (Target::Index(i), Some(choices)) => choices
                            .get(usize::try_from(i).unwrap_or(usize::MAX))
                            .cloned()
                            .unwrap_or_default(),
                        (Target::Index(i), None) => i.to_string(),
                        (Target::Text(t), _) => t,
                    },
                },
            };
            let texts = doc
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            out.push(Prepared {
                context,
                texts,
                request,
            });
        }
        Ok(out)
    }

    /// `until` (default: the few-shot delimiter) and `max_gen_toks` (default 256).
    pub fn generation(&self) -> (Vec<String>, usize) {
        let g = self.config.generation_kwargs.as_ref();
        let until = g.and_then(|g| g.until.as_ref()).map_or_else(
            || vec![self.config.fewshot_delimiter.clone()],
            OneOrMany::to_vec,
        );
        let max = g
            .and_then(|g| g.max_gen_toks.or(g.max_new_tokens))
            .unwrap_or(256);
        (until, max)
    }
}

fn compile_filter(f: &FilterEnsemble) -> Result<Filter> {
    let steps = f
        .filter
        .iter()
        .map(|s| {
            Ok(match s.function.as_str() {
                "regex" => {
                    let pattern = s
                        .regex_pattern
                        .clone()
                        .unwrap_or_else(|| r"#### (\-?[0-9\.\,]+)".into());
                    FilterFn::Regex {
                        regex: regex::Regex::new(&pattern)
                            .with_context(|| format!("regex_pattern `{pattern}`"))?,
                        group_select: s.group_select.unwrap_or(0),
                        fallback: s.fallback.clone().unwrap_or_else(|| "[invalid]".into()),
                    }
                }
                "take_first" => FilterFn::TakeFirst,
                "lowercase" => FilterFn::Lowercase,
                "uppercase" => FilterFn::Uppercase,
                "remove_whitespace" => FilterFn::RemoveWhitespace,
                other => bail!(
                    "filter function `{other}` is not one hone has (regex, take_first, lowercase, uppercase, remove_whitespace)"
                ),
            })
        })
        .collect::<Result<_>>()?;
    Ok(Filter {
        name: f.name.clone(),
        steps,
    })
}

/// A document's target: an index into its choices, or text.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Index(i64),
    Text(String),
}

/// Renders the task's fields over documents, as lm-eval's `apply_template` does.
struct Renderer<'t> {
    task: &'t Task,
    env: minijinja::Environment<'static>,
    /// The evaluated split's columns: a field naming one reads it instead of rendering.
    features: Vec<String>,
}

impl<'t> Renderer<'t> {
    fn new(task: &'t Task) -> Result<Renderer<'t>> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("the default delimiters"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter(
            "regex_replace",
            |s: String, pattern: String, repl: String, count: Option<usize>| {
                let re = regex::Regex::new(&pattern).map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
                })?;
                let repl = python_replacement(&repl);
                Ok::<_, minijinja::Error>(match count.filter(|c| *c > 0) {
                    Some(n) => re.replacen(&s, n, repl.as_str()).into_owned(),
                    None => re.replace_all(&s, repl.as_str()).into_owned(),
                })
            },
        );
        let features = task
            .eval_docs()?
            .first()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        Ok(Renderer {
            task,
            env,
            features,
        })
    }

    fn render(&self, template: &str, doc: &Map<String, Value>) -> Result<String> {
        self.env
            .render_str(template, minijinja::value::Serde(doc))
            .with_context(|| format!("{}: rendering `{template}`", self.task.path.display()))
    }

    /// A field: the column it names, else the template rendered.
    fn field(&self, spec: &str, doc: &Map<String, Value>) -> Result<Value> {
        if self.features.iter().any(|f| f == spec) {
            return Ok(doc.get(spec).cloned().unwrap_or(Value::Null));
        }
        Ok(Value::String(self.render(spec, doc)?))
    }

    fn description(&self, doc: &Map<String, Value>) -> Result<String> {
        let d = &self.task.config.description;
        if d.is_empty() {
            return Ok(String::new());
        }
        Ok(python_str(&self.field(d, doc)?))
    }

    fn text(&self, doc: &Map<String, Value>) -> Result<String> {
        match &self.task.config.doc_to_text {
            Some(FieldSpec::Text(s)) => Ok(python_str(&self.field(s, doc)?)),
            Some(FieldSpec::Number(n)) => Ok(n.to_string()),
            None => bail!(
                "{}: the task has no `doc_to_text`",
                self.task.path.display()
            ),
        }
    }

    fn target(&self, doc: &Map<String, Value>) -> Result<Target> {
        let has_choices = self.task.config.doc_to_choice.is_some();
        match &self.task.config.doc_to_target {
            Some(FieldSpec::Number(n)) => Ok(Target::Index(*n)),
            Some(FieldSpec::Text(s)) => Ok(match self.field(s, doc)? {
                Value::Number(n) if n.is_i64() => Target::Index(n.as_i64().unwrap_or(0)),
                Value::String(t)
                    if has_choices && !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) =>
                {
                    Target::Index(t.parse().unwrap_or(-100))
                }
                other => Target::Text(python_str(&other)),
            }),
            None => bail!(
                "{}: the task has no `doc_to_target`",
                self.task.path.display()
            ),
        }
    }

    fn choices(&self, doc: &Map<String, Value>) -> Result<Option<Vec<String>>> {
        let Some(spec) = &self.task.config.doc_to_choice else {
            return Ok(None);
        };
        Ok(Some(match spec {
            ChoiceSpec::List(v) => v.clone(),
            ChoiceSpec::Map(m) => m
                .values()
                .map(|v| match v {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                })
                .collect(),
            ChoiceSpec::Text(s) => match self.field(s, doc)? {
                Value::Array(items) => items.iter().map(python_str).collect(),
                Value::String(rendered) => python_list(&rendered).with_context(|| {
                    format!(
                        "{}: `doc_to_choice` rendered `{rendered}`, not a list",
                        self.task.path.display()
                    )
                })?,
                other => bail!(
                    "{}: `doc_to_choice` names a column holding {other}, not a list",
                    self.task.path.display()
                ),
            },
        }))
    }
}

/// A value as Python's `str()` writes it (strings bare).
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// A Python replacement string (`\1`, `\g<1>`) in the regex crate's syntax (`${1}`).
fn python_replacement(repl: &str) -> String {
    let mut out = String::new();
    let mut chars = repl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    let d = chars.next().unwrap_or('0');
                    out.push_str(&format!("${{{d}}}"));
                }
                Some('g') => {
                    chars.next();
                    let name: String = chars
                        .by_ref()
                        .skip_while(|c| *c == '<')
                        .take_while(|c| *c != '>')
                        .collect();
                    out.push_str(&format!("${{{name}}}"));
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// A rendered list literal (`['a', "b"]`, as Python's `ast.literal_eval` reads a list of
/// strings; Jinja writes lists with either quote).
fn python_list(text: &str) -> Result<Vec<String>> {
    let s = text.trim();
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .context("not a list")?;
    let mut items = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(quote) = chars.next() else { break };
        if quote != '\'' && quote != '"' {
            // A bare item (a number): up to the next comma.
            let mut item = quote.to_string();
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                item.push(c);
                chars.next();
            }
            items.push(item.trim().to_owned());
            continue;
        }
        let mut item = String::new();
        loop {
            match chars.next() {
                None => bail!("an unclosed string"),
                Some(c) if c == quote => break,
                Some('\\') => match chars.next() {
                    Some('n') => item.push('\n'),
                    Some('t') => item.push('\t'),
                    Some(c) => item.push(c),
                    None => bail!("an unclosed string"),
                },
                Some(c) => item.push(c),
            }
        }
        items.push(item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(yaml: &str, rows: &[(&str, &str)]) -> (tempfile::TempDir, Task) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in rows {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let path = dir.path().join("task.yaml");
        std::fs::write(&path, yaml).unwrap();
        let t = Task::load(&path).unwrap();
        (dir, t)
    }

    const MC: &str = "task: t\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: docs.jsonl\n    train: shots.jsonl\ntest_split: test\ntraining_split: train\noutput_type: multiple_choice\ndoc_to_text: \"Q: {{question}}\\nA:\"\ndoc_to_choice: choices\ndoc_to_target: answer\n";

    #[test]
    fn contexts_hold_the_description_shots_and_question() {
        let docs = "{\"question\": \"Two?\", \"choices\": [\"one\", \"two\"], \"answer\": 1}\n";
        let shots = "{\"question\": \"One?\", \"choices\": [\"one\", \"two\"], \"answer\": 0}\n";
        let yaml = format!("{MC}num_fewshot: 1\ndescription: \"Cars.\\n\\n\"\n");
        let (_d, t) = task(&yaml, &[("docs.jsonl", docs), ("shots.jsonl", shots)]);
        let p = t.prepare(None, None).unwrap();
        assert_eq!(p[0].context, "Cars.\n\nQ: One?\nA: one\n\nQ: Two?\nA:");
        assert_eq!(
            p[0].request,
            Request::Choices {
                choices: vec!["one".into(), "two".into()],
                gold: 1
            }
        );
    }

    #[test]
    fn shots_are_drawn_as_pythons_random_sample_draws_them() {
        let docs = "{\"question\": \"Q\", \"choices\": [\"a\"], \"answer\": 0}\n".repeat(2);
        let shots: String = (0..10)
            .map(|i| format!("{{\"question\": \"S{i}\", \"choices\": [\"a\"], \"answer\": 0}}\n"))
            .collect();
        let yaml = format!("{MC}num_fewshot: 3\n");
        let (_d, t) = task(&yaml, &[("docs.jsonl", &docs), ("shots.jsonl", &shots)]);
        let p = t.prepare(None, None).unwrap();
        // random.Random(1234): sample(range(10), 3) twice in a row gives [7, 1, 0], [1, 0, 9]
        // (CPython 3.11).
        let order = |c: &str| -> Vec<String> {
            c.split("Q: S")
                .skip(1)
                .map(|s| s.chars().next().unwrap().to_string())
                .collect()
        };
        assert_eq!(order(&p[0].context), ["7", "1", "0"]);
        assert_eq!(order(&p[1].context), ["1", "0", "9"]);
    }

    #[test]
    fn the_regex_filter_reads_as_lm_evals() {
        let one = regex::Regex::new(r"#### (\-?[0-9\.\,]+)").unwrap();
        assert_eq!(regex_filter(&one, 0, "[invalid]", "x #### 42 y"), "42");
        assert_eq!(regex_filter(&one, 0, "[invalid]", "nothing"), "[invalid]");
        let last = regex::Regex::new(r"(\d+)").unwrap();
        assert_eq!(regex_filter(&last, -1, "[invalid]", "1 then 2 then 3"), "3");
        let two = regex::Regex::new(r"(\d+)|([a-z]+)").unwrap();
        assert_eq!(regex_filter(&two, 0, "[invalid]", "abc"), "abc");
        let none = regex::Regex::new(r"\d+").unwrap();
        assert_eq!(regex_filter(&none, 1, "[invalid]", "1 22"), "22");
    }

    #[test]
    fn exact_match_options() {
        let m = |case, punct| MetricEntry {
            metric: "exact_match".into(),
            aggregation: None,
            higher_is_better: None,
            ignore_case: case,
            ignore_punctuation: punct,
            ignore_numbers: false,
            regexes_to_ignore: vec![",".into()],
        };
        assert_eq!(exact_match(&m(false, false), "1,000", "1000").unwrap(), 1.0);
        assert_eq!(exact_match(&m(false, false), "42 ", "42").unwrap(), 0.0);
        assert_eq!(exact_match(&m(true, true), "Paris!", "paris").unwrap(), 1.0);
        assert_eq!(
            exact_match(&m(false, true), "Paris!", "paris").unwrap(),
            0.0
        );
    }

    #[test]
    fn choices_rendered_as_a_list_literal_read_back() {
        assert_eq!(
            python_list(r#"['a', "b's", 'c\'d']"#).unwrap(),
            ["a", "b's", "c'd"]
        );
        assert_eq!(python_list("[]").unwrap(), Vec::<String>::new());
        assert!(python_list("a, b").is_err());
    }

    #[test]
    fn what_hone_cannot_do_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        for (yaml, says) in [
            ("task: t\ndataset_path: cais/mmlu\n", "local JSON Lines"),
            (
                "task: t\ndataset_path: json\nprocess_docs: !function utils.p\n",
                "!function",
            ),
            (
                "task: t\ndataset_path: json\ninclude: base.yaml\n",
                "unknown field",
            ),
        ] {
            std::fs::write(&path, yaml).unwrap();
            let e = format!("{:#}", Task::load(&path).err().unwrap());
            assert!(e.contains(says), "{e}");
        }
    }
}
