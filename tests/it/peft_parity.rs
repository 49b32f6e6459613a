//! Parity with PEFT for the LoRA variants: adapters PEFT made on the tiny Llama checkpoint
//! (scripts/make_peft_fixtures.py), loaded by hone, give PEFT's logits and PEFT's gradients for
//! every adapter tensor; hone saves them back under PEFT's names, and merging folds them in
//! exactly.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use hone::model::lora::{self, LoraConfig};
use hone::model::weights::WeightMap;
use hone::model::{Backbone, load_hf_dir, to_vec};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The tiny Llama base, frozen, on `device`.
fn base(device: &Device) -> Backbone {
    base_of(&fixtures().join("peft/dora"), device)
}

/// The base adapter `dir` was made on (its `base_model_name_or_path`, from the repository's
/// root), frozen, on `device`.
fn base_of(dir: &Path, device: &Device) -> Backbone {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let path = config["base_model_name_or_path"].as_str().unwrap();
    let model = load_hf_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join(path), device).unwrap();
    model.model.backbone.no_grad()
}

/// The fixture's batch: ids and the padding mask (`true` on real tokens).
fn batch(dir: &Path, device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("batch.json")).unwrap()).unwrap();
    let rows = |key: &str| -> (Vec<i64>, [usize; 2]) {
        let r: Vec<Vec<i64>> = serde_json::from_value(json[key].clone()).unwrap();
        let shape = [r.len(), r[0].len()];
        (r.concat(), shape)
    };
    let (ids, shape) = rows("input_ids");
    let (mask, _) = rows("attention_mask");
    let ids = Tensor::from_data(burn::tensor::TensorData::new(ids, shape), device);
    let mask: Tensor<2, Int> =
        Tensor::from_data(burn::tensor::TensorData::new(mask, shape), device);
    (ids, mask.equal_elem(1))
}

fn logits(model: &Backbone, ids: Tensor<2, Int>, padding: Tensor<2, Bool>) -> Tensor<3> {
    model.lm_logits(model.hidden(ids, Some(padding))).unwrap()
}

/// Max |got - want|, over max(1, max |want|): a relative error for values of any size.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "sizes differ");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

/// Loads PEFT's adapter `name` onto the base, and checks hone's logits and the gradients of
/// `sum(logits * weights)` against PEFT's, for every adapter tensor. Returns the adapted
/// model (on the autodiff device) and its config.
fn matches_peft(name: &str) -> (Backbone, LoraConfig) {
    let dir = fixtures().join("peft").join(name);
    let device = Device::flex().autodiff();
    let mut model = base_of(&dir, &device);
    let cfg = lora::load_peft(&mut model, &dir, &device).unwrap();
    let mut reference =
        WeightMap::from_safetensors(&dir.join("reference.safetensors"), &device).unwrap();
    let (ids, padding) = batch(&dir, &device);
    let out = logits(&model, ids, padding.clone());
    let shape = out.dims();
    let want = reference.take::<3>("logits", shape).unwrap();
    // On real tokens: a padded query's logits are nobody's (a window of padding alone is
    // fully masked, and each library fills such a row its own way); the loss weighs them 0.
    let real = padding.float().unsqueeze_dim::<3>(2);
    let err = relative_error(&to_vec(out.clone() * real.clone()), &to_vec(want * real));
    assert!(
        err < 1e-5,
        "{name}: logits differ from PEFT's by {err:e} (relative)"
    );

    let weights = reference.take::<3>("weights", shape).unwrap();
    let grads = (out * weights).sum().backward();
    // The factors' gradients in PEFT's names and layouts (experts' stacked per fused weight),
    // then DoRA's magnitudes.
    // An expert no token reached has no gradient here; PEFT's stacked one holds zeros for it.
    let grad_of = |p: &burn::module::Param<Tensor<2>>| {
        p.val()
            .grad(&grads)
            .unwrap_or_else(|| Tensor::zeros(p.dims(), &Device::flex()))
    };
    let mut got = lora::peft_factors(&mut model, |l| (grad_of(&l.a), grad_of(&l.b)))
        .into_iter()
        .map(|(key, g)| (key, to_vec(g)))
        .collect::<Vec<_>>();
    for (path, proj) in model.projections_mut() {
        if let Some(m) = proj.lora.as_ref().and_then(|l| l.magnitude.as_ref()) {
            let grad = to_vec(m.val().grad(&grads).unwrap());
            got.push((format!("{path}.lora_magnitude_vector"), grad));
        }
    }
    let mut checked = 0;
    for (key, got) in got {
        let key = format!("grad.base_model.model.{key}");
        let shape = reference
            .shape(&key)
            .unwrap_or_else(|| panic!("{key} missing"));
        let want: Vec<f32> = match shape.len() {
            1 => to_vec(reference.take::<1>(&key, [shape[0]]).unwrap()),
            _ => to_vec(reference.take::<2>(&key, [shape[0], shape[1]]).unwrap()),
        };
        let err = relative_error(&got, &want);
        assert!(
            err < 1e-4,
            "{name}: gradient of {key} differs by {err:e} (relative)"
        );
        checked += 1;
    }
    let left: Vec<String> = reference.remaining();
    assert!(
        left.is_empty(),
        "{name}: PEFT gradients hone has no tensor for: {left:?}"
    );
    assert!(checked > 0);
    (model, cfg)
}

