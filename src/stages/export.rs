//! `export`: a model out of the store, as an HF directory or a GGUF file (for llama.cpp,
//! Ollama, LM Studio) in a directory of the recipe's choosing, with a model card. The stage's artifact is the exported directory (so it is cached and
//! locked like any other); `publish` then lays it out at `to` whenever the directory there is
//! missing or differs, also on a fully cached run, and replaces it whole (temp dir, renames).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::metrics;
use crate::spec::StageResult;
use crate::spec::kind::{InputSlot, Kind, Problem, Publish, TemplateOf};
use crate::store::ArtifactType;

use crate::model::gguf_write::{GgufQuant, write_gguf};
use crate::model::layered::{BASE_DIR, LAYER_FILE};
use crate::model::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::model::weights::{StoredDtype, WeightWriter, read_f32_tensors};
use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::settings::Input;
use crate::spec::settings::PromptTemplate;
use crate::store::{Manifest, Store};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `export`: the model of a stage as an HF directory outside the store (`to`, relative to the
/// recipe), with a `README.md` model card naming where it came from. The directory is
/// (re)written whenever it is missing or differs, also when the stage itself is cached; hone
/// replaces only a directory it wrote itself (it leaves a `.hone-export.json` there) or an
/// empty one, and never one that holds the recipe, its data or the store.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportSpec {
    /// A model stage (`{ from: dpo }`); a LoRA stage's model is exported with its adapter merged
    /// into its base (see `merge`).
    pub model: Input,
    /// The directory to write, relative to the recipe file: new, empty, or an earlier export.
    pub to: String,
    /// `hf` (default): an HF directory transformers loads. `gguf`: one `<name>-<QUANT>.gguf`
    /// file that llama.cpp, Ollama and LM Studio load (decoders only).
    #[serde(default, skip_serializing_if = "ExportFormat::is_hf")]
    pub format: ExportFormat,
    /// With `format: gguf`: `f16`, `q8_0` (default) or `q4_k_m` (llama.cpp's mix of Q4_K and
    /// Q6_K).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant: Option<GgufQuant>,
    /// With `format: hf`: weights above this size are split into shards with an index, as
    /// transformers saves them (`"5GB"` by default; decimal units B, KB, MB, GB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shard_size: Option<String>,
    /// With `format: hf`: the dtype the weights are written in, `f32`, `bf16` or `f16`
    /// (default: the dtype the base model came in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<crate::model::precision::Precision>,
    /// With `format: hf`, for a LoRA, QLoRA or DoRA stage: `true` (default) exports the model
    /// with its adapter merged in; `false` exports the PEFT adapter directory alone, which PEFT
    /// loads onto the base model.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub merge: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// transformers' default `max_shard_size`.
const DEFAULT_MAX_SHARD: u64 = 5_000_000_000;

/// `"5GB"`, `"500MB"`, `"40KB"`, `"123B"` or a plain number of bytes, in decimal units as
/// transformers reads them.
fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes >= 1.0 && bytes.is_finite()).then_some(bytes as u64)
}

/// What an export writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Hf,
    Gguf,
}

impl ExportFormat {
    fn is_hf(&self) -> bool {
        *self == ExportFormat::Hf
    }
}

/// `kind: export`.
#[derive(Default)]
pub struct ExportKind;

/// The model to export.
const MODEL: InputSlot = InputSlot::new("model", &[ArtifactType::Model, ArtifactType::RewardModel]);

