//! What the training stages share: the checks of `train:`, `max_length` and `peft:`, the
//! training loop with its metrics log and live progress, cached tokenization, LoRA on a model,
//! saving a tuned policy, and the stage's device and precision.

use crate::spec::Problem;
use crate::store::ArtifactType;

/// A tuned decoder's outputs: the model, and with LoRA its PEFT adapter (see [`save_policy`]).
pub fn policy_outputs(
    peft: &Option<crate::spec::settings::PeftSpec>,
) -> Vec<(&'static str, ArtifactType)> {
    let mut v = vec![("model", ArtifactType::Model)];
    if peft.is_some() {
        v.push(("adapter", ArtifactType::Model));
    }
    v
}

/// The largest count `train:` takes (epochs, steps, batch sizes): far above any real run, and
/// low enough that a product of two of them (epochs times steps per epoch) cannot overflow.
pub const MAX_TRAIN_COUNT: usize = 1_000_000_000;

/// The settings every training stage needs to train at all, each at its key: counts of at
/// least 1 (and at most [`MAX_TRAIN_COUNT`]), a learning rate and weight decay that are
/// numbers (not `.nan`, `.inf`) of the right sign, and a clipping norm above 0 (clipping to a
/// negative norm turns every step around: the loss rises).
pub fn train_problems(train: &crate::train::trainer::TrainConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    let counts = [
        ("batch_size", Some(train.batch_size), 1),
        ("epochs", Some(train.epochs), 1),
        ("grad_accum", Some(train.grad_accum), 1),
        ("warmup_steps", Some(train.warmup_steps), 0),
        ("eval_every", train.eval_every, 0),
        ("patience", train.patience, 0),
        ("checkpoint_every", train.checkpoint_every, 0),
    ];
    for (key, value, least) in counts {
        let Some(value) = value else { continue };
        if value < least {
            problems.push(Problem::new(
                format!("train.{key}"),
                format!("`{key}` must be at least {least}"),
            ));
        } else if value > MAX_TRAIN_COUNT {
            problems.push(
                Problem::new(
                    format!("train.{key}"),
                    format!("`{key}` must be at most {MAX_TRAIN_COUNT}, not {value}"),
                )
                .help("counts in `train:` are epochs, optimizer steps or examples; a value this large is a typo"),
            );
        }
    }
    if !(train.lr.is_finite() && train.lr > 0.0) {
        problems.push(Problem::new(
            "train.lr",
            format!("`lr` must be a positive number, not {}", train.lr),
        ));
    }
    if !(train.weight_decay.is_finite() && train.weight_decay >= 0.0) {
        problems.push(Problem::new(
            "train.weight_decay",
            format!(
                "`weight_decay` must be a number of at least 0, not {}",
                train.weight_decay
            ),
        ));
    }
    if train.devices.as_ref().is_some_and(|d| d.count() == 0) {
        problems.push(Problem::new(
            "train.devices",
            "`devices` must be at least 1 (or name at least one device)",
        ));
    }
    if let Some(norm) = train.max_grad_norm
        && !(norm.is_finite() && norm > 0.0)
    {
        problems.push(
            Problem::new(
                "train.max_grad_norm",
                format!("`max_grad_norm` must be a positive number, not {norm}"),
            )
            .help("write `max_grad_norm: null` to train without clipping"),
        );
    }
    problems
}

/// A `max_length` of 0 leaves no token to train on.
pub fn length_problem(max_length: usize) -> Option<Problem> {
    (max_length == 0).then(|| Problem::new("max_length", "`max_length` must be at least 1"))
}

/// A LoRA rank of 0 trains nothing; dropout is a probability below 1.
pub fn lora_problem(peft: &Option<crate::spec::settings::PeftSpec>) -> Option<Problem> {
    match peft {
        Some(p) if p.lora().r == 0 => {
            Some(Problem::new("peft.r", "LoRA rank `r` must be at least 1"))
        }
        _ => None,
    }
}

