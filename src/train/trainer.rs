//! The training loop every training stage shares: AdamW with PyTorch's defaults, warmup and
//! decay schedules, gradient accumulation normalised by the items (tokens, pairs) of the whole
//! accumulated batch, global-norm clipping, periodic evaluation, early stopping with the best
//! model restored, and a clear error when the loss stops being finite.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpointing;
use super::clip::{clip_to, global_norm, scale_grads};
use super::loss_scale::LossScale;
use super::schedule::{Schedule, factor};
use crate::model::precision::Precision;
use crate::rng::SplitMix64;

/// What a stage trains: the summed loss of a batch and how many items it sums over.
pub trait Objective<M: Module> {
    type Batch;
    fn loss_sum(&self, model: &M, batch: &Self::Batch) -> Tensor<1>;
    fn count(&self, batch: &Self::Batch) -> f64;
    /// Called with the model and all the micro-batches of an optimizer step before any of
    /// their losses, with the step's RNG seeded: an RL objective samples the step's rollouts
    /// here, so what it normalises over the step (DAPO's token count, rewards scaled by the
    /// batch) sees all of them.
    fn prepare(&self, _model: &M, _step: &[&Self::Batch]) {}
    /// Metrics of the step just taken beyond its loss (DPO's rewards), read once after each
    /// optimizer step.
    fn step_metrics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }
    /// What [`Objective::count`] counts, plural, for progress lines (`tokens`, `pairs`).
    fn unit(&self) -> &'static str {
        "items"
    }
    /// Whether batches are shuffled each epoch (PPO keeps its order: several optimisation
    /// passes over one rollout follow each other).
    fn shuffle(&self) -> bool {
        true
    }
    /// What the objective remembers across steps that the end of the run reads (PPO's and
    /// GRPO's per-step logs). Saved with every checkpoint and handed back to [`restore`] on
    /// resume, so a resumed run reports what an uninterrupted one does.
    ///
    /// [`restore`]: Objective::restore
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    fn restore(&self, _state: serde_json::Value) -> Result<(), serde_json::Error> {
        Ok(())
    }
    /// Whether the run may be checkpointed (and so resumed) right after `batch`. PPO's passes
    /// over one rollout may not be split: the rollout was sampled from the policy as it was
    /// before the first pass, which a resumed run no longer has. A checkpoint that falls due
    /// inside such a span is written at its end.
    fn resumable_after(&self, _batch: &Self::Batch) -> bool {
        true
    }
}

/// The recipe's `train:` block. Defaults follow transformers' `TrainingArguments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training split.
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Examples (sequences, pairs) per micro-batch; an optimizer step takes `grad_accum`
    /// micro-batches.
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Optimizer steps over which the learning rate rises linearly from 0 to `lr`.
    #[serde(default)]
    pub warmup_steps: usize,
    /// The learning rate after warmup: `constant`, `linear` decay to 0, or `cosine` decay
    /// to 0.
    #[serde(default)]
    pub schedule: Schedule,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_accum")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (none: no clipping).
    #[serde(default = "default_clip")]
    pub max_grad_norm: Option<f64>,
    /// AdamW's decoupled weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Evaluate on the validation split every N optimizer steps (and at the end); without it,
    /// at the end of every epoch.
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations (epochs, without `eval_every`) without improvement,
    /// restoring the best model.
    #[serde(default)]
    pub patience: Option<usize>,
    /// Save a checkpoint every N optimizer steps (default: every 2 minutes of training, and on
    /// Ctrl-C); the next run of the same stage resumes from it. Changes no result, so it is not
    /// part of the action key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Train on several devices at once (data parallel): each optimizer step takes
    /// `grad_accum` micro-batches per device, spread over replicas of the model; their
    /// gradients are summed on the first device in the order of the micro-batches, and one
    /// optimizer step follows. The same arithmetic as `grad_accum` of that many micro-batches
    /// on one device. `devices: 2` (the backend's first two), `[0, 1]`, `[cuda:0, cuda:1]`,
    /// `[cpu, cpu]`. Part of the action key only as a count above 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<crate::backend::Devices>,
    /// Recompute each layer in backward instead of keeping its activations from forward (as
    /// transformers' `gradient_checkpointing`): activation memory of one layer instead of all,
    /// for about one more forward pass per step, on every backend. Part of the action key when
    /// on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
    /// The precision linear layers compute in: `bf16` or `f16` multiply in that dtype (frozen
    /// weights, a LoRA base, are also stored in it: half their memory), with norms, losses,
    /// LoRA factors, the weights the optimizer updates and its state in f32; `f16` adds
    /// dynamic loss scaling. Default: f32 on the CPU backend; on GPU backends, the
    /// checkpoint's dtype where the device has it. Part of the action key when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::model::precision::Precision>,
}

