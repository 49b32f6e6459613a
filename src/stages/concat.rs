//! `concat`: one table from several, their rows one after another (parts in the order of their
//! names), each part a file or a dataset stage (all its splits, or one). For mixing data
//! sources before a `dataset` stage splits, deduplicates and checks the whole for leakage
//! (`source: { from: <this stage> }`). The parts must have the same columns, of types that mix.
//! Output: `train`.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::metrics;
use super::tables::read_table;
use crate::data::table::MissingPolicy;
use crate::spec::StageResult;
use crate::spec::context::StageContext;
use crate::spec::kind::{self, DATA_INPUT, InputSlot, Kind, Problem};
use crate::spec::settings::Input;
use crate::store::ArtifactType;

/// `kind: concat`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcatSpec {
    /// The tables by a name of your choice (rows follow in the order of the names):
    /// `{ faq: { path: data/faq.jsonl }, support: { from: tickets.train } }`.
    pub parts: BTreeMap<String, Input>,
}

#[derive(Default)]
pub struct ConcatKind;

/// Every part.
const PARTS: InputSlot = InputSlot::new("parts.*", DATA_INPUT);

/// The rows of the joined table and of each part (`rows_<part>`).
#[derive(Serialize)]
struct ConcatMetrics {
    rows: usize,
    #[serde(flatten)]
    part_rows: BTreeMap<String, usize>,
}

impl Kind for ConcatKind {
    type Settings = ConcatSpec;
    const NAME: &'static str = "concat";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str =
        "One table from several (files or dataset stages), their rows one after another.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[PARTS]
    }

    fn outputs(&self, _: &ConcatSpec) -> Vec<(&'static str, ArtifactType)> {
        vec![("train", ArtifactType::Table)]
    }

    fn artifact_type(&self, _: &ConcatSpec) -> ArtifactType {
        ArtifactType::Dataset
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(kind::schema_of::<ConcatSpec>(generator))
    }

    fn check(&self, spec: &ConcatSpec, _stage: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if spec.parts.len() < 2 {
            problems.push(
                Problem::new("parts", "`parts` names fewer than two tables")
                    .help("list two or more: `parts: { a: { from: x }, b: { path: y.jsonl } }`"),
            );
        }
        problems.extend(crate::spec::kind::plain_name_problems(
            spec.parts.keys(),
            "parts",
            "part name",
            "a metric (`rows_<name>`)",
        ));
        problems
    }

    fn run(&self, spec: &ConcatSpec, ctx: &mut StageContext) -> Result<StageResult> {
        let mut out: Option<(String, crate::data::table::Table)> = None;
        let mut part_rows = BTreeMap::new();
        for name in spec.parts.keys() {
            ctx.check_cancelled()?;
            let part = read_table(ctx.input(&format!("parts.{name}"))?, MissingPolicy::Null)?;
            part_rows.insert(format!("rows_{name}"), part.rows.len());
            match &mut out {
                None => out = Some((name.clone(), part)),
                Some((first, acc)) => {
                    // Same columns, of types that mix (integers and numbers, nulls and anything).
                    let types = (acc.columns == part.columns)
                        .then(|| {
                            acc.types
                                .iter()
                                .zip(&part.types)
                                .map(|(a, b)| a.unify(*b))
                                .collect::<Option<Vec<_>>>()
                        })
                        .flatten();
                    let Some(types) = types else {
                        bail!(
                            "parts `{first}` ({}) and `{name}` ({}) have different columns; rename or select them to match in a dataset stage first",
                            describe(acc),
                            describe(&part)
                        );
                    };
                    acc.types = types;
                    acc.rows.extend(part.rows);
                }
            }
        }
        let Some((_, table)) = out else {
            bail!("`parts` is empty");
        };
        let metrics = ConcatMetrics {
            rows: table.rows.len(),
            part_rows,
        };
        ctx.write_table("train", &table)?;
        Ok(StageResult {
            metrics: metrics::record(&metrics),
            ..StageResult::default()
        })
    }
}

/// `a: text, b: int`.
fn describe(t: &crate::data::table::Table) -> String {
    t.columns
        .iter()
        .zip(&t.types)
        .map(|(c, ty)| {
            format!(
                "{c}: {}",
                serde_json::to_value(ty)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
