//! The command line's output, whole, as a person sees it: `run` (first, cached, JSON lines),
//! `status` with reasons, `show`, `dag`, `validate` errors and `cache verify`. Snapshots live in
//! `tests/it/snapshots/`; review a change with `cargo insta review` (or rerun with
//! `INSTA_UPDATE=always` and read the diff). Times, temporary paths, digests and trained
//! floating-point values are filtered out, so a snapshot changes only when the output's words,
//! layout or counts do.

use crate::common::Project;

/// A small pipeline: a dataset split three ways, a tokenizer trained on it, and a tiny GPT-2
/// pretrained for a few steps.
fn recipe(p: &Project) {
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "{{\"text\": \"The engine part number {i} keeps the car running smoothly on long roads.\"}}\n"
            )
        })
        .collect();
    p.write("data/corpus.jsonl", &rows);
    p.write(
        "r.yaml",
        "version: 1
name: snap
seed: 7
stages:
  corpus:
    kind: dataset
    source: { path: data/corpus.jsonl }
    split: { validation: 0.2, test: 0.1 }
  tok:
    kind: tokenizer
    data: { from: corpus.train }
    vocab_size: 320
  lm:
    kind: pretrain
    model: { init: { arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 32 } }
    tokenizer: { from: tok }
    data: { from: corpus }
    max_length: 32
    train: { epochs: 2, batch_size: 8, lr: 1.0e-3 }
",
    );
}

/// Runs `hone args` in `p`, and returns its exit code, stdout and stderr as one text.
fn hone(p: &Project, args: &[&str]) -> String {
    p.hone(args).transcript()
}

fn settings(p: &Project) -> insta::Settings {
    crate::common::snapshots(p)
}

#[test]
fn run_status_show_dag_and_cache_verify() {
    let p = Project::new();
    recipe(&p);
    let s = settings(&p);
    s.bind(|| {
        insta::assert_snapshot!("validate_ok", hone(&p, &["validate", "r.yaml"]));
        insta::assert_snapshot!("dag", hone(&p, &["dag", "r.yaml"]));
        insta::assert_snapshot!(
            "dag_mermaid",
            hone(&p, &["dag", "r.yaml", "--format", "mermaid"])
        );
        insta::assert_snapshot!("status_empty_store", hone(&p, &["status", "r.yaml"]));
        insta::assert_snapshot!("run_first", hone(&p, &["run", "r.yaml"]));
        insta::assert_snapshot!("run_cached", hone(&p, &["run", "r.yaml"]));
        insta::assert_snapshot!(
            "status_changed_config",
            hone(
                &p,
                &["status", "r.yaml", "--set", "stages.lm.train.lr=2.0e-3"]
            )
        );
        insta::assert_snapshot!("show_dataset", hone(&p, &["show", "r.yaml", "corpus"]));
        insta::assert_snapshot!("cache_verify_clean", hone(&p, &["cache", "verify"]));
    });
    // A flipped byte in a stored blob is found, named and counted.
    let blobs = p.store().join("blobs");
    let blob = walk(&blobs).into_iter().next().expect("a blob");
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    s.bind(|| {
        insta::assert_snapshot!("cache_verify_corrupt", hone(&p, &["cache", "verify"]));
    });
}

#[test]
fn run_as_json_lines() {
    let p = Project::new();
    recipe(&p);
    let s = settings(&p);
    s.bind(|| {
        let first = hone(&p, &["run", "r.yaml", "--log-format", "json"]);
        // Progress events come at most once a second: how many depends on the machine.
        let stable: Vec<&str> = first
            .lines()
            .filter(|l| !l.starts_with("{\"event\":\"progress\""))
            .collect();
        insta::assert_snapshot!("run_json", stable.join("\n"));
    });
    // Every line of stdout is one JSON object with an `event`.
    let out = p.hone(&["run", "r.yaml", "--log-format", "json"]);
    for line in out.stdout().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(v["event"].is_string(), "{line}");
    }
}

#[test]
fn validate_reports_every_error_located() {
    let p = Project::new();
    recipe(&p);
    p.write(
        "bad.yaml",
        "version: 1
name: bad
stages:
  corpus:
    kind: dataset
    source: { path: data/corpus.jsonl }
    splt: { validation: 0.2 }
  tok:
    kind: tokeniser
    data: { from: corpus }
  lm:
    kind: pretrain
    model: { init: { arch: gpt2, layers: 1, d_model: 30, heads: 4, context: 32 } }
    tokenizer: { from: tokk }
    data: { from: corpus.missing }
    max_length: 64
    train: { epochs: 0, batch_size: 8, lr: 1.0e-3 }
",
    );
    settings(&p).bind(|| {
        insta::assert_snapshot!("validate_errors", hone(&p, &["validate", "bad.yaml"]));
    });
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for e in entries {
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

/// `hone schema | head -1`: a reader that stops early ends hone quietly (SIGPIPE), with no
/// "Broken pipe" panic on stderr.
#[cfg(unix)]
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_hone"))
        .arg("schema")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is dropped here, with most of the schema unread.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The schema (76 KB) is larger than a pipe's buffer (64 KB on Linux), so hone was still
    // writing when the reader left: SIGPIPE ended it.
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

/// With stderr redirected (CI, nohup, Slurm), a training stage still shows it is moving: plain
/// progress lines with the step, loss, learning rate, tokens/s and the time left, at most one
/// each `HONE_PROGRESS_INTERVAL` seconds; at the default (10 s) this quick run prints none.
#[test]
fn a_redirected_run_prints_progress_lines_at_a_bounded_rate() {
    let p = Project::new();
    recipe(&p);
    let run = |interval: &str| {
        let out = p
            .cmd(&["run", "r.yaml", "--force", "lm"])
            .env("HONE_PROGRESS_INTERVAL", interval)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let every = run("0");
    let lm: Vec<&str> = every
        .lines()
        .filter(|l| l.trim_start().starts_with("progress  lm") && l.contains("loss"))
        .collect();
    // Interval 0: a line at every update, so one for each step at least.
    let steps = |l: &str| -> (u64, u64) {
        let frac = l
            .split_whitespace()
            .find(|w| w.contains('/') && !w.ends_with("/s"));
        let (a, b) = frac.and_then(|f| f.split_once('/')).expect("a position");
        (a.parse().unwrap(), b.parse().unwrap())
    };
    let (last_pos, total) = steps(lm.last().expect("progress lines"));
    assert!(total >= 4 && last_pos == total, "{every}");
    for pos in 1..=total {
        assert!(
            lm.iter().any(|l| steps(l) == (pos, total)),
            "step {pos}: {every}"
        );
    }
    let last = lm.last().unwrap();
    assert!(last.contains("(100%)"), "{last}");
    assert!(
        last.contains("lr ") && last.contains("tokens/s") && last.contains("ETA 0s"),
        "{last}"
    );
    let default = run("10");
    assert!(!default.contains("progress"), "{default}");
}
