//! `generate`: a model's responses to a set of prompts, written as a table (`prompt`,
//! `response`) that other stages read like any dataset split.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::conversation::Format;
use super::metrics;
use super::model_input::{LoadedModel, load_checkpoint};
use super::tables::{read_table, texts_of};
use crate::data::table::{ColumnType, Row, Table};
use crate::model::sampling::generate;
use crate::spec::StageResult;
use crate::spec::context::StageContext;
use crate::spec::kind::{self, DATA_INPUT, InputSlot, Kind};
use crate::spec::settings::MissingPolicy;
use crate::spec::settings::{Input, PromptTemplate, prompt_column};
use crate::store::ArtifactType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// `kind: generate`.
#[derive(Default)]
pub struct GenerateKind;

/// The model that answers.
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model]);
/// The prompts.
const PROMPTS: InputSlot = InputSlot::new("prompts", DATA_INPUT);

impl Kind for GenerateKind {
    type Settings = GenerateSpec;
    const NAME: &'static str = "generate";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str = "A model's responses to a set of prompts, as a dataset.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[MODEL, PROMPTS]
    }

    fn outputs(&self, _: &GenerateSpec) -> Vec<(&'static str, ArtifactType)> {
        vec![("responses", ArtifactType::Table)]
    }

    fn artifact_type(&self, _: &GenerateSpec) -> ArtifactType {
        ArtifactType::Dataset
    }

    fn uses_backend(&self) -> bool {
        true
    }

    fn settings_schema(&self, generator: &mut schemars::SchemaGenerator) -> Option<Value> {
        Some(kind::schema_of::<GenerateSpec>(generator))
    }

    fn run(&self, spec: &GenerateSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// What a generation stage records.
#[derive(Serialize)]
struct GenerateMetrics {
    responses: usize,
    mean_new_tokens: f64,
    empty_responses: usize,
}

pub fn run(spec: &GenerateSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let device = super::training::stage_device(ctx, false)?;
    let prompts = texts_of(
        &read_table(ctx.input(PROMPTS.key)?, MissingPolicy::Null)?,
        &spec.prompt_column,
    )?;
    if prompts.is_empty() {
        bail!("column `{}` of the prompts has no text", spec.prompt_column);
    }
    ctx.progress.set_message("loading the model");
    let loaded = load_checkpoint(ctx, MODEL.key, None, true, &device)?;
    let mut sampling = spec.sampling.clone();
    sampling.stop_tokens.extend(loaded.stop_tokens());
    let LoadedModel {
        backbone,
        tokenizer,
        chat_template,
        ..
    } = loaded;
    let format = Format::new(&spec.template, chat_template.as_ref());
    let lm = super::model_input::language_model(&backbone)?;
    ctx.progress.set_length(prompts.len() as u64);
    let mut rows = Vec::with_capacity(prompts.len());
    let mut new_tokens = 0usize;
    for (k, chunk) in prompts.chunks(16).enumerate() {
        ctx.check_cancelled()?;
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|p| format.encode_prompt(&tokenizer, p))
            .collect::<Result<_>>()?;
        // Each batch has its own sampling stream, so a prompt's answer does not depend on how
        // many prompts came before it.
        let batch_cfg = crate::model::sampling::SamplingConfig {
            seed: sampling.seed.wrapping_add(k as u64),
            ..sampling.clone()
        };
        for (p, out) in chunk.iter().zip(generate(lm, &ids, &batch_cfg, &device)) {
            new_tokens += out.len();
            let text = tokenizer
                .decode(&out, true)
                .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
            let answer = format.answer(&text).trim().to_owned();
            rows.push(Row {
                values: vec![Value::String(p.clone()), Value::String(answer)],
                line: rows.len() + 1,
            });
        }
        ctx.progress.set_position(rows.len() as u64);
    }
    let table = Table {
        source: ctx.stage.clone(),
        line_numbers: false,
        columns: vec!["prompt".into(), "response".into()],
        types: vec![ColumnType::Text, ColumnType::Text],
        rows,
    };
    ctx.write_table("responses", &table)?;
    let empty = table
        .rows
        .iter()
        .filter(|r| r.values[1].as_str().is_some_and(str::is_empty))
        .count();
    let mean_new = new_tokens as f64 / table.rows.len() as f64;
    let metrics = GenerateMetrics {
        responses: table.rows.len(),
        // A token count to one decimal says all there is to say.
        mean_new_tokens: (mean_new * 10.0).round() / 10.0,
        empty_responses: empty,
    };
    let warnings = if empty > 0 {
        vec![format!("{empty} prompts got an empty response")]
    } else {
        vec![]
    };
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings,
        summary: json!({ "first_rows": table.row_objects(3), "rows": { "responses": table.rows.len() } }),
    })
}