impl TrainConfig {
    /// How many devices train at once.
    pub fn device_count(&self) -> usize {
        self.devices
            .as_ref()
            .map_or(1, crate::backend::Devices::count)
            .max(1)
    }

    /// Micro-batches per optimizer step: `grad_accum` on each device.
    pub fn micro_batches_per_step(&self) -> usize {
        self.grad_accum.max(1) * self.device_count()
    }
}

fn default_epochs() -> usize {
    1
}
fn default_batch() -> usize {
    8
}
fn default_lr() -> f64 {
    5e-5
}
fn default_accum() -> usize {
    1
}
fn default_clip() -> Option<f64> {
    Some(1.0)
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: default_epochs(),
            batch_size: default_batch(),
            lr: default_lr(),
            warmup_steps: 0,
            schedule: Schedule::default(),
            grad_accum: default_accum(),
            max_grad_norm: default_clip(),
            weight_decay: 0.0,
            eval_every: None,
            patience: None,
            checkpoint_every: None,
            devices: None,
            gradient_checkpointing: false,
            precision: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Items (tokens, pairs...) per second of this step.
    pub items_per_s: f64,
    /// The objective's own metrics of this step (`Objective::step_metrics`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub loss: f64,
}

/// One line of the training log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    Step(StepRecord),
    Eval(EvalRecord),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    /// Validation loss before training, best (with its step) and at the end.
    pub initial_eval: Option<f64>,
    pub best_eval: Option<(usize, f64)>,
    pub final_eval: Option<f64>,
    pub early_stopped: bool,
    /// With early stopping (`patience`), the step whose weights the run returns: its best
    /// validation loss, which may be before the last step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_step: Option<usize>,
    /// The step of the checkpoint this run continued from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<usize>,
    /// Every step and evaluation, in order (a resumed run includes the steps before the crash).
    #[serde(skip_serializing, default)]
    pub log: Vec<Record>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "the loss became {loss} at step {step}: training diverged (lower `lr`, add warmup, or check the data); nothing was committed"
    )]
    NonFinite { step: usize, loss: f64 },
    #[error("there are no training batches")]
    NoData,
    #[error("interrupted at step {step}{}", if *.saved { " (checkpoint saved: the next run resumes there)" } else { "" })]
    Interrupted { step: usize, saved: bool },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{epochs} epochs is more optimizer steps than can be counted; lower `epochs`")]
    TooManySteps { epochs: usize },
}

/// What the loop needs from its stage besides data: where to checkpoint, and whether the
/// user asked it to stop.
pub struct Hooks<'a> {
    pub checkpoint: Option<&'a Checkpointing>,
    pub cancelled: &'a dyn Fn() -> bool,
    /// Called as each step and evaluation is logged (progress display).
    pub on_record: &'a dyn Fn(&Record),
    /// With several, the devices the step's micro-batches are spread over (`train.devices`),
    /// as plain devices; the first holds the model that the optimizer steps.
    pub devices: Vec<Device>,
}

impl Default for Hooks<'_> {
    fn default() -> Self {
        Hooks {
            checkpoint: None,
            cancelled: &|| false,
            on_record: &|_| {},
            devices: Vec::new(),
        }
    }
}

/// Where the loop is, as `state.json` of a checkpoint records it.
#[derive(Debug, Serialize, Deserialize)]
struct Position {
    /// The run this belongs to: a checkpoint of another data or schedule is not resumed.
    fingerprint: (usize, usize, usize),
    step: usize,
    epoch: usize,
    /// Optimizer steps (groups of micro-batches) done in `epoch`.
    group: usize,
    stale_evals: usize,
    best: Option<(usize, f64)>,
    summary: Summary,
    log: Vec<Record>,
    /// [`Objective::state`].
    #[serde(default)]
    objective: serde_json::Value,
    /// f16 training's loss scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    loss_scale: Option<LossScale>,
}