/// A training record as `metrics.jsonl` and the live log take it: a step (its loss, lr,
/// gradient norm, throughput, and the objective's own metrics under their names, such as
/// DPO's `rewards/margins`) or an evaluation.
fn record_json(r: &crate::train::trainer::Record) -> serde_json::Value {
    use crate::train::trainer::Record;
    match r {
        Record::Step(s) => {
            let mut v = serde_json::json!({ "event": "step", "step": s.step, "epoch": s.epoch, "loss": s.loss, "lr": s.lr, "grad_norm": s.grad_norm, "items_per_s": s.items_per_s });
            for (k, x) in &s.extra {
                v[k.as_str()] = (*x).into();
            }
            v
        }
        Record::Eval(e) => {
            serde_json::json!({ "event": "eval", "step": e.step, "val_loss": e.loss, "val_ppl": e.loss.exp() })
        }
    }
}

/// A step's throughput for the progress line, readable at every speed: `1234 tokens/s`,
/// `2.5 pairs/s`, and below one item a second the time per item, `3.2 s/pair` (a rate
/// rounded to whole items showed `0 pairs/s` for a slow model).
pub fn throughput(items_per_s: f64, unit: &str) -> String {
    match items_per_s {
        r if r >= 10.0 => format!("{r:.0} {unit}/s"),
        r if r >= 1.0 => format!("{r:.1} {unit}/s"),
        r if r > 0.0 => format!(
            "{:.1} s/{}",
            1.0 / r,
            unit.strip_suffix('s').unwrap_or(unit)
        ),
        _ => format!("- {unit}/s"),
    }
}