impl Kind for ExportKind {
    type Settings = ExportSpec;
    const NAME: &'static str = "export";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str = "A model copied out of the store into a directory of your choice, as an HF directory or a GGUF file, with a model card.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[MODEL]
    }

    fn outputs(&self, _: &ExportSpec) -> Vec<(&'static str, ArtifactType)> {
        vec![("model", ArtifactType::Model)]
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(crate::spec::kind::schema_of::<ExportSpec>(generator))
    }

    fn check(&self, e: &ExportSpec, _stage: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        if e.to.trim().is_empty() {
            problems.push(Problem::new("to", "`to` names the directory to export to"));
        }
        if e.quant.is_some() && e.format == ExportFormat::Hf {
            problems.push(Problem::new(
                "quant",
                "`quant` applies to GGUF exports; add `format: gguf` or remove `quant`",
            ));
        }
        if e.format == ExportFormat::Gguf {
            if e.dtype.is_some() {
                problems.push(Problem::new(
                    "dtype",
                    "`dtype` applies to HF exports; a GGUF export's precision is its `quant`",
                ));
            }
            if !e.merge {
                problems.push(Problem::new(
                    "merge",
                    "a GGUF export is a whole model: remove `merge: false`, or export the adapter with `format: hf`",
                ));
            }
        }
        if !e.merge && e.dtype.is_some() {
            problems.push(Problem::new(
                "dtype",
                "`merge: false` exports the adapter as the stage saved it (f32 factors); remove `dtype`",
            ));
        }
        if let Some(size) = &e.max_shard_size {
            if e.format == ExportFormat::Gguf {
                problems.push(Problem::new(
                    "max_shard_size",
                    "`max_shard_size` applies to HF exports; a GGUF export is one file",
                ));
            } else if parse_size(size).is_none() {
                problems.push(Problem::new(
                    "max_shard_size",
                    format!("`{size}` is not a size: write it like \"5GB\", \"500MB\" or a number of bytes"),
                ));
            }
        }
        problems
    }

    fn prompt_template<'s>(&self, e: &'s ExportSpec) -> Option<TemplateOf<'s, PromptTemplate>> {
        Some(TemplateOf::Input(&e.model))
    }

    /// An export lands outside the store, also when the stage itself was cached.
    fn publish(&self, e: &ExportSpec, to: &Publish<'_>) -> Result<Option<PathBuf>> {
        let dest = tidy(&to.recipe_dir.join(&e.to));
        Ok(publish(to.store, to.manifest, &dest, to.protected)?.then_some(dest))
    }

    fn run(&self, spec: &ExportSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// What an export stage records: the files it wrote and their size.
#[derive(Serialize)]
struct ExportMetrics {
    files: usize,
    bytes: u64,
}

pub fn run(spec: &ExportSpec, ctx: &mut StageContext) -> Result<StageResult> {
    if spec.format == ExportFormat::Gguf {
        return run_gguf(spec, ctx);
    }
    let files: Vec<(String, PathBuf)> = match ctx.input(MODEL.key)? {
        ResolvedInput::Artifact(view) if !spec.merge => {
            let out = view.outputs.get("adapter").with_context(|| {
                format!(
                    "`{}` trained no adapter (it has no `peft`), so there is only its whole model to export; remove `merge: false`",
                    view.label
                )
            })?;
            out.files
                .iter()
                .map(|(r, p)| (r.clone(), p.clone()))
                .collect()
        }
        ResolvedInput::Artifact(view) => {
            let out = view
                .outputs
                .get("model")
                .or_else(|| view.outputs.values().next())
                .with_context(|| format!("`{}` has no model output", view.label))?;
            out.files
                .iter()
                .map(|(r, p)| (r.clone(), p.clone()))
                .collect()
        }
        ResolvedInput::File { path, label, .. } if path.is_file() => {
            if !spec.merge {
                bail!(
                    "{label} is a single file, not a PEFT adapter directory: remove `merge: false`"
                );
            }
            // A GGUF checkpoint: dequantised to f32, written as an HF directory with its
            // tokenizer and chat template, then exported as one.
            ctx.progress.set_message("reading the checkpoint");
            let device = super::training::stage_device(ctx, false)?;
            let m = super::model_input::load_checkpoint(ctx, MODEL.key, None, false, &device)
                .with_context(|| {
                    format!("{label} is neither a model directory nor a checkpoint hone loads")
                })?;
            let prompting = m
                .chat_template
                .clone()
                .map(|chat| crate::model::serving::Prompting {
                    chat,
                    recipe_template: None,
                });
            let dir = ctx.scratch().join("from-checkpoint");
            crate::model::save_hf_dir(
                &crate::model::Model {
                    backbone: m.backbone,
                    score: m.score,
                },
                &m.config,
                Some(&m.tokenizer),
                prompting.as_ref(),
                &dir,
            )?;
            crate::store::hash::walk_files(&dir)?
                .into_iter()
                .map(|r| (r.to_string_lossy().to_string(), dir.join(&r)))
                .collect()
        }
        ResolvedInput::File { path, label, .. } => {
            if !path.is_dir() {
                bail!("{label} is not a model directory");
            }
            if !spec.merge && !path.join(ADAPTER_CONFIG).is_file() {
                bail!(
                    "{label} is not a PEFT adapter directory, so `merge: false` has nothing to export alone"
                );
            }
            crate::store::hash::walk_files(path)?
                .into_iter()
                .map(|r| (r.to_string_lossy().to_string(), path.join(&r)))
                .collect()
        }
    };
    let files = match files.iter().any(|(r, _)| r == LAYER_FILE) {
        true => unlayered(spec, ctx, files)?,
        false => files,
    };
    if !files.iter().any(|(r, _)| r == "config.json")
        && files.iter().any(|(r, _)| r == ADAPTER_CONFIG)
    {
        return run_adapter(spec, ctx, &files);
    }
    let Some((_, config_path)) = files.iter().find(|(r, _)| r == "config.json") else {
        bail!(
            "the model to export has neither a config.json (an HF model) nor an {ADAPTER_CONFIG} (a PEFT adapter)"
        );
    };
    let label = input_label(ctx);
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    let mut rows = Vec::new();
    let mut total = 0u64;
    // Weights in the dtype they came in, or in shards: written anew; otherwise copied as they are.
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", config_path.display()))?;
    // A model hone trained remembers the dtype it came in; a checkpoint names its own; the
    // stage's `dtype`, when set, wins (and the weights are written anew in it, f32 too).
    let source_dtype = match spec.dtype {
        Some(p) => StoredDtype::from_config_name(p.config_name()),
        None => [crate::model::SOURCE_DTYPE, "dtype", "torch_dtype"]
            .iter()
            .find_map(|k| config[*k].as_str())
            .and_then(StoredDtype::from_config_name)
            .filter(|d| *d != StoredDtype::F32),
    };
    let max_shard = spec
        .max_shard_size
        .as_deref()
        .and_then(parse_size)
        .unwrap_or(DEFAULT_MAX_SHARD);
    let is_weights =
        |rel: &str| rel.ends_with(".safetensors") || rel == "model.safetensors.index.json";
    let weight_bytes: u64 = files
        .iter()
        .filter(|(r, _)| r.ends_with(".safetensors"))
        .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let rewrite = source_dtype.is_some() || weight_bytes > max_shard;
    let mut files = files;
    if rewrite {
        let dtype = source_dtype.unwrap_or(StoredDtype::F32);
        ctx.progress
            .set_message(format!("writing the weights in {}", dtype.config_name()));
        let shards: Vec<PathBuf> = files
            .iter()
            .filter(|(r, _)| r.ends_with(".safetensors"))
            .map(|(_, p)| p.clone())
            .collect();
        let mut w = WeightWriter::default();
        for (name, (shape, values)) in read_f32_tensors(&shards)? {
            w.put_values(name, shape, values);
        }
        let written = w.write_dir(&dir, dtype, max_shard)?;
        if let Some(obj) = config.as_object_mut() {
            obj.remove(crate::model::SOURCE_DTYPE);
            // transformers 5 reads `dtype`, 4 `torch_dtype`: both say it.
            obj.insert("dtype".into(), dtype.config_name().into());
            obj.insert("torch_dtype".into(), dtype.config_name().into());
        }
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config)?,
        )
        .context("cannot write config.json")?;
        files.retain(|(r, _)| !is_weights(r) && r != "config.json");
        for name in written.iter().map(String::as_str).chain(["config.json"]) {
            let p = dir.join(name);
            let size = std::fs::metadata(&p)?.len();
            total += size;
            let digest = crate::store::hash::hash_file(&p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            rows.push(format!("| `{name}` | {size} | `{digest}` |"));
        }
    }
    total += copy_files(&files, &dir, &mut rows)?;
    let arch = config["architectures"][0].as_str().unwrap_or("unknown");
    let chat = files
        .iter()
        .any(|(r, _)| r == crate::model::serving::TOKENIZER_CONFIG)
        .then(|| dir.join(crate::model::serving::TOKENIZER_CONFIG))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|t| t.contains("\"chat_template\""));
    write_card(
        spec,
        ctx,
        &dir,
        &label,
        arch,
        &rows,
        &how_to_load(auto_class(arch), chat),
    )?;
    let metrics = ExportMetrics {
        // The model card is the one file more.
        files: rows.len() + 1,
        bytes: total,
    };
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings: vec![],
        summary: json!({ "from": label, "to": spec.to }),
    })
}

