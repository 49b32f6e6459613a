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
        assert_learns_like_f32(&p, "r.yaml", low, f32_stage);
    }
}

/// Stage `low` of `recipe` learned, and started and ended near where stage `f32_stage` did:
/// the same data, schedule and seed, so the curves stay together.
fn assert_learns_like_f32(p: &Project, recipe: &str, low: &str, f32_stage: &str) {
    let loss = |stage: &str| {
        let show = p.hone(&["show", recipe, stage]).ok();
        (
            metric(&show, "train_loss_first"),
            metric(&show, "train_loss_last"),
        )
    };
    let ((first, last), (f32_first, f32_last)) = (loss(low), loss(f32_stage));
    assert!(last < 0.97 * first, "{low} learned: {first} -> {last}");
    assert!(
        (first - f32_first).abs() < 0.02 * f32_first,
        "{low} starts at {first}, f32 at {f32_first}"
    );
    assert!(
        (last - f32_last).abs() < 0.1 * f32_last,
        "{low} ends at {last}, f32 at {f32_last}"
    );
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
    let bf16 = hone::model::Frozen {
        keep: vec![DType::BF16],
        ..Default::default()
    };
    let mut kept = load_hf_dir_keeping(&dir, &device, &bf16)
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

/// The same tensors, each f32 one rewritten in bf16 (a checkpoint as transformers saves a
/// bf16 model).
fn bf16_copy(from: &std::path::Path, to: &std::path::Path) {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.is_file() && name != "model.safetensors" && name != "config.json" {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("config.json")).unwrap()).unwrap();
    config["torch_dtype"] = "bfloat16".into();
    config["dtype"] = "bfloat16".into();
    std::fs::write(to.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(from.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            let data = view
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                })
                .collect();
            (name, view.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::BF16, shape.clone(), data).unwrap();
            (name.clone(), view)
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(to.join("model.safetensors"), out).unwrap();
}

/// Through a recipe: LoRA in bf16 from a bf16 checkpoint loads the frozen base as stored
/// (the run says so), learns, and ends near the same stage in f32, which loads it as f32.
#[test]
fn lora_in_bf16_from_a_bf16_checkpoint_keeps_its_base_as_stored() {
    let p = Project::new();
    let stages = car_lm_stages().replace("epochs: 30", "epochs: 6");
    let export = "  out: { kind: export, model: { from: lm }, to: dist/lm }\n";
    p.write(
        "base.yaml",
        &format!("version: 1\nname: base\nseed: 5\nstages:\n{stages}{export}"),
    );
    p.hone(&["run", "base.yaml"]).ok();
    bf16_copy(&p.path("dist/lm"), &p.path("lm-bf16"));
    let sft = |name: &str, precision: &str| {
        format!(
            "  {name}:\n    kind: sft\n    model: {{ path: lm-bf16 }}\n    data: {{ from: qa }}\n    max_length: 64\n{CAR_LORA}    train: {{ epochs: 3, batch_size: 4, lr: 2.0e-3, precision: {precision} }}\n"
        )
    };
    let qa = stages
        .split("  tok:")
        .next()
        .unwrap()
        .split("  qa:")
        .nth(1)
        .unwrap();
    // DPO in bf16 with a reference of its own: the reference, frozen whole, stays bf16 too
    // (the policy trains every weight, so it loads in f32).
    let prefs =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars/preferences.jsonl");
    let dpo = format!(
        "  prefs:\n    kind: dataset\n    source: {{ path: {} }}\n  pref:\n    kind: dpo\n    model: {{ path: lm-bf16 }}\n    reference: {{ path: lm-bf16 }}\n    data: {{ from: prefs }}\n    max_length: 64\n    train: {{ epochs: 1, batch_size: 8, lr: 1.0e-3, precision: bf16 }}\n",
        prefs.display()
    );
    p.write(
        "r.yaml",
        &format!(
            "version: 1\nname: r\nseed: 5\nstages:\n  qa:{qa}{}{}{dpo}",
            sft("low", "bf16"),
            sft("full", "f32")
        ),
    );
    let run = p.hone(&["run", "r.yaml", "-v"]);
    run.ok();
    let said = run.stderr();
    let kept: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("the frozen base stays in bf16"))
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "only the bf16 LoRA stage's base and the DPO reference stay bf16:\n{said}"
    );
    assert_eq!(
        kept.iter().filter(|l| l.contains("`reference`")).count(),
        1,
        "{said}"
    );
    assert_learns_like_f32(&p, "r.yaml", "low", "full");
}
