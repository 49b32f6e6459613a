//! `train: { precision: bf16 | f16 }`: linear layers multiply in the low precision (a LoRA
//! base is stored in it), everything the optimizer updates stays f32, f16 scales the loss.
//! Training still learns, ends near where f32 ends, and `precision: f32` is the default's
//! action (the key of every recipe written before the option).

use crate::common::{
    CAR_LORA, Project, car_lm_stages, car_sft_stage, lock_result, lock_results, metric,
};

#[test]
fn bf16_and_f16_train_close_to_f32_and_f32_keeps_its_key() {
    let p = Project::new();
    let sft = |name: &str, train: &str, peft: &str| car_sft_stage(name, 3, train, peft);
    let lora = CAR_LORA;
    let stages = car_lm_stages().replace("epochs: 30", "epochs: 4");
    let recipe = format!(
        "version: 1\nname: precision\nseed: 5\nstages:\n{stages}{}{}{}{}{}{}",
        sft("full", "", ""),
        sft("full_bf16", ", precision: bf16", ""),
        sft("lora", "", lora),
        sft("lora_f32", ", precision: f32", lora),
        sft("lora_bf16", ", precision: bf16", lora),
        sft("lora_f16", ", precision: f16", lora),
    );
    p.write("r.yaml", &recipe);
    let out = p.hone(&["run", "r.yaml"]).ok();
    let results = lock_results(&p, "r.lock");
    let get = |s: &str| lock_result(&results, s);
    // `precision: f32` is what a stage without it computes, under the same key.
    assert_eq!(get("lora_f32").1, get("lora").1, "{out}");
    assert_eq!(get("lora_f32").2, get("lora").2, "{out}");
    let loss = |stage: &str| {
        let show = p.hone(&["show", "r.yaml", stage]).ok();
        (
            metric(&show, "train_loss_first"),
            metric(&show, "train_loss_last"),
        )
    };
    for (f32_stage, low) in [
        ("full", "full_bf16"),
        ("lora", "lora_bf16"),
        ("lora", "lora_f16"),
    ] {
        assert_ne!(get(low).1, get(f32_stage).1, "{low} is its own action");
        assert_ne!(
            get(low).2,
            get(f32_stage).2,
            "{low} computed in its own precision"
        );
        let (first, last) = loss(low);
        let (f32_first, f32_last) = loss(f32_stage);
        assert!(last < 0.97 * first, "{low} learned: {first} -> {last}");
        // The same data, schedule and seed: the curves stay together.
        assert!(
            (first - f32_first).abs() < 0.02 * f32_first,
            "{low} starts at {first}, f32 at {f32_first}"
        );
        assert!(
            (last - f32_last).abs() < 0.1 * f32_last,
            "{low} ends at {last}, f32 at {f32_last}"
        );
    }
}

/// A checkpoint stored in bf16, loaded for a stage that keeps its frozen base in bf16 (LoRA
/// under `precision: bf16`): its projections, token table and LM head arrive in bf16, never
/// as f32, its norms in f32, and it computes what the f32 load computes, to bf16's
/// precision. Loaded for anything else, every weight is f32 as before.
#[test]
fn a_bf16_checkpoint_loads_its_frozen_base_in_bf16() {
    use burn::prelude::*;
    use burn::tensor::DType;
    use hone::model::{Backbone, load_hf_dir, load_hf_dir_keeping, to_vec};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/qwen3-sharded-bf16");
    let device = Device::flex();
    let logits = |model: &Backbone| {
        let ids = Tensor::<2, Int>::from_data([[5, 17, 42, 8, 99, 3, 21, 64]], &device);
        to_vec(model.lm_logits(model.hidden(ids, None)).unwrap())
    };
    let mut kept = load_hf_dir_keeping(&dir, &device, &[DType::BF16])
        .unwrap()
        .model
        .backbone;
    let mut plain = load_hf_dir(&dir, &device).unwrap().model.backbone;
    let dtypes = |m: &mut Backbone| {
        let projections: Vec<DType> = m
            .projections_mut()
            .into_iter()
            .map(|(_, p)| p.weight.val().dtype())
            .collect();
        let Backbone::Llama(l) = m else {
            panic!("qwen3 loads as the llama family")
        };
        (
            projections,
            l.embed_tokens.val().dtype(),
            l.lm_head.as_ref().map(|h| h.weight.val().dtype()),
            l.norm.weight.val().dtype(),
        )
    };
    let (projections, table, head, norm) = dtypes(&mut kept);
    assert!(!projections.is_empty());
    assert!(
        projections.iter().all(|d| *d == DType::BF16),
        "{projections:?}"
    );
    assert_eq!(
        (table, head, norm),
        (DType::BF16, Some(DType::BF16), DType::F32)
    );
    let (projections, table, head, norm) = dtypes(&mut plain);
    assert!(
        projections.iter().all(|d| *d == DType::F32),
        "{projections:?}"
    );
    assert_eq!(
        (table, head, norm),
        (DType::F32, Some(DType::F32), DType::F32)
    );
    let (low, full) = (logits(&kept), logits(&plain));
    let scale = full.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = low
        .iter()
        .zip(&full)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err > 0.0, "the bf16 load multiplies in bf16");
    assert!(
        err < 0.05 * scale,
        "bf16 logits off by {err} (scale {scale})"
    );
}
