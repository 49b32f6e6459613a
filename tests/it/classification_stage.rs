//! `sft` with `task: classification`: sentiment on the shipped car reviews, with a decoder
//! (pooled at the last real token) and with the real MiniLM encoder (through its pooler).

use std::path::Path;

use crate::common::{Project, metric};

#[test]
fn sentiment_classifiers_learn_on_held_out_reviews() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (d, m) = (root.join("data/cars"), root.join("models/all-MiniLM-L6-v2"));
    assert!(
        m.join("model.safetensors").is_file(),
        "run scripts/fetch_models.sh"
    );
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            r#"version: 1
name: cls
seed: 3
stages:
  corpus: {{ kind: dataset, source: {{ path: {d}/corpus.jsonl }} }}
  reviews:
    kind: dataset
    source: {{ path: {d}/reviews.jsonl }}
    split: {{ validation: 0.25 }}
  tok: {{ kind: tokenizer, data: {{ from: corpus }}, vocab_size: 400 }}
  lm:
    kind: pretrain
    model: {{ init: {{ arch: gpt2, layers: 2, d_model: 64, heads: 4, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 64
    train: {{ epochs: 10, batch_size: 8, lr: 3.0e-3 }}
  gpt:
    kind: sft
    task: classification
    model: {{ from: lm }}
    data: {{ from: reviews }}
    max_length: 64
    train: {{ epochs: 10, batch_size: 8, lr: 2.0e-3, warmup_steps: 5 }}
  minilm:
    kind: sft
    task: classification
    model: {{ path: {m} }}
    data: {{ from: reviews }}
    max_length: 64
    peft: {{ method: lora, r: 8, alpha: 16 }}
    train: {{ epochs: 6, batch_size: 8, lr: 2.0e-3, warmup_steps: 3 }}
  eval:
    kind: evaluate
    models: {{ gpt: {{ from: gpt }}, minilm: {{ from: minilm }} }}
    classification: {{ data: {{ from: reviews }}, max_length: 64 }}
"#,
            d = d.display(),
            m = m.display()
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    for stage in ["gpt", "minilm"] {
        let show = p.hone(&["show", "r.yaml", stage]).ok();
        let (before, after) = (
            metric(&show, "accuracy_before"),
            metric(&show, "accuracy_after"),
        );
        assert!(
            after >= 0.9 && after > before,
            "{stage}: accuracy {before} -> {after}\n{show}"
        );
        assert!(metric(&show, "macro_f1_after") >= 0.9, "{show}");
        // The evaluate stage scores the saved model (labels mapped through its id2label) as
        // the training stage scored it in memory.
        let eval = p.hone(&["show", "r.yaml", "eval"]).ok();
        assert!(
            (metric(&eval, &format!("{stage}.accuracy")) - after).abs() < 1e-3,
            "{eval}\n{show}"
        );
    }
    let minilm = p.hone(&["show", "r.yaml", "minilm"]).ok();
    assert!(
        minilm.contains("output   adapter"),
        "LoRA on MiniLM writes a PEFT adapter:\n{minilm}"
    );
}
