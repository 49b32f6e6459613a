//! Adapter stages store their adapter on their base, not a merged model: the model directory
//! holds the PEFT adapter and the base's own files (in the store, the base's blobs), reading it
//! folds the adapter in to exactly the weights the merged model held, a chain of adapter stages
//! keeps one copy of the base, and an export merges.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use hone::model::layered::{self, BASE_DIR, LAYER_FILE, Layer, Placing};
use hone::model::lora::{self, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use hone::model::quantized::QuantFormat;
use hone::model::{Backbone, Frozen, Model, load_hf_dir, load_keeping, to_vec};

use crate::common::{CAR_LORA, Project, car_lm_stages, car_sft_stage};

fn tiny_llama() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama")
}

fn peft_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/peft")
        .join(name)
}

/// Every projection's weight, as f32 values, by path (dequantised where held quantised).
fn weights(model: &mut Backbone) -> Vec<(String, Vec<f32>)> {
    model
        .projections_mut()
        .into_iter()
        .map(|(path, proj)| {
            (
                path,
                to_vec(proj.dense_weight().cast(burn::tensor::DType::F32)),
            )
        })
        .collect()
}

fn logits(model: &Backbone, device: &Device) -> Vec<f32> {
    let ids = Tensor::<2, Int>::from_data(
        burn::tensor::TensorData::new(vec![3i64, 17, 42, 8, 99, 5], [1, 6]),
        device,
    );
    to_vec(model.lm_logits(model.hidden(ids, None)).unwrap())
}

/// The tiny Llama with PEFT's adapter `adapter` loaded onto it (held as `frozen` says), that
/// model stored as a layered directory, and the same model merged in memory.
fn layered_and_merged(adapter: &str, frozen: &Frozen, dir: &Path) -> Backbone {
    let device = Device::flex();
    let base = load_keeping(&tiny_llama(), &device, frozen).unwrap();
    let mut adapted = base.model.backbone;
    let cfg = lora::load_peft(&mut adapted, &peft_fixture(adapter), &device).unwrap();
    let mut merged = adapted.clone();
    lora::merge_and_unload(&mut merged);
    let layer = Layer {
        base_quant: frozen.quantize,
    };
    layered::save(
        &mut Model::new(adapted),
        &cfg,
        (&tiny_llama(), Placing::Copy),
        &layer,
        &base.config,
        base.tokenizer.as_ref(),
        None,
        dir,
    )
    .unwrap();
    merged
}

/// DoRA and rsLoRA adapters, on the base as stored and on an NF4 base: the layered directory
/// holds the adapter and the base's own files, no merged weights, and loads to exactly the
/// merged model's weights and logits.
#[test]
fn a_layered_model_loads_as_exactly_the_merged_model() {
    let device = Device::flex();
    let nf4 = Frozen {
        quantize: Some(QuantFormat::Nf4),
        ..Frozen::default()
    };
    for (adapter, frozen) in [
        ("dora", Frozen::default()),
        ("rslora", Frozen::default()),
        ("rslora", nf4),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut merged = layered_and_merged(adapter, &frozen, dir.path());
        let d = dir.path();
        assert!(layered::is_layered(d));
        assert!(!d.join("model.safetensors").exists(), "a merged copy kept");
        for f in [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "config.json", LAYER_FILE] {
            assert!(d.join(f).is_file(), "{adapter}: no {f}");
        }
        assert_eq!(
            std::fs::read(d.join(BASE_DIR).join("model.safetensors")).unwrap(),
            std::fs::read(tiny_llama().join("model.safetensors")).unwrap(),
            "the base is the checkpoint's own file"
        );
        let mut loaded = hone::model::load(d, &device).unwrap().model.backbone;
        let what = format!("{adapter}, base quantised: {:?}", frozen.quantize);
        assert!(
            loaded
                .projections_mut()
                .iter()
                .all(|(_, p)| p.lora.is_none()),
            "{what}: the adapter is folded in"
        );
        assert_eq!(weights(&mut loaded), weights(&mut merged), "{what}");
        assert_eq!(logits(&loaded, &device), logits(&merged, &device), "{what}");
    }
}

