//! Models named by Hugging Face Hub id resolve from a local Hugging Face cache laid out as
//! `huggingface_hub` lays it out (refs, snapshots of symlinks into blobs): the stage reads the
//! snapshot the revision names, the lockfile records the commit, and a model or revision the
//! cache lacks is a located validation error saying how to fetch it.

use std::path::Path;

use crate::common::{Project, metric};

const COMMIT: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

/// Lays `model` (an HF directory) out in a hub cache at `cache` as `acme/tiny` at `main`.
fn lay_out(model: &Path, cache: &Path) {
    let repo = cache.join("models--acme--tiny");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for entry in std::fs::read_dir(model).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || name == "README.md" {
            continue;
        }
        let bytes = std::fs::read(entry.path()).unwrap();
        let blob = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(repo.join("blobs").join(&blob), bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snapshot.join(&name))
            .unwrap();
    }
}

#[test]
fn a_hub_id_resolves_from_a_laid_out_cache_and_the_lockfile_records_the_commit() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    let p = Project::new();
    let stages = format!(
        r#"  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
    split: {{ validation: 0.2 }}
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 300
  lm:
    kind: pretrain
    model: {{ init: {{ arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 64
    train: {{ epochs: 3, batch_size: 8, lr: 3.0e-3 }}
"#,
        d = d.display()
    );
    p.write(
        "train.yaml",
        &format!(
            "version: 1\nname: train\nseed: 2\nstages:\n{stages}  out:\n    kind: export\n    model: {{ from: lm }}\n    to: dist/tiny\n  eval:\n    kind: evaluate\n    models: {{ local: {{ from: lm }} }}\n    perplexity: {{ data: {{ from: corpus }}, max_length: 64 }}\n"
        ),
    );
    p.hone(&["run", "train.yaml"]).ok();
    let cache = p.path("hf-cache");
    lay_out(&p.path("dist/tiny"), &cache);

    let recipe = |revision: &str| {
        format!(
            "version: 1\nname: hub\nseed: 2\nstages:\n  corpus:\n    kind: dataset\n    source: {{ path: {d}/corpus.jsonl }}\n    split: {{ validation: 0.2 }}\n  eval:\n    kind: evaluate\n    models:\n      tiny: {{ hub: acme/tiny, revision: {revision} }}\n    perplexity: {{ data: {{ from: corpus }}, max_length: 64 }}\n",
            d = d.display()
        )
    };
    p.write("r.yaml", &recipe("main"));
    let run = p
        .cmd(&["run", "r.yaml"])
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The very model, measured the same.
    let trained = p.hone(&["show", "train.yaml", "eval"]).ok();
    let show = String::from_utf8_lossy(
        &p.cmd(&["show", "r.yaml", "eval"])
            .env("HF_HUB_CACHE", &cache)
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    assert_eq!(
        metric(&show, "tiny.perplexity"),
        metric(&trained, "local.perplexity"),
        "{show}"
    );
    let lock = std::fs::read_to_string(p.path("r.lock")).unwrap();
    assert!(
        lock.contains(&format!("models.tiny: acme/tiny@{COMMIT}")),
        "{lock}"
    );

    // A revision the cache does not have: located, with what to do.
    p.write("r.yaml", &recipe("v2"));
    let bad = p
        .cmd(&["validate", "r.yaml"])
        .env("HF_HUB_CACHE", &cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr).to_string();
    assert!(!bad.status.success());
    assert!(
        err.contains("acme/tiny is in the Hugging Face cache, but not at revision `v2`"),
        "{err}"
    );
    assert!(err.contains("r.yaml:"), "{err}");
    assert!(
        err.contains("huggingface-cli download acme/tiny --revision v2"),
        "{err}"
    );
    // No cache at all.
    p.write("r.yaml", &recipe("main"));
    let none = p
        .cmd(&["validate", "r.yaml"])
        .env("HF_HUB_CACHE", p.path("no-cache"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&none.stderr).to_string();
    assert!(
        err.contains("acme/tiny is not in the Hugging Face cache"),
        "{err}"
    );
}