/// Mean loss per item over `batches`, without gradients.
pub fn evaluate<M: Module, O: Objective<M>>(model: &M, obj: &O, batches: &[O::Batch]) -> f64 {
    // Parameters that require no gradient keep the autodiff backend from recording the
    // forward passes: their activations are freed batch by batch instead of held for a
    // backward pass that never comes.
    let model = &model.clone().no_grad();
    let (mut sum, mut n) = (0.0, 0.0);
    for b in batches {
        sum += obj.loss_sum(model, b).detach().into_scalar::<f32>() as f64;
        n += obj.count(b);
    }
    if n > 0.0 { sum / n } else { f64::NAN }
}

/// The seed of the backend RNG for optimizer step `step`: randomness inside a step (dropout)
/// depends on the seed and the step alone, so a resumed run draws what the original drew.
fn step_seed(seed: u64, step: usize) -> u64 {
    SplitMix64::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// A validation loss measured during training, and what it changes.
struct ValidationPoint<'a, M> {
    step: usize,
    loss: f64,
    model: &'a M,
    best: &'a mut Option<(usize, f64, M)>,
    stale_evals: &'a mut usize,
    patience: Option<usize>,
    summary: &'a mut Summary,
    on_record: &'a dyn Fn(&Record),
}

/// Records a validation point and keeps the best model so far; returns whether early stopping
/// ends training (`patience` evaluations without improvement).
fn validation_point<M: Clone>(p: ValidationPoint<'_, M>) -> bool {
    let record = Record::Eval(EvalRecord {
        step: p.step,
        loss: p.loss,
    });
    (p.on_record)(&record);
    p.summary.log.push(record);
    if p.best.as_ref().is_none_or(|(_, b, _)| p.loss < *b) {
        *p.best = Some((p.step, p.loss, p.model.clone()));
        *p.stale_evals = 0;
        false
    } else {
        *p.stale_evals += 1;
        let stop = p.patience.is_some_and(|n| *p.stale_evals >= n);
        p.summary.early_stopped |= stop;
        stop
    }
}

