//! Stage kinds: what each produces and accepts (the contracts checked before anything runs),
//! and how each runs. One file per kind.

pub mod classify;
pub mod custom;
pub mod dataset;
pub mod dpo;
pub mod evaluate;
pub mod export;
pub mod generate;
pub mod grpo;
pub mod guards;
pub mod ppo;
pub mod pretrain;
pub mod reward;
pub mod rollout;
pub mod sft;
pub mod tokenizer;

use std::path::PathBuf;

use crate::exec::context::StageContext;
use crate::recipe::types::{StageKind, StageSpec};

/// The type of an artifact, for contracts between stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    /// All splits of a dataset stage (`{ from: corpus }`).
    Dataset,
    /// One split: a Parquet table (`{ from: corpus.train }`).
    Table,
    /// A `tokenizer.json`.
    Tokenizer,
    /// An HF model directory (config.json, model.safetensors, tokenizer.json).
    Model,
    /// A model with a scalar head trained on preferences: what PPO, GRPO and evaluation
    /// score responses with.
    RewardModel,
}

impl ArtifactType {
    pub fn describe(self) -> &'static str {
        match self {
            ArtifactType::Dataset => "a dataset",
            ArtifactType::Table => "a dataset split",
            ArtifactType::Tokenizer => "a tokenizer",
            ArtifactType::Model => "a model",
            ArtifactType::RewardModel => "a reward model",
        }
    }
}

/// What a stage produces: its named outputs, each with a type. A reference without an output
/// name (`{ from: stage }`) takes the stage's whole artifact, of type [`StageSpec::artifact_type`].
pub fn outputs(spec: &StageSpec) -> Vec<(&'static str, ArtifactType)> {
    match spec {
        StageSpec::Dataset(d) => d
            .outputs()
            .into_iter()
            .map(|o| (o, ArtifactType::Table))
            .collect(),
        StageSpec::Tokenizer(_) => vec![("tokenizer", ArtifactType::Tokenizer)],
        StageSpec::Pretrain(_) => vec![("model", ArtifactType::Model)],
        StageSpec::Sft(s) if s.peft.is_some() => vec![
            ("model", ArtifactType::Model),
            ("adapter", ArtifactType::Model),
        ],
        StageSpec::Sft(_) => vec![("model", ArtifactType::Model)],
        StageSpec::Generate(_) => vec![("responses", ArtifactType::Table)],
        StageSpec::Evaluate(e) if e.samples.is_some() => vec![
            ("results", ArtifactType::Table),
            ("samples", ArtifactType::Table),
        ],
        StageSpec::Evaluate(_) => vec![("results", ArtifactType::Table)],
        StageSpec::Reward(_) => vec![("model", ArtifactType::RewardModel)],
        StageSpec::Dpo(d) if d.peft.is_some() => vec![
            ("model", ArtifactType::Model),
            ("adapter", ArtifactType::Model),
        ],
        StageSpec::Dpo(_) => vec![("model", ArtifactType::Model)],
        StageSpec::Grpo(g) if g.peft.is_some() => vec![
            ("model", ArtifactType::Model),
            ("adapter", ArtifactType::Model),
        ],
        StageSpec::Grpo(_) => vec![("model", ArtifactType::Model)],
        StageSpec::Ppo(p) if p.peft.is_some() => vec![
            ("model", ArtifactType::Model),
            ("adapter", ArtifactType::Model),
        ],
        StageSpec::Ppo(_) => vec![("model", ArtifactType::Model)],
        StageSpec::Export(_) => vec![("model", ArtifactType::Model)],
        StageSpec::Custom(c) => c.outputs.clone(),
    }
}