/// Runs the shared trainer with the stage's progress bar, checkpoints and metrics log: each
/// step's loss, lr, gradient norm and items/s, and each evaluation, go to the run's
/// metrics.jsonl. Returns the trained model, the summary and the mean items (tokens, examples)
/// per second.
pub fn train_logged<M, O>(
    mut model: M,
    obj: &O,
    train: &[O::Batch],
    val: &[O::Batch],
    cfg: &crate::train::trainer::TrainConfig,
    ctx: &mut crate::spec::context::StageContext,
) -> anyhow::Result<(M, crate::train::trainer::Summary, f64)>
where
    M: burn::module::Module
        + crate::model::GradientCheckpointing
        + crate::model::precision::ReducedPrecision,
    O: crate::train::trainer::Objective<M>,
{
    use crate::train::checkpoint::Checkpointing;
    let precision = training_precision(cfg, ctx, &model.devices())?;
    if precision != crate::model::precision::Precision::F32 {
        tracing::info!(
            "train.precision {}: linear layers compute in {}, frozen weights are stored in it",
            precision.name(),
            precision.name()
        );
    }
    model.set_precision(precision);
    let cfg = &crate::train::trainer::TrainConfig {
        precision: Some(precision),
        ..cfg.clone()
    };
    model.set_gradient_checkpointing(cfg.gradient_checkpointing);
    use crate::train::trainer::{Hooks, Record, TrainError};
    let total = train
        .len()
        .div_ceil(cfg.micro_batches_per_step())
        .saturating_mul(cfg.epochs.max(1));
    ctx.progress.set_length(total as u64);
    let progress = ctx.progress.clone();
    let checkpointing = ctx.checkpoint_dir.clone().map(|dir| Checkpointing {
        dir,
        every_steps: cfg.checkpoint_every,
        every_secs: 120.0,
    });
    if let Some(step) = checkpointing.as_ref().and_then(Checkpointing::saved_step) {
        progress.resumed(step);
    }
    let live = ctx.live.clone();
    let on_record = |r: &Record| {
        if let Some(live) = &live {
            live(&record_json(r));
        }
        if let Record::Step(s) = r {
            // The message first: a progress line written on the position shows this step's.
            progress.set_message(format!(
                "loss {:.3}  lr {:.2e}  {}",
                s.loss,
                s.lr,
                throughput(s.items_per_s, obj.unit())
            ));
            progress.set_position(s.step as u64);
        }
    };
    let devices = match &cfg.devices {
        Some(spec) if spec.count() > 1 => crate::backend::devices(ctx.backend, spec)
            .map_err(|e| anyhow::anyhow!("train.devices: {e}"))?,
        _ => Vec::new(),
    };
    let hooks = Hooks {
        devices,
        checkpoint: checkpointing.as_ref(),
        cancelled: &|| crate::spec::context::CANCELLED.load(std::sync::atomic::Ordering::SeqCst),
        on_record: &on_record,
    };
    let (model, summary) =
        match crate::train::trainer::train(model, obj, train, val, cfg, ctx.seed, hooks) {
            Ok(r) => r,
            Err(e @ TrainError::Interrupted { step, saved }) => {
                tracing::info!("{e}");
                // Say what the next run finds: this step, an earlier checkpoint, or nothing.
                let earlier = checkpointing.as_ref().and_then(Checkpointing::saved_step);
                let kept = match (saved, earlier) {
                    (true, _) => {
                        format!("saved a checkpoint at step {step}; the next run resumes there")
                    }
                    (false, Some(k)) => {
                        format!("its checkpoint of step {k} is kept; the next run resumes there")
                    }
                    (false, None) => {
                        "no checkpoint had been saved; the next run starts it over".to_owned()
                    }
                };
                return Err(
                    anyhow::Error::new(crate::spec::context::Cancelled).context(format!(
                        "stage `{}` stopped after step {step}: {kept}",
                        ctx.stage
                    )),
                );
            }
            Err(e) => return Err(e.into()),
        };
    if let Some(step) = summary.resumed_from {
        tracing::info!(stage = %ctx.stage, step, "resumed from checkpoint");
    }
    let mut rates = Vec::new();
    for r in &summary.log {
        if let Record::Step(s) = r {
            rates.push(s.items_per_s);
        }
        ctx.log(record_json(r));
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
    ctx: &crate::spec::context::StageContext,
    tokenizer: &tokenizers::Tokenizer,
    how: &serde_json::Value,
    examples: &(impl serde::Serialize + ?Sized),
    compute: impl FnOnce() -> anyhow::Result<Vec<crate::data::tokenized::Encoded>>,
) -> anyhow::Result<Vec<crate::data::tokenized::Encoded>> {
    let key = crate::data::tokenized::key(tokenizer, how, examples)?;
    crate::data::tokenized::cached(ctx.token_cache.as_deref(), &key, compute)
}

/// What identifies an input's content, for cache keys: the digests of an artifact's files
/// (their blob names), or a file's path, size and modification time (every file's, for a
/// directory).
pub fn input_identity(input: &crate::spec::context::ResolvedInput) -> String {
    use crate::spec::context::ResolvedInput;
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
            let stamp = |p: &std::path::Path| {
                let meta = std::fs::metadata(p).ok();
                format!(
                    "{}:{}:{:?}",
                    p.display(),
                    meta.as_ref().map_or(0, |m| m.len()),
                    meta.and_then(|m| m.modified().ok())
                )
            };
            // A directory's own time does not change when a file in it is rewritten: each
            // file is stamped, as the input digests of action keys are.
            match crate::store::hash::walk_files(path) {
                Ok(files) if path.is_dir() => files
                    .iter()
                    .map(|rel| stamp(&path.join(rel)))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => stamp(path),
            }
        }
    }
}

/// LoRA on a scored model's backbone when `peft` asks for it. The head is not part of the
/// backbone: it stays fully trainable (PEFT's `modules_to_save`).
pub fn with_peft(
    model: crate::model::Model,
    peft: &Option<crate::spec::settings::PeftSpec>,
    device: &burn::tensor::Device,
) -> anyhow::Result<crate::model::Model> {
    let (backbone, _) = apply_peft(model.backbone, peft, device)?;
    Ok(crate::model::Model {
        backbone,
        score: model.score,
    })
}

