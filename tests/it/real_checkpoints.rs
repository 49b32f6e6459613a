//! Real pretrained checkpoints (fetched by scripts/fetch_models.sh; .ci/run fetches them):
//! MiniLM sentence embeddings match sentence-transformers; SmolLM2-135M-Instruct from GGUF
//! renders the chat template, tokenizes and continues greedily exactly as transformers does.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use hone::model::chat::Message;
use hone::model::sampling::{SamplingConfig, generate};
use hone::model::{Backbone, load_hf_dir, to_vec};

fn models() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    assert!(
        dir.join("all-MiniLM-L6-v2/model.safetensors").is_file()
            && dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file(),
        "real checkpoints missing: run scripts/fetch_models.sh (README's test command does)"
    );
    dir
}

fn fixture(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let device = Device::flex();
    let model = load_hf_dir(&models().join("all-MiniLM-L6-v2"), &device).unwrap();
    let tokenizer = model.tokenizer.expect("MiniLM ships tokenizer.json");
    let reference = fixture("minilm_embeddings.json");
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(reference["embeddings"].clone()).unwrap();
    // One padded batch: shorter sentences are right-padded and masked.
    let encoded: Vec<Vec<u32>> = sentences
        .iter()
        .map(|s| {
            tokenizer
                .encode(s.as_str(), true)
                .unwrap()
                .get_ids()
                .to_vec()
        })
        .collect();
    let len = encoded.iter().map(Vec::len).max().unwrap();
    let b = encoded.len();
    let mut ids = vec![0i64; b * len];
    let mut real = vec![false; b * len];
    for (i, e) in encoded.iter().enumerate() {
        for (j, &t) in e.iter().enumerate() {
            ids[i * len + j] = t as i64;
            real[i * len + j] = true;
        }
    }
    let ids = Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(ids, [b, len]), &device);
    let mask = Tensor::<2, Bool>::from_data(burn::tensor::TensorData::new(real, [b, len]), &device);
    let Backbone::Bert(bert) = &model.model.backbone else {
        panic!("MiniLM is a BERT model")
    };
    let hidden = bert.forward(ids, None, Some(mask.clone()));
    // sentence-transformers: mean over real tokens.
    let m = mask.float().unsqueeze_dim::<3>(2);
    let pooled = (hidden * m.clone()).sum_dim(1).div(m.sum_dim(1));
    let got = to_vec(pooled);
    let d = want[0].len();
    for (i, w) in want.iter().enumerate() {
        let g = &got[i * d..(i + 1) * d];
        let dot: f32 = g.iter().zip(w).map(|(a, b)| a * b).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cosine = dot / (norm(g) * norm(w));
        assert!(
            cosine >= 0.9999,
            "sentence {i} ({:?}): cosine {cosine}",
            sentences[i]
        );
    }
}

#[test]
fn smollm2_gguf_chat_tokens_and_greedy_continuation_match_transformers() {
    let device = Device::flex();
    let model =
        hone::model::load(&models().join("SmolLM2-135M-Instruct.Q4_1.gguf"), &device).unwrap();
    assert!(
        model.chat_template.is_some(),
        "SmolLM2's GGUF carries a chat template"
    );
    let template = model.chat();
    let tokenizer = model
        .tokenizer
        .clone()
        .expect("SmolLM2's GGUF carries a BPE tokenizer");
    let backbone = model.model.backbone;
    let reference = fixture("smollm2_greedy.json");
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let text = template
            .render(&[Message::new("user", prompt)], true)
            .unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "chat template rendering"
        );
        let ids: Vec<u32> = tokenizer
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "tokens of {prompt:?}");
        let want_new: Vec<u32> = serde_json::from_value(case["new_ids"].clone()).unwrap();
        let cfg = SamplingConfig {
            max_new_tokens: want_new.len(),
            ..Default::default()
        };
        let got = generate(backbone.language_model().unwrap(), &[ids], &cfg, &device).remove(0);
        let decoded = tokenizer.decode(&got, false).unwrap();
        assert_eq!(
            got, want_new,
            "{prompt:?}: hone said {decoded:?}, transformers {:?}",
            case["new_text"]
        );
    }
}

