//! `dataset`: read a table, rename/select columns, drop exact duplicates, split it
//! deterministically, and check for leakage between its splits and against the recipe's
//! `eval` datasets. Writes one Parquet file per split.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::metrics;
use crate::data::layouts::{self, Layout};
use crate::data::leakage::{self, Key, Overlap};
use crate::data::split::{self, Split};
use crate::data::table::Row;
use crate::spec::StageResult;
use crate::spec::context::{SettingError, StageContext};
use crate::spec::kind::{self, DATA_INPUT, DataRole, InputSlot, Kind, Problem};
use crate::spec::settings::MissingPolicy;
use crate::store::ArtifactType;
use std::collections::BTreeMap;

use crate::spec::settings::Input;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `dataset`: read a table, clean it, split it deterministically, check it for leakage.
/// Outputs: `train`, plus `validation` / `test` when split off (role `train`);
/// `test` alone for role `eval`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// The rows: a JSONL/CSV/Parquet file, or another dataset stage (`{ from: raw.train }`).
    pub source: Input,
    /// How the rows are laid out: `auto` (default) reads ShareGPT files (`conversations` of
    /// `{ from, value }`) as `messages` and Alpaca files (`instruction`, `input`, `output`) as
    /// `prompt` and `response`, and anything else as it is; `sharegpt` and `alpaca` insist;
    /// `as_is` never converts. Applied after `columns` renames.
    #[serde(default, skip_serializing_if = "Layout::is_auto")]
    pub layout: Layout,
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
    /// What a near-duplicate (a part of 20 words or more whose word 3-shingles overlap one of
    /// the other set's by a Jaccard similarity of 0.5 or more) does: `warn` (default), `error`
    /// like a leak, or `off` (not looked for).
    #[serde(default, skip_serializing_if = "NearDuplicates::is_warn")]
    pub near_duplicates: NearDuplicates,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NearDuplicates {
    /// A warning naming the rows.
    #[default]
    Warn,
    /// Fails the stage as a leak does.
    Error,
    /// Not looked for.
    Off,
}

impl NearDuplicates {
    fn is_warn(&self) -> bool {
        *self == NearDuplicates::Warn
    }
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

/// `kind: dataset`.
#[derive(Default)]
pub struct DatasetKind;

/// The rows, from a file or another dataset stage.
const SOURCE: InputSlot = InputSlot::new("source", DATA_INPUT);

impl Kind for DatasetKind {
    type Settings = DatasetSpec;
    const NAME: &'static str = "dataset";
    /// 2: conversation columns are keys, and a split keeps rows that share a prompt or an answer
    /// together (the same action could split such rows otherwise before).
    const VERSION: Option<&'static str> = Some("2");
    const DESCRIPTION: &'static str =
        "Read a table (JSONL, CSV, Parquet), clean it, split it, check it for leakage.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[SOURCE]
    }

    fn outputs(&self, spec: &DatasetSpec) -> Vec<(&'static str, ArtifactType)> {
        spec.outputs()
            .into_iter()
            .map(|o| (o, ArtifactType::Table))
            .collect()
    }

    fn artifact_type(&self, _: &DatasetSpec) -> ArtifactType {
        ArtifactType::Dataset
    }

    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<Value> {
        Some(kind::schema_of::<DatasetSpec>(generator))
    }

