//! LoRA at the sizes people fine-tune, next to transformers + PEFT (not a test):
//! `cargo bench --bench scale`.
//!
//! Checkpoints shaped like SmolLM2-135M, Llama-3.2-1B, Llama-3.2-3B and Llama-3.1-8B (their
//! configs, random bf16 weights), and 4 of Qwen3-30B-A3B's mixture-of-experts layers
//! (`qwen3-30b-a3b-4l`: 128 experts, 8 per token; `f32` and `bf16` only), are made once by `scripts/make_scale_checkpoint.py` under
//! `target/hone-bench/checkpoints/` (through `$HONE_BENCH_PYTHON`, default `python3`, which
//! needs torch, transformers, peft, safetensors, and bitsandbytes for the 4-bit baseline).
//! Each (shape, mode) runs in a fresh process on each side, so peak RSS is that run's alone:
//! - `f32`: the base loaded in f32;
//! - `bf16`: the base kept in bf16, projections computing in bf16 (hone's `train.precision:
//!   bf16`; PyTorch's bf16 base under `torch.autocast`);
//! - `nf4`: QLoRA, the base's projections in NF4 computing in bf16 (hone's `method: qlora`
//!   with `train.precision: bf16`; bitsandbytes' NF4 with double quantisation and bf16
//!   compute on the PyTorch side).
//!
//! Both train LoRA r 16, alpha 32 on all seven projections (on the MoE, attention's four and
//! the experts' fused weights, PEFT's `target_parameters`) with gradient checkpointing and
//! AdamW, on random token ids, 2 threads; the first step is a warm-up, `s/step` the median of
//! the rest (`scripts/bench_torch_scale.py` is the PyTorch side). Prints a table and writes
//! `target/hone-bench/scale.json`.
//!
//! Settings (environment): `HONE_BENCH_SHAPES` (default `smollm2-135m,llama-3.2-1b`; the
//! 8B shape runs `nf4` only), `HONE_BENCH_MODES` (default `f32,bf16,nf4`), `HONE_BENCH_BATCH`
//! (default 4), `HONE_BENCH_SEQ` (256), `HONE_BENCH_STEPS` (2 timed steps), and
//! `HONE_BENCH_PYTHON=none` to leave out PyTorch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::optim::GradientsParams;
use burn::prelude::*;
use hone::model::lora::{self, LoraConfig};
use hone::model::precision::{Precision, ReducedPrecision};
use hone::model::quantized::QuantFormat;
use hone::model::{Frozen, GradientCheckpointing, load_keeping, to_vec};

// The allocator of hone's binary, so memory and speed are what `hone run` sees.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHAPES: [(&str, &str); 5] = [
    ("smollm2-135m", "SmolLM2-135M"),
    ("llama-3.2-1b", "Llama-3.2-1B"),
    ("llama-3.2-3b", "Llama-3.2-3B"),
    ("llama-3.1-8b", "Llama-3.1-8B"),
    ("qwen3-30b-a3b-4l", "Qwen3-30B-A3B, 4 layers"),
];

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        return child(&args[2..]);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = setting("HONE_BENCH_PYTHON", "python3");
    let shapes = setting("HONE_BENCH_SHAPES", "smollm2-135m,llama-3.2-1b");
    let modes = setting("HONE_BENCH_MODES", "f32,bf16,nf4");
    let (batch, seq, steps) = (
        setting("HONE_BENCH_BATCH", "4"),
        setting("HONE_BENCH_SEQ", "256"),
        setting("HONE_BENCH_STEPS", "2"),
    );
    let out_dir = root.join("target/hone-bench");
    let mut rows = Vec::new();
    for (key, label) in SHAPES {
        if !shapes.split(',').any(|s| s.trim() == key) {
            continue;
        }
        let dir = checkpoint(root, &out_dir, key, &python);
        for mode in modes.split(',').map(str::trim) {
            if key == "llama-3.1-8b" && mode != "nf4" {
                continue; // 32 GB in f32, 16 GB in bf16: more than these machines hold
            }
            if key.starts_with("qwen3-") && mode == "nf4" {
                // bitsandbytes quantises `nn.Linear`s only: the experts' fused weights would
                // stay bf16 on PyTorch's side, so the two would not hold the same base.
                continue;
            }
            let run = [
                dir.display().to_string(),
                mode.into(),
                batch.clone(),
                seq.clone(),
                steps.clone(),
            ];
            eprintln!("scale: {label} {mode}: hone");
            let exe = std::env::current_exe().unwrap();
            let hone = measure(Command::new(exe).arg("child").args(&run));
            let torch = (python != "none").then(|| {
                eprintln!("scale: {label} {mode}: transformers + PEFT");
                measure(
                    Command::new(&python)
                        .arg(root.join("scripts/bench_torch_scale.py"))
                        .args(&run),
                )
            });
            rows.push(serde_json::json!({
                "shape": label, "mode": mode, "batch": batch, "seq": seq,
                "hone": hone, "pytorch": torch,
            }));
        }
    }
    print_table(&rows);
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        out_dir.join("scale.json"),
        serde_json::to_string_pretty(&rows).unwrap(),
    )
    .unwrap();
}

