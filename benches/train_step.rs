//! Training throughput next to PyTorch, in one run: `cargo bench --bench train_step`.
//!
//! Two cases, each a step of hone's own trainer (the loop every training stage runs: loss,
//! backward, clipping, AdamW) against the same step in PyTorch + transformers (+ PEFT):
//! - `pretrain`: a GPT-2 style model, full training, next-token loss on every token;
//! - `sft_lora`: a Llama style model (grouped-query attention), LoRA r=8 on q/v projections,
//!   loss on the second half of each sequence only (the completion), as SFT trains.
//!
//! PyTorch runs through `$HONE_BENCH_PYTHON` (default `python3`); without torch the ratio is
//! reported as absent. `HONE_BENCH_BACKEND=wgpu|cuda` runs hone's side on that GPU backend
//! instead of the CPU (`scripts/gpu_check.sh`), and then leaves PyTorch out: its baseline runs
//! on the CPU, and a GPU-to-CPU ratio says nothing. Writes `target/hone-bench/train_step.json`.

use std::cell::RefCell;
use std::process::Command;
use std::time::Instant;

use hone::backend::{BackendChoice, BackendKind, check_available, resolve};
use hone::model::Backbone;
use hone::model::gpt2::{Gpt2, Gpt2Config};
use hone::model::llama::{Llama, LlamaConfig};
use hone::model::lora::{LoraConfig, apply};
use hone::train::objectives::{CausalLm, LmBatch};
use hone::train::trainer::{Hooks, Record, TrainConfig, train};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VOCAB: usize = 8192;
const D: usize = 256;
const LAYERS: usize = 4;
const HEADS: usize = 4;
const SEQ: usize = 128;
const BATCH: usize = 8;
const WARMUP: usize = 2;
const STEPS: usize = 7;

/// The backend `HONE_BENCH_BACKEND` names (`cpu` when unset).
fn bench_backend() -> BackendKind {
    let name = std::env::var("HONE_BENCH_BACKEND").unwrap_or_else(|_| "cpu".into());
    let choice: BackendChoice = name
        .parse()
        .unwrap_or_else(|e| panic!("HONE_BENCH_BACKEND: {e}"));
    check_available(choice).unwrap_or_else(|e| panic!("HONE_BENCH_BACKEND: {e}"));
    resolve(choice)
}

/// Median milliseconds per optimizer step of hone's trainer on `case`.
fn hone_ms_per_step(case: &str, backend: BackendKind) -> f64 {
    let device = hone::backend::device(backend)
        .expect("the bench's backend has a device")
        .autodiff();
    device.seed(0);
    let model = match case {
        "pretrain" => Backbone::Gpt2(Gpt2::init(
            &Gpt2Config {
                vocab_size: VOCAB,
                n_positions: SEQ,
                n_embd: D,
                n_layer: LAYERS,
                n_head: HEADS,
                n_inner: None,
                layer_norm_epsilon: 1e-5,
                activation_function: "gelu_new".into(),
            },
            &device,
        )),
        _ => {
            let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
                "vocab_size": VOCAB, "hidden_size": D, "intermediate_size": 688,
                "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": 2,
                "max_position_embeddings": SEQ, "rms_norm_eps": 1e-6, "tie_word_embeddings": true,
            }))
            .expect("llama config");
            let lora = LoraConfig {
                r: 8,
                alpha: 16.0,
                target_modules: Some(vec!["q_proj".into(), "v_proj".into()]),
                ..Default::default()
            };
            apply(Backbone::Llama(Llama::init(&cfg, &device)), &lora, &device)
                .expect("lora")
                .0
        }
    };
    let mut rng = hone::rng::SplitMix64::new(1);
    let seqs: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| (0..SEQ).map(|_| rng.below(VOCAB as u64) as u32).collect())
        .collect();
    let targets: Vec<Vec<bool>> = seqs
        .iter()
        .map(|s| {
            (0..s.len())
                .map(|j| case == "pretrain" || j >= SEQ / 2)
                .collect()
        })
        .collect();
    let batch = LmBatch::with_targets(&seqs, &targets, &device);
    let data = vec![batch; WARMUP + STEPS];
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: BATCH,
        lr: 1e-4,
        ..Default::default()
    };
    let stamps = RefCell::new(vec![Instant::now()]);
    let on_record = |r: &Record| {
        if let Record::Step(_) = r {
            stamps.borrow_mut().push(Instant::now());
        }
    };
    let hooks = Hooks {
        on_record: &on_record,
        ..Hooks::default()
    };
    train(model, &CausalLm, &data, &[], &cfg, 0, hooks).expect("training runs");
    let stamps = stamps.into_inner();
    let mut times: Vec<f64> = stamps
        .windows(2)
        .skip(WARMUP)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn torch_ms_per_step(case: &str) -> Result<serde_json::Value, String> {
    let python = std::env::var("HONE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_torch_train.py");
    let mut args = vec![case.to_owned()];
    args.extend(
        [VOCAB, D, LAYERS, HEADS, SEQ, BATCH, WARMUP, STEPS]
            .iter()
            .map(ToString::to_string),
    );
    let out = Command::new(&python)
        .arg(script)
        .args(&args)
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .to_owned());
    }
    let line = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    serde_json::from_str(&line).map_err(|e| format!("bad output {line:?}: {e}"))
}

fn main() {
    hone::backend::init_cpu();
    let backend = bench_backend();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let tokens = (BATCH * SEQ) as f64;
    let mut cases = Vec::new();
    for case in ["pretrain", "sft_lora"] {
        let hone_ms = hone_ms_per_step(case, backend);
        let on = match backend {
            BackendKind::Cpu => format!("burn flex, {threads} threads"),
            gpu => format!("burn {}", gpu.name()),
        };
        println!(
            "{case:<9} hone ({on}): {hone_ms:.0} ms/step, {:.0} tokens/s",
            tokens / hone_ms * 1e3
        );
        let torch = match backend {
            BackendKind::Cpu => torch_ms_per_step(case),
            _ => Err("it runs on the CPU only, so it is left out next to a GPU backend".to_owned()),
        };
        let (torch_ms, ratio) = match &torch {
            Ok(v) => {
                let ms = v["ms_per_step"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{case:<9} PyTorch {} ({} threads): {ms:.0} ms/step, {:.0} tokens/s",
                    v["torch"],
                    v["threads"],
                    tokens / ms * 1e3
                );
                (Some(ms), Some(ms / hone_ms))
            }
            Err(e) => {
                println!("{case:<9} PyTorch baseline unavailable: {e}");
                (None, None)
            }
        };
        if let Some(r) = ratio {
            println!("{case:<9} hone / PyTorch throughput: {r:.2}x");
        }
        cases.push(serde_json::json!({
            "case": case,
            "hone_ms_per_step": hone_ms,
            "hone_tokens_per_s": tokens / hone_ms * 1e3,
            "torch_ms_per_step": torch_ms,
            "throughput_ratio_hone_over_torch": ratio,
        }));
    }
    let report = serde_json::json!({
        "config": { "vocab": VOCAB, "d_model": D, "layers": LAYERS, "heads": HEADS, "seq": SEQ, "batch": BATCH, "optimizer": "AdamW", "dtype": "f32", "threads": threads, "backend": backend.name() },
        "cases": cases,
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/hone-bench");
    std::fs::create_dir_all(dir).ok();
    std::fs::write(
        format!("{dir}/train_step.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .ok();
}
