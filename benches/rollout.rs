//! GRPO-shaped rollouts, next to transformers' `generate` (not a test):
//! `cargo bench --bench rollout`.
//!
//! SmolLM2-135M-Instruct (`models/`, from `scripts/fetch_models.sh`; dequantised to f32 on both
//! sides) answers `HONE_BENCH_PROMPTS` prompts (default 4: arithmetic problems from
//! `data/arithmetic/train.jsonl`, tokenised by hone, the same ids on both sides)
//! `HONE_BENCH_GROUP` times each (default 8), sampling at temperature 1 over the whole
//! vocabulary, exactly `HONE_BENCH_NEW` new tokens per answer (default 48; no stop token), on
//! 2 threads with a KV cache. hone runs two ways:
//! - `grouped`: what `grpo` does, each prompt encoded once and its keys and values repeated for
//!   its group ([`generate_groups`]);
//! - `repeated`: each prompt encoded once per answer (as transformers' `num_return_sequences`
//!   does), the way hone's rollouts ran before.
//!
//! The two must produce the same tokens (checked). One warm-up run, then the median of
//! `HONE_BENCH_RUNS` (default 3). The transformers side is `scripts/bench_torch_generate.py`
//! through `$HONE_BENCH_PYTHON` (default `python3`; `none` leaves it out). Prints a table and
//! writes `target/hone-bench/rollout.json`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use burn::prelude::*;
use hone::model::sampling::{SamplingConfig, generate, generate_groups};

// The allocator of hone's binary, so speed is what `hone run` sees.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `runs` timed calls of `f` after one warm-up, and the last call's output.
fn timed<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut out = f();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        out = f();
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], out)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gguf = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.is_file() {
        eprintln!(
            "{} is missing: run scripts/fetch_models.sh first",
            gguf.display()
        );
        return;
    }
    let (prompts, group, new, runs) = (
        setting("HONE_BENCH_PROMPTS", 4),
        setting("HONE_BENCH_GROUP", 8),
        setting("HONE_BENCH_NEW", 48),
        setting("HONE_BENCH_RUNS", 3),
    );
    // 2 threads, as the PyTorch side.
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build_global()
        .ok();
    let device = Device::flex();
    let loaded = hone::model::load(&gguf, &device).expect("the GGUF loads");
    let backbone = loaded.model.backbone;
    let tokenizer = loaded.tokenizer.expect("the GGUF carries its tokenizer");
    let problems = std::fs::read_to_string(root.join("data/arithmetic/train.jsonl"))
        .expect("data/arithmetic/train.jsonl (scripts/make_arithmetic.py)");
    let ids: Vec<Vec<u32>> = problems
        .lines()
        .take(prompts)
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = row["prompt"].as_str().unwrap();
            tokenizer.encode(text, true).unwrap().get_ids().to_vec()
        })
        .collect();
    let cfg = SamplingConfig {
        max_new_tokens: new,
        temperature: 1.0,
        seed: 7,
        ..SamplingConfig::default()
    };
    let tokens = (prompts * group * new) as f64;
    let lm = backbone.language_model().expect("SmolLM2 generates");
    let (grouped_s, grouped) = timed(runs, || generate_groups(lm, &ids, group, &cfg, &device));
    let repeated_ids: Vec<Vec<u32>> = ids
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), group))
        .collect();
    let (repeated_s, repeated) = timed(runs, || generate(lm, &repeated_ids, &cfg, &device));
    assert_eq!(
        grouped, repeated,
        "encoding a prompt once per group changes no token"
    );
    assert!(grouped.iter().all(|a| a.len() == new));

    let python = std::env::var("HONE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let torch: Option<serde_json::Value> = (python != "none")
        .then(|| {
            let mut child = Command::new(&python)
                .arg(root.join("scripts/bench_torch_generate.py"))
                .arg(&gguf)
                .args([group, new, runs].map(|v| v.to_string()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .ok()?;
            child
                .stdin
                .take()?
                .write_all(serde_json::to_string(&ids).unwrap().as_bytes())
                .ok()?;
            let out = child.wait_with_output().ok()?;
            if !out.status.success() {
                eprintln!(
                    "the transformers baseline failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return None;
            }
            serde_json::from_slice(&out.stdout).ok()
        })
        .flatten();
    let prompt_len = ids.iter().map(Vec::len).max().unwrap_or(0);
    println!(
        "rollouts: SmolLM2-135M-Instruct f32, {prompts} prompts (up to {prompt_len} tokens) x {group} answers x {new} new tokens, 2 threads"
    );
    println!("  {:<24} {:>10} {:>12}", "", "seconds", "tokens/s");
    let row = |name: &str, s: f64| println!("  {name:<24} {s:>10.2} {:>12.1}", tokens / s);
    row("hone grouped (grpo)", grouped_s);
    row("hone repeated", repeated_s);
    let torch_s = torch.as_ref().and_then(|t| t["seconds"].as_f64());
    if let Some(s) = torch_s {
        row("transformers generate", s);
        println!(
            "  hone grouped / transformers: {:.2}x the tokens/s",
            s / grouped_s
        );
    }
    let report = serde_json::json!({
        "prompts": prompts,
        "group": group,
        "max_new_tokens": new,
        "prompt_tokens_max": prompt_len,
        "hone_grouped_s": grouped_s,
        "hone_repeated_s": repeated_s,
        "transformers": torch,
    });
    let out = root.join("target/hone-bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("rollout.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
}
