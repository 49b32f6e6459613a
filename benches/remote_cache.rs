//! Remote-cache benchmarks (not tests): `cargo bench --bench remote_cache`, against a real S3
//! server on loopback (moto, from `scripts/test_services.sh`).
//!
//! - pull of the quickstart's artifacts into an empty store (`hone cache pull`): bytes/s,
//! - pull of one large dataset artifact (HONE_BENCH_MB of text, default 128): bytes/s,
//! - what a configured remote adds to a fully cached `hone run` and `hone status` of the
//!   quickstart (goal: nothing, since nothing is missing; status < 100 ms).
//!
//! Prints a table and writes `target/hone-bench/remote_cache.json`.

#[path = "../tests/it/services.rs"]
#[allow(dead_code)]
mod services;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use services::S3Server;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

/// Runs hone in `dir` with `env`; returns the wall time in seconds.
fn hone(dir: &Path, args: &[&str], env: &[(&str, String)]) -> f64 {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(args)
        .current_dir(dir)
        .env_remove("HONE_REMOTE")
        .env_remove("HONE_REMOTE_WRITE")
        .env_remove("HONE_STORE")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let t = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "hone {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

fn store_bytes(dir: &Path) -> u64 {
    hone::store::hash::walk_files(dir)
        .unwrap()
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).unwrap().len())
        .sum()
}

/// A project directory holding `recipe` as `r.yaml` (its own project root and store).
fn project(root: &Path, name: &str, recipe: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hone.toml"), "").unwrap();
    std::fs::write(dir.join("r.yaml"), recipe).unwrap();
    dir
}

/// Pushes `recipe` from a first project, then pulls it into fresh ones `n` times: median
/// seconds and the bytes one pull writes into the store's blobs.
fn push_then_pull(
    root: &Path,
    name: &str,
    recipe: &str,
    env: &[(&str, String)],
    n: usize,
) -> (f64, u64) {
    let a = project(root, &format!("{name}-a"), recipe);
    let mut write = env.to_vec();
    write.push(("HONE_REMOTE_WRITE", "1".into()));
    hone(&a, &["run", "r.yaml", "-q"], &write);
    let mut times = Vec::new();
    let mut bytes = 0;
    for i in 0..n {
        let b = project(root, &format!("{name}-b{i}"), recipe);
        std::fs::copy(a.join("r.lock"), b.join("r.lock")).unwrap();
        times.push(hone(&b, &["cache", "pull", "r.yaml"], env));
        bytes = store_bytes(&b.join(".hone/blobs"));
        std::fs::remove_dir_all(&b).unwrap();
    }
    (median(times), bytes)
}

fn main() {
    let mb: u64 = std::env::var("HONE_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("target/hone-bench");
    std::fs::create_dir_all(&root).unwrap();
    let work = tempfile::tempdir_in(&root).unwrap();
    let server = S3Server::start();
    let mut env = server.env();
    env.push(("HONE_REMOTE", server.url("bench")));

    let quickstart = std::fs::read_to_string(manifest_dir.join("recipes/quickstart.yaml"))
        .unwrap()
        .replace("../data/", &format!("{}/data/", manifest_dir.display()))
        .replace(
            "../schemas/",
            &format!("{}/schemas/", manifest_dir.display()),
        )
        .replace("../dist/", "dist/");
    let (qs_s, qs_bytes) = push_then_pull(work.path(), "qs", &quickstart, &env, 5);
    let qs_mbps = qs_bytes as f64 / 1e6 / qs_s;
    println!(
        "pull of the quickstart ({:.1} MB): median {:.0} ms, {qs_mbps:.1} MB/s",
        qs_bytes as f64 / 1e6,
        qs_s * 1e3
    );

    // One large artifact: a dataset of incompressible text (hex of a xorshift stream).
    let data = work.path().join("bulk.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut written = 0;
        while written < mb << 20 {
            let mut line = String::from("{\"text\": \"");
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                line.push_str(&format!("{x:016x}"));
            }
            line.push_str("\"}\n");
            written += line.len() as u64;
            f.write_all(line.as_bytes()).unwrap();
        }
    }
    let bulk = format!(
        "version: 1\nname: bulk\nstages:\n  bulk:\n    kind: dataset\n    source: {{ path: {} }}\n",
        data.display()
    );
    let (bulk_s, bulk_bytes) = push_then_pull(work.path(), "bulk", &bulk, &env, 3);
    let bulk_mbps = bulk_bytes as f64 / 1e6 / bulk_s;
    println!(
        "pull of one {:.0} MB artifact: median {:.2} s, {bulk_mbps:.1} MB/s",
        bulk_bytes as f64 / 1e6,
        bulk_s
    );

    // A fully cached quickstart, with and without a remote configured.
    let local = project(work.path(), "cached", &quickstart);
    hone(&local, &["run", "r.yaml", "-q"], &[]);
    let runs = |args: &[&str], env: &[(&str, String)]| {
        median((0..11).map(|_| hone(&local, args, env)).collect())
    };
    let run_plain = runs(&["run", "r.yaml", "-q"], &[]);
    let run_remote = runs(&["run", "r.yaml", "-q"], &env);
    let status_plain = runs(&["status", "r.yaml"], &[]);
    let status_remote = runs(&["status", "r.yaml"], &env);
    println!(
        "fully cached run: {:.1} ms without a remote, {:.1} ms with one",
        run_plain * 1e3,
        run_remote * 1e3
    );
    println!(
        "status, fully cached: {:.1} ms without a remote, {:.1} ms with one",
        status_plain * 1e3,
        status_remote * 1e3
    );

    let report = serde_json::json!({
        "machine": { "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "server": "moto_server on 127.0.0.1",
        "quickstart_pull": { "bytes": qs_bytes, "median_s": qs_s, "mb_per_s": qs_mbps },
        "bulk_pull": { "bytes": bulk_bytes, "median_s": bulk_s, "mb_per_s": bulk_mbps },
        "cached_run_ms": { "no_remote": run_plain * 1e3, "remote": run_remote * 1e3 },
        "cached_status_ms": { "no_remote": status_plain * 1e3, "remote": status_remote * 1e3 },
        "targets": { "remote_overhead_cached": "none", "cached_status_ms": 100 },
    });
    std::fs::write(
        root.join("remote_cache.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    println!("| metric | result | target |\n|---|---|---|");
    println!(
        "| pull of the quickstart ({:.1} MB) | {:.0} ms, {qs_mbps:.1} MB/s | |",
        qs_bytes as f64 / 1e6,
        qs_s * 1e3
    );
    println!(
        "| pull of one {:.0} MB artifact | {:.2} s, {bulk_mbps:.1} MB/s | |",
        bulk_bytes as f64 / 1e6,
        bulk_s
    );
    println!(
        "| fully cached run, no remote / remote | {:.1} / {:.1} ms | no overhead |",
        run_plain * 1e3,
        run_remote * 1e3
    );
    println!(
        "| status, fully cached, no remote / remote | {:.1} / {:.1} ms | < 100 ms |",
        status_plain * 1e3,
        status_remote * 1e3
    );
}