/// How a stage trained, for its summary: `full fine-tuning`, `LoRA`, `DoRA`, `QLoRA (nf4)`...
pub fn method_name(peft: &Option<crate::spec::settings::PeftSpec>, adapted: &[String]) -> String {
    let Some(peft) = peft.as_ref().filter(|_| !adapted.is_empty()) else {
        return "full fine-tuning".into();
    };
    let name = match (peft.quant().is_some(), peft.lora().use_dora) {
        (false, false) => "LoRA",
        (false, true) => "DoRA",
        (true, false) => "QLoRA",
        (true, true) => "QDoRA",
    };
    match peft.quant() {
        Some(q) => format!("{name} ({})", q.name()),
        None => name.into(),
    }
}

/// `peft` on a backbone: LoRA adapters on the targeted projections, everything else frozen;
/// with QLoRA, every projection's frozen weight quantised first (those the loader quantised
/// already stay as they are). Returns the adapted module paths (none without `peft`).
pub fn apply_peft(
    backbone: crate::model::Backbone,
    peft: &Option<crate::spec::settings::PeftSpec>,
    device: &burn::tensor::Device,
) -> anyhow::Result<(crate::model::Backbone, Vec<String>)> {
    let Some(peft) = peft else {
        return Ok((backbone, Vec::new()));
    };
    let mut backbone = backbone;
    if let Some(format) = peft.quant() {
        let (mut held, mut formats) = (0usize, std::collections::BTreeSet::new());
        for (path, proj) in backbone.projections_mut() {
            proj.quantize(format)
                .map_err(|e| anyhow::anyhow!("cannot quantise `{path}`: {e}"))?;
            if let Some(q) = &proj.quantized {
                held += q.bytes();
                formats.insert(q.format());
            }
        }
        // A GGUF base keeps its own blocks, whatever `quant` says.
        tracing::info!(
            "QLoRA: the frozen projections are held in {} ({:.1} MiB)",
            formats.into_iter().collect::<Vec<_>>().join(", "),
            held as f64 / (1u64 << 20) as f64
        );
    }
    Ok(crate::model::lora::apply(backbone, peft.lora(), device)?)
}

/// Writes a tuned decoder: with LoRA, its PEFT adapter as output `adapter` and, as output
/// `model`, the adapter on the checkpoint the stage started from (input `model`), stored as a
/// base plus the adapter ([`crate::model::layered`]: the base's blobs, no merged copy);
/// without LoRA, or on a model the stage created, the model itself (an HF directory with its
/// tokenizer).
pub fn save_policy(
    ctx: &mut crate::spec::context::StageContext,
    mut policy: crate::model::Backbone,
    peft: &Option<crate::spec::settings::PeftSpec>,
    config: &serde_json::Value,
    tokenizer: &tokenizers::Tokenizer,
    prompting: &crate::model::serving::Prompting,
) -> anyhow::Result<()> {
    use crate::model::{layered, lora};
    ctx.progress.set_message("saving");
    if let Some(peft) = peft {
        let dir = ctx.output_dir("adapter", ArtifactType::Model)?;
        lora::save_peft(&mut policy, peft.lora(), "model", &dir)?;
        save_adapter_tokenizer(&dir, config, tokenizer, Some(prompting))?;
        if let Some(input) = ctx.inputs.get("model") {
            // The store's own blobs are linked; a user's checkpoint is copied in.
            let placing = match input {
                crate::spec::context::ResolvedInput::Artifact(_) => layered::Placing::Link,
                crate::spec::context::ResolvedInput::File { .. } => layered::Placing::Copy,
            };
            let base = super::model_input::checkpoint_path(ctx, "model")?;
            let layer = layered::Layer {
                base_quant: ctx.frozen_base_quant,
            };
            let dir = ctx.output_dir("model", ArtifactType::Model)?;
            layered::save(
                &mut crate::model::Model::new(policy),
                peft.lora(),
                (&base, placing),
                &layer,
                config,
                Some(tokenizer),
                Some(prompting),
                &dir,
            )?;
            return Ok(());
        }
    }
    lora::merge_and_unload(&mut policy);
    let dir = ctx.output_dir("model", ArtifactType::Model)?;
    crate::model::save_hf_dir(
        &crate::model::Model::new(policy),
        config,
        Some(tokenizer),
        Some(prompting),
        &dir,
    )?;
    Ok(())
}