impl StageSpec {
    pub fn artifact_type(&self) -> ArtifactType {
        match self {
            StageSpec::Dataset(_) => ArtifactType::Dataset,
            StageSpec::Tokenizer(_) => ArtifactType::Tokenizer,
            StageSpec::Pretrain(_)
            | StageSpec::Sft(_)
            | StageSpec::Dpo(_)
            | StageSpec::Grpo(_)
            | StageSpec::Ppo(_)
            | StageSpec::Export(_) => ArtifactType::Model,
            StageSpec::Generate(_) | StageSpec::Evaluate(_) => ArtifactType::Dataset,
            StageSpec::Reward(_) => ArtifactType::RewardModel,
            StageSpec::Custom(c) => c.artifact_type(),
        }
    }

    /// Whether this kind's result depends on the tensor backend (then the backend is part of
    /// its action key; data preparation is the same on every backend, so it is not).
    pub fn uses_backend(&self) -> bool {
        match self {
            StageSpec::Dataset(_) | StageSpec::Tokenizer(_) | StageSpec::Export(_) => false,
            StageSpec::Pretrain(_)
            | StageSpec::Sft(_)
            | StageSpec::Generate(_)
            | StageSpec::Evaluate(_)
            | StageSpec::Reward(_)
            | StageSpec::Dpo(_)
            | StageSpec::Grpo(_)
            | StageSpec::Ppo(_) => true,
            StageSpec::Custom(c) => c.uses_backend,
        }
    }

    /// The artifact types the input at `input` (its path inside the stage) accepts.
    pub fn accepts(&self, input: &str) -> &'static [ArtifactType] {
        match self {
            StageSpec::Custom(c) => c.accepts.get(input).copied().unwrap_or(&[]),
            _ => self.builtin_kind().map_or(&[], |k| accepts(k, input)),
        }
    }
}

/// What a data input accepts: a whole dataset or one of its splits.
pub const DATA_INPUT: &[ArtifactType] = &[ArtifactType::Dataset, ArtifactType::Table];

/// The artifact types an input of a built-in kind accepts, by the input's path inside the stage.
fn accepts(kind: StageKind, input: &str) -> &'static [ArtifactType] {
    const DATA: &[ArtifactType] = DATA_INPUT;
    match (kind, input) {
        (StageKind::Dataset, _)
        | (StageKind::Tokenizer | StageKind::Pretrain | StageKind::Sft, "data") => DATA,
        (StageKind::Pretrain | StageKind::Sft, "forgetting_probe.data" | "replay.data") => DATA,
        (StageKind::Generate, "prompts") => DATA,
        (StageKind::Evaluate, rel) if rel.starts_with("models.") => &[ArtifactType::Model],
        (StageKind::Evaluate, "reward.model") => &[ArtifactType::RewardModel],
        (StageKind::Evaluate, _) => DATA,
        (StageKind::Reward, "data") => DATA,
        // A reward model can start from another reward model, a model, or a checkpoint.
        (StageKind::Reward, "model") => &[ArtifactType::Model, ArtifactType::RewardModel],
        (StageKind::Reward, _) => &[ArtifactType::Tokenizer, ArtifactType::Model],
        (StageKind::Dpo, "data") => DATA,
        (StageKind::Dpo, _) => &[ArtifactType::Model],
        (StageKind::Grpo, "prompts") => DATA,
        // Only a reward model scores rollouts: anything else fails validation.
        (StageKind::Grpo, "reward.model") => &[ArtifactType::RewardModel],
        (StageKind::Grpo, _) => &[ArtifactType::Model],
        (StageKind::Ppo, "prompts") => DATA,
        (StageKind::Ppo, "reward_model") => &[ArtifactType::RewardModel],
        (StageKind::Ppo, _) => &[ArtifactType::Model],
        (StageKind::Export, _) => &[ArtifactType::Model, ArtifactType::RewardModel],
        (StageKind::Tokenizer | StageKind::Generate, _)
        | (StageKind::Pretrain | StageKind::Sft, "model") => &[ArtifactType::Model],
        (StageKind::Pretrain | StageKind::Sft, _) => {
            &[ArtifactType::Tokenizer, ArtifactType::Model]
        }
    }
}

