//! The `export` stage's HF form beyond a copy: weights written back in the dtype the model came
//! in (hone trains and stores in f32), in shards with an index above `max_shard_size`.

use burn::prelude::*;
use hone::model::{load_hf_dir, save_hf_dir, to_vec};

use crate::common::Project;

/// A bf16 checkpoint, saved by hone in f32 (as every trained model is), exports as bf16 again,
/// in shards of at most 40 KB with `model.safetensors.index.json` and `dtype: bfloat16`: the
/// layout transformers writes and reads, holding exactly the original weights.
#[test]
fn an_export_writes_the_source_dtype_in_shards() {
    let device = Device::flex();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/qwen3-sharded-bf16");
    let original = load_hf_dir(&src, &device).unwrap();
    assert_eq!(original.config[hone::model::SOURCE_DTYPE], "bfloat16");
    let p = Project::new();
    save_hf_dir(
        &original.model,
        &original.config,
        None,
        None,
        &p.path("trained"),
    )
    .unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p.path("trained/config.json")).unwrap()).unwrap();
    assert_eq!(stored["dtype"], "float32", "hone keeps its own copy in f32");
    p.write(
        "export.yaml",
        "version: 1\nname: ex\nstages:\n  out:\n    kind: export\n    model: { path: trained }\n    to: dist/qwen3\n    max_shard_size: 40KB\n",
    );
    p.hone(&["run", "export.yaml"]).ok();
    let out = p.path("dist/qwen3");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert_eq!(config["torch_dtype"], "bfloat16");
    assert!(config.get(hone::model::SOURCE_DTYPE).is_none());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(shards.len() >= 2, "{shards:?}");
    for shard in &shards {
        let size = std::fs::metadata(out.join(shard)).unwrap().len();
        assert!(size <= 41_000, "{shard} is {size} bytes");
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("model.safetensors.index.json"), "{card}");
    // The same weights: bf16 values survive f32 and back exactly.
    let back = load_hf_dir(&out, &device).unwrap();
    let ids = Tensor::<2, Int>::from_data(
        burn::tensor::TensorData::new(vec![5i64, 17, 42, 8], [1, 4]),
        &device,
    );
    let logits = |m: &hone::model::HfModel| {
        let h = m.model.backbone.hidden(ids.clone(), None);
        to_vec(m.model.backbone.lm_logits(h).unwrap())
    };
    assert_eq!(logits(&back), logits(&original));

    // A size that is not one is refused before anything runs.
    p.write(
        "bad.yaml",
        "version: 1\nname: bad\nstages:\n  out:\n    kind: export\n    model: { path: trained }\n    to: dist/x\n    max_shard_size: lots\n",
    );
    let bad = p.hone(&["run", "bad.yaml"]);
    assert_eq!(bad.code(), 2, "{}", bad.stderr());
    assert!(bad.stderr().contains("is not a size"), "{}", bad.stderr());
}