/// The tokenizer beside a PEFT adapter, as TRL's trainers save it: the adapter directory then
/// serves on its own (`AutoTokenizer` and `PeftModel` both load from it).
pub fn save_adapter_tokenizer(
    dir: &std::path::Path,
    config: &serde_json::Value,
    tokenizer: &tokenizers::Tokenizer,
    prompting: Option<&crate::model::serving::Prompting>,
) -> anyhow::Result<()> {
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("cannot save tokenizer: {e}"))?;
    crate::model::serving::write_serving_files(dir, tokenizer, config, prompting, false)
}

/// The precision a training stage computes in: `train.precision`, else on a GPU backend the
/// dtype of the checkpoint it starts from (where the device has it), else f32. An explicit
/// precision the device lacks is an error.
fn training_precision(
    cfg: &crate::train::trainer::TrainConfig,
    ctx: &crate::spec::context::StageContext,
    devices: &[burn::tensor::Device],
) -> anyhow::Result<crate::model::precision::Precision> {
    use crate::model::precision::Precision;
    let supported = |p: Precision| devices.iter().all(|d| d.supports_dtype(p.dtype()));
    match cfg.precision {
        Some(p) if !supported(p) => anyhow::bail!(
            "train.precision: {} is not supported by the {} device; use f32{}",
            p.name(),
            ctx.backend.name(),
            if p == Precision::Bf16 && supported(Precision::F16) {
                " or f16"
            } else {
                ""
            }
        ),
        Some(p) => Ok(p),
        None if ctx.backend != crate::backend::BackendKind::Cpu => Ok(ctx
            .source_precision
            .filter(|p| supported(*p))
            .unwrap_or(Precision::F32)),
        None => Ok(Precision::F32),
    }
}

/// The dtypes in which a stage with `config` (its key config) on `backend` may load its
/// `model` checkpoint's frozen weights as stored: it trains adapters (`peft`), so its base is
/// frozen, in `train.precision` bf16 or f16, or without `precision` on a GPU backend (where
/// the checkpoint's own dtype is the default), or with QLoRA. Empty otherwise: everything
/// loads as f32.
pub fn frozen_base_dtypes(
    config: &serde_json::Value,
    backend: crate::backend::BackendKind,
) -> Vec<burn::tensor::DType> {
    if config.get("peft").is_none_or(serde_json::Value::is_null) {
        return Vec::new();
    }
    frozen_dtypes(config, backend)
}

/// The dtypes in which a stage with `config` on `backend` holds a frozen model as its
/// checkpoint stores it (the rest of [`frozen_base_dtypes`]'s rule, which adds that the base
/// must be frozen): DPO's `reference`, frozen whatever the policy trains.
pub fn frozen_dtypes(
    config: &serde_json::Value,
    backend: crate::backend::BackendKind,
) -> Vec<burn::tensor::DType> {
    use burn::tensor::DType;
    // QLoRA is for bases too big for f32: what it does not quantise (the token table, the LM
    // head) stays as the checkpoint stores it, whatever the training precision.
    if frozen_base_quant(config).is_some() {
        return vec![DType::BF16, DType::F16];
    }
    match config.pointer("/train/precision").and_then(|p| p.as_str()) {
        Some("bf16") => vec![DType::BF16],
        Some("f16") => vec![DType::F16],
        None if backend != crate::backend::BackendKind::Cpu => vec![DType::BF16, DType::F16],
        _ => Vec::new(),
    }
}

