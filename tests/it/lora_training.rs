//! LoRA: training changes only the adapters; merging equals the adapted forward; a PEFT
//! adapter round-trips through hone's save/load.

use burn::optim::GradientsParams;
use burn::prelude::*;
use hone::model::gpt2::{Gpt2, Gpt2Config};
use hone::model::{Backbone, lora, to_vec};
use hone::train::loss::causal_lm_loss;

fn tiny() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 40,
        n_positions: 16,
        n_embd: 16,
        n_layer: 2,
        n_head: 2,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".into(),
    }
}

fn batch(device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        [
            [1, 5, 9, 13, 17, 21, 25, 29],
            [2, 6, 10, 14, 18, 22, 26, 30],
        ],
        device,
    )
}

#[test]
fn lora_trains_only_adapters_and_merges_exactly() {
    let device = Device::flex().autodiff();
    device.seed(7);
    let base = Backbone::Gpt2(Gpt2::init(&tiny(), &device));
    let cfg = lora::LoraConfig {
        r: 4,
        alpha: 8.0,
        ..Default::default()
    };
    let (mut model, adapted) = lora::apply(base, &cfg, &device).unwrap();
    assert_eq!(
        adapted,
        ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    );
    let Backbone::Gpt2(g) = &model else {
        unreachable!()
    };
    let wte_before = to_vec(g.wte.val());
    let attn_before = to_vec(g.h[0].c_attn.weight.val());
    let ids = batch(&device);
    let mask = Tensor::ones([2, 8], &device);

    let mut optim = hone::train::optim::adamw().init();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let hidden = model.hidden(ids.clone(), None);
        let loss = causal_lm_loss(model.lm_logits(hidden).unwrap(), ids.clone(), mask.clone());
        losses.push(to_vec(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    assert!(
        losses[29] < losses[0] - 0.1,
        "LoRA training lowered the loss: {:?} -> {:?}",
        losses[0],
        losses[29]
    );

    let Backbone::Gpt2(g) = &model else {
        unreachable!()
    };
    assert_eq!(
        to_vec(g.wte.val()),
        wte_before,
        "frozen embedding unchanged"
    );
    assert_eq!(
        to_vec(g.h[0].c_attn.weight.val()),
        attn_before,
        "frozen base weight unchanged"
    );
    let b = to_vec(g.h[0].c_attn.lora.as_ref().unwrap().b.val());
    assert!(b.iter().any(|v| *v != 0.0), "adapter B moved from zero");

    // Merged model == base + adapter forward; adapters off == base model.
    let inference = model.valid();
    let adapted_logits = to_vec(
        inference
            .lm_logits(inference.hidden(ids.clone().without_autodiff(), None))
            .unwrap(),
    );
    let mut merged = inference.clone();
    lora::merge(&mut merged);
    let merged_logits = to_vec(
        merged
            .lm_logits(merged.hidden(ids.clone().without_autodiff(), None))
            .unwrap(),
    );
    let diff = adapted_logits
        .iter()
        .zip(&merged_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-4, "merged vs adapted: {diff}");
    // Unmerge restores the base weight.
    lora::unmerge(&mut merged);
    let Backbone::Gpt2(m) = &merged else {
        unreachable!()
    };
    let restored = to_vec(m.h[0].c_attn.weight.val());
    let worst = restored
        .iter()
        .zip(&attn_before)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "unmerge restores W: {worst}");
    let mut off = inference.clone();
    lora::set_enabled(&mut off, false);
    let off_logits = to_vec(
        off.lm_logits(off.hidden(ids.without_autodiff(), None))
            .unwrap(),
    );
    assert!(
        off_logits
            .iter()
            .zip(&adapted_logits)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "disabling adapters changes the output"
    );

    // PEFT adapter round trip.
    let dir = tempfile::tempdir().unwrap();
    let mut saved = inference.clone();
    lora::save_peft(&mut saved, &cfg, "tiny-gpt2", dir.path()).unwrap();
    let cfg_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg_json["peft_type"], "LORA");
    assert_eq!(cfg_json["target_modules"], serde_json::json!(["c_attn"]));
    let mut reloaded = inference.clone();
    for (_, p) in reloaded.projections_mut() {
        p.lora = None;
    }
    lora::load_peft(&mut reloaded, dir.path(), &Device::flex()).unwrap();
    let ids = batch(&Device::flex());
    let reloaded_logits = to_vec(reloaded.lm_logits(reloaded.hidden(ids, None)).unwrap());
    assert_eq!(reloaded_logits, adapted_logits);
}

/// The newer families take LoRA on the modules PEFT names by default (Phi-3's fused
/// `qkv_proj`, the others' `q_proj`/`v_proj`), learn, and round-trip as PEFT adapters.
#[test]
fn lora_learns_on_each_new_family_with_peft_names() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    for (name, target) in [
        ("phi3", "qkv_proj"),
        ("gemma2-gguf", "q_proj"),
        ("mistral-window", "q_proj"),
        ("qwen3", "q_proj"),
        ("smollm3", "q_proj"),
        ("olmo2", "q_proj"),
        ("qwen3_moe", "q_proj"),
        ("starcoder2", "q_proj"),
    ] {
        let device = Device::flex().autodiff();
        device.seed(7);
        let base = hone::model::load_hf_dir(&fixtures.join(name), &device)
            .unwrap()
            .model
            .backbone;
        let cfg = lora::LoraConfig {
            r: 4,
            alpha: 8.0,
            ..Default::default()
        };
        let (mut model, adapted) = lora::apply(base, &cfg, &device).unwrap();
        assert!(
            adapted
                .iter()
                .any(|p| p == &format!("model.layers.0.self_attn.{target}")),
            "{name}: {adapted:?}"
        );
        let ids = batch(&device);
        let mask = Tensor::ones([2, 8], &device);
        let mut optim = hone::train::optim::adamw().init();
        let mut losses = Vec::new();
        for _ in 0..20 {
            let hidden = model.hidden(ids.clone(), None);
            let loss = causal_lm_loss(model.lm_logits(hidden).unwrap(), ids.clone(), mask.clone());
            losses.push(to_vec(loss.clone())[0]);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        assert!(
            losses[19] < losses[0] - 0.1,
            "{name}: loss {} -> {}",
            losses[0],
            losses[19]
        );
        let inference = model.valid();
        let ids = batch(&Device::flex());
        let logits = |m: &Backbone| to_vec(m.lm_logits(m.hidden(ids.clone(), None)).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let mut saved = inference.clone();
        lora::save_peft(&mut saved, &cfg, name, dir.path()).unwrap();
        let cfg_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert!(
            cfg_json["target_modules"]
                .as_array()
                .unwrap()
                .contains(&target.into()),
            "{name}: {cfg_json}"
        );
        let mut reloaded = inference.clone();
        for (_, p) in reloaded.projections_mut() {
            p.lora = None;
        }
        lora::load_peft(&mut reloaded, dir.path(), &Device::flex()).unwrap();
        // The same values; a trained adapter's memory layout may differ from a loaded one's,
        // and with it the order of a matmul's sums.
        let worst = logits(&reloaded)
            .iter()
            .zip(logits(&inference))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{name}: reloaded adapter differs by {worst}");
    }
}
