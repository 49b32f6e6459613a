//! Helpers for end-to-end tests: a scratch project directory and the real `hone` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// An empty project: a temporary directory marked as a project root (`hone.toml`), so
    /// that its store is its own `.hone/` whatever lies above it.
    pub fn new() -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join(hone::store::PROJECT_FILE), "").unwrap();
        Project { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes `rel` (creating parent directories) and returns its path.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_hone"));
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("HONE_STORE")
            .env_remove("HONE_REMOTE")
            .env_remove("HONE_REMOTE_WRITE")
            .env_remove("RUST_LOG");
        c
    }

    pub fn hone(&self, args: &[&str]) -> Run {
        Run(self.cmd(args).output().expect("hone runs"))
    }

    pub fn store(&self) -> PathBuf {
        self.path(".hone")
    }

    /// Number of committed actions (manifests) in the store.
    pub fn actions(&self) -> usize {
        count_files(&self.store().join("actions"), "json")
    }

    pub fn blobs(&self) -> usize {
        count_files(&self.store().join("blobs"), "")
    }
}

fn count_files(dir: &Path, ext: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                count_files(&p, ext)
            } else {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                usize::from(
                    !name.starts_with('.')
                        && (ext.is_empty() || name.ends_with(&format!(".{ext}"))),
                )
            }
        })
        .sum()
}

pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts success and returns stdout.
    pub fn ok(&self) -> String {
        assert_eq!(
            self.code(),
            0,
            "hone failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
    /// Stage names that ran (from the per-stage lines).
    pub fn ran(&self) -> Vec<String> {
        self.stdout()
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("ran "))
            .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
            .collect()
    }
}