/// transformers' auto class for an architecture (`LlamaForCausalLM` loads through
/// `AutoModelForCausalLM`, which generation needs; `AutoModel` drops the head).
fn auto_class(arch: &str) -> &'static str {
    if arch.ends_with("ForCausalLM") || arch.ends_with("LMHeadModel") {
        "AutoModelForCausalLM"
    } else if arch.ends_with("ForSequenceClassification") {
        "AutoModelForSequenceClassification"
    } else if arch.ends_with("ForMaskedLM") {
        "AutoModelForMaskedLM"
    } else {
        "AutoModel"
    }
}

/// The model card's loading instructions: transformers (through the chat template the model
/// was trained with, when it has one) and hone.
fn how_to_load(class: &str, chat: bool) -> String {
    let mut text = format!(
        "Load it with transformers:\n\n```python\nfrom transformers import {class}, AutoTokenizer\n\ntok = AutoTokenizer.from_pretrained(\"<this directory>\")\nmodel = {class}.from_pretrained(\"<this directory>\")\n"
    );
    if chat && class == "AutoModelForCausalLM" {
        // `return_dict=True` gives the ids and attention mask alike on transformers 4 and 5
        // (5 returns a BatchEncoding for `return_tensors` alone, which `generate` rejects).
        text.push_str("inputs = tok.apply_chat_template([{\"role\": \"user\", \"content\": \"...\"}], add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)\nout = model.generate(**inputs)  # greedy, stops at the end of the answer (generation_config.json)\nprint(tok.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n");
    }
    text.push_str("```\n\n");
    if class == "AutoModelForCausalLM" {
        text.push_str("Or with hone, through the same template: `hone generate --model <this directory> --prompt ...`.");
    } else {
        text.push_str("Or with hone: `hone score --model <this directory> ...`.");
    }
    text
}