    fn check(&self, d: &DatasetSpec, _stage: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut total = 0.0;
        for (name, amount) in [("validation", d.split.validation), ("test", d.split.test)] {
            let Some(x) = amount else { continue };
            let valid = (x > 0.0 && x < 1.0) || (x >= 1.0 && x.fract() == 0.0) || x == 0.0;
            if !valid {
                problems.push(
                    Problem::new(
                        format!("split.{name}"),
                        format!(
                            "split size `{name}: {x}` is neither a fraction in (0, 1) nor a row count"
                        ),
                    )
                    .help("write 0.1 for 10% of the rows, or 50 for 50 rows"),
                );
            } else if x < 1.0 {
                total += x;
            }
        }
        if total >= 1.0 {
            problems.push(Problem::new(
                "split",
                format!("held-out fractions add up to {total}, leaving no training rows"),
            ));
        }
        if d.role == DatasetRole::Eval && (d.split.validation.is_some() || d.split.test.is_some()) {
            problems.push(
                Problem::at_key(
                    "split",
                    "an `eval` dataset is held out whole and cannot be split",
                )
                .help("remove `split`, or make it a `train` dataset and read its `test` output"),
            );
        }
        let mut targets: Vec<&str> = Vec::new();
        for (old, new) in &d.columns {
            if targets.contains(&new.as_str()) {
                problems.push(Problem::new(
                    format!("columns.{old}"),
                    format!("two columns are renamed to `{new}`"),
                ));
            }
            targets.push(new);
        }
        for (key, list) in [("select", &d.select), ("leakage_key", &d.leakage_key)] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                problems.push(
                    Problem::new(key, format!("`{key}` is empty"))
                        .help("list at least one column, or remove the key"),
                );
            }
        }
        problems
    }

    fn data_role(&self, d: &DatasetSpec) -> Option<DataRole> {
        Some(match d.role {
            DatasetRole::Train => DataRole::Train,
            DatasetRole::Eval => DataRole::Eval,
        })
    }

    fn run(&self, spec: &DatasetSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// What a dataset stage records: the rows of each split it made, and what it dropped or found.
#[derive(Serialize)]
struct DatasetMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    rows_train: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows_validation: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rows_test: Option<usize>,
    duplicates_dropped: usize,
    leaked_rows: usize,
    /// Recorded only when there are some (older lockfiles have no such metric).
    #[serde(skip_serializing_if = "is_zero")]
    near_duplicate_rows: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

pub fn run(spec: &DatasetSpec, ctx: &mut StageContext) -> Result<StageResult> {
    ctx.progress.set_message("reading");
    let mut t = super::tables::read_table(ctx.input(SOURCE.key)?, spec.missing)?;
    ctx.check_cancelled()?;
    let rows_read = t.rows.len();
    t.rename(&spec.columns)?;
    let converted = layouts::convert(&mut t, spec.layout)?;
    if let Some(select) = &spec.select {
        t.select(select)?;
    }
    let duplicates = if spec.dedup { t.dedup() } else { 0 };

    let key_columns = spec
        .leakage_key
        .clone()
        .unwrap_or_else(|| leakage::text_columns(&t));
    let keys = leakage::table_keys(&t, &key_columns)?;
    // Keys with no text in them would report "0 leaked" without having compared anything.
    let text_columns = leakage::text_columns(&t);
    let no_text = !key_columns.iter().any(|c| text_columns.contains(c));
    let mut warnings = Vec::new();
    if no_text && !t.rows.is_empty() {
        warnings.push(if key_columns.is_empty() {
            format!(
                "no column of {} holds text or conversations, so leakage cannot be checked; name the columns that identify an example in `leakage_key`",
                t.source
            )
        } else {
            format!(
                "the `leakage_key` columns [{}] of {} hold no text: leakage is checked by their values alone, so a copied example under another value goes unseen",
                key_columns.join(", "),
                t.source
            )
        });
    }
    ctx.progress.set_message("splitting");
    let assignment = match spec.role {
        DatasetRole::Eval => vec![Split::Test; t.rows.len()],
        DatasetRole::Train => split::assign(
            &leakage::groups(&keys),
            spec.split.validation,
            spec.split.test,
            ctx.seed,
        )
        .map_err(|e| {
            SettingError::new("split", e.to_string())
                .help("hold out fewer rows, or give the dataset more")
        })?,
    };
    let splits: Vec<Split> = spec
        .outputs()
        .iter()
        .map(|o| match *o {
            "validation" => Split::Validation,
            "test" => Split::Test,
            _ => Split::Train,
        })
        .collect();
    let part = |s: Split| -> (Vec<Row>, Vec<Key>) {
        assignment
            .iter()
            .zip(t.rows.iter().zip(&keys))
            .filter(|(a, _)| **a == s)
            .map(|(_, (r, k))| (r.clone(), k.clone()))
            .unzip()
    };
    let parts: Vec<(Split, Vec<Row>, Vec<Key>)> = splits
        .iter()
        .map(|&s| {
            let (rows, keys) = part(s);
            (s, rows, keys)
        })
        .collect();

    ctx.progress.set_message("checking for leakage");
    let mut overlaps: Vec<Overlap> = Vec::new();
    let similar = spec.near_duplicates != NearDuplicates::Off;
    for (i, (sa, _, ka)) in parts.iter().enumerate() {
        for (sb, _, kb) in &parts[i + 1..] {
            overlaps.push(leakage::overlap(sa.name(), ka, sb.name(), kb, similar));
        }
    }
    for (name, view) in &ctx.checked_against {
        let eval = super::tables::read_artifact(view, MissingPolicy::Null)?;
        let cols: Vec<String> = key_columns
            .iter()
            .filter(|c| eval.column(c).is_some())
            .cloned()
            .collect();
        let cols = if cols.is_empty() {
            leakage::text_columns(&eval)
        } else {
            cols
        };
        let eval_keys = leakage::table_keys(&eval, &cols)?;
        for (s, _, k) in &parts {
            overlaps.push(leakage::overlap(
                s.name(),
                k,
                &format!("eval dataset `{name}`"),
                &eval_keys,
                similar,
            ));
        }
    }
    let leaks: Vec<String> = overlaps
        .iter()
        .filter(|o| o.leaked() > 0)
        .map(|o| o.describe())
        .collect();
    let similar: Vec<String> = overlaps
        .iter()
        .filter(|o| o.similar > 0)
        .map(|o| o.describe_similar())
        .collect();
    let mut failing = Vec::new();
    match spec.on_leak {
        OnLeak::Error => failing.extend(leaks.iter().cloned()),
        OnLeak::Warn => warnings.extend(leaks.iter().map(|t| format!("leakage: {t}"))),
    }
    match spec.near_duplicates {
        NearDuplicates::Error => failing.extend(similar.iter().cloned()),
        _ => warnings.extend(similar.iter().map(|t| format!("near-duplicates: {t}"))),
    }
    if !failing.is_empty() {
        let setting = match (spec.on_leak, spec.near_duplicates) {
            (OnLeak::Error, NearDuplicates::Error) if !similar.is_empty() => {
                "`on_leak: warn` (`near_duplicates: warn` for near-duplicates)"
            }
            (OnLeak::Error, _) => "`on_leak: warn`",
            _ => "`near_duplicates: warn`",
        };
        bail!(
            "data leakage in stage `{}`:\n  {}\nremove the overlapping examples, narrow what identifies an example with `leakage_key`, or set {setting} to proceed anyway",
            ctx.stage,
            failing.join("\n  ")
        );
    }

    ctx.progress.set_message("writing");
    let mut rows_per_split = serde_json::Map::new();
    for (s, rows, _) in &parts {
        ctx.write_table(s.name(), &t.with_rows(rows.clone()))?;
        rows_per_split.insert(s.name().to_owned(), rows.len().into());
    }

    let rows_of = |split: Split| {
        parts
            .iter()
            .find(|(s, ..)| *s == split)
            .map(|(_, rows, _)| rows.len())
    };
    let metrics = DatasetMetrics {
        rows_train: rows_of(Split::Train),
        rows_validation: rows_of(Split::Validation),
        rows_test: rows_of(Split::Test),
        duplicates_dropped: duplicates,
        leaked_rows: overlaps.iter().map(|o| o.leaked()).sum(),
        near_duplicate_rows: overlaps.iter().map(|o| o.similar).sum(),
    };
    let columns: Vec<Value> = t
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| json!({ "name": c, "type": t.types[i], "nulls": t.rows.iter().filter(|r| r.values[i].is_null()).count() }))
        .collect();
    let mut summary = json!({
        "source": t.source,
        "rows_read": rows_read,
        "duplicates_dropped": duplicates,
        "rows": rows_per_split,
        "columns": columns,
        "key_columns": key_columns,
        "leakage_checked": !no_text,
        "leakage": overlaps,
        "first_rows": t.with_rows(parts[0].1.iter().take(3).cloned().collect()).row_objects(3),
    });
    if let Some(converted) = converted {
        summary["layout"] = converted.into();
    }
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings,
        summary,
    })
}
