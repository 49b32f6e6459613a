//! Golden parity with transformers: tiny random-weight checkpoints (made by
//! scripts/make_model_fixtures.py) loaded by hone give the reference outputs for a padded batch.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use hone::model::{Backbone, load_hf_dir, save_hf_dir, to_vec};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

struct Reference {
    json: serde_json::Value,
}

impl Reference {
    fn load(name: &str) -> Reference {
        let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
        Reference {
            json: serde_json::from_str(&text).unwrap(),
        }
    }
    fn ints(&self, key: &str, device: &Device) -> Tensor<2, Int> {
        let rows: Vec<Vec<i64>> = serde_json::from_value(self.json[key].clone()).unwrap();
        let (b, s) = (rows.len(), rows[0].len());
        Tensor::from_data(burn::tensor::TensorData::new(rows.concat(), [b, s]), device)
    }
    fn mask(&self) -> Vec<Vec<i64>> {
        serde_json::from_value(self.json["attention_mask"].clone()).unwrap()
    }
    fn floats(&self, key: &str) -> Vec<f32> {
        fn flat(v: &serde_json::Value, out: &mut Vec<f32>) {
            match v {
                serde_json::Value::Array(items) => items.iter().for_each(|i| flat(i, out)),
                serde_json::Value::Number(n) => out.push(n.as_f64().unwrap() as f32),
                _ => panic!("not a number"),
            }
        }
        let mut out = Vec::new();
        flat(&self.json[key], &mut out);
        out
    }
}

/// Max |a - b| over the positions the attention mask marks as real tokens.
fn max_diff_on_tokens(got: &[f32], want: &[f32], mask: &[Vec<i64>], width: usize) -> f32 {
    assert_eq!(got.len(), want.len(), "output sizes differ");
    let s = mask[0].len();
    let mut worst = 0.0f32;
    for (b, row) in mask.iter().enumerate() {
        for (t, &m) in row.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let off = (b * s + t) * width;
            for k in 0..width {
                worst = worst.max((got[off + k] - want[off + k]).abs());
            }
        }
    }
    worst
}

fn decoder_parity(name: &str) {
    let device = Device::flex();
    let model = load_hf_dir(&fixture(name), &device).unwrap();
    decoder_matches(name, model);
}

/// `model` gives fixture `name`'s reference hidden states and logits, and saving and loading it
/// again changes neither.
fn decoder_matches(name: &str, model: hone::model::HfModel) {
    let device = Device::flex();
    assert!(
        model.unused_weights.is_empty(),
        "unused weights: {:?}",
        model.unused_weights
    );
    let reference = Reference::load(name);
    let ids = reference.ints("input_ids", &device);
    let padding = reference.ints("attention_mask", &device).equal_elem(1);
    let hidden = model
        .model
        .backbone
        .hidden(ids.clone(), Some(padding.clone()));
    let d = hidden.dims()[2];
    let logits = model.model.backbone.lm_logits(hidden.clone()).unwrap();
    let vocab = logits.dims()[2];
    let mask = reference.mask();
    let dh = max_diff_on_tokens(&to_vec(hidden), &reference.floats("last_hidden"), &mask, d);
    let dl = max_diff_on_tokens(
        &to_vec(logits.clone()),
        &reference.floats("logits"),
        &mask,
        vocab,
    );
    assert!(
        dh <= 1e-4 && dl <= 1e-4,
        "{name}: max abs diff hidden {dh:e}, logits {dl:e}"
    );

    // Saved by hone, loaded again: identical outputs.
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(&model.model, &model.config, None, None, dir.path()).unwrap();
    let again = load_hf_dir(dir.path(), &device).unwrap();
    let h2 = again.model.backbone.hidden(ids, Some(padding));
    let l2 = again.model.backbone.lm_logits(h2).unwrap();
    assert_eq!(
        to_vec(l2),
        to_vec(logits),
        "{name}: save + load changed the outputs"
    );
    // transformers picks the class from `architectures`: the family's own.
    assert_eq!(
        again.config["architectures"], model.config["architectures"],
        "{name}: saved as another class"
    );
}

#[test]
fn gpt2_matches_transformers() {
    decoder_parity("gpt2");
}