/// The checkpoint of `key`, made on first use.
fn checkpoint(root: &Path, out_dir: &Path, key: &str, python: &str) -> PathBuf {
    let dir = out_dir.join("checkpoints").join(key);
    if !dir.join("model.safetensors.index.json").is_file() {
        assert!(
            python != "none",
            "{} is missing and HONE_BENCH_PYTHON=none cannot make it",
            dir.display()
        );
        let status = Command::new(python)
            .arg(root.join("scripts/make_scale_checkpoint.py"))
            .arg(key)
            .arg(&dir)
            .status()
            .expect("python runs");
        assert!(status.success(), "making the {key} checkpoint failed");
    }
    dir
}

/// Runs `cmd`, which prints one JSON object last on stdout; `null` (and its stderr shown) if
/// it fails, so one side's failure (out of memory, say) leaves the rest of the table.
fn measure(cmd: &mut Command) -> serde_json::Value {
    let out = cmd.output().expect("the measuring process starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match (out.status.success(), stdout.lines().last()) {
        (true, Some(line)) => serde_json::from_str(line).unwrap_or(serde_json::Value::Null),
        _ => {
            eprintln!(
                "scale: failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            serde_json::Value::Null
        }
    }
}

fn print_table(rows: &[serde_json::Value]) {
    println!(
        "| shape | mode | hone s/step | PyTorch s/step | speed (PyTorch / hone) | hone peak RSS | PyTorch peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    let gb = |v: &serde_json::Value| {
        v["peak_rss"]
            .as_f64()
            .map_or("-".into(), |b| format!("{:.2} GB", b / 1e9))
    };
    let secs = |v: &serde_json::Value| v["step_s"].as_f64();
    for r in rows {
        let (h, t) = (&r["hone"], &r["pytorch"]);
        let ratio = match (secs(h), secs(t)) {
            (Some(h), Some(t)) => format!("{:.2}x", t / h),
            _ => "-".into(),
        };
        let show = |v: Option<f64>| v.map_or("-".into(), |s| format!("{s:.2}"));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r["shape"].as_str().unwrap_or(""),
            r["mode"].as_str().unwrap_or(""),
            show(secs(h)),
            show(secs(t)),
            ratio,
            gb(h),
            gb(t)
        );
    }
}

/// hone's side of one measurement: `DIR MODE BATCH SEQ STEPS`; prints its JSON line.
fn child(args: &[String]) {
    let dir = Path::new(&args[0]);
    let mode = args[1].as_str();
    let [batch, seq, steps] = [2, 3, 4].map(|i| args[i].parse::<usize>().expect("a count"));
    hone::backend::init_cpu();
    let device = Device::flex().autodiff();
    device.seed(0);
    let frozen = Frozen {
        // QLoRA keeps what it does not quantise (token table, LM head) as stored, as the
        // `qlora` stage does and PEFT's QLoRA does.
        keep: match mode {
            "bf16" | "nf4" => vec![burn::tensor::DType::BF16],
            _ => Vec::new(),
        },
        quantize: (mode == "nf4").then_some(QuantFormat::Nf4),
    };
    let start = Instant::now();
    let loaded = load_keeping(dir, &device, &frozen).expect("the checkpoint loads");
    let vocab = loaded.config["vocab_size"]
        .as_u64()
        .expect("a vocabulary size") as usize;
    // A mixture of experts: attention's projections and every expert's fused weights, as
    // PEFT's `target_parameters` adapts them.
    let moe = loaded.config["model_type"] == "qwen3_moe";
    let cfg = LoraConfig {
        r: 16,
        alpha: 32.0,
        target_modules: Some(match moe {
            true => ["q_proj", "k_proj", "v_proj", "o_proj"]
                .map(String::from)
                .to_vec(),
            false => vec![lora::ALL_LINEAR.into()],
        }),
        target_parameters: moe.then(|| {
            ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
                .map(String::from)
                .to_vec()
        }),
        ..LoraConfig::default()
    };
    let (mut model, _) = lora::apply(loaded.model.backbone, &cfg, &device).expect("LoRA applies");
    // PyTorch's 4-bit side computes in bf16 (`bnb_4bit_compute_dtype`), so hone's does too.
    if mode == "bf16" || mode == "nf4" {
        model.set_precision(Precision::Bf16);
    }
    model.set_gradient_checkpointing(true);
    let load_s = start.elapsed().as_secs_f64();
    let mut optim = hone::train::optim::adamw().init();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for _ in 0..=steps {
        let ids = Tensor::<2, Int>::random(
            [batch, seq],
            burn::tensor::Distribution::Uniform(0.0, vocab as f64),
            &device,
        );
        let t0 = Instant::now();
        let hidden = model.hidden(ids.clone(), None);
        let lm = model
            .language_model()
            .expect("the bench's shapes are decoders");
        let loss = lm.next_token_nll(hidden, ids, 1.0).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-4, model, grads);
        losses.push(to_vec(loss)[0]);
        times.push(t0.elapsed().as_secs_f64());
    }
    let mut timed = times[1..].to_vec();
    timed.sort_by(f64::total_cmp);
    let mid = timed.len() / 2;
    let median = match timed.len() % 2 {
        1 => timed[mid],
        _ => (timed[mid - 1] + timed[mid]) / 2.0,
    };
    println!(
        "{}",
        serde_json::json!({
            "load_s": load_s, "step_s": median, "peak_rss": peak_rss(), "losses": losses,
        })
    );
}

/// This process's peak resident set (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
