//! The same model computes the same numbers on every backend compiled in. wgpu runs on any
//! Vulkan/Metal/DX12 adapter; CI installs Debian's software Vulkan (mesa-vulkan-drivers).
#![cfg(feature = "wgpu")]

use std::path::Path;

use burn::prelude::*;
use hone::backend::{BackendKind, device};
use hone::model::{Backbone, load_hf_dir, to_vec};

fn forward(name: &str, device: &Device) -> Vec<f32> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    let model = load_hf_dir(&dir, device).unwrap();
    let ids = Tensor::<2, Int>::from_data(
        [[5, 17, 42, 8, 99, 3, 21, 64], [7, 7, 30, 12, 0, 0, 0, 0]],
        device,
    );
    let padding =
        Tensor::<2, Int>::from_data([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]], device)
            .equal_elem(1);
    let hidden = model.model.backbone.hidden(ids, Some(padding));
    match &model.model.backbone {
        Backbone::Bert(_) => to_vec(hidden),
        decoder => to_vec(decoder.lm_logits(hidden).unwrap()),
    }
}

#[test]
fn wgpu_forward_matches_flex() {
    let cpu = device(BackendKind::Cpu).unwrap();
    let gpu = device(BackendKind::Wgpu).unwrap();
    for name in ["gpt2", "llama", "bert"] {
        let (a, b) = (forward(name, &cpu), forward(name, &gpu));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{name}: wgpu differs from flex by {worst:e}");
    }
}

/// Loss and gradient norm of each of four optimizer steps of hone's trainer (next-token loss
/// on the second half of each sequence, AdamW) on `device`, from the fixture `name`, LoRA r 4
/// on every projection when `lora`, each layer recomputed in backward when `checkpoint`. The
/// model is built on the CPU and moved: LoRA's `A` is drawn from the backend's random
/// generator, whose stream differs between backends.
fn train_records(name: &str, lora: bool, checkpoint: bool, device: &Device) -> Vec<(f64, f64)> {
    use hone::model::GradientCheckpointing;
    use hone::model::lora::{LoraConfig, apply};
    use hone::train::objectives::{CausalLm, LmBatch};
    use hone::train::trainer::{Hooks, Record, TrainConfig, train};
    use std::cell::RefCell;

    let device = device.clone().autodiff();
    let cpu = hone::backend::device(BackendKind::Cpu).unwrap().autodiff();
    cpu.seed(7);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    let mut backbone = load_hf_dir(&dir, &cpu).unwrap().model.backbone;
    if lora {
        let cfg = LoraConfig {
            r: 4,
            alpha: 8.0,
            ..Default::default()
        };
        backbone = apply(backbone, &cfg, &cpu).unwrap().0;
    }
    let mut backbone = backbone.fork(&device);
    backbone.set_gradient_checkpointing(checkpoint);
    let seqs: Vec<Vec<u32>> = (0..4u32)
        .map(|b| (0..12).map(|j| (b * 31 + j * 7) % 100).collect())
        .collect();
    let targets: Vec<Vec<bool>> = seqs
        .iter()
        .map(|s| (0..s.len()).map(|j| j >= 6).collect())
        .collect();
    let data = vec![LmBatch::with_targets(&seqs, &targets, &device); 4];
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 4,
        lr: 1e-2,
        ..Default::default()
    };
    let records = RefCell::new(Vec::new());
    let on_record = |r: &Record| {
        if let Record::Step(s) = r {
            records.borrow_mut().push((s.loss, s.grad_norm));
        }
    };
    let hooks = Hooks {
        on_record: &on_record,
        ..Hooks::default()
    };
    train(backbone, &CausalLm, &data, &[], &cfg, 0, hooks).unwrap();
    records.into_inner()
}

/// Training on the GPU backend, built with burn's `fusion` and `autotune` (fused element-wise
/// kernels, matmul kernels picked by timing), follows the CPU's: the same losses and gradient
/// norms step after step, for full fine-tuning and for LoRA, with the loss computed a chunk of
/// rows at a time on both, and with layers recomputed in backward on the GPU.
#[test]
fn wgpu_training_matches_flex() {
    let cpu = device(BackendKind::Cpu).unwrap();
    let gpu = device(BackendKind::Wgpu).unwrap();
    for (name, lora, checkpoint) in [
        ("gpt2", false, false),
        ("llama", true, false),
        ("llama", true, true),
    ] {
        let (a, b) = (
            train_records(name, lora, false, &cpu),
            train_records(name, lora, checkpoint, &gpu),
        );
        assert_eq!(a.len(), 4, "{name}: {a:?}");
        assert_eq!(a.len(), b.len());
        // Learning happened (the same batch four times at lr 1e-2), on both backends alike.
        assert!(a[3].0 < a[0].0, "{name}: no learning on flex: {a:?}");
        for (step, ((la, ga), (lb, gb))) in a.iter().zip(&b).enumerate() {
            let close = |x: f64, y: f64| (x - y).abs() <= 1e-3 * x.abs().max(1.0);
            assert!(
                close(*la, *lb) && close(*ga, *gb),
                "{name} lora={lora} checkpointed={checkpoint} step {step}: flex loss {la} grad norm {ga}, wgpu {lb} {gb}"
            );
        }
    }
}

/// Decoding through the KV cache (written in place, key heads shared across their query
/// heads) runs on wgpu as on the CPU: greedy answers to left-padded prompts, token for token.
#[test]
fn wgpu_cached_generation_matches_flex() {
    use hone::model::sampling::{SamplingConfig, generate_groups};
    let cfg = SamplingConfig {
        max_new_tokens: 12,
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    let prompts = vec![vec![5, 17, 42, 8, 99, 3], vec![7, 30, 12]];
    let cpu = device(BackendKind::Cpu).unwrap();
    let gpu = device(BackendKind::Wgpu).unwrap();
    for name in ["gpt2", "llama"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name);
        let answers = |device: &Device| {
            let model = load_hf_dir(&dir, device).unwrap();
            generate_groups(
                model.model.backbone.language_model().unwrap(),
                &prompts,
                2,
                &cfg,
                device,
            )
        };
        let (a, b) = (answers(&cpu), answers(&gpu));
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|t| t.len() == 12), "{name}: {a:?}");
        assert_eq!(a, b, "{name}");
    }
}
