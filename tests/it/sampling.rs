//! Generation with a KV cache gives exactly what full recomputation gives; batches with left
//! padding give what each prompt gives alone; stop tokens and top-k behave.

use std::path::Path;

use burn::prelude::*;
use hone::model::sampling::{SamplingConfig, choose, generate};
use hone::model::{Backbone, load_hf_dir, to_vec};
use hone::rng::SplitMix64;

fn model(name: &str, device: &Device) -> Backbone {
    load_hf_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name),
        device,
    )
    .unwrap()
    .model
    .backbone
}

/// Greedy decoding by recomputing the whole sequence every step (no cache).
fn naive_greedy(m: &Backbone, prompt: &[u32], n: usize, device: &Device) -> Vec<u32> {
    let mut seq: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let mut out = Vec::new();
    for _ in 0..n {
        let ids = Tensor::<2, Int>::from_data(
            burn::tensor::TensorData::new(seq.clone(), [1, seq.len()]),
            device,
        );
        let logits = to_vec(m.lm_logits(m.hidden(ids, None)).unwrap());
        let v = logits.len() / seq.len();
        let last = &logits[logits.len() - v..];
        let t = last
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0 as u32;
        out.push(t);
        seq.push(t as i64);
    }
    out
}

#[test]
fn cached_batched_greedy_equals_naive_per_prompt() {
    let device = Device::flex();
    // Not llama-dynamic: dynamic NTK changes the rotary base as the sequence grows, so keys
    // cached under the old base differ from a fresh forward's, in transformers as here.
    for name in [
        "gpt2",
        "llama",
        "llama3-rope",
        "llama-yarn",
        "qwen3",
        "gemma3",
        "smollm3",
        "olmo2",
        "qwen3_moe",
        "starcoder2",
        "gpt_oss",
    ] {
        let m = model(name, &device);
        // Sliding windows (Gemma 3's, SmolLM3's, StarCoder2's, gpt-oss's) count padded
        // positions, as transformers does, so a left-padded prompt sees fewer of its own
        // tokens than alone: same lengths there.
        let prompts = match name {
            "gemma3" | "smollm3" | "starcoder2" | "gpt_oss" => {
                vec![vec![5u32, 17, 42, 8, 99], vec![7u32, 30, 12, 3, 64]]
            }
            _ => vec![vec![5u32, 17, 42, 8, 99], vec![7u32, 30]],
        };
        let cfg = SamplingConfig {
            max_new_tokens: 8,
            ..Default::default()
        };
        let batched = generate(m.language_model().unwrap(), &prompts, &cfg, &device);
        for (p, got) in prompts.iter().zip(&batched) {
            assert_eq!(
                got,
                &naive_greedy(&m, p, 8, &device),
                "{name}: prompt {p:?}"
            );
            assert_eq!(
                got,
                &generate(
                    m.language_model().unwrap(),
                    std::slice::from_ref(p),
                    &cfg,
                    &device
                )[0],
                "{name}: alone vs batched"
            );
        }
    }
}

#[test]
fn stop_tokens_end_a_sequence_and_seeds_reproduce() {
    let device = Device::flex();
    let m = model("llama", &device);
    let prompt = vec![vec![5u32, 17, 42]];
    let greedy = generate(
        m.language_model().unwrap(),
        &prompt,
        &SamplingConfig {
            max_new_tokens: 6,
            ..Default::default()
        },
        &device,
    );
    let stop = SamplingConfig {
        max_new_tokens: 6,
        stop_tokens: vec![greedy[0][1]],
        ..Default::default()
    };
    assert_eq!(
        generate(m.language_model().unwrap(), &prompt, &stop, &device)[0],
        greedy[0][..2]
    );
    let sampled = |seed| {
        generate(
            m.language_model().unwrap(),
            &prompt,
            &SamplingConfig {
                max_new_tokens: 12,
                temperature: 1.0,
                seed,
                ..Default::default()
            },
            &device,
        )
    };
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1), sampled(2));
    let top1 = SamplingConfig {
        max_new_tokens: 6,
        temperature: 1.0,
        top_k: 1,
        seed: 9,
        ..Default::default()
    };
    assert_eq!(
        generate(m.language_model().unwrap(), &prompt, &top1, &device),
        greedy
    );
}

#[test]
fn top_k_and_top_p_restrict_the_choice() {
    let logits = [1.0f32, 3.0, 2.0, 0.5];
    let mut rng = SplitMix64::new(0);
    let k2 = SamplingConfig {
        temperature: 1.0,
        top_k: 2,
        ..Default::default()
    };
    let p_small = SamplingConfig {
        temperature: 1.0,
        top_p: 0.3,
        ..Default::default()
    };
    for _ in 0..200 {
        assert!([1, 2].contains(&choose(&logits, &k2, &mut rng)));
        assert_eq!(choose(&logits, &p_small, &mut rng), 1);
    }
}

#[test]
fn generation_stays_inside_the_context_window() {
    // The GPT-2 fixture has 32 positions. A 40-token prompt keeps its last 31 tokens and gets
    // one new token; a 20-token prompt batched with a 28-token one gets 4 (the batch stops when
    // its longest row fills the window); nothing indexes past the position table.
    let device = Device::flex();
    let m = model("gpt2", &device);
    let cfg = SamplingConfig {
        max_new_tokens: 50,
        ..Default::default()
    };
    let long: Vec<u32> = (0..40).map(|i| (i * 7 % 100) as u32).collect();
    let out = generate(
        m.language_model().unwrap(),
        std::slice::from_ref(&long),
        &cfg,
        &device,
    );
    assert_eq!(out[0].len(), 1);
    assert_eq!(
        out[0],
        naive_greedy(&m, &long[9..], 1, &device),
        "the prompt keeps its last tokens"
    );
    let out = generate(
        m.language_model().unwrap(),
        &[long[..20].to_vec(), long[..28].to_vec()],
        &cfg,
        &device,
    );
    assert_eq!((out[0].len(), out[1].len()), (4, 4));
}