#[test]
fn dora_with_rslora_matches_peft_logits_and_gradients() {
    let (model, cfg) = matches_peft("dora");
    assert!(cfg.use_dora && cfg.rslora, "{cfg:?}");
    assert_eq!(cfg.scaling(), 4.0, "rsLoRA: alpha 8 / sqrt(r 4)");
    // Every projection of both blocks carries a magnitude vector.
    let mut model = model;
    let with_magnitude = model
        .projections_mut()
        .into_iter()
        .filter(|(_, p)| p.lora.as_ref().is_some_and(|l| l.magnitude.is_some()))
        .count();
    assert_eq!(with_magnitude, 14);
}

#[test]
fn rslora_matches_peft_logits_and_gradients() {
    let (_, cfg) = matches_peft("rslora");
    assert!(cfg.rslora && !cfg.use_dora, "{cfg:?}");
}

/// PEFT's `target_parameters` adapters on Qwen3-MoE's fused expert weights (one rank-4 update
/// per expert, stacked as PEFT's `ParamWrapper` holds them, nested `experts.base_layer` for
/// `gate_up_proj` and `experts` for `down_proj`) beside q and v: PEFT's logits and gradients;
/// saved back under PEFT's names with the same values, and read again to the same logits.
#[test]
fn expert_adapters_match_peft_logits_and_gradients_and_round_trip() {
    let (model, cfg) = matches_peft("qwen3_moe-experts");
    let mut params = cfg.target_parameters.clone().unwrap();
    params.sort();
    assert_eq!(
        params,
        ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"],
        "{cfg:?}"
    );
    let mut model = model.valid();
    let experts = model
        .projections_mut()
        .into_iter()
        .filter(|(p, proj)| p.contains(".experts.") && proj.lora.is_some())
        .count();
    assert_eq!(
        experts,
        2 * 8 * 2,
        "2 sparse layers x 8 experts x 2 weights"
    );

    let config = saves_as_peft(&mut model, &cfg, "qwen3_moe", "qwen3_moe-experts");
    assert_eq!(
        config["target_parameters"],
        serde_json::json!(["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    );
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
}

/// gpt-oss's experts, which transformers stores `[experts, in, out]` (PEFT's `is_transposed`):
/// the same stacked factors as Qwen3-MoE's, with the experts' biases left alone; PEFT's logits
/// and gradients, and saved back as PEFT wrote them.
#[test]
fn gpt_oss_expert_adapters_match_peft_and_round_trip() {
    let (model, cfg) = matches_peft("gpt_oss-experts");
    let mut model = model.valid();
    let experts = model
        .projections_mut()
        .into_iter()
        .filter(|(p, proj)| p.contains(".experts.") && proj.lora.is_some())
        .count();
    assert_eq!(experts, 2 * 4 * 2, "2 layers x 4 experts x 2 weights");
    let config = saves_as_peft(&mut model, &cfg, "gpt_oss", "gpt_oss-experts");
    assert_eq!(
        config["target_parameters"],
        serde_json::json!(["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    );
}

/// StarCoder2, the family added as one folder: PEFT's `all-linear` adapter (attention's four
/// projections and the MLP's `c_fc` and `c_proj` in each block) gives PEFT's logits and
/// gradients, and saves back as PEFT wrote it.
#[test]
fn starcoder2_adapters_match_peft_and_round_trip() {
    let (model, cfg) = matches_peft("starcoder2-all-linear");
    let mut model = model.valid();
    let adapted = model
        .projections_mut()
        .into_iter()
        .filter(|(_, proj)| proj.lora.is_some())
        .count();
    assert_eq!(adapted, 2 * 6, "2 blocks x 6 projections");
    saves_as_peft(&mut model, &cfg, "starcoder2", "starcoder2-all-linear");
}

/// hone saves `model`'s adapter (PEFT fixture `name`'s, loaded) under the tensor names and with
/// the values PEFT wrote, and its own file reads back to the same logits. Returns the
/// `adapter_config.json` hone wrote.
fn saves_as_peft(
    model: &mut Backbone,
    cfg: &LoraConfig,
    family: &str,
    name: &str,
) -> serde_json::Value {
    let dir = fixtures().join("peft").join(name);
    let out = tempfile::tempdir().unwrap();
    lora::save_peft(model, cfg, family, out.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    let device = Device::flex();
    let mut theirs =
        WeightMap::from_safetensors(&dir.join("adapter_model.safetensors"), &device).unwrap();
    let mut ours =
        WeightMap::from_safetensors(&out.path().join("adapter_model.safetensors"), &device)
            .unwrap();
    let mut names = theirs.remaining();
    names.sort();
    let mut our_names = ours.remaining();
    our_names.sort();
    assert_eq!(our_names, names);
    for name in names {
        let shape = theirs.shape(&name).unwrap();
        let shape = [shape[0], shape[1]];
        assert_eq!(
            to_vec(ours.take::<2>(&name, shape).unwrap()),
            to_vec(theirs.take::<2>(&name, shape).unwrap()),
            "{name}"
        );
    }
    let (ids, padding) = batch(&dir, &device);
    let before = to_vec(logits(model, ids.clone(), padding.clone()));
    let mut again = base_of(&dir, &device);
    lora::load_peft(&mut again, out.path(), &device).unwrap();
    assert_eq!(to_vec(logits(&again, ids, padding)), before);
    config
}

/// hone writes a DoRA adapter back under exactly the names and values PEFT wrote, with
/// `use_dora` and `use_rslora` in its config; merging gives the adapted model's logits, and
/// unmerging gives back the base weights.
#[test]
fn dora_adapter_round_trips_under_peft_names_and_merges_exactly() {
    let dir = fixtures().join("peft/dora");
    let device = Device::flex();
    let mut model = base(&device);
    let cfg = lora::load_peft(&mut model, &dir, &device).unwrap();
    let out = tempfile::tempdir().unwrap();
    lora::save_peft(&mut model, &cfg, "llama", out.path()).unwrap();

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["use_dora"], true);
    assert_eq!(config["use_rslora"], true);
    let theirs =
        WeightMap::from_safetensors(&dir.join("adapter_model.safetensors"), &device).unwrap();
    let mut ours =
        WeightMap::from_safetensors(&out.path().join("adapter_model.safetensors"), &device)
            .unwrap();
    let mut names = theirs.remaining();
    let mut mine = ours.remaining();
    names.sort();
    mine.sort();
    assert_eq!(mine, names, "tensor names");
    let mut theirs = theirs;
    for name in mine {
        let shape = theirs.shape(&name).unwrap();
        let (a, b) = match shape.len() {
            1 => (
                to_vec(theirs.take::<1>(&name, [shape[0]]).unwrap()),
                to_vec(ours.take::<1>(&name, [shape[0]]).unwrap()),
            ),
            _ => (
                to_vec(theirs.take::<2>(&name, [shape[0], shape[1]]).unwrap()),
                to_vec(ours.take::<2>(&name, [shape[0], shape[1]]).unwrap()),
            ),
        };
        assert_eq!(a, b, "{name}");
    }

    let (ids, padding) = batch(&dir, &device);
    let adapted = to_vec(logits(&model, ids.clone(), padding.clone()));
    let before: Vec<Vec<f32>> = model
        .projections_mut()
        .into_iter()
        .map(|(_, p)| to_vec(p.weight.val()))
        .collect();
    lora::merge(&mut model);
    let merged = to_vec(logits(&model, ids.clone(), padding.clone()));
    let err = relative_error(&merged, &adapted);
    assert!(err < 1e-5, "merged DoRA vs adapted: {err:e}");
    lora::unmerge(&mut model);
    for ((path, p), want) in model.projections_mut().into_iter().zip(before) {
        let err = relative_error(&to_vec(p.weight.val()), &want);
        assert!(err < 1e-5, "{path}: unmerge left {err:e}");
    }
    let again = to_vec(logits(&model, ids, padding));
    assert!(relative_error(&again, &adapted) < 1e-5);
}

/// A fresh DoRA adapter starts as the base model (magnitude = ||W|| per output, B = 0), and
/// training moves the magnitudes and lowers the loss.
#[test]
fn fresh_dora_starts_at_the_base_and_learns() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let dir = fixtures().join("peft/dora");
    let (ids, padding) = batch(&dir, &device);
    let plain = base(&device);
    let base_logits = to_vec(logits(&plain, ids.clone(), padding.clone()));
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        use_dora: true,
        target_modules: Some(vec![lora::ALL_LINEAR.into()]),
        ..LoraConfig::default()
    };
    let (mut model, adapted) = lora::apply(plain, &cfg, &device).unwrap();
    assert_eq!(adapted.len(), 14);
    let start = to_vec(logits(&model, ids.clone(), padding.clone()));
    assert!(
        relative_error(&start, &base_logits) < 1e-5,
        "DoRA starts at the base"
    );
    let magnitude_before = {
        let (_, p) = &mut model.projections_mut()[0];
        to_vec(p.lora.as_ref().unwrap().magnitude.as_ref().unwrap().val())
    };

    let mask = padding.clone().int().float();
    let mut optim = hone::train::optim::adamw().init();
    let mut losses = Vec::new();
    for _ in 0..20 {
        let out = logits(&model, ids.clone(), padding.clone());
        let loss = hone::train::loss::causal_lm_loss(out, ids.clone(), mask.clone());
        losses.push(to_vec(loss.clone())[0]);
        let grads = burn::optim::GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    assert!(
        losses[19] < losses[0] - 0.1,
        "DoRA training lowered the loss: {losses:?}"
    );
    let (_, p) = &mut model.projections_mut()[0];
    let magnitude_after = to_vec(p.lora.as_ref().unwrap().magnitude.as_ref().unwrap().val());
    assert_ne!(magnitude_after, magnitude_before, "the magnitudes trained");
}