/// A PEFT adapter export: the adapter directory as the stage wrote it (adapter_config.json,
/// adapter_model.safetensors, the tokenizer), which PEFT loads onto the base model.
fn run_adapter(
    spec: &ExportSpec,
    ctx: &mut StageContext,
    files: &[(String, PathBuf)],
) -> Result<StageResult> {
    let label = input_label(ctx);
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    let mut rows = Vec::new();
    let total = copy_files(files, &dir, &mut rows)?;
    let adapter: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(ADAPTER_CONFIG)).context("cannot read adapter_config.json")?,
    )
    .context("adapter_config.json is not JSON")?;
    let kind = adapter["peft_type"].as_str().unwrap_or("LORA");
    let targets = adapter["target_modules"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter_map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    write_card(
        spec,
        ctx,
        &dir,
        &label,
        &format!(
            "a PEFT {kind} adapter (r {}, alpha {}, on {targets})",
            adapter["r"], adapter["lora_alpha"]
        ),
        &rows,
        "Load it onto the model the stage fine-tuned (the base it started from) with PEFT:\n\n```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\nbase = AutoModelForCausalLM.from_pretrained(\"<the base model>\")\nmodel = PeftModel.from_pretrained(base, \"<this directory>\")\ntok = AutoTokenizer.from_pretrained(\"<this directory>\")\n```\n\n`model.merge_and_unload()` gives the merged model, which hone also exports from the stage's `model` output.",
    )?;
    let metrics = ExportMetrics {
        files: rows.len() + 1,
        bytes: total,
    };
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings: vec![],
        summary: json!({ "from": label, "to": spec.to, "adapter": true }),
    })
}

