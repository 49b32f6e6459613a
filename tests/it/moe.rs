//! Mixture of experts beyond the forward pass (`model_parity` has that, `peft_parity` the
//! expert adapters' layout): the router's load-balancing loss as transformers computes it, in
//! full fine-tuning only; full fine-tuning, LoRA and QLoRA on the experts learning.

use std::path::Path;

use burn::optim::GradientsParams;
use burn::prelude::*;
use hone::model::{Backbone, llama, load_hf_dir, lora, moe, to_vec};
use hone::train::objectives::{CausalLm, LmBatch};
use hone::train::trainer::Objective;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

/// The fixtures' batch (its second row right-padded) and transformers' load-balancing loss.
fn reference(name: &str) -> (Vec<Vec<u32>>, f64) {
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("reference.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(r["input_ids"].clone()).unwrap();
    let mask: Vec<Vec<u32>> = serde_json::from_value(r["attention_mask"].clone()).unwrap();
    let rows = ids
        .into_iter()
        .zip(mask)
        .map(|(ids, m)| {
            ids.into_iter()
                .zip(m)
                .filter(|(_, m)| *m == 1)
                .map(|(t, _)| t)
                .collect()
        })
        .collect();
    (rows, r["aux_loss"].as_f64().unwrap())
}

fn load(name: &str, device: &Device) -> Backbone {
    load_hf_dir(&fixture(name), device).unwrap().model.backbone
}

/// Layer `layer`'s sparse block, of a Qwen3-MoE (a Llama-family model) or a gpt-oss.
fn sparse_block(model: &Backbone, layer: usize) -> &moe::SparseMoe {
    match model {
        Backbone::Llama(m) => match &m.layers[layer].mlp {
            llama::Mlp::Sparse(moe) => moe,
            llama::Mlp::Dense(_) => panic!("layer {layer} is dense"),
        },
        Backbone::GptOss(m) => &m.layers[layer].mlp,
        _ => panic!("not a mixture of experts"),
    }
}

fn router(model: &Backbone, layer: usize) -> Vec<f32> {
    to_vec(sparse_block(model, layer).gate.weight.val())
}

/// Over the padded batch, the sparse layers' routings give transformers' `aux_loss` (padding
/// left out), for renormalised and plain top-k alike, and for gpt-oss's router (top logits
/// softmaxed; the loss counts its softmax over every expert, as transformers').
#[test]
fn the_load_balancing_loss_matches_transformers() {
    for name in ["qwen3_moe", "qwen3_moe-step2", "gpt_oss"] {
        let device = Device::flex().autodiff();
        let model = load(name, &device);
        let (rows, want) = reference(name);
        let batch = LmBatch::from_sequences(&rows, &device);
        let (_, routings) =
            moe::with_routings(|| model.hidden(batch.ids.clone(), Some(batch.padding.clone())));
        let sparse = if name == "qwen3_moe-step2" { 1 } else { 2 };
        assert_eq!(
            routings.len(),
            sparse,
            "{name}: one routing per sparse layer"
        );
        let real: Vec<bool> = batch.padding.clone().into_data().try_to_vec().unwrap();
        let got = to_vec(moe::load_balancing_loss(&routings, &real).unwrap())[0] as f64;
        assert!(
            (got - want).abs() < 1e-5,
            "{name}: aux {got} vs transformers {want}"
        );
    }
}

/// Full fine-tuning adds `router_aux_loss_coef * aux` per target to the causal LM loss and
/// trains the routers with it; LoRA (routers frozen) adds nothing. Twenty AdamW steps on one
/// batch lower the loss and move the router and the experts.
#[test]
fn full_fine_tuning_adds_the_router_loss_and_learns() {
    let device = Device::flex().autodiff();
    device.seed(11);
    let (rows, aux) = reference("qwen3_moe");
    let batch = LmBatch::from_sequences(&rows, &device);
    let model = load("qwen3_moe", &device);
    let lm = model.language_model().unwrap();
    assert_eq!(lm.router_aux_loss_coef(), Some(0.01));
    let with_aux = to_vec(CausalLm.loss_sum(&model, &batch))[0] as f64;
    let hidden = lm.hidden(batch.ids.clone(), Some(batch.padding.clone()));
    let nll = lm.next_token_nll_at(hidden, batch.ids.clone(), 1.0, &batch.target_rows);
    let plain = to_vec(hone::train::loss::masked_target_sum(
        nll,
        batch.target_mask.clone(),
    ))[0] as f64;
    let added = 0.01 * aux * batch.targets();
    assert!(
        (with_aux - plain - added).abs() < 1e-4,
        "loss {with_aux} = nll {plain} + {added} expected"
    );

    let (adapted, _) = lora::apply(
        load("qwen3_moe", &device),
        &lora::LoraConfig::default(),
        &device,
    )
    .unwrap();
    assert_eq!(
        adapted.language_model().unwrap().router_aux_loss_coef(),
        None,
        "LoRA leaves the router frozen"
    );
    // Evaluation (no autodiff) measures the language model alone.
    let inference = load("qwen3_moe", &Device::flex());
    assert_eq!(
        inference.language_model().unwrap().router_aux_loss_coef(),
        None,
        "nothing trains here"
    );

    let (router_before, experts_before) = (router(&model, 0), expert_weight(&model));
    let (model, losses) = train(model, &batch, 20, 3e-3);
    assert!(
        losses[19] < losses[0] - 0.5,
        "loss {} -> {}",
        losses[0],
        losses[19]
    );
    assert_ne!(router(&model, 0), router_before, "the router trained");
    assert_ne!(expert_weight(&model), experts_before, "the experts trained");
}

/// `steps` AdamW steps of the causal LM loss (per target) on `batch` at `lr`: the trained
/// model and each step's loss.
fn train(mut model: Backbone, batch: &LmBatch, steps: usize, lr: f64) -> (Backbone, Vec<f32>) {
    let mut optim = hone::train::optim::adamw().init();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let loss = CausalLm.loss_sum(&model, batch) / batch.targets();
        losses.push(to_vec(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr, model, grads);
    }
    (model, losses)
}

/// Expert 0's fused gate/up weight in layer 0.
fn expert_weight(model: &Backbone) -> Vec<f32> {
    to_vec(sparse_block(model, 0).experts[0].gate_up_proj.weight.val())
}

/// LoRA on attention and on every expert (PEFT's `target_parameters`) learns, with the base
/// in f32 and with its projections, experts included, held in NF4 (QLoRA); the router stays
/// f32 and frozen either way. On a Qwen3-MoE (3 layers, 2 sparse, 8 experts) and a gpt-oss
/// (2 layers, 4 experts with biases).
#[test]
fn lora_and_qlora_on_the_experts_learn() {
    let cases = [
        ("qwen3_moe", 3 * 2 + 2 * 8 * 2, false),
        ("qwen3_moe", 3 * 2 + 2 * 8 * 2, true),
        ("gpt_oss", 2 * 2 + 2 * 4 * 2, false),
        ("gpt_oss", 2 * 2 + 2 * 4 * 2, true),
    ];
    for (name, adapters, quantized) in cases {
        let device = Device::flex().autodiff();
        device.seed(5);
        let cfg = lora::LoraConfig {
            r: 4,
            alpha: 8.0,
            target_modules: Some(vec!["q_proj".into(), "v_proj".into()]),
            target_parameters: Some(vec![
                "mlp.experts.gate_up_proj".into(),
                "mlp.experts.down_proj".into(),
            ]),
            ..Default::default()
        };
        let (mut model, adapted) = lora::apply(load(name, &device), &cfg, &device).unwrap();
        assert_eq!(
            adapted.len(),
            adapters,
            "{name}: q and v, and the experts' two weights"
        );
        if quantized {
            for (path, proj) in model.projections_mut() {
                proj.quantize(hone::model::quantized::QuantFormat::Nf4)
                    .unwrap_or_else(|e| panic!("{path}: {e}"));
            }
        }
        let (rows, _) = reference(name);
        let batch = LmBatch::from_sequences(&rows, &device);
        let router_before = router(&model, 0);
        let (model, losses) = train(model, &batch, 10, 1e-2);
        assert!(
            losses[9] < losses[0] - 1.0,
            "{name}, quantized {quantized}: loss {} -> {}",
            losses[0],
            losses[9]
        );
        assert_eq!(router(&model, 0), router_before, "the router stays frozen");
        let moe = sparse_block(&model, 0);
        assert_eq!(moe.experts[0].down_proj.quantized.is_some(), quantized);
        assert!(moe.gate.quantized.is_none());
    }
}

/// A character vocabulary of `n` ids for the 100-token fixtures: the printable ASCII
/// characters, space, newline, `<unk>`, unused fillers, the last id `<|endoftext|>`.
fn char_tokenizer(n: usize) -> tokenizers::Tokenizer {
    use tokenizers::models::wordlevel::WordLevel;
    let mut chars = (b'!'..=b'~')
        .map(|c| char::from(c).to_string())
        .chain([" ", "\n", "<unk>"].map(String::from));
    let vocab = (0..n as u32 - 1)
        .map(|i| (chars.next().unwrap_or_else(|| format!("<unused{i}>")), i))
        .chain([("<|endoftext|>".to_owned(), n as u32 - 1)])
        .collect();
    let model = WordLevel::builder()
        .vocab(vocab)
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::split::Split::new(
            "",
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .unwrap(),
    ));
    tok.with_decoder(Some(tokenizers::decoders::fuse::Fuse::new()));
    tok.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
    tok
}

