//! Peak memory and speed of LoRA SFT on a real checkpoint next to PyTorch + PEFT (not a test):
//! `cargo bench --bench lora_memory`.
//!
//! Both sides tune SmolLM2-135M-Instruct and Gemma 3 270M (read from the GGUFs
//! `scripts/fetch_models.sh` fetches, dequantised to f32; `HONE_BENCH_MODELS=smollm2` or
//! `=gemma3` picks one) on the car QA pairs through each model's chat template: LoRA r 16, alpha 32 on
//! every attention and MLP projection, batch 8, at most 96 tokens, 2 epochs, AdamW lr 2e-3,
//! clipping at 1.0, 2 threads. hone runs as `hone run` of a one-stage recipe under
//! `/usr/bin/time` (peak RSS of the process); PyTorch as `scripts/bench_torch_lora.py` through
//! `$HONE_BENCH_PYTHON` (default `python3`; needs torch, transformers, peft, gguf). Tokens are
//! the non-padding tokens PyTorch counts (the same texts and tokenizer on both sides); each
//! side's time includes loading the model. Prints a table per model and writes
//! `target/hone-bench/lora_memory.json`. `HONE_BENCH_BACKEND=wgpu|cuda` runs hone with that
//! `--backend` (`scripts/gpu_check.sh`) and leaves out the PyTorch baseline, which runs on the
//! CPU. `HONE_BENCH_PRECISION=bf16|f16` trains both sides in that precision (default f32).

use std::path::Path;
use std::process::Command;

const EPOCHS: usize = 2;
const BATCH: usize = 8;
const MAX_LEN: usize = 96;
const RANK: usize = 16;
const ALPHA: f64 = 32.0;
const LR: f64 = 2e-3;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let wanted = std::env::var("HONE_BENCH_MODELS").unwrap_or_else(|_| "smollm2,gemma3".into());
    let mut report = serde_json::Map::new();
    // The Gemma 3 GGUF ships no chat template: both sides use the Gemma turns hone falls
    // back to (`model::chat::GEMMA`).
    for (key, name, file, template) in [
        (
            "smollm2",
            "SmolLM2-135M-Instruct",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            None,
        ),
        (
            "gemma3",
            "Gemma 3 270M",
            "gemma-3-270m-q4_k_m.gguf",
            Some(hone::model::chat::GEMMA),
        ),
    ] {
        if !wanted.split(',').any(|w| w.trim() == key) {
            continue;
        }
        let gguf = root.join("models").join(file);
        if !gguf.is_file() {
            eprintln!(
                "lora_memory: {} is missing; run scripts/fetch_models.sh",
                gguf.display()
            );
            continue;
        }
        report.insert(key.into(), bench_model(root, name, &gguf, template));
    }
    let out_dir = root.join("target/hone-bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("lora_memory.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}

/// `HONE_BENCH_PRECISION`: `f32` (the default), `bf16` or `f16`; hone trains with that
/// `train.precision`, PyTorch loads the base in that dtype (PEFT keeps the adapters in f32).
fn precision() -> String {
    let p = std::env::var("HONE_BENCH_PRECISION").unwrap_or_else(|_| "f32".into());
    assert!(
        ["f32", "bf16", "f16"].contains(&p.as_str()),
        "HONE_BENCH_PRECISION is f32, bf16 or f16, not {p}"
    );
    p
}