/// A file a stage wrote into its scratch directory, under an output name.
#[derive(Debug, Clone)]
pub struct ProducedOutput {
    pub name: String,
    pub artifact_type: ArtifactType,
    /// Directory holding the output's files (inside the scratch dir).
    pub dir: PathBuf,
}

/// What a finished stage hands to the store.
#[derive(Debug, Default)]
pub struct StageResult {
    /// Headline numbers for the lockfile, `hone show` and `hone status`.
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Pitfalls worth a person's attention (leakage under `on_leak: warn`, ...).
    pub warnings: Vec<String>,
    /// The detailed summary `hone show` prints.
    pub summary: serde_json::Value,
}

/// Runs one stage. Inputs, scratch space, seed and cancellation come from `ctx`.
pub fn run(spec: &StageSpec, ctx: &mut StageContext) -> anyhow::Result<StageResult> {
    match spec {
        StageSpec::Dataset(d) => dataset::run(d, ctx),
        StageSpec::Tokenizer(t) => tokenizer::run(t, ctx),
        StageSpec::Pretrain(p) => pretrain::run(p, ctx),
        StageSpec::Sft(p) => sft::run(p, ctx),
        StageSpec::Generate(g) => generate::run(g, ctx),
        StageSpec::Evaluate(e) => evaluate::run(e, ctx),
        StageSpec::Reward(r) => reward::run(r, ctx),
        StageSpec::Dpo(d) => dpo::run(d, ctx),
        StageSpec::Grpo(g) => grpo::run(g, ctx),
        StageSpec::Ppo(p) => ppo::run(p, ctx),
        StageSpec::Export(e) => export::run(e, ctx),
        StageSpec::Custom(c) => c.run(ctx),
    }
}

/// The values of text column `column` of a dataset input (all its splits), as strings.
pub fn text_column(
    input: &crate::exec::context::ResolvedInput,
    column: &str,
) -> anyhow::Result<Vec<String>> {
    texts_of(
        &read_table(input, crate::recipe::types::MissingPolicy::Null)?,
        column,
    )
}

