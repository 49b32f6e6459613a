//! `kind: ngram_filter`: removes the rows of a dataset that share a run of `n` words with
//! another dataset, the n-gram decontamination that keeps evaluation questions (and close
//! paraphrases of them) out of training data. A stage kind defined outside hone, in the ~150
//! lines a real one takes.

use std::collections::{BTreeSet, HashSet};

use hone::spec::context::StageContext;
use hone::spec::settings::{Input, MissingPolicy};
use hone::spec::{DATA_INPUT, InputSlot, Kind, Problem, StageResult};
use hone::stages::tables::read_table;
use hone::store::ArtifactType;
use serde::{Deserialize, Serialize};

pub struct NgramFilter;

/// The stage's settings: everything under the stage in the recipe except `kind`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The rows to clean: a dataset (every split), one split, or a file.
    pub data: Input,
    /// What must not leak into `data`, e.g. an evaluation set.
    pub against: Input,
    /// The text columns of `data` compared.
    pub columns: Vec<String>,
    /// The text columns of `against` compared with them (default: `columns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against_columns: Option<Vec<String>>,
    /// Words per n-gram. Texts shorter than `n` words are compared whole.
    #[serde(default = "default_n")]
    pub n: usize,
}

fn default_n() -> usize {
    8
}

/// The rows to clean.
const DATA: InputSlot = InputSlot::new("data", DATA_INPUT);
/// What must not leak into them.
const AGAINST: InputSlot = InputSlot::new("against", DATA_INPUT);

impl Kind for NgramFilter {
    type Settings = Settings;
    const NAME: &'static str = "ngram_filter";
    // Bump when a change to this file changes which rows are kept.
    const VERSION: Option<&'static str> = Some("1");
    const DESCRIPTION: &'static str = "Drop the rows of a dataset that share an n-word run with another dataset (decontamination).";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[DATA, AGAINST]
    }

    fn outputs(&self, _: &Settings) -> Vec<(&'static str, ArtifactType)> {
        // `train` is what a later stage reads from `{ from: this }`; `removed` is there to look
        // at (`{ from: this.removed }`).
        vec![
            ("train", ArtifactType::Table),
            ("removed", ArtifactType::Table),
        ]
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(hone::spec::kind::schema_of::<Settings>(generator))
    }

    fn check(&self, s: &Settings, _stage: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if s.n == 0 {
            problems
                .push(Problem::new("n", "`n` must be at least 1").help("8 to 13 words is usual"));
        }
        if s.columns.is_empty() {
            problems.push(Problem::new("columns", "`columns` names no column"));
        }
        if s.against_columns.as_ref().is_some_and(Vec::is_empty) {
            problems.push(Problem::new(
                "against_columns",
                "`against_columns` names no column",
            ));
        }
        problems
    }

    fn run(&self, s: &Settings, ctx: &mut StageContext) -> anyhow::Result<StageResult> {
        let data = read_table(ctx.input(DATA.key)?, MissingPolicy::Null)?;
        let against = read_table(ctx.input(AGAINST.key)?, MissingPolicy::Null)?;
        let data_cols = data.indices(&s.columns, "ngram_filter compares column")?;
        let against_cols = against.indices(
            s.against_columns.as_ref().unwrap_or(&s.columns),
            "ngram_filter compares column",
        )?;

        let mut grams: HashSet<Vec<String>> = HashSet::new();
        let mut sizes = BTreeSet::new();
        for row in &against.rows {
            for &c in &against_cols {
                let words = words(row.values[c].as_str().unwrap_or_default());
                let size = s.n.min(words.len());
                if size > 0 {
                    sizes.insert(size);
                    grams.extend(words.windows(size).map(<[String]>::to_vec));
                }
            }
        }
        let contaminated = |row: &hone::data::table::Row| {
            data_cols.iter().any(|&c| {
                let words = words(row.values[c].as_str().unwrap_or_default());
                sizes
                    .iter()
                    .any(|&size| words.windows(size).any(|w| grams.contains(w)))
            })
        };
        let (removed, kept): (Vec<_>, Vec<_>) =
            data.rows.iter().cloned().partition(|r| contaminated(r));
        ctx.progress.set_message(format!(
            "{} of {} rows removed",
            removed.len(),
            data.rows.len()
        ));

        let mut warnings = Vec::new();
        if let Some(first) = removed.first() {
            warnings.push(format!(
                "removed {} of {} rows sharing {}-word runs with the `against` data (first: {})",
                removed.len(),
                data.rows.len(),
                s.n,
                data.origin(first)
            ));
        }
        if kept.is_empty() {
            anyhow::bail!(
                "every row of the data shares a {}-word run with `against`; raise `n` or check that the inputs are not the same data",
                s.n
            );
        }
        let mut metrics = serde_json::Map::new();
        metrics.insert("kept".into(), kept.len().into());
        metrics.insert("removed".into(), removed.len().into());
        let summary = serde_json::json!({
            "removed": removed.iter().map(|r| data.origin(r)).collect::<Vec<_>>(),
        });
        ctx.write_table("train", &data.with_rows(kept))?;
        ctx.write_table("removed", &data.with_rows(removed))?;
        Ok(StageResult {
            metrics,
            warnings,
            summary,
        })
    }
}

/// Lowercased words: runs of letters and digits.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}