#[test]
fn llama_with_gqa_matches_transformers() {
    decoder_parity("llama");
}

/// Llama 3's rotary scaling and the others transformers implements, attention biases, the
/// Llama-architecture families Qwen2 and Qwen3, Gemma 3, Mistral's sliding window, Gemma 2's
/// soft-capping, and Phi-3 / Phi-4-mini (fused projections, partial rotary, LongRoPE's short
/// and long factors), from transformers 5, whose configs carry `rope_parameters`.
#[test]
fn llama_families_and_rotary_scalings_match_transformers() {
    for name in [
        "llama3-rope",
        "llama-yarn",
        "llama-dynamic",
        "llama-linear-bias",
        "qwen2",
        "qwen3",
        "qwen3-sharded-bf16",
        "gemma3",
        "mistral-window",
        "gemma2",
        "phi3",
        "phi4-mini",
        "gemma2-gguf",
        "gemma3-gguf",
    ] {
        decoder_parity(name);
    }
}

/// The dense families of 2025-26 that run on Llama's layers: SmolLM3 (NoPE layers, a window
/// of 3 on them, tied embeddings) and OLMo 2 (norms after attention and the MLP, q and k
/// normalised over all heads, attention biases), from transformers 5; each also stored as bf16
/// shards, as released checkpoints are.
#[test]
fn smollm3_and_olmo2_match_transformers() {
    for name in [
        "smollm3",
        "olmo2",
        "smollm3-sharded-bf16",
        "olmo2-sharded-bf16",
        "smollm3-gguf",
        "olmo2-gguf",
    ] {
        decoder_parity(name);
    }
}

/// Qwen3-MoE: attention as Qwen3's, and in the sparse layers a router sending each token to
/// its top 2 of 8 experts (renormalised, or not, as `norm_topk_prob` says), a dense layer among
/// them by `mlp_only_layers` or `decoder_sparse_step`, and bf16 shards; saved again with each
/// expert's projections apart, as transformers writes them.
#[test]
fn qwen3_moe_matches_transformers() {
    for name in [
        "qwen3_moe",
        "qwen3_moe-step2",
        "qwen3_moe-gguf",
        "qwen3_moe-sharded-bf16",
    ] {
        decoder_parity(name);
    }
}

/// StarCoder2, a family of its own block in the shared decoder stack: LayerNorms and every
/// projection with biases, a GELU MLP, a window shorter than the batch on every layer, tied
/// embeddings; and as bf16 shards.
#[test]
fn starcoder2_matches_transformers() {
    for name in ["starcoder2", "starcoder2-sharded-bf16"] {
        decoder_parity(name);
    }
}

/// gpt-oss: attention sinks, sliding and full layers in turn, YaRN without truncation, a
/// router with a bias softmaxing its top logits, experts with biases and the clamped,
/// interleaved SwiGLU (clamping in earnest), fused expert weights cut per expert and stacked
/// again when saved; and as bf16 shards.
#[test]
fn gpt_oss_matches_transformers() {
    for name in ["gpt_oss", "gpt_oss-sharded-bf16", "gpt_oss-mxfp4"] {
        decoder_parity(name);
    }
}

/// gpt-oss's released expert weights are MXFP4 (`_blocks`, `_scales`): dequantised they give
/// what transformers computes after dequantising them itself (above). Under QLoRA they stay
/// in their 4-bit blocks (17 bytes per 32 values, whatever `quant:` asks for the other
/// projections), and those blocks hold exactly the dequantised weights.
#[test]
fn gpt_oss_keeps_its_mxfp4_experts_under_qlora() {
    let device = Device::flex();
    let frozen = hone::model::Frozen {
        keep: Vec::new(),
        quantize: Some(hone::model::quantized::QuantFormat::Nf4),
    };
    let mut held = hone::model::load_keeping(&fixture("gpt_oss-mxfp4"), &device, &frozen)
        .unwrap()
        .model
        .backbone;
    let mut dense = load_hf_dir(&fixture("gpt_oss-mxfp4"), &device)
        .unwrap()
        .model
        .backbone;
    let dense: std::collections::HashMap<String, Vec<f32>> = dense
        .projections_mut()
        .into_iter()
        .map(|(path, proj)| (path, to_vec(proj.weight.val())))
        .collect();
    let mut formats = std::collections::BTreeMap::<String, usize>::new();
    for (path, proj) in held.projections_mut() {
        let q = proj
            .quantized
            .as_ref()
            .unwrap_or_else(|| panic!("{path} is not held quantised"));
        *formats.entry(q.format()).or_default() += 1;
        if path.contains(".experts.") {
            let values = &dense[&path];
            assert_eq!(q.bytes(), values.len() / 32 * 17, "{path}");
            assert_eq!(&to_vec(proj.dense_weight()), values, "{path}");
        }
    }
    assert_eq!(
        formats,
        [("MXFP4".to_owned(), 2 * 4 * 2), ("nf4".to_owned(), 2 * 4)].into(),
        "the experts in their blocks, attention quantised as asked"
    );
}