/// One model: hone and the PyTorch baseline, a table, and the numbers for the report.
fn bench_model(root: &Path, name: &str, gguf: &Path, template: Option<&str>) -> serde_json::Value {
    let qa = root.join("data/cars/qa.jsonl");
    let dir = tempfile::tempdir().unwrap();
    let precision = precision();
    let recipe = format!(
        "version: 1\nname: lora-memory\nseed: 7\nstages:\n  qa:\n    kind: dataset\n    source: {{ path: {qa} }}\n    columns: {{ question: prompt, answer: response }}\n  sft:\n    kind: sft\n    model: {{ path: {gguf} }}\n    data: {{ from: qa }}\n    template: model\n    max_length: {MAX_LEN}\n    peft: {{ method: lora, r: {RANK}, alpha: {ALPHA}, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj] }}\n    train: {{ epochs: {EPOCHS}, batch_size: {BATCH}, lr: {LR}, warmup_steps: 0, precision: {precision} }}\n",
        qa = qa.display(),
        gguf = gguf.display(),
    );
    let recipe_path = dir.path().join("bench.yaml");
    std::fs::write(&recipe_path, recipe).unwrap();
    let backend = std::env::var("HONE_BENCH_BACKEND").unwrap_or_else(|_| "cpu".into());
    let out = Command::new("/usr/bin/time")
        .args(["-f", "peak_rss_kb=%M"])
        .arg(env!("CARGO_BIN_EXE_hone"))
        .arg("run")
        .arg(&recipe_path)
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["--backend", &backend])
        .output()
        .expect("/usr/bin/time runs hone");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hone failed:\n{stdout}\n{stderr}");
    let hone_peak_kb: f64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kb="))
        .and_then(|v| v.trim().parse().ok())
        .expect("/usr/bin/time reports the peak");
    // `  ran     sft   sft   123.45s   ...`
    let hone_s: f64 = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("ran") && l.split_whitespace().nth(1) == Some("sft"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_suffix('s')?.parse().ok())
        })
        .expect("the sft stage's time");

    let python = std::env::var("HONE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    if backend != "cpu" {
        println!(
            "LoRA SFT, {name} on {backend}: sft stage {hone_s:.1} s (load included), host peak RSS {:.2} GB; PyTorch's CPU baseline left out",
            hone_peak_kb / 1024.0 / 1024.0
        );
        return serde_json::json!({ "hone": { "peak_rss_kb": hone_peak_kb, "seconds": hone_s, "backend": backend } });
    }
    let torch = Command::new(&python)
        .arg(root.join("scripts/bench_torch_lora.py"))
        .arg(gguf)
        .arg(&qa)
        .args([EPOCHS, BATCH, MAX_LEN, RANK].map(|v| v.to_string()))
        .args([ALPHA, LR].map(|v| v.to_string()))
        .args(template)
        .output();
    let torch: Option<serde_json::Value> = match torch {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        Ok(o) => {
            eprintln!(
                "PyTorch baseline failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("cannot run {python}: {e}");
            None
        }
    };
    let gb = |kb: f64| kb / 1024.0 / 1024.0;
    println!(
        "LoRA SFT, {name}, r {RANK}, batch {BATCH}, <= {MAX_LEN} tokens, {EPOCHS} epochs, 2 threads, {precision}"
    );
    println!("| | hone | PyTorch + PEFT | hone / PyTorch |");
    println!("|---|---|---|---|");
    let mut report =
        serde_json::json!({ "hone": { "peak_rss_kb": hone_peak_kb, "seconds": hone_s } });
    match &torch {
        Some(t) => {
            let tokens = t["tokens"].as_f64().unwrap_or(0.0);
            let torch_s =
                t["train_s"].as_f64().unwrap_or(0.0) + t["load_s"].as_f64().unwrap_or(0.0);
            let torch_kb = t["peak_rss_kb"].as_f64().unwrap_or(0.0);
            let (hone_tps, torch_tps) = (tokens / hone_s, tokens / torch_s);
            println!(
                "| peak RSS | {:.2} GB | {:.2} GB | {:.2}x |",
                gb(hone_peak_kb),
                gb(torch_kb),
                hone_peak_kb / torch_kb
            );
            println!(
                "| tokens/s (load + train, {tokens} tokens) | {hone_tps:.0} | {torch_tps:.0} | {:.2}x |",
                hone_tps / torch_tps
            );
            report["torch"] = t.clone();
            report["ratio"] = serde_json::json!({
                "peak_rss": hone_peak_kb / torch_kb,
                "speed": hone_tps / torch_tps,
            });
        }
        None => println!(
            "| peak RSS | {:.2} GB | (no baseline) | |\n| sft stage | {hone_s:.1} s | | |",
            gb(hone_peak_kb)
        ),
    }
    report
}