/// What a stage with `config` (its key config) quantises its `model` checkpoint's block
/// projections to while loading them: QLoRA's `quant`, else nothing.
pub fn frozen_base_quant(
    config: &serde_json::Value,
) -> Option<crate::model::quantized::QuantFormat> {
    let peft = config.get("peft")?;
    serde_json::from_value::<crate::spec::settings::PeftSpec>(peft.clone())
        .ok()?
        .quant()
}

/// The stage's device, its backend RNG seeded from the recipe. burn's CPU RNG is process-wide:
/// seeding at stage start makes every random draw of a stage (init, LoRA, new heads, dropout)
/// a function of the seed and the stage alone, not of which stages ran before it in this
/// process, so a stage reproduces its artifact whether it runs alone or after others.
pub fn stage_device(
    ctx: &crate::spec::context::StageContext,
    autodiff: bool,
) -> anyhow::Result<burn::tensor::Device> {
    let device = crate::backend::device(ctx.backend)?;
    device.seed(ctx.seed);
    Ok(if autodiff { device.autodiff() } else { device })
}

#[cfg(test)]
mod identity_tests {
    use super::input_identity;
    use crate::spec::context::ResolvedInput;

    #[test]
    fn a_rewritten_file_in_a_model_directory_changes_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"old").unwrap();
        let input = ResolvedInput::File {
            path: dir.path().to_path_buf(),
            label: "m".into(),
            format: None,
        };
        let before = input_identity(&input);
        std::fs::write(dir.path().join("model.safetensors"), b"new weights").unwrap();
        assert_ne!(input_identity(&input), before);
    }
}

#[cfg(test)]
mod frozen_base_tests {
    use super::frozen_base_dtypes;
    use crate::backend::BackendKind::{Cpu, Wgpu};
    use burn::tensor::DType::{BF16, F16};
    use serde_json::json;

    #[test]
    fn only_adapters_in_a_reduced_precision_load_their_base_as_stored() {
        let lora = json!({ "method": "lora", "r": 8 });
        let stage = |peft: serde_json::Value, precision: Option<&str>| json!({ "peft": peft, "train": { "precision": precision } });
        let bf16 = stage(lora.clone(), Some("bf16"));
        assert_eq!(frozen_base_dtypes(&bf16, Cpu), vec![BF16]);
        let f16 = stage(lora.clone(), Some("f16"));
        assert_eq!(frozen_base_dtypes(&f16, Wgpu), vec![F16]);
        // A GPU backend's default is the checkpoint's own dtype; the CPU's is f32.
        let default = stage(lora.clone(), None);
        assert_eq!(frozen_base_dtypes(&default, Wgpu), vec![BF16, F16]);
        assert!(frozen_base_dtypes(&default, Cpu).is_empty());
        assert!(frozen_base_dtypes(&stage(lora, Some("f32")), Wgpu).is_empty());
        // Full fine-tuning trains every weight: f32 masters, loaded as f32.
        let full = stage(serde_json::Value::Null, Some("bf16"));
        assert!(frozen_base_dtypes(&full, Cpu).is_empty());
        assert!(frozen_base_dtypes(&json!({ "train": {} }), Wgpu).is_empty());
        // A frozen model of its own (DPO's reference) follows the precision alone.
        assert_eq!(super::frozen_dtypes(&full, Cpu), vec![BF16]);
        assert!(super::frozen_dtypes(&json!({ "train": {} }), Cpu).is_empty());
    }
}

#[cfg(test)]
mod throughput_tests {
    use super::throughput;

    /// Fast, middling and slow steps all read as something other than zero.
    #[test]
    fn throughput_reads_at_every_speed() {
        assert_eq!(throughput(1234.4, "target tokens"), "1234 target tokens/s");
        assert_eq!(throughput(2.46, "pairs"), "2.5 pairs/s");
        assert_eq!(throughput(0.31, "pairs"), "3.2 s/pair");
        assert_eq!(throughput(0.5, "prompts"), "2.0 s/prompt");
        assert_eq!(throughput(0.0, "pairs"), "- pairs/s");
    }
}