/// Gemma 3 270M as people download it (Q4_K_M GGUF: Q4_K, Q6_K, Q5_0, Q8_0 and F32 tensors,
/// `gemma3` architecture, SentencePiece tokenizer): the prompts' tokens (BOS added, as the file
/// asks) and the greedy continuation are transformers' loading the same file.
#[test]
fn gemma3_gguf_q4_k_m_greedy_continuation_matches_transformers() {
    let device = Device::flex();
    let reference = fixture("gemma3_greedy.json");
    let path = models().join(reference["gguf"].as_str().unwrap());
    let model = hone::model::load(&path, &device).unwrap();
    assert_eq!(model.config["model_type"], "gemma3_text");
    let tokenizer = model.tokenizer.expect("Gemma's GGUF carries a tokenizer");
    let backbone = model.model.backbone;
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = tokenizer.encode(prompt, true).unwrap().get_ids().to_vec();
        let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "tokens of {prompt:?}");
        let want: Vec<u32> = serde_json::from_value(case["new_ids"].clone()).unwrap();
        let cfg = SamplingConfig {
            max_new_tokens: want.len(),
            // Greedy to the end: the reference does not stop at the end-of-turn token either.
            stop_tokens: vec![],
            ..Default::default()
        };
        let got = generate(backbone.language_model().unwrap(), &[ids], &cfg, &device).remove(0);
        assert_eq!(
            got, want,
            "{:?}: transformers said {:?}",
            case["prompt"], case["new_text"]
        );
    }
}

/// Gemma's SentencePiece vocabulary rebuilt from the GGUF cuts text exactly as transformers
/// does: runs of spaces and newlines, chat markers, HTML tags, many scripts, characters only
/// byte fallback spells, the empty text; and decodes back to the same text.
#[test]
fn gemma3_gguf_tokenizer_matches_transformers() {
    let reference = fixture("gemma3_tokenizer.json");
    let path = models().join(reference["gguf"].as_str().unwrap());
    let model = hone::model::load(&path, &Device::flex()).unwrap();
    let tokenizer = model.tokenizer.expect("Gemma's GGUF carries a tokenizer");
    for case in reference["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want, "tokens of {text:?}");
        assert_eq!(
            tokenizer.decode(&ids, true).unwrap(),
            case["decoded"].as_str().unwrap(),
            "decoding {text:?}"
        );
    }
}

/// Gemma 3 270M written back out as a Q4_K_M GGUF by hone: the same mix of tensor types as
/// llama.cpp's own Q4_K_M file (Q4_K, Q6_K where llama.cpp gives more bits, Q5_0 and Q8_0 for
/// rows that are not whole K-quant blocks, F32 vectors), and read back it tokenizes and
/// continues the three prompts exactly as transformers does with the original.
#[test]
fn gemma3_exported_as_q4_k_m_gguf_keeps_llama_cpps_mix_and_its_answers() {
    use hone::model::gguf::Gguf;
    use hone::model::gguf_write::{GgufQuant, write_gguf};
    let device = Device::flex();
    let reference = fixture("gemma3_greedy.json");
    let original = models().join(reference["gguf"].as_str().unwrap());
    let model = hone::model::load(&original, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma-Q4_K_M.gguf");
    write_gguf(
        &model.model,
        &model.config,
        model.tokenizer.as_ref().unwrap(),
        model.chat_template.as_ref().map(|t| t.source.as_str()),
        "gemma",
        GgufQuant::Q4KM,
        &path,
    )
    .unwrap();
    let mix = |p: &std::path::Path| {
        let mut m = std::collections::BTreeMap::new();
        for t in Gguf::open(p).unwrap().tensors {
            *m.entry(hone::model::ggml_quants::type_name(t.ggml_type))
                .or_insert(0) += 1;
        }
        m
    };
    assert_eq!(mix(&path), mix(&original));
    let back = hone::model::load(&path, &device).unwrap();
    let tokenizer = back.tokenizer.expect("the vocabulary travels");
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = tokenizer.encode(prompt, true).unwrap().get_ids().to_vec();
        let want_ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want_ids, "tokens of {prompt:?}");
        let want: Vec<u32> = serde_json::from_value(case["new_ids"].clone()).unwrap();
        let cfg = SamplingConfig {
            max_new_tokens: want.len(),
            stop_tokens: vec![],
            ..Default::default()
        };
        let got = generate(
            back.model.backbone.language_model().unwrap(),
            &[ids],
            &cfg,
            &device,
        )
        .remove(0);
        assert_eq!(got, want, "{prompt:?}");
    }
}