/// The non-empty strings of `column`.
pub fn texts_of(table: &crate::data::table::Table, column: &str) -> anyhow::Result<Vec<String>> {
    let i = table.indices(&[column.to_owned()], "the stage reads column")?[0];
    Ok(table
        .rows
        .iter()
        .filter_map(|r| {
            r.values[i]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .collect())
}

/// The rows of a table input: a source file (format from `format:` or its extension) or the
/// selected splits of a dataset artifact, concatenated.
pub fn read_table(
    input: &crate::exec::context::ResolvedInput,
    missing: crate::recipe::types::MissingPolicy,
) -> anyhow::Result<crate::data::table::Table> {
    use crate::exec::context::ResolvedInput;
    use crate::recipe::types::FileFormat;
    match input {
        ResolvedInput::File {
            path,
            label,
            format,
        } => {
            let format = format
                .or_else(|| FileFormat::from_extension(label))
                .unwrap_or(FileFormat::Jsonl);
            crate::data::table::read_file(path, label, format, missing)
        }
        ResolvedInput::Artifact(view) => dataset::read_artifact(view, missing),
    }
}

/// A data input's rows by split, `of` turning a table into rows: a whole dataset artifact gives
/// its `train` and `validation` splits; a single split or a file is all training data.
pub fn split_rows<T>(
    input: &crate::exec::context::ResolvedInput,
    of: impl Fn(&crate::data::table::Table) -> anyhow::Result<Vec<T>>,
) -> anyhow::Result<(Vec<T>, Vec<T>)> {
    match input {
        crate::exec::context::ResolvedInput::Artifact(view) if view.outputs.len() > 1 => {
            let part = |split| -> anyhow::Result<Vec<T>> {
                read_split(view, split)?.map_or(Ok(Vec::new()), |t| of(&t))
            };
            Ok((part("train")?, part("validation")?))
        }
        _ => Ok((
            of(&read_table(
                input,
                crate::recipe::types::MissingPolicy::Null,
            )?)?,
            Vec::new(),
        )),
    }
}

/// One split (`train`, `validation`, `test`) of a dataset artifact; `None` when it has none.
pub fn read_split(
    view: &crate::exec::context::ArtifactView,
    split: &str,
) -> anyhow::Result<Option<crate::data::table::Table>> {
    let Some(out) = view.outputs.get(split) else {
        return Ok(None);
    };
    let sub = crate::exec::context::ArtifactView {
        label: view.label.clone(),
        outputs: [(split.to_owned(), out.clone())].into_iter().collect(),
    };
    dataset::read_artifact(&sub, crate::recipe::types::MissingPolicy::Null).map(Some)
}

/// Runs the shared trainer with the stage's progress bar, checkpoints and metrics log: each
/// step's loss, lr, gradient norm and items/s, and each evaluation, go to the run's
/// metrics.jsonl. Returns the trained model, the summary and the mean items (tokens, examples)
/// per second.
pub fn train_logged<M: burn::module::Module, O: crate::train::trainer::Objective<M>>(
    model: M,
    obj: &O,
    train: &[O::Batch],
    val: &[O::Batch],
    cfg: &crate::train::trainer::TrainConfig,
    ctx: &mut crate::exec::context::StageContext,
) -> anyhow::Result<(M, crate::train::trainer::Summary, f64)> {
    use crate::train::checkpoint::Checkpointing;
    use crate::train::trainer::{Hooks, Record, TrainError};
    let total = train.len().div_ceil(cfg.grad_accum.max(1)) * cfg.epochs.max(1);
    ctx.progress.set_length(total as u64);
    ctx.progress.set_style(
        indicatif::ProgressStyle::with_template(
            "  {spinner} running   {prefix:<20} {bar:24} {pos}/{len} steps  {msg}  [{elapsed}, ETA {eta}]",
        )
        .expect("valid template"),
    );
    let progress = ctx.progress.clone();
    let checkpointing = ctx.checkpoint_dir.clone().map(|dir| Checkpointing {
        dir,
        every_steps: cfg.checkpoint_every,
        every_secs: 120.0,
    });
    if let Some(step) = checkpointing.as_ref().and_then(Checkpointing::saved_step) {
        eprintln!(
            "  resuming  {:<20} from its checkpoint at step {step}",
            ctx.stage
        );
    }
    let on_record = |r: &Record| {
        if let Record::Step(s) = r {
            progress.set_position(s.step as u64);
            progress.set_message(format!("loss {:.3}  lr {:.2e}", s.loss, s.lr));
        }
    };
    let hooks = Hooks {
        checkpoint: checkpointing.as_ref(),
        cancelled: &|| crate::exec::context::CANCELLED.load(std::sync::atomic::Ordering::SeqCst),
        on_record: &on_record,
    };
    let (model, summary) =
        match crate::train::trainer::train(model, obj, train, val, cfg, ctx.seed, hooks) {
            Ok(r) => r,
            Err(e @ TrainError::Interrupted { .. }) => {
                tracing::info!("{e}");
                return Err(anyhow::Error::new(crate::exec::context::Cancelled));
            }
            Err(e) => return Err(e.into()),
        };
    if let Some(step) = summary.resumed_from {
        tracing::info!(stage = %ctx.stage, step, "resumed from checkpoint");
    }
    let mut rates = Vec::new();
    for r in &summary.log {
        match r {
            Record::Step(s) => {
                rates.push(s.items_per_s);
                ctx.log(serde_json::json!({ "event": "step", "step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "items_per_s": s.items_per_s }));
            }
            Record::Eval(v) => ctx.log(serde_json::json!({ "event": "eval", "step": v.step, "val_loss": v.loss, "val_ppl": v.loss.exp() })),
        }
    }
    ctx.check_cancelled()?;
    Ok((
        model,
        summary,
        rates.iter().sum::<f64>() / rates.len().max(1) as f64,
    ))
}

/// `compute`'s encoding of `examples`, or the store's cached copy of it (see
/// `data::tokenized`): keyed by the tokenizer's content, `how` and the examples.
pub fn encode_cached(
    ctx: &crate::exec::context::StageContext,
    tokenizer: &tokenizers::Tokenizer,
    how: &serde_json::Value,
    examples: &(impl serde::Serialize + ?Sized),
    compute: impl FnOnce() -> anyhow::Result<Vec<crate::data::tokenized::Encoded>>,
) -> anyhow::Result<Vec<crate::data::tokenized::Encoded>> {
    let key = crate::data::tokenized::key(tokenizer, how, examples)?;
    crate::data::tokenized::cached(ctx.token_cache.as_deref(), &key, compute)
}

/// What identifies an input's content, for cache keys: the digests of an artifact's files
/// (their blob names), or a file's path, size and modification time.
pub fn input_identity(input: &crate::exec::context::ResolvedInput) -> String {
    use crate::exec::context::ResolvedInput;
    match input {
        ResolvedInput::Artifact(view) => view
            .outputs
            .iter()
            .flat_map(|(o, v)| {
                v.files.iter().map(move |(rel, blob)| {
                    format!(
                        "{o}/{rel}={}",
                        blob.file_name()
                            .map(|n| n.to_string_lossy())
                            .unwrap_or_default()
                    )
                })
            })
            .collect::<Vec<_>>()
            .join(","),
        ResolvedInput::File { path, .. } => {
            let meta = std::fs::metadata(path).ok();
            format!(
                "{}:{}:{:?}",
                path.display(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok())
            )
        }
    }
}

/// LoRA on a scored model's backbone when `peft` asks for it. The head is not part of the
/// backbone: it stays fully trainable (PEFT's `modules_to_save`).
pub fn with_peft(
    model: crate::model::Model,
    peft: &Option<crate::recipe::types::PeftSpec>,
    device: &burn::tensor::Device,
) -> anyhow::Result<crate::model::Model> {
    match peft {
        Some(crate::recipe::types::PeftSpec::Lora(cfg)) => {
            let (backbone, _) = crate::model::lora::apply(model.backbone, cfg, device)
                .map_err(anyhow::Error::msg)?;
            Ok(crate::model::Model {
                backbone,
                score: model.score,
            })
        }
        None => Ok(model),
    }
}

/// Writes a tuned decoder: with LoRA, its PEFT adapter as output `adapter`; then the model,
/// adapter merged, as output `model` (an HF directory with its tokenizer).
pub fn save_policy(
    ctx: &mut crate::exec::context::StageContext,
    mut policy: crate::model::Backbone,
    peft: &Option<crate::recipe::types::PeftSpec>,
    config: &serde_json::Value,
    tokenizer: &tokenizers::Tokenizer,
) -> anyhow::Result<()> {
    use crate::model::lora;
    ctx.progress.set_message("saving");
    if let Some(crate::recipe::types::PeftSpec::Lora(cfg)) = peft {
        let dir = ctx.output_dir("adapter", ArtifactType::Model)?;
        lora::save_peft(&mut policy, cfg, "model", &dir)?;
    }
    lora::merge_and_unload(&mut policy);
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    crate::model::save_hf_dir(
        &crate::model::Model::new(policy),
        config,
        Some(tokenizer),
        &dir,
    )?;
    Ok(())
}

/// The stage's device, its backend RNG seeded from the recipe. burn's CPU RNG is process-wide:
/// seeding at stage start makes every random draw of a stage (init, LoRA, new heads, dropout)
/// a function of the seed and the stage alone, not of which stages ran before it in this
/// process, so a stage reproduces its artifact whether it runs alone or after others.
pub fn stage_device(
    ctx: &crate::exec::context::StageContext,
    autodiff: bool,
) -> anyhow::Result<burn::tensor::Device> {
    let device = crate::backend::device(ctx.backend).map_err(anyhow::Error::msg)?;
    device.seed(ctx.seed);
    Ok(if autodiff { device.autodiff() } else { device })
}
