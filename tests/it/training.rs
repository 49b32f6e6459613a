//! The shared training loop on a tiny GPT: learning happens (validation loss falls), clipping
//! bounds the update, schedules drive the learning rate, and divergence stops with an error.

use burn::prelude::*;
use hone::model::Backbone;
use hone::model::gpt2::{Gpt2, Gpt2Config};
use hone::rng::SplitMix64;
use hone::train::objectives::{CausalLm, LmBatch};
use hone::train::schedule::Schedule;
use hone::train::trainer::{Hooks, Objective, Record, TrainConfig, TrainError, evaluate, train};

const VOCAB: usize = 32;

/// Arithmetic progressions mod VOCAB with step 1 or 3: learnable from the first two tokens.
fn batches(n: usize, seed: u64, device: &Device) -> Vec<LmBatch> {
    progressions(n, &[1, 3], seed, device)
}

fn tiny(device: &Device) -> Backbone {
    let cfg = Gpt2Config {
        vocab_size: VOCAB,
        n_positions: 16,
        n_embd: 32,
        n_layer: 2,
        n_head: 2,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".into(),
    };
    Backbone::Gpt2(Gpt2::init(&cfg, device))
}

#[test]
fn pretraining_lowers_validation_perplexity() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let (train_set, val_set) = (batches(12, 1, &device), batches(3, 2, &device));
    let cfg = TrainConfig {
        epochs: 12,
        lr: 3e-3,
        warmup_steps: 10,
        schedule: Schedule::Cosine,
        eval_every: Some(24),
        max_grad_norm: Some(1.0),
        ..Default::default()
    };
    let (model, summary) = train(
        tiny(&device),
        &CausalLm,
        &train_set,
        &val_set,
        &cfg,
        7,
        Hooks::default(),
    )
    .unwrap();
    let (mut lrs, mut norms) = (Vec::new(), Vec::new());
    for r in &summary.log {
        if let Record::Step(s) = r {
            lrs.push(s.lr);
            norms.push(s.grad_norm);
        }
    }
    let (before, after) = (summary.initial_eval.unwrap(), summary.final_eval.unwrap());
    let ppl_factor = (before - after).exp();
    assert!(
        ppl_factor > 4.0,
        "validation perplexity {:.1} -> {:.1} (factor {ppl_factor:.1})",
        before.exp(),
        after.exp()
    );
    assert_eq!(summary.steps, 144);
    assert!((evaluate(&model, &CausalLm, &val_set) - after).abs() < 1e-9);
    // Warmup from 0 to the peak, cosine down to near 0.
    assert_eq!(lrs[0], 0.0);
    assert!(
        (lrs[10] - 3e-3).abs() < 1e-12 && lrs[143] < 1e-5,
        "{:?}",
        &lrs[..12]
    );
    assert!(norms.iter().all(|n| n.is_finite()));
}

struct Diverging;

impl Objective<Backbone> for Diverging {
    type Batch = LmBatch;
    fn loss_sum(&self, model: &Backbone, b: &LmBatch) -> Tensor<1> {
        CausalLm.loss_sum(model, b).mul_scalar(f32::NAN)
    }
    fn count(&self, b: &LmBatch) -> f64 {
        b.targets()
    }
}

#[test]
fn a_non_finite_loss_stops_training_with_a_clear_error() {
    let device = Device::flex().autodiff();
    let data = batches(2, 1, &device);
    let err = train(
        tiny(&device),
        &Diverging,
        &data,
        &[],
        &TrainConfig::default(),
        0,
        Hooks::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, TrainError::NonFinite { step: 0, .. }));
    assert!(err.to_string().contains("training diverged"), "{err}");
}

#[test]
fn gradient_accumulation_matches_one_big_batch() {
    // Two micro-batches of 8 accumulated == one batch of 16 (same items, loss normalised by
    // the targets of the whole accumulated batch), up to float rounding.
    // One initial model for both runs: burn-flex's RNG is process-wide and the test harness
    // runs tests on parallel threads, so seeding twice would not give the same weights.
    let device = Device::flex().autodiff();
    let initial = tiny(&device);
    let run = |accum: usize, data: Vec<LmBatch>| {
        let cfg = TrainConfig {
            epochs: 1,
            lr: 1e-2,
            grad_accum: accum,
            max_grad_norm: None,
            ..Default::default()
        };
        let (m, _) = train(
            initial.clone(),
            &CausalLm,
            &data,
            &[],
            &cfg,
            0,
            Hooks::default(),
        )
        .unwrap();
        let Backbone::Gpt2(g) = m else { unreachable!() };
        hone::model::to_vec(g.wte.val())
    };
    let mut rng = SplitMix64::new(5);
    let seqs: Vec<Vec<u32>> = (0..16)
        .map(|_| (0..10).map(|_| rng.below(VOCAB as u64) as u32).collect())
        .collect();
    let big = vec![LmBatch::from_sequences(&seqs, &device)];
    let small = vec![
        LmBatch::from_sequences(&seqs[..8], &device),
        LmBatch::from_sequences(&seqs[8..], &device),
    ];
    let (a, b) = (run(1, big), run(2, small));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "accumulated vs full batch: {worst}");
}