/// Copies `files` (relative name, source) into `dir`, adding each one's model-card row (name,
/// size, BLAKE3) to `rows`; returns the bytes copied.
/// The files to export of a model stored as a base plus an adapter
/// ([`crate::model::layered`]): its adapter alone with `merge: false`; else the adapter merged
/// into the base's weights (f32, as the stage computed them) beside the model's own
/// tokenizer and serving files.
fn unlayered(
    spec: &ExportSpec,
    ctx: &mut StageContext,
    files: Vec<(String, PathBuf)>,
) -> Result<Vec<(String, PathBuf)>> {
    let base = format!("{BASE_DIR}/");
    let own = files
        .into_iter()
        .filter(|(r, _)| r != LAYER_FILE && !r.starts_with(&base) && r != "config.json");
    if !spec.merge {
        return Ok(own.collect());
    }
    ctx.progress
        .set_message("merging the adapter into its base");
    let device = crate::backend::device(crate::backend::BackendKind::Cpu)?;
    let path = super::model_input::checkpoint_path(ctx, MODEL.key)?;
    let loaded = crate::model::load(&path, &device)
        .with_context(|| format!("cannot load {}", input_label(ctx)))?;
    let merged = ctx.work_dir()?.join("merged");
    crate::model::save_hf_dir(&loaded.model, &loaded.config, None, None, &merged)?;
    let mut out: Vec<(String, PathBuf)> = own
        .filter(|(r, _)| r != ADAPTER_CONFIG && r != ADAPTER_WEIGHTS)
        .chain(["config.json", "model.safetensors"].map(|f| (f.to_owned(), merged.join(f))))
        .collect();
    out.sort();
    Ok(out)
}

fn copy_files(files: &[(String, PathBuf)], dir: &Path, rows: &mut Vec<String>) -> Result<u64> {
    let mut total = 0;
    for (rel, src) in files {
        let dest = dir.join(rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let size = std::fs::copy(src, &dest)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dest.display()))?;
        total += size;
        let digest = crate::store::hash::hash_file(&dest)
            .with_context(|| format!("cannot read {}", dest.display()))?;
        rows.push(format!("| `{rel}` | {size} | `{digest}` |"));
    }
    Ok(total)
}

fn input_label(ctx: &StageContext) -> String {
    ctx.inputs
        .get("model")
        .map(|i| match i {
            ResolvedInput::Artifact(v) => v.label.clone(),
            ResolvedInput::File { label, .. } => label.clone(),
        })
        .unwrap_or_default()
}

/// The last part of `to`: the export's name.
fn export_name(spec: &ExportSpec) -> &str {
    spec.to
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("model")
}

/// The model card: where the export came from, its files, how to load it.
fn write_card(
    spec: &ExportSpec,
    ctx: &StageContext,
    dir: &Path,
    label: &str,
    arch: &str,
    rows: &[String],
    how_to_load: &str,
) -> Result<()> {
    let card = format!(
        "# {name}\n\nExported by hone {version} from `{label}` of recipe `{recipe}` (stage `{stage}`).\n\nArchitecture: {arch}.\n\n| file | bytes | BLAKE3 |\n|---|---|---|\n{rows}\n\n{how_to_load}\n",
        name = export_name(spec),
        version = crate::HONE_VERSION,
        recipe = ctx.recipe_name,
        stage = ctx.stage,
        rows = rows.join("\n"),
    );
    let card_path = dir.join("README.md");
    std::fs::write(&card_path, card)
        .with_context(|| format!("cannot write {}", card_path.display()))
}