/// A trained model serves as it was trained: its export carries the chat template of the
/// stage that trained it (a template of the recipe's own here, carried on through a DPO stage
/// that says `template: model`), the end-of-turn token among the generation config's EOS ids;
/// rendering the exported template gives the prompt hone trained on, and `hone generate` on
/// the exported directory answers as it does on the recipe's stage. The LoRA adapter exports
/// as a PEFT directory with its tokenizer.
#[test]
fn exports_carry_the_trained_chat_template_and_adapters_export_for_peft() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    let p = Project::new();
    // A template of the recipe's own: turns as `### {role}: {content}<|im_end|>`.
    let jinja = "{% for m in messages %}{{ '### ' + m['role'] + ': ' + m['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}";
    p.write(
        "r.yaml",
        &format!(
            r#"version: 1
name: serve
seed: 4
stages:
  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
  qa:
    kind: dataset
    source: {{ path: {d}/qa.jsonl }}
    columns: {{ question: prompt, answer: response }}
    split: {{ validation: 0.1 }}
  prefs:
    kind: dataset
    source: {{ path: {d}/preferences.jsonl }}
    split: {{ validation: 0.2 }}
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 400
    special_tokens: ["<|im_end|>"]
  sft:
    kind: sft
    template: {{ jinja: "{jinja}", end_of_turn: "<|im_end|>" }}
    model: {{ init: {{ arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 128 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: qa }}
    max_length: 96
    peft: {{ method: lora, r: 4, alpha: 8, target_modules: [c_attn] }}
    train: {{ epochs: 2, batch_size: 8, lr: 1.0e-2 }}
  dpo:
    kind: dpo
    template: model
    model: {{ from: sft }}
    data: {{ from: prefs }}
    max_length: 96
    train: {{ epochs: 1, batch_size: 8, lr: 1.0e-3 }}
  model_out:
    kind: export
    model: {{ from: dpo }}
    to: dist/model
  adapter_out:
    kind: export
    model: {{ from: sft.adapter }}
    to: dist/adapter
  unmerged_out:
    kind: export
    model: {{ from: sft }}
    merge: false
    to: dist/unmerged
  f16_out:
    kind: export
    model: {{ from: dpo }}
    dtype: f16
    to: dist/model-f16
"#,
            d = corpus.display(),
            jinja = jinja.replace('"', "\\\""),
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();

    let json = |rel: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.path(rel)).unwrap()).unwrap()
    };
    let tc = json("dist/model/tokenizer_config.json");
    assert_eq!(tc["chat_template"], jinja.replace("\\n", "\n"), "{tc}");
    assert_eq!(tc["tokenizer_class"], "PreTrainedTokenizerFast");
    let template = hone::model::chat::ChatTemplate::new(
        tc["chat_template"].as_str().unwrap(),
        "",
        tc["eos_token"].as_str().unwrap(),
    );
    let q = "What does the alternator do?";
    assert_eq!(
        template
            .render(&[hone::model::chat::Message::new("user", q)], true)
            .unwrap(),
        format!("### user: {q}<|im_end|>\n### assistant: ")
    );
    let tok = tokenizers::Tokenizer::from_file(p.path("dist/model/tokenizer.json")).unwrap();
    let end = tok.token_to_id("<|im_end|>").unwrap();
    for key in ["eos_token", "pad_token"] {
        assert!(
            tok.token_to_id(tc[key].as_str().unwrap()).is_some(),
            "{key}: {tc}"
        );
    }
    let gc = json("dist/model/generation_config.json");
    let eos: Vec<u64> = match &gc["eos_token_id"] {
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_u64()).collect(),
        v => v.as_u64().into_iter().collect(),
    };
    assert!(eos.contains(&(end as u64)), "{gc}");
    assert_eq!(gc["do_sample"], false);
    let card = std::fs::read_to_string(p.path("dist/model/README.md")).unwrap();
    assert!(
        card.contains("AutoModelForCausalLM") && card.contains("apply_chat_template"),
        "{card}"
    );

    let from_dir = p
        .hone(&[
            "generate",
            "--model",
            "dist/model",
            "--prompt",
            q,
            "--max-new-tokens",
            "12",
        ])
        .ok();
    let from_recipe = p
        .hone(&[
            "generate",
            "--model",
            "r.yaml:dpo",
            "--prompt",
            q,
            "--max-new-tokens",
            "12",
        ])
        .ok();
    assert_eq!(from_dir, from_recipe);

    let adapter = p.path("dist/adapter");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    ] {
        assert!(
            adapter.join(file).is_file(),
            "the adapter export lacks {file}"
        );
    }
    assert!(!adapter.join("config.json").exists());
    let card = std::fs::read_to_string(adapter.join("README.md")).unwrap();
    assert!(
        card.contains("PeftModel.from_pretrained") && card.contains("r 4, alpha 8"),
        "{card}"
    );
    assert_eq!(
        json("dist/adapter/tokenizer_config.json")["chat_template"],
        tc["chat_template"]
    );

    // `merge: false` on the LoRA stage exports the same adapter as naming its `adapter` output.
    assert_eq!(
        std::fs::read(p.path("dist/unmerged/adapter_model.safetensors")).unwrap(),
        std::fs::read(adapter.join("adapter_model.safetensors")).unwrap()
    );
    assert!(!p.path("dist/unmerged/config.json").exists());
    // `dtype: f16` writes the weights in f16, which load back near the f32 model.
    assert_eq!(json("dist/model-f16/config.json")["dtype"], "float16");
    let header = |dir: &str| {
        let bytes = std::fs::read(p.path(dir).join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n]).unwrap()
    };
    let h = header("dist/model-f16");
    let dtypes: std::collections::BTreeSet<&str> = h
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| v["dtype"].as_str().unwrap())
        .collect();
    assert_eq!(dtypes, ["F16"].into_iter().collect());
    let device = Device::flex();
    let ids = Tensor::<2, Int>::from_data(
        burn::tensor::TensorData::new(vec![5i64, 17, 42, 8], [1, 4]),
        &device,
    );
    let logits = |dir: &str| {
        let m = load_hf_dir(&p.path(dir), &device).unwrap();
        let h = m.model.backbone.hidden(ids.clone(), None);
        to_vec(m.model.backbone.lm_logits(h).unwrap())
    };
    let (full, half) = (logits("dist/model"), logits("dist/model-f16"));
    let worst = full
        .iter()
        .zip(&half)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst > 0.0 && worst < 0.05,
        "f16 export against f32: {worst}"
    );

    // `merge: false` on a stage that trained no adapter says so.
    p.write(
        "bad.yaml",
        &std::fs::read_to_string(p.path("r.yaml")).unwrap().replace(
            "model: { from: sft }\n    merge: false",
            "model: { from: dpo }\n    merge: false",
        ),
    );
    let bad = p.hone(&["run", "bad.yaml", "--only", "unmerged_out"]);
    assert_ne!(bad.code(), 0);
    assert!(
        bad.stderr().contains("trained no adapter")
            && bad.stderr().contains("remove `merge: false`"),
        "{}",
        bad.stderr()
    );
}