impl Run {
    /// The run as a person sees it, for a snapshot: exit code, stdout and stderr.
    pub fn transcript(&self) -> String {
        format!(
            "exit: {}\n--- stdout\n{}--- stderr\n{}",
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
}

/// Snapshot settings for output of commands run in `p` (snapshots live in
/// `tests/it/snapshots/`; review a change with `cargo insta review`, or rerun with
/// `INSTA_UPDATE=always` and read the diff): what varies between runs and machines (`p`'s
/// directory, times, digests and keys, run directories, sizes, trained floating-point values)
/// becomes a placeholder, so a snapshot changes only when the output's words, layout or
/// counts do.
pub fn snapshots(p: &Project) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    let dir = p.dir.path().display().to_string();
    let real = std::fs::canonicalize(p.dir.path())
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| dir.clone());
    s.add_filter(&regex_escape(&real), "[TMP]");
    s.add_filter(&regex_escape(&dir), "[TMP]");
    s.add_filter(&regex_escape(env!("CARGO_MANIFEST_DIR")), "[REPO]");
    // Other scratch directories of the test (a `file://` remote).
    s.add_filter(r"/tmp/\.tmp[A-Za-z0-9]+", "[SCRATCH]");
    s.add_filter(r"[0-9a-f]{64}", "[DIGEST]");
    // The store's shard directories are a digest's first two characters.
    s.add_filter(r"\b[0-9a-f]{2}/\[DIGEST\]", "[SHARD]/[DIGEST]");
    s.add_filter(r"\b[0-9a-f]{16}\b", "[KEY]");
    s.add_filter(r"runs/[^/\s]+", "runs/[RUN]");
    s.add_filter(r#""(wall_time_s)":[0-9.e-]+"#, r#""$1":[TIME]"#);
    // A time in a column: its padding depends on its width too.
    s.add_filter(r"\b\d+\.\d+s\b {2,}", "[TIME]  ");
    s.add_filter(r"\b\d+\.\d+s\b", "[TIME]");
    // What training computes depends on the CPU's float kernels; the words and counts do not.
    s.add_filter(r"((?:loss|gap|ppl|perplexity)[a-z_]*)=-?\d+\.\d+", "$1=[F]");
    s.add_filter(
        r#""([a-z_]*(?:loss|gap|ppl|perplexity)[a-z_]*)":-?[0-9.e+-]+"#,
        r#""$1":[F]"#,
    );
    s.add_filter(r"\d+(\.\d+)? (KiB|MiB|B)\b", "[SIZE]");
    s.set_prepend_module_to_snapshot(false);
    s
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$#&-~".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Runs `hone args` in `p` with more environment (a remote's endpoint, a Slurm cluster's
/// configuration).
pub fn run_with_env(p: &Project, args: &[&str], env: &[(&str, String)]) -> Run {
    Run(p
        .cmd(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("hone runs"))
}

/// Each stage's action and artifact in the lockfile `lock` of `p`: what two runs must agree
/// on to have produced the same results (wall times may differ).
pub fn lock_results(p: &Project, lock: &str) -> Vec<(String, String, String)> {
    let l: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(p.path(lock)).unwrap()).unwrap();
    l["stages"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v["action"].as_str().unwrap().to_owned(),
                v["artifact"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// `stage`'s (name, action, artifact) in `results` (from [`lock_results`]).
pub fn lock_result(results: &[(String, String, String)], stage: &str) -> (String, String, String) {
    results
        .iter()
        .find(|(name, _, _)| name == stage)
        .unwrap_or_else(|| panic!("{stage} in the lockfile"))
        .clone()
}

/// Rows of a small QA dataset as JSONL.
pub fn qa_jsonl(n: usize, offset: usize) -> String {
    (offset..offset + n)
        .map(|i| format!("{{\"question\": \"What is part number {i}?\", \"answer\": \"It is part {i} of the engine.\"}}\n"))
        .collect()
}

/// A two-dataset recipe over `data/a.jsonl` and `data/b.csv`.
pub fn two_dataset_project() -> Project {
    let p = Project::new();
    p.write("data/a.jsonl", &qa_jsonl(40, 0));
    let mut csv = String::from("text,label\n");
    for i in 0..30 {
        csv.push_str(&format!(
            "review number {i} was {},{}\n",
            if i % 2 == 0 { "great" } else { "awful" },
            i % 2
        ));
    }
    p.write("data/b.csv", &csv);
    p.write(
        "r.yaml",
        "version: 1\nname: two\nseed: 7\nstages:\n  qa:\n    kind: dataset\n    source: { path: data/a.jsonl }\n    split: { validation: 0.2 }\n  reviews:\n    kind: dataset\n    source: { path: data/b.csv }\n    split: { test: 5 }\n  qa_clean:\n    kind: dataset\n    source: { from: qa.train }\n    select: [question]\n",
    );
    p
}

/// The value of `key=...` in `hone show` output (its `metrics` line), matching whole keys.
pub fn metric(show: &str, key: &str) -> f64 {
    let needle = format!("{key}=");
    show.split_whitespace()
        .find_map(|w| w.strip_prefix(&needle))
        .unwrap_or_else(|| panic!("no {key} in:\n{show}"))
        .parse()
        .unwrap()
}

/// The manifest of the action the lockfile records for `stage` (recipe `r.yaml`).
pub fn manifest(p: &Project, stage: &str) -> serde_json::Value {
    let lock: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap();
    let action = lock["stages"][stage]["action"].as_str().unwrap().to_owned();
    let path = p
        .store()
        .join("actions")
        .join(&action[..2])
        .join(format!("{action}.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs `hone args` with the environment variable `var` set to `value`, waits until the
/// process writes `announce` on stderr, sends it `signal` (`KILL` or `INT`) and waits for it
/// to end. Returns its exit code (`None` when a signal ended it) and every stderr line.
fn interrupt_at(
    p: &Project,
    args: &[&str],
    (var, value): (&str, String),
    announce: &str,
    signal: &str,
) -> (Option<i32>, Vec<String>) {
    interrupt_at_with(p, args, &[(var, value)], announce, signal)
}

fn interrupt_at_with(
    p: &Project,
    args: &[&str],
    env: &[(&str, String)],
    announce: &str,
    signal: &str,
) -> (Option<i32>, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = p
        .cmd(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn hone");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let reached = loop {
        match rx.recv_timeout(std::time::Duration::from_secs(300)) {
            Ok(line) if line == announce => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    if !reached {
        child.kill().unwrap();
        child.wait().unwrap();
        panic!("`{announce}` never came; stderr: {seen:#?}");
    }
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    seen.extend(rx.iter());
    (status.code(), seen)
}

/// Runs `hone args` with `HONE_TEST_FAULT=point`, waits until the process reports reaching
/// the point (it then stops there), and SIGKILLs it. Returns what it wrote to stderr.
pub fn kill_at(p: &Project, args: &[&str], point: &str) -> Vec<String> {
    let fault = ("HONE_TEST_FAULT", point.to_owned());
    interrupt_at(
        p,
        args,
        fault,
        &format!("hone-fault-point: {point}"),
        "KILL",
    )
    .1
}

/// [`kill_at`] with more environment (a remote's endpoint and credentials).
pub fn kill_at_with(
    p: &Project,
    args: &[&str],
    point: &str,
    env: &[(&str, String)],
) -> Vec<String> {
    let mut env = env.to_vec();
    env.push(("HONE_TEST_FAULT", point.to_owned()));
    interrupt_at_with(p, args, &env, &format!("hone-fault-point: {point}"), "KILL").1
}

/// The shipped quickstart recipe, its paths made absolute so it runs from any directory (its
/// export lands in the project's `dist/`).
pub fn quickstart_recipe() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("recipes/quickstart.yaml"))
        .unwrap()
        .replace("../data/", &format!("{}/data/", root.display()))
        .replace("../schemas/", &format!("{}/schemas/", root.display()))
        .replace("../dist/", "dist/")
}

/// Runs `hone args` paused at `point` (`HONE_TEST_PAUSE`), presses Ctrl-C there (SIGINT),
/// and checks that hone stopped as interrupted (exit 130). Returns what it wrote to stderr.
pub fn ctrl_c_at(p: &Project, args: &[&str], point: &str) -> Vec<String> {
    let pause = ("HONE_TEST_PAUSE", format!("{point}=1500"));
    let (code, seen) = interrupt_at(p, args, pause, &format!("hone-pause-point: {point}"), "INT");
    assert_eq!(code, Some(130), "{seen:#?}");
    seen
}

/// An SFT stage of the tiny car LM (`car_lm_stages`'s `lm`) on its QA pairs: `train` is
/// appended inside its `train:` block (`", lr: 1e-3"`), `peft` is a whole line or empty
/// ([`CAR_LORA`]).
pub fn car_sft_stage(name: &str, epochs: usize, train: &str, peft: &str) -> String {
    format!(
        "  {name}:\n    kind: sft\n    model: {{ from: lm }}\n    data: {{ from: qa }}\n    max_length: 64\n{peft}    train: {{ epochs: {epochs}, batch_size: 4, lr: 2.0e-3{train} }}\n"
    )
}

/// LoRA on the tiny car LM's attention and MLP input projections.
pub const CAR_LORA: &str =
    "    peft: { method: lora, r: 8, alpha: 16, target_modules: [c_attn, c_fc] }\n";

/// The stages most training tests start from: the car corpus and QA pairs (validation splits,
/// QA grouped by prompt), a 512-token BPE, and a tiny GPT-2 pretrained on the corpus (`lm`).
/// Indented to sit under `stages:`.
pub fn car_lm_stages() -> String {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    format!(
        r#"  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
    split: {{ validation: 0.1 }}
  qa:
    kind: dataset
    source: {{ path: {d}/qa.jsonl }}
    columns: {{ question: prompt, answer: response }}
    split: {{ validation: 0.1 }}
    leakage_key: [prompt]
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 512
  lm:
    kind: pretrain
    model: {{ init: {{ arch: gpt2, layers: 2, d_model: 64, heads: 4, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 64
    train: {{ epochs: 30, batch_size: 8, lr: 3.0e-3, warmup_steps: 10 }}
"#,
        d = d.display()
    )
}

/// [`car_lm_stages`], then `sft`: LoRA fine-tuning of `lm` on the QA pairs, to a model that
/// answers the car questions in a few words (the RL tests' starting policy).
pub fn car_sft_stages() -> String {
    format!(
        r#"{car_lm}  sft:
    kind: sft
    model: {{ from: lm }}
    data: {{ from: qa }}
    max_length: 64
    peft: {{ method: lora, r: 16, alpha: 32, target_modules: [c_attn, c_proj, c_fc] }}
    train: {{ epochs: 40, batch_size: 8, lr: 1.0e-2, warmup_steps: 10 }}
"#,
        car_lm = car_lm_stages()
    )
}

/// A small preference pipeline on the car data: the corpus, QA pairs and preference pairs
/// (validation splits), a 400-token BPE, a one-layer GPT-2 SFT'd from scratch, and DPO on it.
/// `header` goes under `seed:` (e.g. `logging: ...`).
pub fn tiny_sft_dpo_recipe(name: &str, seed: u64, header: &str) -> String {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    format!(
        r#"version: 1
name: {name}
seed: {seed}
{header}stages:
  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
  qa:
    kind: dataset
    source: {{ path: {d}/qa.jsonl }}
    columns: {{ question: prompt, answer: response }}
    split: {{ validation: 0.15 }}
  prefs:
    kind: dataset
    source: {{ path: {d}/preferences.jsonl }}
    split: {{ validation: 0.2 }}
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 400
  sft:
    kind: sft
    model: {{ init: {{ arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 96 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: qa }}
    max_length: 96
    train: {{ epochs: 3, batch_size: 8, lr: 1.0e-2 }}
  dpo:
    kind: dpo
    model: {{ from: sft }}
    data: {{ from: prefs }}
    max_length: 96
    train: {{ epochs: 4, batch_size: 8, lr: 3.0e-3 }}
"#,
        d = d.display()
    )
}

/// The `metrics.jsonl` of the first run in `p`'s store: per-step and per-evaluation records.
pub fn first_run_metrics(p: &Project) -> String {
    let run = std::fs::read_dir(p.store().join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap()
}

/// A JSON array of numbers as `f32`s (the parity fixtures' vectors).
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The largest elementwise difference of two vectors of one length.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Loads `r.yaml` of `p` with `overrides` and the kinds and rewards of `kinds` (a program's
/// own registry), validates it and runs it through the library, as such a program's `hone run`
/// would.
pub fn run_with(
    p: &Project,
    overrides: &[&str],
    kinds: &hone::spec::Registry,
) -> Result<hone::exec::RunReport, String> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let recipe =
        hone::recipe::load(&p.path("r.yaml"), &overrides, kinds).map_err(|d| d.to_string())?;
    let dag = hone::plan::validate(&recipe).map_err(|d| d.to_string())?;
    let store = hone::store::Store::open(&p.store()).map_err(|e| e.to_string())?;
    hone::exec::run(
        &recipe,
        &dag,
        &store,
        hone::backend::BackendKind::Cpu,
        &hone::exec::RunOptions::default(),
        &mut hone::exec::observer::Silent,
    )
    .map_err(|e| format!("{e:#}"))
}

/// A byte-level BPE of `n` single-character tokens (GPT-2's byte alphabet from `!`) and no
/// merges, the last one a special end-of-text token: a vocabulary for the tiny fixtures.
pub fn tiny_tokenizer(n: usize) -> tokenizers::Tokenizer {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut chars = (b'!'..=b'~').map(char::from).chain('\u{a1}'..='\u{ac}');
    let vocab: tokenizers::models::bpe::Vocab = (0..n as u32 - 1)
        .map(|i| (chars.next().unwrap().to_string(), i))
        .chain([("<|endoftext|>".to_owned(), n as u32 - 1)])
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.add_special_tokens(&[tokenizers::AddedToken::from("<|endoftext|>", true)]);
    tok
}
