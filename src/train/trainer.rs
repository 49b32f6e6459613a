//! The training loop every training stage shares: AdamW with PyTorch's defaults, warmup and
//! decay schedules, gradient accumulation normalised by the items (tokens, pairs) of the whole
//! accumulated batch, global-norm clipping, periodic evaluation, early stopping with the best
//! model restored, and a clear error when the loss stops being finite.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::clip::{clip_global_norm, global_norm};
use super::schedule::{Schedule, factor};
use crate::rng::SplitMix64;

/// What a stage trains: the summed loss of a batch and how many items it sums over.
pub trait Objective<M: Module> {
    type Batch;
    fn loss_sum(&self, model: &M, batch: &Self::Batch) -> Tensor<1>;
    fn count(&self, batch: &Self::Batch) -> f64;
}

/// The recipe's `train:` block. Defaults follow transformers' `TrainingArguments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Peak learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub schedule: Schedule,
    /// Micro-batches per optimizer step.
    #[serde(default = "default_accum")]
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (none: no clipping).
    #[serde(default = "default_clip")]
    pub max_grad_norm: Option<f64>,
    #[serde(default)]
    pub weight_decay: f64,
    /// Evaluate on the validation split every N optimizer steps (and at the end).
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// Stop after this many evaluations without improvement, restoring the best model.
    #[serde(default)]
    pub patience: Option<usize>,
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
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Items (tokens, pairs...) per second of this step.
    pub items_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalRecord {
    pub step: usize,
    pub loss: f64,
}

pub enum Event<'a> {
    Step(&'a StepRecord),
    Eval(&'a EvalRecord),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub first_loss: f64,
    pub last_loss: f64,
    /// Validation loss before training, best (with its step) and at the end.
    pub initial_eval: Option<f64>,
    pub best_eval: Option<(usize, f64)>,
    pub final_eval: Option<f64>,
    pub early_stopped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(
        "the loss became {loss} at step {step}: training diverged (lower `lr`, add warmup, or check the data); nothing was committed"
    )]
    NonFinite { step: usize, loss: f64 },
    #[error("there are no training batches")]
    NoData,
}

/// Mean loss per item over `batches`, without gradients.
pub fn evaluate<M: Module, O: Objective<M>>(model: &M, obj: &O, batches: &[O::Batch]) -> f64 {
    let (mut sum, mut n) = (0.0, 0.0);
    for b in batches {
        sum += obj.loss_sum(model, b).detach().into_scalar::<f32>() as f64;
        n += obj.count(b);
    }
    if n > 0.0 { sum / n } else { f64::NAN }
}

/// Trains `model` (built on an autodiff device) on `train`, evaluating on `val`. Batch order
/// is shuffled per epoch from `seed`.
pub fn train<M: Module, O: Objective<M>>(
    mut model: M,
    obj: &O,
    train: &[O::Batch],
    val: &[O::Batch],
    cfg: &TrainConfig,
    seed: u64,
    mut on_event: impl FnMut(Event),
) -> Result<(M, Summary), TrainError> {
    if train.is_empty() {
        return Err(TrainError::NoData);
    }
    let accum = cfg.grad_accum.max(1);
    let steps_per_epoch = train.len().div_ceil(accum);
    let total = steps_per_epoch * cfg.epochs.max(1);
    let mut optim = super::optim::adamw()
        .with_weight_decay(cfg.weight_decay as f32)
        .init();
    let mut rng = SplitMix64::new(seed);
    let mut summary = Summary::default();
    if !val.is_empty() {
        summary.initial_eval = Some(evaluate(&model, obj, val));
    }
    let mut best: Option<(usize, f64, M)> = None;
    let mut stale_evals = 0;
    let mut step = 0;
    'epochs: for epoch in 0..cfg.epochs.max(1) {
        let mut order: Vec<usize> = (0..train.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for group in order.chunks(accum) {
            let started = std::time::Instant::now();
            let items: f64 = group.iter().map(|&i| obj.count(&train[i])).sum();
            let mut accumulator = GradientsAccumulator::new();
            let mut loss = 0.0;
            for &i in group {
                let l = obj.loss_sum(&model, &train[i]).div_scalar(items.max(1.0));
                loss += l.clone().detach().into_scalar::<f32>() as f64;
                let grads = GradientsParams::from_grads(l.backward(), &model);
                accumulator.accumulate(&model, grads);
            }
            if !loss.is_finite() {
                return Err(TrainError::NonFinite { step, loss });
            }
            let mut grads = accumulator.grads();
            let grad_norm = match cfg.max_grad_norm {
                Some(max) => clip_global_norm(&model, &mut grads, max),
                None => global_norm(&model, &grads),
            };
            let lr = cfg.lr * factor(cfg.schedule, step, total, cfg.warmup_steps);
            model = optim.step(lr, model, grads);
            step += 1;
            if summary.steps == 0 {
                summary.first_loss = loss;
            }
            summary.steps = step;
            summary.last_loss = loss;
            let record = StepRecord {
                step,
                epoch,
                loss,
                lr,
                grad_norm,
                items_per_s: items / started.elapsed().as_secs_f64().max(1e-9),
            };
            on_event(Event::Step(&record));
            if cfg
                .eval_every
                .is_some_and(|e| e > 0 && step.is_multiple_of(e))
                && !val.is_empty()
            {
                let loss = evaluate(&model, obj, val);
                on_event(Event::Eval(&EvalRecord { step, loss }));
                if best.as_ref().is_none_or(|(_, b, _)| loss < *b) {
                    best = Some((step, loss, model.clone()));
                    stale_evals = 0;
                } else {
                    stale_evals += 1;
                    if cfg.patience.is_some_and(|p| stale_evals >= p) {
                        summary.early_stopped = true;
                        break 'epochs;
                    }
                }
            }
        }
    }
    if !val.is_empty() {
        let last = evaluate(&model, obj, val);
        if best.as_ref().is_none_or(|(_, b, _)| last < *b) {
            best = Some((step, last, model.clone()));
        }
        if let Some((s, l, m)) = best {
            summary.best_eval = Some((s, l));
            // With early stopping, the best checkpoint is the result (the overfit tail is dropped).
            if cfg.patience.is_some() {
                model = m;
            }
        }
        summary.final_eval = Some(evaluate(&model, obj, val));
    }
    Ok((model, summary))
}