/// Progressions mod VOCAB, each with a step drawn from `steps`, 8 per batch.
fn progressions(n: usize, steps: &[u64], seed: u64, device: &Device) -> Vec<LmBatch> {
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let seqs: Vec<Vec<u32>> = (0..8)
                .map(|_| {
                    let a = rng.below(VOCAB as u64);
                    let step = if steps.len() > 1 {
                        steps[rng.below(steps.len() as u64) as usize]
                    } else {
                        steps[0]
                    };
                    (0..12)
                        .map(|k| ((a + k * step) % VOCAB as u64) as u32)
                        .collect()
                })
                .collect();
            LmBatch::from_sequences(&seqs, device)
        })
        .collect()
}

#[test]
fn early_stopping_restores_the_best_model_when_validation_worsens() {
    // Trained on step-1 progressions, validated on step-5 ones: the better the model learns
    // "+1", the worse it predicts "+5", so validation loss rises and training stops.
    let device = Device::flex().autodiff();
    let (train_set, val_set) = (
        progressions(8, &[1], 1, &device),
        progressions(2, &[5], 2, &device),
    );
    let cfg = TrainConfig {
        epochs: 30,
        lr: 3e-3,
        eval_every: Some(4),
        patience: Some(2),
        ..Default::default()
    };
    let (model, summary) = train(
        tiny(&device),
        &CausalLm,
        &train_set,
        &val_set,
        &cfg,
        1,
        Hooks::default(),
    )
    .unwrap();
    assert!(summary.early_stopped, "{summary:?}");
    assert!(summary.steps < 30 * 8, "{summary:?}");
    let (best_step, best) = summary.best_eval.unwrap();
    assert!(best_step < summary.steps, "{summary:?}");
    assert!(
        (summary.final_eval.unwrap() - best).abs() < 1e-9,
        "the best model was restored: {summary:?}"
    );
    assert!((evaluate(&model, &CausalLm, &val_set) - best).abs() < 1e-9);
}

/// Without `eval_every`, validation is measured at the end of every epoch and at the end of
/// training (one point each, none twice), and `patience` counts epochs.
#[test]
fn without_eval_every_validation_points_fall_at_each_epoch_and_patience_counts_epochs() {
    let device = Device::flex().autodiff();
    let (train_set, val_set) = (batches(6, 1, &device), batches(2, 2, &device));
    let cfg = TrainConfig {
        epochs: 4,
        lr: 3e-3,
        ..Default::default()
    };
    let (_, summary) = train(
        tiny(&device),
        &CausalLm,
        &train_set,
        &val_set,
        &cfg,
        1,
        Hooks::default(),
    )
    .unwrap();
    let points: Vec<(usize, f64)> = summary
        .log
        .iter()
        .filter_map(|r| match r {
            Record::Eval(e) => Some((e.step, e.loss)),
            _ => None,
        })
        .collect();
    assert_eq!(
        points.iter().map(|p| p.0).collect::<Vec<_>>(),
        [6, 12, 18, 24],
        "{points:?}"
    );
    assert!(
        points[3].1 < points[0].1,
        "validation loss fell: {points:?}"
    );
    assert_eq!(points[3].1, summary.final_eval.unwrap());

    // Trained on "+1", validated on "+5" (as above): validation worsens from the first epoch
    // on, and two epochs without improvement stop it.
    let (train_set, val_set) = (
        progressions(8, &[1], 1, &device),
        progressions(2, &[5], 2, &device),
    );
    let cfg = TrainConfig {
        epochs: 30,
        lr: 3e-3,
        patience: Some(2),
        ..Default::default()
    };
    let (_, summary) = train(
        tiny(&device),
        &CausalLm,
        &train_set,
        &val_set,
        &cfg,
        1,
        Hooks::default(),
    )
    .unwrap();
    assert!(summary.early_stopped, "{summary:?}");
    assert_eq!(
        summary.steps % 8,
        0,
        "stopped at an epoch's end: {summary:?}"
    );
    assert!(summary.steps < 30 * 8, "{summary:?}");
}