/// A multimodal Gemma 3 checkpoint (`Gemma3ForConditionalGeneration`): hone runs its text
/// decoder to transformers' logits on text, leaves the vision tower unread, and saves the
/// decoder as a `Gemma3ForCausalLM`.
#[test]
fn the_text_decoder_of_a_multimodal_gemma3_matches_transformers() {
    let mut model = load_hf_dir(&fixture("gemma3-multimodal"), &Device::flex()).unwrap();
    assert_eq!(model.config["model_type"], "gemma3_text");
    assert!(!model.unused_weights.is_empty());
    for name in std::mem::take(&mut model.unused_weights) {
        // Saved as `vision_tower.` (as released checkpoints have it) or `model.vision_tower.`.
        let part = name.strip_prefix("model.").unwrap_or(&name);
        assert!(
            part.starts_with("vision_tower.") || part.starts_with("multi_modal_projector."),
            "{name} is not part of the vision tower"
        );
    }
    decoder_matches("gemma3-multimodal", model);
}

/// Fixtures written as GGUF files by the `gguf` package in llama.cpp's layout (q and k as HF has
/// them, biases and per-head norms under llama.cpp's names; transformers reads qwen2.gguf back
/// exactly): hone reads them to the same outputs as the HF directories.
///
/// A qwen3moe file stacks each layer's experts (`ffn_gate_exps` `[experts, width, d]`); hone
/// reads them one by one, to the Qwen3-MoE's outputs. A smollm3 file holds q and k permuted as
/// llama.cpp's converter permutes Llama's, and no rotation in every fourth layer (llama.cpp's
/// fixed step); an olmo2 file its norms after attention and the MLP (`attn_post_norm`,
/// `ffn_post_norm`).
#[test]
fn llama_family_gguf_files_match_their_hf_checkpoints() {
    for (name, model_type) in [
        ("qwen2", "qwen2"),
        ("qwen3", "qwen3"),
        ("qwen3_moe-gguf", "qwen3_moe"),
        ("smollm3-gguf", "smollm3"),
        ("olmo2-gguf", "olmo2"),
    ] {
        let path = fixture(&format!("{name}.gguf"));
        let model = hone::model::load(&path, &Device::flex()).unwrap();
        assert_eq!(model.config["model_type"], model_type);
        decoder_matches(name, model);
    }
}