/// A GGUF export: the model loaded (an HF directory, a GGUF, a stage's model), written as one
/// `<name>-<QUANT>.gguf`.
fn run_gguf(spec: &ExportSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let quant = spec.quant.unwrap_or(GgufQuant::Q8_0);
    let device = crate::backend::device(crate::backend::BackendKind::Cpu)?;
    ctx.progress.set_message("loading the model");
    let loaded = super::model_input::load_checkpoint(ctx, MODEL.key, None, true, &device)?;
    let label = input_label(ctx);
    let model = crate::model::Model {
        backbone: loaded.backbone,
        score: loaded.score,
    };
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    let file = format!("{}-{}.gguf", export_name(spec), quant.label());
    ctx.progress
        .set_message(format!("writing {file} ({})", quant.label()));
    let written = write_gguf(
        &model,
        &loaded.config,
        &loaded.tokenizer,
        loaded.chat_template.as_ref().map(|t| t.source.as_str()),
        export_name(spec),
        quant,
        &dir.join(&file),
    )
    .with_context(|| format!("cannot export {label} as GGUF"))?;
    let digest = crate::store::hash::hash_file(&dir.join(&file))
        .with_context(|| format!("cannot read {file}"))?;
    let types: Vec<String> = written
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    write_card(
        spec,
        ctx,
        &dir,
        &label,
        &format!(
            "{} (GGUF, {}: tensors {})",
            loaded.config["model_type"].as_str().unwrap_or("unknown"),
            quant.label(),
            types.join(", ")
        ),
        &[format!("| `{file}` | {} | `{digest}` |", written.bytes)],
        &format!(
            "Run it with llama.cpp: `llama-cli -m {file}`; in Ollama: a Modelfile with `FROM ./{file}`; with hone: `hone generate --model {file} --prompt ...`."
        ),
    )?;
    let metrics = ExportMetrics {
        files: 2,
        bytes: written.bytes,
    };
    Ok(StageResult {
        metrics: metrics::record(&metrics),
        warnings: vec![],
        summary: json!({ "from": label, "to": spec.to, "file": file, "quant": quant.label() }),
    })
}

/// The file hone writes into every export directory, naming what it holds: a later run
/// replaces a directory only when it finds this file there (or the directory is empty).
pub const MARKER: &str = ".hone-export.json";

/// Lays the export's artifact out at `dest` unless the directory there already holds exactly
/// those files. Returns whether it wrote anything. Refuses a destination that contains any
/// of `protected` (the recipe, its data, the store) or lies inside the store, and an existing
/// directory that hone did not write; checks every blob as it copies it; a failure leaves
/// nothing behind.
pub fn publish(
    store: &Store,
    manifest: &Manifest,
    dest: &Path,
    protected: &[(String, PathBuf)],
) -> Result<bool> {
    let Some(out) = manifest.outputs.get("model") else {
        return Ok(false);
    };
    check_destination(dest, protected, store.root())?;
    let marker = json!({
        "written_by": "hone",
        "stage": manifest.stage,
        "action": manifest.action,
        "artifact": manifest.artifact_digest(),
    });
    match std::fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            if !written_by_hone(dest) && !is_empty_dir(dest)? {
                bail!(
                    "will not replace {}: the directory exists and hone did not write it (it has no {MARKER}); remove it, or export to another `to:`",
                    dest.display()
                );
            }
            if holds(dest, out, &marker) {
                return Ok(false);
            }
        }
        Ok(_) => bail!(
            "will not replace {}: it exists and is not a directory; remove it, or export to another `to:`",
            dest.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dest.display())),
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    remove_stale_temps(parent, &name);
    let tmp = TempDir::create(parent.join(format!(".{name}.hone-tmp-{}", std::process::id())))?;
    store.checkout(manifest, "model", &tmp.0)?;
    let marker_path = tmp.0.join(MARKER);
    std::fs::write(&marker_path, serde_json::to_vec_pretty(&marker)?)
        .with_context(|| format!("cannot write {}", marker_path.display()))?;
    // Swap: the old directory moves aside, the new one in, the old one goes.
    let old = parent.join(format!(".{name}.hone-old-{}", std::process::id()));
    if dest.exists() {
        std::fs::rename(dest, &old)
            .with_context(|| format!("cannot move {} aside", dest.display()))?;
    }
    if let Err(e) = std::fs::rename(&tmp.0, dest) {
        let _ = std::fs::rename(&old, dest);
        return Err(e).with_context(|| format!("cannot write {}", dest.display()));
    }
    tmp.keep();
    let _ = std::fs::remove_dir_all(&old);
    Ok(true)
}