/// Every float parameter of a model, flattened in module order.
fn all_weights(model: &Backbone) -> Vec<f32> {
    struct Flat(Vec<f32>);
    impl burn::module::ModuleVisitor for Flat {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.0.extend(hone::model::to_vec(p.val()));
        }
    }
    let mut f = Flat(Vec::new());
    burn::module::Module::visit(model, &mut f);
    f.0
}

#[test]
fn an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights() {
    // Interrupt after step 7 (checkpoints every 3 steps, and one on the interrupt), then run
    // again with the same checkpoint directory: the result equals an uninterrupted run's bit for
    // bit, with the log of every step and the best-model bookkeeping carried over.
    let device = Device::flex().autodiff();
    let initial = tiny(&device);
    let (train_set, val_set) = (batches(10, 1, &device), batches(2, 2, &device));
    let cfg = TrainConfig {
        epochs: 3,
        lr: 3e-3,
        grad_accum: 2,
        warmup_steps: 2,
        schedule: Schedule::Cosine,
        eval_every: Some(2),
        patience: Some(100),
        checkpoint_every: Some(3),
        ..Default::default()
    };
    let (whole, whole_summary) = train(
        initial.clone(),
        &CausalLm,
        &train_set,
        &val_set,
        &cfg,
        9,
        Hooks::default(),
    )
    .unwrap();

    let dir = std::env::temp_dir().join(format!("hone-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ckpt = hone::train::checkpoint::Checkpointing {
        dir: dir.clone(),
        every_steps: cfg.checkpoint_every,
        every_secs: f64::INFINITY,
    };
    let steps = std::cell::Cell::new(0);
    let stop_after_7 = || {
        steps.set(steps.get() + 1);
        steps.get() == 7
    };
    let err = train(
        initial.clone(),
        &CausalLm,
        &train_set,
        &val_set,
        &cfg,
        9,
        Hooks {
            checkpoint: Some(&ckpt),
            cancelled: &stop_after_7,
            ..Hooks::default()
        },
    )
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            TrainError::Interrupted {
                step: 7,
                saved: true
            }
        ),
        "{err}"
    );
    assert!(dir.join("current/state.json").is_file());

    let (resumed, summary) = train(
        initial.clone(),
        &CausalLm,
        &train_set,
        &val_set,
        &cfg,
        9,
        Hooks {
            checkpoint: Some(&ckpt),
            ..Hooks::default()
        },
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(summary.resumed_from, Some(7));
    assert_eq!(summary.steps, whole_summary.steps);
    assert_eq!(summary.log.len(), whole_summary.log.len());
    assert_eq!(summary.initial_eval, whole_summary.initial_eval);
    assert_eq!(summary.best_eval, whole_summary.best_eval);
    assert_eq!(summary.final_eval, whole_summary.final_eval);
    let (a, b) = (all_weights(&whole), all_weights(&resumed));
    assert_eq!(a.len(), b.len());
    let differing = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differing, 0, "{differing} of {} weights differ", a.len());
    // And it did learn something, so the comparison is not between two untouched models.
    assert_ne!(all_weights(&initial), a);
}

#[test]
fn a_packed_row_scores_its_documents_as_if_they_were_apart() {
    // Two documents in one row: the block-diagonal mask, restarted positions and the
    // dropped cross-document target make the loss the sum of the two documents' own losses.
    let device = Device::flex();
    let model = tiny(&device);
    let (a, b): (Vec<u32>, Vec<u32>) = (vec![3, 4, 5, 6, 7], vec![9, 12, 15, 18]);
    let separate = [
        LmBatch::from_sequences(std::slice::from_ref(&a), &device),
        LmBatch::from_sequences(std::slice::from_ref(&b), &device),
    ];
    let row: Vec<u32> = a.iter().chain(&b).copied().collect();
    let docs: Vec<u32> = a.iter().map(|_| 0).chain(b.iter().map(|_| 1)).collect();
    // A second, shorter row pads the batch: padding must not change the first row's loss.
    let packed = LmBatch::packed(&[row, vec![1, 2, 3]], &[docs, vec![2, 2, 2]], &device);
    let apart: f32 = separate
        .iter()
        .map(|s| CausalLm.loss_sum(&model, s).into_scalar::<f32>())
        .sum::<f32>()
        + CausalLm
            .loss_sum(&model, &LmBatch::from_sequences(&[vec![1, 2, 3]], &device))
            .into_scalar::<f32>();
    let together = CausalLm.loss_sum(&model, &packed).into_scalar::<f32>();
    assert!((apart - together).abs() < 1e-4, "{apart} vs {together}");
    assert_eq!(CausalLm.count(&packed), (4 + 3 + 2) as f64);
}