/// A reader that holds its frozen base quantised (a QLoRA stage on a LoRA stage's model) gets
/// each folded projection quantised; one that keeps bf16 weights keeps the base's bf16
/// tensors but folds in f32, where the update is not rounded away.
#[test]
fn a_layered_model_is_held_as_its_reader_asks() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let mut merged = layered_and_merged("rslora", &Frozen::default(), dir.path());
    let q8 = Frozen {
        quantize: Some(QuantFormat::Q8_0),
        ..Frozen::default()
    };
    let mut held = load_keeping(dir.path(), &device, &q8)
        .unwrap()
        .model
        .backbone;
    for (path, proj) in held.projections_mut() {
        let q = proj.quantized.as_ref().expect("quantised");
        assert_eq!(q.format(), "Q8_0", "{path}");
    }
    // Q8_0 of the merged weights, not of the base: the update survived.
    let (got, want) = (weights(&mut held), weights(&mut merged));
    for ((path, g), (_, w)) in got.iter().zip(&want) {
        let worst = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(worst <= scale / 100.0, "{path}: {worst} of {scale}");
    }

    // A sharded bf16 base, kept in bf16 by its reader: the tensors nobody adapted stay bf16,
    // the adapted projections are folded in f32.
    let sharded =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/qwen3-sharded-bf16");
    let base = hone::model::load(&sharded, &device).unwrap();
    let cfg = lora::LoraConfig {
        r: 4,
        target_modules: Some(vec!["q_proj".into(), "down_proj".into()]),
        ..Default::default()
    };
    let (mut adapted, paths) = lora::apply(base.model.backbone, &cfg, &device).unwrap();
    for (_, proj) in adapted.projections_mut() {
        if let Some(l) = proj.lora.as_mut() {
            let b = Tensor::random(
                l.b.dims(),
                burn::tensor::Distribution::Normal(0.0, 0.5),
                &device,
            );
            l.b = burn::module::Param::from_tensor(b);
        }
    }
    let mut merged = adapted.clone();
    lora::merge_and_unload(&mut merged);
    let dir = tempfile::tempdir().unwrap();
    layered::save(
        &mut Model::new(adapted),
        &cfg,
        (&sharded, Placing::Copy),
        &Layer::default(),
        &base.config,
        None,
        None,
        dir.path(),
    )
    .unwrap();
    for f in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(dir.path().join(BASE_DIR).join(f).is_file(), "base/{f}");
    }
    let bf16 = Frozen {
        keep: vec![burn::tensor::DType::BF16],
        ..Frozen::default()
    };
    let mut kept = load_keeping(dir.path(), &device, &bf16)
        .unwrap()
        .model
        .backbone;
    for (path, proj) in kept.projections_mut() {
        let want = match paths.contains(&path) {
            true => burn::tensor::DType::F32,
            false => burn::tensor::DType::BF16,
        };
        assert_eq!(proj.weight.val().dtype(), want, "{path}");
    }
    assert_eq!(weights(&mut kept), weights(&mut merged));
}

/// An adapter stored on a base it does not fit fails naming the adapter file, and a directory
/// nesting more adapters than any pipeline does is refused, not recursed into.
#[test]
fn a_layered_model_on_the_wrong_base_or_nested_without_end_is_refused() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    layered_and_merged("rslora", &Frozen::default(), dir.path());
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2");
    let base = dir.path().join(BASE_DIR);
    std::fs::remove_dir_all(&base).unwrap();
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(other.join(f), base.join(f)).unwrap();
    }
    let err = hone::model::load(dir.path(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(ADAPTER_WEIGHTS) && err.contains("adapter of another base"),
        "{err}"
    );

    let deep = tempfile::tempdir().unwrap();
    let mut at = deep.path().to_path_buf();
    for _ in 0..70 {
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join(LAYER_FILE), "{}").unwrap();
        at = at.join(BASE_DIR);
    }
    let err = hone::model::load(deep.path(), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("nested"), "{err}");
}

