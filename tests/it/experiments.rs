//! Runs with `--set` are experiments: they leave the recipe's lockfile and its exports as they
//! were (unless `--update-lock`), `hone runs` finds them again, and `hone status` and
//! `hone run --locked` agree about the lockfile whatever ran before.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::Project;

/// Every file under `dir`, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Whether `status` (with `set`) says the lockfile holds every stage, checked against what
/// `run --locked` (with the same `set`) does: they must always agree.
fn lockfile_current(p: &Project, set: &[&str]) -> bool {
    let mut status = vec!["status", "r.yaml"];
    status.extend(set.iter().flat_map(|s| ["--set", s]));
    let said = p.hone(&status).ok();
    let current = said.contains("`hone run --locked` passes");
    assert!(
        current != said.contains("`hone run --locked` fails"),
        "status says neither or both:\n{said}"
    );
    // `status --json` says the same, stage by stage.
    let mut json = status.clone();
    json.push("--json");
    let stages: Vec<serde_json::Value> = serde_json::from_str(&p.hone(&json).ok()).unwrap();
    assert_eq!(
        stages.iter().all(|s| s.get("lockfile_drift").is_none()),
        current,
        "status --json disagrees with status:\n{said}\n{stages:?}"
    );
    let mut run = vec!["run", "r.yaml", "--locked"];
    run.extend(set.iter().flat_map(|s| ["--set", s]));
    let locked = p.hone(&run);
    assert_eq!(
        locked.code() == 0,
        current,
        "status and --locked disagree:\nstatus:\n{said}\nrun --locked:\n{}{}",
        locked.stdout(),
        locked.stderr()
    );
    current
}

#[test]
fn set_runs_leave_the_lockfile_and_exports_alone_and_status_agrees_with_locked() {
    let p = Project::new();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2");
    for f in ["config.json", "model.safetensors"] {
        std::fs::create_dir_all(p.path("base")).unwrap();
        std::fs::copy(fixture.join(f), p.path("base").join(f)).unwrap();
    }
    p.write("data/qa.jsonl", &crate::common::qa_jsonl(20, 0));
    p.write(
        "r.yaml",
        "version: 1\nname: exp\nseed: 3\nstages:\n  qa:\n    kind: dataset\n    source: { path: data/qa.jsonl }\n    split: { validation: 0.25 }\n  out:\n    kind: export\n    model: { path: base }\n    to: dist/model\n",
    );
    // Never run: nothing in the lockfile, and both say so.
    assert!(!lockfile_current(&p, &[]));
    p.hone(&["run", "r.yaml"]).ok();
    let lock = std::fs::read(p.path("r.lock")).unwrap();
    let dist = tree(&p.path("dist"));
    assert!(lockfile_current(&p, &[]));

    // An experiment: new artifacts in the store, the lockfile and dist/ as they were.
    let shard = "stages.out.max_shard_size=60KB";
    let split = "stages.qa.split.validation=0.5";
    let exp = p.hone(&[
        "run", "r.yaml", "--set", shard, "--set", split, "--name", "halves",
    ]);
    exp.ok();
    assert_eq!(exp.ran(), ["qa", "out"]);
    assert!(
        exp.stderr().contains("experiment (--set)"),
        "{}",
        exp.stderr()
    );
    assert_eq!(std::fs::read(p.path("r.lock")).unwrap(), lock);
    assert_eq!(tree(&p.path("dist")), dist);
    assert!(lockfile_current(&p, &[]));
    assert!(!lockfile_current(&p, &[shard, split]));
    // Its artifacts are cached: the same experiment again runs nothing.
    assert!(
        p.hone(&["run", "r.yaml", "--set", shard, "--set", split])
            .ran()
            .is_empty()
    );
    // `--locked` on it fails naming each stage and the setting that moved it, and says why
    // updating the lockfile is no way out.
    let locked = p.hone(&["run", "r.yaml", "--locked", "--set", shard, "--set", split]);
    assert_ne!(locked.code(), 0);
    let err = locked.stderr();
    assert!(
        err.contains(&format!("--set {shard} --set {split}")),
        "{err}"
    );
    assert!(
        err.contains("qa: config changed: split.validation 0.25 -> 0.5"),
        "{err}"
    );
    assert!(err.contains("out: config changed: max_shard_size"), "{err}");
    assert!(err.contains("never writes the lockfile"), "{err}");

    // `hone runs` lists the runs, the experiment under its name with its overrides and the
    // metrics of the stages it ran.
    let runs = p.hone(&["runs", "r.yaml"]).ok();
    assert!(runs.contains("halves"), "{runs}");
    assert!(runs.contains(&format!("--set {shard}")), "{runs}");
    assert!(runs.contains("experiment"), "{runs}");
    assert!(runs.contains("rows_validation=10"), "{runs}");
    let json: serde_json::Value =
        serde_json::from_str(&p.hone(&["runs", "r.yaml", "--json"]).ok()).unwrap();
    let named: Vec<_> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "halves")
        .collect();
    assert_eq!(named.len(), 1, "{json:#}");
    assert_eq!(named[0]["overrides"], serde_json::json!([shard, split]));
    assert_eq!(named[0]["lockfile_updated"], false);

    // Asked to, it records itself and publishes: now the recipe as written is the one that
    // differs from the lockfile.
    p.hone(&["run", "r.yaml", "--set", shard, "--update-lock"])
        .ok();
    assert_ne!(std::fs::read(p.path("r.lock")).unwrap(), lock);
    assert_ne!(tree(&p.path("dist")), dist);
    assert!(lockfile_current(&p, &[shard]));
    assert!(!lockfile_current(&p, &[]));
    // --update-lock and --locked contradict each other.
    let both = p.hone(&["run", "r.yaml", "--set", shard, "--update-lock", "--locked"]);
    assert_eq!(both.code(), 2, "{}", both.stderr());
}
