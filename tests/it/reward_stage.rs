//! `reward`: MiniLM (real checkpoint) with a scalar head learns preference pairs, ranks held-out
//! pairs above chance, and `hone score` orders two answers to a question it never saw (the
//! Antarctica example) the way a person would.

use std::path::Path;

use crate::common::{Project, metric};

#[test]
fn a_minilm_reward_model_prefers_accurate_answers_it_never_saw() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let m = root.join("models/all-MiniLM-L6-v2");
    assert!(
        m.join("model.safetensors").is_file(),
        "run scripts/fetch_models.sh"
    );
    let prefs = std::fs::read_to_string(root.join("data/cars/preferences.jsonl")).unwrap();
    assert!(
        !prefs.to_lowercase().contains("antarctic"),
        "the preference set must not contain the pair the test scores"
    );
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            r#"version: 1
name: rm
seed: 3
stages:
  prefs:
    kind: dataset
    source: {{ path: {} }}
    split: {{ validation: 0.2 }}
    leakage_key: [prompt]
  rm:
    kind: reward
    model: {{ path: {} }}
    data: {{ from: prefs }}
    max_length: 96
    train: {{ epochs: 6, batch_size: 8, lr: 1.0e-4, warmup_steps: 5 }}
"#,
            root.join("data/cars/preferences.jsonl").display(),
            m.display()
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "rm"]).ok();
    let (before, after) = (
        metric(&show, "accuracy_before"),
        metric(&show, "accuracy_after"),
    );
    assert!(
        after >= 0.65 && after > before,
        "held-out pairwise accuracy {before} -> {after}\n{show}"
    );
    assert!(metric(&show, "margin_after") > metric(&show, "margin_before") + 0.3);
    let manifest = crate::common::manifest(&p, "rm");
    assert_eq!(manifest["outputs"]["model"]["type"], "reward_model");

    let good = "Antarctica is governed by the Antarctic Treaty System";
    let bad = "Our penguin overlords run the show down there";
    let out = p
        .hone(&[
            "score",
            "--model",
            "r.yaml:rm",
            "--prompt",
            "Which country owns Antarctica?",
            "--response",
            bad,
            "--response",
            good,
        ])
        .ok();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].ends_with(good) && lines[1].ends_with(bad),
        "highest first:\n{out}"
    );

    // Only reward models score; a plain checkpoint is refused with the reason.
    let wrong = p.hone(&[
        "score",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "q",
        "--response",
        "a",
    ]);
    assert_eq!(wrong.code(), 1);
    assert!(
        wrong.stderr().contains("is not a reward model"),
        "{}",
        wrong.stderr()
    );
    let missing = p.hone(&[
        "score",
        "--model",
        "r.yaml:rn",
        "--prompt",
        "q",
        "--response",
        "a",
    ]);
    assert!(
        missing.stderr().contains("did you mean `rm`"),
        "{}",
        missing.stderr()
    );
}

#[test]
fn a_reward_model_can_also_regress_on_scored_responses() {
    // Scored rows made from the preference pairs (accurate answer 1, the other 0); a small
    // decoder from scratch fits them by squared error and ranks held-out answers.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let p = Project::new();
    let mut scored = String::new();
    for line in std::fs::read_to_string(root.join("data/cars/preferences.jsonl"))
        .unwrap()
        .lines()
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for (key, s) in [("chosen", 1.0), ("rejected", 0.0)] {
            scored.push_str(
                &serde_json::json!({ "prompt": v["prompt"], "response": v[key], "score": s })
                    .to_string(),
            );
            scored.push('\n');
        }
    }
    p.write("scored.jsonl", &scored);
    p.write(
        "r.yaml",
        &format!(
            r#"version: 1
name: rm
seed: 3
stages:
  corpus: {{ kind: dataset, source: {{ path: {} }} }}
  scored:
    kind: dataset
    source: {{ path: scored.jsonl }}
    split: {{ validation: 0.2 }}
    leakage_key: [prompt]
  tok: {{ kind: tokenizer, data: {{ from: corpus }}, vocab_size: 400 }}
  rm:
    kind: reward
    model: {{ init: {{ arch: gpt2, layers: 2, d_model: 64, heads: 4, context: 96 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: scored }}
    score_column: score
    max_length: 96
    train: {{ epochs: 30, batch_size: 8, lr: 1.0e-3, warmup_steps: 5 }}
"#,
            root.join("data/cars/corpus.jsonl").display()
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "rm"]).ok();
    assert!(
        metric(&show, "rmse_after") < metric(&show, "rmse_before"),
        "{show}"
    );
    assert!(
        metric(&show, "correlation_after") > metric(&show, "correlation_before") + 0.25,
        "{show}"
    );
    assert_eq!(
        crate::common::manifest(&p, "rm")["outputs"]["model"]["type"],
        "reward_model"
    );
}