/// SFT with LoRA on a pretrained model, then DPO with LoRA on that: each stage's model is its
/// adapter on the base's own blobs (the pretrained model is stored once), its adapter is the
/// `adapter` output's, and the export merges it into a plain HF model that computes what the
/// stage's model computes.
#[test]
fn adapter_stages_store_their_adapter_on_the_base_and_exports_merge() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            "version: 1\nname: layered\nseed: 3\nstages:\n{lm}{sft}  prefs:\n    kind: dataset\n    source: {{ path: {d}/preferences.jsonl }}\n    split: {{ validation: 0.2 }}\n  dpo:\n    kind: dpo\n    model: {{ from: sft }}\n    data: {{ from: prefs }}\n    max_length: 64\n{lora}    train: {{ epochs: 1, batch_size: 8, lr: 1.0e-3 }}\n  out:\n    kind: export\n    model: {{ from: dpo }}\n    to: dist/dpo\n",
            lm = car_lm_stages().replace("epochs: 30", "epochs: 2"),
            sft = car_sft_stage("sft", 2, "", CAR_LORA),
            lora = CAR_LORA,
            d = d.display(),
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let files = |stage: &str, output: &str| -> serde_json::Map<String, serde_json::Value> {
        crate::common::manifest(&p, stage)["outputs"][output]["files"]
            .as_object()
            .unwrap()
            .clone()
    };
    let digest = |files: &serde_json::Map<String, serde_json::Value>, f: &str| {
        files[f]["digest"].as_str().unwrap().to_owned()
    };
    let lm = files("lm", "model");
    let (sft, dpo) = (files("sft", "model"), files("dpo", "model"));
    for (name, model) in [("sft", &sft), ("dpo", &dpo)] {
        assert!(
            !model.contains_key("model.safetensors"),
            "{name}: merged copy"
        );
        assert!(model.contains_key(LAYER_FILE), "{name}");
    }
    let weights = digest(&lm, "model.safetensors");
    assert_eq!(digest(&sft, "base/model.safetensors"), weights);
    assert_eq!(digest(&dpo, "base/base/model.safetensors"), weights);
    assert_eq!(
        digest(&sft, ADAPTER_WEIGHTS),
        digest(&files("sft", "adapter"), ADAPTER_WEIGHTS)
    );
    // The pretrained weights are one blob; each adapter stage adds little beside it.
    let size = |files: &serde_json::Map<String, serde_json::Value>, f: &str| {
        files[f]["size"].as_u64().unwrap()
    };
    let adapter_stages: u64 = [&sft, &dpo]
        .iter()
        .flat_map(|m| m.iter().filter(|(f, _)| !f.starts_with("base/")))
        .map(|(_, e)| e["size"].as_u64().unwrap())
        .sum();
    assert!(
        adapter_stages < size(&lm, "model.safetensors"),
        "two adapter stages stored {adapter_stages} bytes besides the base"
    );

    // The export is a plain merged model; it and the stage's model answer alike.
    let out = p.path("dist/dpo");
    assert!(out.join("model.safetensors").is_file() && !out.join(BASE_DIR).exists());
    assert!(!out.join(ADAPTER_CONFIG).exists() && !out.join(LAYER_FILE).exists());
    load_hf_dir(&out, &Device::flex()).unwrap();
    let generated = |model: &str| {
        p.hone(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "What does the alternator do?",
            "--max-new-tokens",
            "12",
        ])
        .ok()
    };
    assert_eq!(generated("dist/dpo"), generated("r.yaml:dpo"));
}