/// gpt_oss-mxfp4 as llama.cpp's converter writes a released gpt-oss (by the `gguf` package):
/// MXFP4 experts repacked into ggml's blocks, gate and up apart, sinks, router with its bias.
/// hone reads it to the HF checkpoint's outputs, the experts still MXFP4 when held for QLoRA.
#[test]
fn a_gpt_oss_gguf_file_matches_its_hf_checkpoint() {
    let path = fixture("gpt_oss-mxfp4.gguf");
    let model = hone::model::load(&path, &Device::flex()).unwrap();
    assert_eq!(model.config["model_type"], "gpt_oss");
    decoder_matches("gpt_oss-mxfp4", model);
    let frozen = hone::model::Frozen {
        keep: Vec::new(),
        quantize: Some(hone::model::quantized::QuantFormat::Q8_0),
    };
    let mut held = hone::model::load_keeping(&path, &Device::flex(), &frozen).unwrap();
    let experts: Vec<String> = held
        .model
        .backbone
        .projections_mut()
        .into_iter()
        .filter(|(path, _)| path.contains(".experts."))
        .map(|(_, proj)| {
            proj.quantized
                .as_ref()
                .map(|q| q.format())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(experts, vec!["MXFP4"; 2 * 4 * 2]);

    // Exported as `q4_k_m`, its experts are MXFP4 (6 stacks: gate, up, down of 2 layers), the
    // router and the biases F32; MXFP4 values quantise to themselves, so they read back as
    // the HF checkpoint's.
    use hone::model::gguf_write::{GgufQuant, write_gguf};
    let hf = load_hf_dir(&fixture("gpt_oss-mxfp4"), &Device::flex()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("gpt_oss-Q4_K_M.gguf");
    let written = write_gguf(
        &hf.model,
        &hf.config,
        &crate::common::tiny_tokenizer(100),
        None,
        "gpt_oss",
        GgufQuant::Q4KM,
        &out,
    )
    .unwrap();
    assert_eq!(written.tensor_types.get("MXFP4"), Some(&6));
    let expert_weights = |mut backbone: hone::model::Backbone| -> Vec<(String, Vec<f32>)> {
        let mut experts: Vec<(String, Vec<f32>)> = backbone
            .projections_mut()
            .into_iter()
            .filter(|(path, _)| path.contains(".experts."))
            .map(|(path, proj)| (path, to_vec(proj.dense_weight())))
            .collect();
        experts.sort_by(|a, b| a.0.cmp(&b.0));
        experts
    };
    let back = hone::model::load(&out, &Device::flex()).unwrap();
    assert_eq!(
        expert_weights(back.model.backbone),
        expert_weights(hf.model.backbone)
    );
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`, as Llama 2 and Mistral GGUFs
/// carry) with scores, byte tokens, a control and a user-defined token: hone rebuilds the
/// tokenizer that cuts texts as transformers does reading the same file (BOS added, a space
/// before the first word, byte fallback for characters the vocabulary lacks), and decodes back.
#[test]
fn sentencepiece_gguf_tokenizer_matches_transformers() {
    let g = hone::model::gguf::Gguf::open(&fixture("spm-llama.gguf")).unwrap();
    let tok = hone::model::gguf_tokenizer::build(&g)
        .unwrap()
        .expect("a llama vocabulary is rebuilt");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("spm-llama.json")).unwrap()).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, true).unwrap().get_ids().to_vec();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want, "tokens of {text:?}");
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decoding {text:?}"
        );
    }
}

/// Tiny checkpoints of each family written as GGUF (llama.cpp's names and layouts: q/k rows
/// and biases permuted for `llama`, GPT-2's Conv1Ds transposed, Gemma's norms as 1 + w and
/// its soft-caps in the metadata, rotary scaling in the metadata, Phi-3's LongRoPE factors as
/// tensors) and read back by hone: within f16 rounding of transformers' logits at `f16`,
/// further at `q8_0`; the vocabulary, special tokens and chat template travel with it.
#[test]
fn gguf_exports_read_back_to_the_reference_outputs() {
    use hone::model::gguf_write::{GgufQuant, write_gguf};
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    // Tolerances relative to the largest reference logit: f16 rounding stays within 0.5% of it;
    // a misplaced layout moves logits by as much as they are (Q4_K_M's layouts are checked on
    // a real checkpoint, where its error is small: tests/it/real_checkpoints.rs).
    for (name, quant, tolerance) in [
        ("llama", GgufQuant::F16, 0.005),
        ("llama-linear-bias", GgufQuant::F16, 0.005),
        ("qwen3", GgufQuant::F16, 0.005),
        ("gpt2", GgufQuant::F16, 0.005),
        ("phi3", GgufQuant::F16, 0.005),
        ("phi4-mini", GgufQuant::F16, 0.005),
        ("gemma2-gguf", GgufQuant::F16, 0.005),
        ("gemma3-gguf", GgufQuant::F16, 0.005),
        ("qwen3_moe-gguf", GgufQuant::F16, 0.005),
        ("smollm3-gguf", GgufQuant::F16, 0.005),
        ("olmo2-gguf", GgufQuant::F16, 0.005),
        ("gpt_oss-mxfp4", GgufQuant::F16, 0.005),
        ("llama", GgufQuant::Q8_0, 0.08),
    ] {
        let model = load_hf_dir(&fixture(name), &device).unwrap();
        let vocab = model.config["vocab_size"].as_u64().unwrap() as usize;
        let tok = crate::common::tiny_tokenizer(vocab);
        let path = dir.path().join(format!("{name}-{}.gguf", quant.label()));
        let template = "{% for m in messages %}{{ m.content }}{% endfor %}";
        write_gguf(
            &model.model,
            &model.config,
            &tok,
            Some(template),
            name,
            quant,
            &path,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let back = hone::model::load(&path, &device).unwrap();
        assert_eq!(
            back.chat_template.as_ref().map(|t| t.source.as_str()),
            Some(template)
        );
        let tok_back = back.tokenizer.as_ref().expect("the vocabulary travels");
        assert_eq!(tok_back.get_vocab_size(true), vocab);
        let text = "Hi!<|endoftext|>";
        assert_eq!(
            tok_back.encode(text, false).unwrap().get_ids(),
            tok.encode(text, false).unwrap().get_ids()
        );
        let reference = Reference::load(name);
        let ids = reference.ints("input_ids", &device);
        let padding = reference.ints("attention_mask", &device).equal_elem(1);
        let hidden = back.model.backbone.hidden(ids, Some(padding));
        let logits = back.model.backbone.lm_logits(hidden).unwrap();
        let want = reference.floats("logits");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = max_diff_on_tokens(&to_vec(logits), &want, &reference.mask(), vocab);
        assert!(
            worst <= tolerance * scale,
            "{name} as {}: max abs logit difference {worst} (logits up to {scale})",
            quant.label()
        );
    }
    // What llama.cpp cannot run is refused with the reason: a score head, an attention scale
    // llama.cpp does not read, an encoder; families hone does not write as GGUF yet.
    for (name, why) in [
        ("gemma3", "query_pre_attn_scalar"),
        ("llama-score", "score head"),
        ("bert", "decoders"),
        ("smollm3", "every fourth layer"),
        ("olmo2", "has no biases"),
        ("qwen3_moe", "dense layers"),
        ("qwen3_moe-step2", "dense layers"),
        ("gpt_oss", "limit 7"),
    ] {
        let model = load_hf_dir(&fixture(name), &device).unwrap();
        let tok = crate::common::tiny_tokenizer(100);
        let err = write_gguf(
            &model.model,
            &model.config,
            &tok,
            None,
            name,
            GgufQuant::F16,
            &dir.path().join("refused.gguf"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(why), "{name}: {err}");
    }
    assert!(!dir.path().join("refused.gguf").exists());
}

/// A sharded checkpoint whose index names a shard that is not there, a shard cut short, or a
/// tensor its shard lacks: each error names the file.
#[test]
fn damaged_shards_are_named() {
    let src = fixture("qwen3-sharded-bf16");
    let copy = || {
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap().flatten() {
            std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
        }
        dir
    };
    let err = |dir: &std::path::Path| match load_hf_dir(dir, &Device::flex()) {
        Ok(_) => panic!("loaded a damaged checkpoint"),
        Err(e) => format!("{e:#}"),
    };
    let shard = "model-00002-of-00002.safetensors";

    let dir = copy();
    std::fs::remove_file(dir.path().join(shard)).unwrap();
    let e = err(dir.path());
    assert!(e.contains(shard) && e.contains("cannot read"), "{e}");

    let dir = copy();
    let bytes = std::fs::read(dir.path().join(shard)).unwrap();
    std::fs::write(dir.path().join(shard), &bytes[..bytes.len() / 2]).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains(shard) && e.contains("not a valid safetensors file"),
        "{e}"
    );

    let dir = copy();
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    std::fs::write(
        &index,
        text.replace(
            "\"weight_map\": {",
            "\"weight_map\": {\n    \"model.extra.weight\": \"model-00001-of-00002.safetensors\",",
        ),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("model.extra.weight") && e.contains("model-00001-of-00002.safetensors"),
        "{e}"
    );

    let dir = copy();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        text.replace("model-00002-of-00002.safetensors", "../../etc/passwd"),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(e.contains("is not a shard file name"), "{e}");
}

#[test]
fn bert_matches_transformers() {
    let device = Device::flex();
    let model = load_hf_dir(&fixture("bert"), &device).unwrap();
    let reference = Reference::load("bert");
    let ids = reference.ints("input_ids", &device);
    let types = reference.ints("token_type_ids", &device);
    let padding = reference.ints("attention_mask", &device).equal_elem(1);
    let Backbone::Bert(bert) = &model.model.backbone else {
        panic!("not bert")
    };
    let hidden = bert.forward(ids, Some(types), Some(padding));
    let d = hidden.dims()[2];
    let dh = max_diff_on_tokens(
        &to_vec(hidden.clone()),
        &reference.floats("last_hidden"),
        &reference.mask(),
        d,
    );
    let pooled = to_vec(bert.pool(hidden).unwrap());
    let want = reference.floats("pooled");
    let dp = pooled
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        dh <= 1e-4 && dp <= 1e-4,
        "bert: max abs diff hidden {dh:e}, pooled {dp:e}"
    );
}

#[test]
fn clear_errors_for_bad_checkpoints() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let copy = |from: &str| {
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture(from).join(f), dir.path().join(f)).unwrap();
        }
    };
    let err = |dir: &Path| {
        load_hf_dir(dir, &device)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };

    copy("llama");
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"llama\"", "\"mamba\""),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("unknown architecture `mamba`") && e.contains("gpt2, llama"),
        "{e}"
    );

    copy("llama");
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("shape [65, 32]")
            || e.contains("has shape [64, 32], the config implies [65, 32]"),
        "{e}"
    );

    copy("llama");
    std::fs::write(
        dir.path().join("config.json"),
        cfg.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3"),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("tensor `layers.2.input_layernorm.weight` is missing"),
        "{e}"
    );

    copy("llama");
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("not a valid safetensors file (truncated or corrupt?)"),
        "{e}"
    );
}

#[test]
fn classification_and_scalar_heads_match_transformers() {
    let device = Device::flex();
    for (name, labels) in [("gpt2-cls", 3), ("llama-score", 1), ("bert-cls", 2)] {
        let loaded = load_hf_dir(&fixture(name), &device).unwrap();
        assert!(
            loaded.unused_weights.is_empty(),
            "{name}: unused {:?}",
            loaded.unused_weights
        );
        assert_eq!(loaded.model.num_labels(), Some(labels), "{name}");
        let reference = Reference::load(name);
        let ids = reference.ints("input_ids", &device);
        let padding = reference.ints("attention_mask", &device).equal_elem(1);
        let scores = to_vec(loaded.model.scores(ids.clone(), padding.clone()).unwrap());
        let want = reference.floats("scores");
        let worst = scores
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            scores.len() == want.len() && worst <= 1e-4,
            "{name}: max abs diff {worst:e}"
        );

        let dir = tempfile::tempdir().unwrap();
        save_hf_dir(&loaded.model, &loaded.config, None, None, dir.path()).unwrap();
        let again = load_hf_dir(dir.path(), &device).unwrap();
        assert_eq!(
            to_vec(again.model.scores(ids, padding).unwrap()),
            scores,
            "{name}: save + load"
        );
    }
}

#[test]
fn bert_masked_lm_head_matches_transformers() {
    let device = Device::flex();
    let loaded = load_hf_dir(&fixture("bert-mlm"), &device).unwrap();
    assert!(
        loaded.unused_weights.is_empty(),
        "unused {:?}",
        loaded.unused_weights
    );
    let reference = Reference::load("bert-mlm");
    let ids = reference.ints("input_ids", &device);
    let padding = reference.ints("attention_mask", &device).equal_elem(1);
    let logits = |b: &Backbone| {
        let hidden = b.hidden(ids.clone(), Some(padding.clone()));
        to_vec(b.mlm_logits(hidden).expect("an MLM head"))
    };
    let got = logits(&loaded.model.backbone);
    let want = reference.floats("logits");
    let worst = max_diff_on_tokens(&got, &want, &reference.mask(), 100);
    assert!(worst <= 1e-4, "max abs diff {worst:e}");

    // Saved as BertForMaskedLM and read back: the same logits.
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(&loaded.model, &loaded.config, None, None, dir.path()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    let again = load_hf_dir(dir.path(), &device).unwrap();
    assert_eq!(logits(&again.model.backbone), got);
}
