//! Training throughput of the reference tiny GPT next to PyTorch, in one run:
//! `cargo bench --bench train_step`. PyTorch runs through `$HONE_BENCH_PYTHON` (default
//! `python3`) with torch + transformers installed; without it the ratio is reported as absent.
//! Writes `target/hone-bench/train_step.json`.

use std::process::Command;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use hone::model::Backbone;
use hone::model::gpt2::{Gpt2, Gpt2Config};
use hone::train::loss::causal_lm_loss;

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

fn hone_ms_per_step() -> f64 {
    hone::backend::init_cpu();
    let device = Device::flex().autodiff();
    device.seed(0);
    let cfg = Gpt2Config {
        vocab_size: VOCAB,
        n_positions: SEQ,
        n_embd: D,
        n_layer: LAYERS,
        n_head: HEADS,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        activation_function: "gelu_new".into(),
    };
    let mut model = Backbone::Gpt2(Gpt2::init(&cfg, &device));
    let mut optim = hone::train::optim::adamw().init();
    let mut rng = hone::rng::SplitMix64::new(1);
    let ids: Vec<i64> = (0..BATCH * SEQ)
        .map(|_| rng.below(VOCAB as u64) as i64)
        .collect();
    let ids =
        Tensor::<2, Int>::from_data(burn::tensor::TensorData::new(ids, [BATCH, SEQ]), &device);
    let mask = Tensor::<2>::ones([BATCH, SEQ], &device);
    let mut times = Vec::new();
    for i in 0..WARMUP + STEPS {
        let t = Instant::now();
        let logits = model.lm_logits(model.hidden(ids.clone(), None)).unwrap();
        let loss = causal_lm_loss(logits, ids.clone(), mask.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        // Wait for the step to finish before reading the clock.
        let _ = model.num_layers();
        device.sync().ok();
        if i >= WARMUP {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn torch_ms_per_step() -> Result<serde_json::Value, String> {
    let python = std::env::var("HONE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_torch_train.py");
    let args: Vec<String> = [VOCAB, D, LAYERS, HEADS, SEQ, BATCH, WARMUP, STEPS]
        .iter()
        .map(ToString::to_string)
        .collect();
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
    let tokens = (BATCH * SEQ) as f64;
    let hone_ms = hone_ms_per_step();
    println!(
        "hone (burn flex, {} threads): {hone_ms:.0} ms/step, {:.0} tokens/s",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        tokens / hone_ms * 1e3
    );
    let torch = torch_ms_per_step();
    let (torch_ms, ratio) = match &torch {
        Ok(v) => {
            let ms = v["ms_per_step"].as_f64().unwrap_or(f64::NAN);
            println!(
                "PyTorch {} ({} threads): {ms:.0} ms/step, {:.0} tokens/s",
                v["torch"],
                v["threads"],
                tokens / ms * 1e3
            );
            (Some(ms), Some(ms / hone_ms))
        }
        Err(e) => {
            println!("PyTorch baseline unavailable: {e}");
            (None, None)
        }
    };
    if let Some(r) = ratio {
        println!("hone / PyTorch throughput: {r:.2}x");
    }
    let report = serde_json::json!({
        "config": { "vocab": VOCAB, "d_model": D, "layers": LAYERS, "heads": HEADS, "seq": SEQ, "batch": BATCH, "optimizer": "AdamW", "dtype": "f32" },
        "hone_ms_per_step": hone_ms,
        "hone_tokens_per_s": tokens / hone_ms * 1e3,
        "torch_ms_per_step": torch_ms,
        "throughput_ratio_hone_over_torch": ratio,
    });
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/hone-bench");
    std::fs::create_dir_all(dir).ok();
    std::fs::write(
        format!("{dir}/train_step.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .ok();
}