/// Refuses a destination that would swallow what the run needs or what the user keeps: a
/// directory containing the recipe, its data or the store, or one inside the store.
fn check_destination(dest: &Path, protected: &[(String, PathBuf)], store: &Path) -> Result<()> {
    let dest_abs = resolve(dest)?;
    let store_abs = resolve(store)?;
    if dest_abs.starts_with(&store_abs) {
        bail!(
            "will not export to {}: it is inside the store {}; export to a directory of its own",
            dest.display(),
            store.display()
        );
    }
    let store_entry = ("the store".to_owned(), store.to_path_buf());
    for (what, p) in protected.iter().chain([&store_entry]) {
        if resolve(p)?.starts_with(&dest_abs) {
            bail!(
                "will not export to {}: replacing it would delete {what} ({}); export to a directory of its own",
                dest.display(),
                p.display()
            );
        }
    }
    Ok(())
}

/// `p` absolute, with symbolic links resolved as far as it exists (the rest need not).
fn resolve(p: &Path) -> Result<PathBuf> {
    let abs =
        tidy(&std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))?);
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Ok(rest.iter().rev().fold(real, |acc, c| acc.join(c)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(abs),
        }
    }
}

/// Whether hone wrote the directory: it has the marker, or (an export of an hone from before
/// the marker) the model card hone writes and nothing but files of a model.
fn written_by_hone(dir: &Path) -> bool {
    if dir.join(MARKER).is_file() {
        return true;
    }
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap_or_default();
    let model_file = |name: &str| {
        name == "README.md"
            || name.ends_with(".json")
            || name.ends_with(".gguf")
            || name.ends_with(".safetensors")
            || name.ends_with(".txt")
            || name.ends_with(".model")
    };
    card.lines()
        .take(3)
        .any(|l| l.starts_with("Exported by hone "))
        && crate::store::hash::walk_files(dir).is_ok_and(|files| {
            files.iter().all(|f| {
                f.to_str()
                    .is_some_and(|n| !n.contains('/') && model_file(n))
            })
        })
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .next()
        .is_none())
}

/// Whether `dest` holds exactly this export: the same marker and the same files.
fn holds(dest: &Path, out: &crate::store::OutputEntry, marker: &serde_json::Value) -> bool {
    let marked = std::fs::read(dest.join(MARKER))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|m| &m == marker);
    marked
        && out.files.iter().all(|(rel, f)| {
            let p = dest.join(rel);
            std::fs::metadata(&p).is_ok_and(|m| m.len() == f.size)
                && crate::store::hash::hash_file(&p).is_ok_and(|d| d == f.digest)
        })
        && crate::store::hash::walk_files(dest).is_ok_and(|all| all.len() == out.files.len() + 1)
}

/// Temp and aside directories of earlier publishes of `name` whose process is gone (killed,
/// or out of disk before it could clean up).
fn remove_stale_temps(parent: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let pid = [".hone-tmp-", ".hone-old-"]
            .iter()
            .find_map(|tag| file.strip_prefix(&format!(".{name}{tag}")))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A directory removed on drop unless kept: a failed publish leaves nothing behind.
struct TempDir(PathBuf);

impl TempDir {
    fn create(path: PathBuf) -> Result<TempDir> {
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }

    fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `a/b/../c` as `a/c`, for messages (the path need not exist yet).
pub fn tidy(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
