//! Runner benchmarks (not tests): `cargo bench --bench runner`.
//!
//! - validation + plan of a generated 200-stage recipe (target < 50 ms),
//! - a fully cached `hone run` of a recipe whose inputs total 1 GB, as a process (< 200 ms),
//! - BLAKE3 hashing throughput of a 1 GB file (>= 1 GB/s).
//!
//! Prints a table and writes `target/hone-bench/runner.json`. Set HONE_BENCH_GB to change the
//! input size (default 1).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let out = f();
    (t.elapsed().as_secs_f64(), out)
}

fn plan_200_stages(dir: &Path) -> f64 {
    std::fs::write(dir.join("d.jsonl"), "{\"q\": \"a\"}\n{\"q\": \"b\"}\n").unwrap();
    let mut recipe = String::from("version: 1\nname: big\nvars: { frac: 0.1 }\nstages:\n");
    for i in 0..200 {
        if i % 10 == 0 {
            recipe.push_str(&format!("  s{i}:\n    kind: dataset\n    source: {{ path: d.jsonl }}\n    split: {{ validation: \"${{frac}}\" }}\n"));
        } else {
            recipe.push_str(&format!("  s{i}:\n    kind: dataset\n    source: {{ from: s{}.train }}\n    split: {{ validation: 0.1 }}\n", i - 1));
        }
    }
    let path = dir.join("big.yaml");
    std::fs::write(&path, recipe).unwrap();
    let store = hone::store::Store::open(&dir.join(".hone")).unwrap();
    let mut samples = Vec::new();
    for _ in 0..21 {
        let (t, n) = time(|| {
            let recipe = hone::recipe::load(&path, &[], &hone::stages::registry()).unwrap();
            let dag = hone::plan::validate(&recipe).unwrap();
            let mut eval = hone::plan::status::Evaluator::new(
                &recipe,
                &dag,
                &store,
                hone::backend::BackendKind::Cpu,
                false,
            )
            .unwrap();
            let all: BTreeSet<usize> = (0..recipe.stages.len()).collect();
            eval.statuses(&all, &|_| false).unwrap().len()
        });
        assert_eq!(n, 200);
        samples.push(t);
    }
    median(samples)
}

/// Writes `files` JSONL files of long text rows totalling `total` bytes.
fn write_inputs(dir: &Path, files: usize, total: u64) {
    let per_file = total / files as u64;
    let text: String = "lorem ipsum dolor sit amet ".repeat(2000);
    for f in 0..files {
        let path = dir.join(format!("part{f}.jsonl"));
        if std::fs::metadata(&path).is_ok_and(|m| m.len() >= per_file) {
            continue;
        }
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut written = 0u64;
        let mut i = 0u64;
        while written < per_file {
            let line = format!("{{\"id\": {i}, \"text\": \"{f} {i} {text}\"}}\n");
            w.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            i += 1;
        }
    }
}

fn main() {
    let gb: f64 = std::env::var("HONE_BENCH_GB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let total = (gb * 1e9) as u64;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hone-bench");
    std::fs::create_dir_all(&root).unwrap();
    let work = tempfile::tempdir_in(&root).unwrap();

    let plan_s = plan_200_stages(work.path());
    println!("validate + plan, 200 stages: median {:.1} ms", plan_s * 1e3);

    // A recipe of 8 dataset stages whose inputs total `total` bytes.
    let data = root.join("inputs");
    std::fs::create_dir_all(&data).unwrap();
    let files = 8;
    write_inputs(&data, files, total);
    let mut recipe = String::from("version: 1\nname: cached\nstages:\n");
    for f in 0..files {
        recipe.push_str(&format!("  part{f}:\n    kind: dataset\n    source: {{ path: {}/part{f}.jsonl }}\n    split: {{ validation: 0.01 }}\n", data.display()));
    }
    let rpath = work.path().join("cached.yaml");
    std::fs::write(&rpath, recipe).unwrap();
    let hone = env!("CARGO_BIN_EXE_hone");
    let run = || {
        let out = Command::new(hone)
            .args(["run", "--quiet"])
            .arg(&rpath)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (first_s, _) = time(run);
    println!("first run (parse + write {gb} GB of JSONL): {first_s:.1} s");
    let mut cached = Vec::new();
    for _ in 0..11 {
        cached.push(time(run).0);
    }
    let cached_s = median(cached);
    println!(
        "fully cached rerun, {gb} GB of inputs: median {:.1} ms",
        cached_s * 1e3
    );

    let mut hashing = Vec::new();
    for _ in 0..5 {
        let (t, _) = time(|| {
            for f in 0..files {
                hone::store::hash::hash_file(&data.join(format!("part{f}.jsonl"))).unwrap();
            }
        });
        hashing.push(total as f64 / 1e9 / t);
    }
    let gbps = median(hashing);
    println!("BLAKE3 hashing (page cache warm): median {gbps:.2} GB/s");

    let report = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "plan_200_stages_ms": plan_s * 1e3,
        "cached_rerun_ms": cached_s * 1e3,
        "input_gb": gb,
        "hash_gb_per_s": gbps,
        "targets": { "plan_200_stages_ms": 50, "cached_rerun_ms": 200, "hash_gb_per_s": 1.0 },
    });
    std::fs::write(
        root.join("runner.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("| metric | median | target |\n|---|---|---|");
    println!(
        "| validate + plan, 200 stages | {:.1} ms | < 50 ms |",
        plan_s * 1e3
    );
    println!(
        "| fully cached rerun, {gb} GB inputs | {:.1} ms | < 200 ms |",
        cached_s * 1e3
    );
    println!("| BLAKE3 hashing | {gbps:.2} GB/s | >= 1 GB/s |");
}