/// A project holding fixture `name` as model directory `dir` with `tokenizer`, and
/// `sums.jsonl`: 48 sums of two digits (`3+4=` -> `7`).
fn sums_project(name: &str, dir: &str, tokenizer: tokenizers::Tokenizer) -> crate::common::Project {
    let p = crate::common::Project::new();
    std::fs::create_dir_all(p.path(dir)).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), p.path(dir).join(f)).unwrap();
    }
    tokenizer
        .save(p.path(&format!("{dir}/tokenizer.json")), false)
        .unwrap();
    let rows: String = (0..48)
        .map(|i| {
            let (a, b) = (i % 7, i / 7);
            format!(
                "{{\"prompt\": \"{a}+{b}=\", \"response\": \"{}\"}}\n",
                a + b
            )
        })
        .collect();
    p.write("sums.jsonl", &rows);
    p
}

/// Through the CLI, a recipe fine-tunes a Qwen3-MoE checkpoint with LoRA on attention and on
/// its experts: the stage trains (its loss falls), its adapter's config names the experts'
/// fused weights in `target_parameters`, and a later stage reads the layered model back.
#[test]
fn a_recipe_fine_tunes_a_qwen3_moe_with_lora_on_its_experts() {
    let p = sums_project("qwen3_moe", "moe", char_tokenizer(100));
    p.write(
        "r.yaml",
        r#"version: 1
name: moe
seed: 3
stages:
  sums:
    kind: dataset
    source: { path: sums.jsonl }
    split: { validation: 0.25 }
  sft:
    kind: sft
    model: { path: moe }
    data: { from: sums }
    max_length: 16
    peft:
      method: lora
      r: 8
      alpha: 16
      target_modules: [q_proj, v_proj]
      target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]
    train: { epochs: 6, batch_size: 8, lr: 1.0e-2 }
  answers:
    kind: generate
    model: { from: sft }
    prompts: { from: sums.validation }
    sampling: { max_new_tokens: 2 }
"#,
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "sft"]).ok();
    let (first, last) = (
        crate::common::metric(&show, "train_loss_first"),
        crate::common::metric(&show, "train_loss_last"),
    );
    assert!(last < first - 1.0, "loss {first} -> {last}:\n{show}");
    p.write(
        "out.yaml",
        &format!(
            "{}  out:\n    kind: export\n    model: {{ from: sft.adapter }}\n    to: dist/adapter\n",
            std::fs::read_to_string(p.path("r.yaml")).unwrap()
        ),
    );
    p.hone(&["run", "out.yaml"]).ok();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("dist/adapter/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["target_parameters"],
        serde_json::json!(["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]),
        "{config}"
    );
}

/// Through the CLI, QLoRA on a gpt-oss whose experts are MXFP4 (as released; held in their
/// blocks, `model_parity::gpt_oss_keeps_its_mxfp4_experts_under_qlora`): attention and the
/// experts are adapted and the loss falls, and the model exports as a `q4_k_m` GGUF in
/// llama.cpp's `gpt-oss` layout (experts MXFP4 again, routers F32), which hone reads back.
#[test]
fn a_recipe_fine_tunes_an_mxfp4_gpt_oss_with_qlora_and_exports_gguf() {
    // A byte-level BPE: GGUF vocabularies are BPE.
    let p = sums_project("gpt_oss-mxfp4", "oss", crate::common::tiny_tokenizer(100));
    p.write(
        "r.yaml",
        r#"version: 1
name: oss
seed: 3
stages:
  sums:
    kind: dataset
    source: { path: sums.jsonl }
  sft:
    kind: sft
    model: { path: oss }
    data: { from: sums }
    max_length: 16
    peft:
      method: qlora
      r: 8
      alpha: 16
      target_modules: [q_proj, v_proj]
      target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]
    train: { epochs: 6, batch_size: 8, lr: 1.0e-2 }
  gguf:
    kind: export
    model: { from: sft }
    to: dist
    format: gguf
    quant: q4_k_m
"#,
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "sft"]).ok();
    let (first, last) = (
        crate::common::metric(&show, "train_loss_first"),
        crate::common::metric(&show, "train_loss_last"),
    );
    assert!(last < first - 0.5, "loss {first} -> {last}:\n{show}");
    let gguf = std::fs::read_dir(p.path("dist"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| f.extension().is_some_and(|e| e == "gguf"))
        .expect("a .gguf in dist");
    let g = hone::model::gguf::Gguf::open(&gguf).unwrap();
    let types = |suffix: &str| -> Vec<String> {
        g.tensors
            .iter()
            .filter(|t| t.name.ends_with(suffix))
            .map(|t| hone::model::ggml_quants::type_name(t.ggml_type))
            .collect()
    };
    assert_eq!(types("_exps.weight"), vec!["MXFP4"; 6]);
    assert_eq!(types("ffn_gate_inp.weight"), vec!["F32"; 2]);
    let back = hone::model::load(&gguf, &Device::flex()).unwrap();
    assert_eq!(back.config["model_type"], "gpt_oss");
}

/// Released Qwen3-MoE configs name the expert count `num_experts`, transformers 5 writes
/// `num_local_experts`, and a config may hold both: each loads to the same model.
#[test]
fn either_name_of_the_expert_count_loads() {
    let device = Device::flex();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("qwen3_moe").join("config.json")).unwrap())
            .unwrap();
    let ids = Tensor::<2, Int>::from_data([[5, 17, 42, 8]], &device);
    let logits = |m: &Backbone| to_vec(m.lm_logits(m.hidden(ids.clone(), None)).unwrap());
    let want = logits(&load("qwen3_moe", &device));
    let mut released = config.clone();
    let count = released
        .as_object_mut()
        .unwrap()
        .remove("num_local_experts")
        .unwrap();
    released["num_experts"] = count;
    let mut both = config.clone();
    both["num_experts"] = both["num_local_experts"].clone();
    for config in [released, both] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        std::fs::copy(
            fixture("qwen3_moe").join("model.safetensors"),
            dir.path().join("model.safetensors"),
        )
        .unwrap();
        let model = load_hf_dir(dir.path(), &device).unwrap().model.backbone;
        assert_eq!(logits(&model), want, "{config}");
    }
}