/// Trains `model` (built on an autodiff device) on `train`, evaluating on `val`. Batch order
/// is shuffled per epoch from `seed`. With a checkpoint directory holding a checkpoint of this
/// same run, training continues from it and ends with the weights an uninterrupted run ends with.
pub fn train<M: Module, O: Objective<M>>(
    model: M,
    obj: &O,
    train: &[O::Batch],
    val: &[O::Batch],
    cfg: &TrainConfig,
    seed: u64,
    hooks: Hooks,
) -> Result<(M, Summary), TrainError> {
    if train.is_empty() {
        return Err(TrainError::NoData);
    }
    let accum = cfg.micro_batches_per_step();
    let steps_per_epoch = train.len().div_ceil(accum);
    let epochs = cfg.epochs.max(1);
    // Validation bounds the counts; a caller from code may not have validated.
    let total = steps_per_epoch
        .checked_mul(epochs)
        .ok_or(TrainError::TooManySteps { epochs })?;
    let fingerprint = (train.len(), val.len(), total);
    let mut optim = super::optim::adamw()
        .with_weight_decay(cfg.weight_decay as f32)
        .init();
    let mut model = model;
    let mut summary = Summary::default();
    let mut best: Option<(usize, f64, M)> = None;
    let (mut stale_evals, mut step, mut start_epoch, mut start_group) = (0, 0, 0, 0);
    let mut loss_scale = (cfg.precision == Some(Precision::F16)).then(LossScale::default);
    let ckpt_err = |e: anyhow::Error| TrainError::Checkpoint(format!("{e:#}"));
    let resumed = match hooks.checkpoint {
        Some(c) => c.load(model.clone(), optim.clone()).map_err(ckpt_err)?,
        None => None,
    };
    match resumed {
        Some(l) => {
            let pos: Position = serde_json::from_value(l.state)
                .map_err(|e| TrainError::Checkpoint(format!("unreadable state: {e}")))?;
            if pos.fingerprint != fingerprint {
                return Err(TrainError::Checkpoint(format!(
                    "the checkpoint in {} is of another run ({:?} batches/steps, this run {:?}); remove it to start over",
                    hooks
                        .checkpoint
                        .map_or(String::new(), |c| c.dir.display().to_string()),
                    pos.fingerprint,
                    fingerprint
                )));
            }
            (model, optim) = (l.model, l.optim);
            best = match (pos.best, l.best) {
                (Some((s, v)), Some(m)) => Some((s, v, m)),
                _ => None,
            };
            (stale_evals, step, start_epoch, start_group) =
                (pos.stale_evals, pos.step, pos.epoch, pos.group);
            obj.restore(pos.objective)
                .map_err(|e| TrainError::Checkpoint(format!("unreadable objective state: {e}")))?;
            if pos.loss_scale.is_some() {
                loss_scale = pos.loss_scale;
            }
            summary = pos.summary;
            summary.log = pos.log;
            summary.resumed_from = Some(step);
        }
        None => {
            if !val.is_empty() {
                summary.initial_eval = Some(evaluate(&model, obj, val));
            }
        }
    }
    let device = model.devices().into_iter().next();
    // Data parallel: the model trains on the first device, replicas on the others; it goes
    // back to its own device at the end (the stage evaluates and saves it there).
    let home = device.clone();
    let parallel: Vec<Device> = if hooks.devices.len() > 1 {
        hooks.devices.iter().map(|d| d.clone().autodiff()).collect()
    } else {
        Vec::new()
    };
    if let Some(first) = parallel.first()
        && Some(first) != device.as_ref()
    {
        model = model.fork(first);
    }
    let device = parallel.first().cloned().or(device);
    let mut rng = SplitMix64::new(seed);
    let mut last_checkpoint = std::time::Instant::now();
    // A checkpoint fell due where the objective cannot resume; it is written at the next step
    // that can.
    let mut checkpoint_pending = false;
    'epochs: for epoch in 0..epochs {
        // The shuffle is drawn for every epoch, skipped ones included, so the RNG is where an
        // uninterrupted run has it.
        let mut order: Vec<usize> = (0..train.len()).collect();
        if obj.shuffle() {
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        if epoch < start_epoch {
            continue;
        }
        let skip = if epoch == start_epoch { start_group } else { 0 };
        for (g, group) in order.chunks(accum).enumerate().skip(skip) {
            let started = std::time::Instant::now();
            if let Some(d) = &device {
                d.seed(step_seed(seed, step));
            }
            // What evaluations since the last step left in the objective's step metrics is not
            // this step's.
            let _ = obj.step_metrics();
            let step_batches: Vec<&O::Batch> = group.iter().map(|&i| &train[i]).collect();
            obj.prepare(&model, &step_batches);
            let items: f64 = group.iter().map(|&i| obj.count(&train[i])).sum();
            let mut accumulator = GradientsAccumulator::new();
            // Replicas carry this step's weights to the other devices.
            let replicas: Vec<M> = parallel
                .iter()
                .skip(1)
                .map(|d| model.clone().fork(d))
                .collect();
            let mut losses = Vec::with_capacity(group.len());
            for (j, &i) in group.iter().enumerate() {
                let on = j % parallel.len().max(1);
                let m = if on == 0 { &model } else { &replicas[on - 1] };
                let l = obj.loss_sum(m, &train[i]).div_scalar(items.max(1.0));
                losses.push(l.clone().detach());
                let l = match &loss_scale {
                    Some(s) => l.mul_scalar(s.scale),
                    None => l,
                };
                let mut grads = GradientsParams::from_grads(l.backward(), m);
                if on > 0 {
                    grads = grads.to_device(&parallel[0], m);
                }
                // Summed in the order of the micro-batches, as on one device.
                accumulator.accumulate(&model, grads);
            }
            // Read once all micro-batches are queued, so devices are not waited on one by one.
            let loss: f64 = losses
                .into_iter()
                .map(|l| l.into_scalar::<f32>() as f64)
                .sum();
            if !loss.is_finite() {
                return Err(TrainError::NonFinite { step, loss });
            }
            let mut grads = accumulator.grads();
            // f16: gradients back to their true size, and a step that overflowed is skipped.
            if let Some(s) = &loss_scale {
                scale_grads(&model, &mut grads, 1.0 / s.scale);
            }
            let grad_norm = global_norm(&model, &grads);
            let finite = loss_scale.as_mut().is_none_or(|s| s.update(grad_norm));
            if let Some(max) = cfg.max_grad_norm.filter(|_| finite) {
                clip_to(&model, &mut grads, grad_norm, max);
            }
            let lr = cfg.lr * factor(cfg.schedule, step, total, cfg.warmup_steps);
            if finite {
                model = optim.step(lr, model, grads);
            }
            step += 1;
            if summary.steps == 0 {
                summary.first_loss = loss;
            }
            summary.steps = step;
            summary.last_loss = loss;
            let record = Record::Step(StepRecord {
                step,
                epoch,
                loss,
                lr,
                grad_norm,
                items_per_s: items / started.elapsed().as_secs_f64().max(1e-9),
                extra: {
                    let mut extra = obj.step_metrics();
                    if let Some(s) = &loss_scale {
                        extra.push(("loss_scale".into(), s.scale));
                    }
                    extra
                },
            });
            (hooks.on_record)(&record);
            summary.log.push(record);
            if cfg
                .eval_every
                .is_some_and(|e| e > 0 && step.is_multiple_of(e))
                && !val.is_empty()
            {
                let loss = evaluate(&model, obj, val);
                let stop = validation_point(ValidationPoint {
                    step,
                    loss,
                    model: &model,
                    best: &mut best,
                    stale_evals: &mut stale_evals,
                    patience: cfg.patience,
                    summary: &mut summary,
                    on_record: hooks.on_record,
                });
                if stop {
                    break 'epochs;
                }
            }
            // Tests interrupt a run at an exact step here.
            crate::store::fault_point(&format!("step-{step}"));
            let cancelled = (hooks.cancelled)();
            let mut saved = false;
            if let Some(c) = hooks.checkpoint {
                let due = match c.every_steps {
                    Some(n) => n > 0 && step.is_multiple_of(n),
                    None => last_checkpoint.elapsed().as_secs_f64() >= c.every_secs,
                };
                checkpoint_pending |= due;
                let resumable = group.last().is_none_or(|&i| obj.resumable_after(&train[i]));
                if (checkpoint_pending || cancelled) && resumable && step < total {
                    let pos = Position {
                        fingerprint,
                        step,
                        epoch,
                        group: g + 1,
                        stale_evals,
                        best: best.as_ref().map(|(s, l, _)| (*s, *l)),
                        summary: summary.clone(),
                        log: summary.log.clone(),
                        objective: obj.state(),
                        loss_scale: loss_scale.clone(),
                    };
                    let state = serde_json::to_value(&pos)
                        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
                    c.save(&model, &optim, best.as_ref().map(|(_, _, m)| m), &state)
                        .map_err(ckpt_err)?;
                    last_checkpoint = std::time::Instant::now();
                    checkpoint_pending = false;
                    saved = true;
                }
            }
            if cancelled {
                return Err(TrainError::Interrupted { step, saved });
            }
        }
        // Without `eval_every`, the validation set is measured at the end of every epoch (the
        // last one's is the final evaluation below), so every curve has validation points and
        // `patience` counts epochs.
        if cfg.eval_every.is_none() && !val.is_empty() && epoch + 1 < epochs {
            let loss = evaluate(&model, obj, val);
            let stop = validation_point(ValidationPoint {
                step,
                loss,
                model: &model,
                best: &mut best,
                stale_evals: &mut stale_evals,
                patience: cfg.patience,
                summary: &mut summary,
                on_record: hooks.on_record,
            });
            if stop {
                break 'epochs;
            }
        }
    }
    if !val.is_empty() {
        let last = evaluate(&model, obj, val);
        // The end of training is a validation point too, unless one was just taken.
        let taken = summary.log.iter().rev().find_map(|r| match r {
            Record::Eval(e) => Some(e.step),
            _ => None,
        }) == Some(step);
        if !taken {
            let record = Record::Eval(EvalRecord { step, loss: last });
            (hooks.on_record)(&record);
            summary.log.push(record);
        }
        if best.as_ref().is_none_or(|(_, b, _)| last < *b) {
            best = Some((step, last, model.clone()));
        }
        if let Some((s, l, m)) = best {
            summary.best_eval = Some((s, l));
            // With early stopping, the best checkpoint is the result (the overfit tail is dropped).
            if cfg.patience.is_some() {
                model = m;
                summary.kept_step = Some(s);
            }
        }
        summary.final_eval = Some(evaluate(&model, obj, val));
    }
    if let (Some(first), Some(home)) = (parallel.first(), &home)
        && first != home
    {
        model = model.fork(home);
    }
    Ok((model, summary))
}
