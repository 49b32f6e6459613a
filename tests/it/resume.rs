//! Training resumes after a SIGKILL: a run killed after a checkpoint (or halfway through
//! writing one) continues from the last complete checkpoint on the next `hone run`, and ends
//! with the same bytes as a run that was never interrupted.

use std::path::Path;

use crate::common::Project;

fn recipe() -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    format!(
        r#"version: 1
name: resume
seed: 11
stages:
  corpus:
    kind: dataset
    source: {{ path: {data}/corpus.jsonl }}
    split: {{ validation: 0.1 }}
  qa:
    kind: dataset
    source: {{ path: {data}/qa.jsonl }}
    columns: {{ question: prompt, answer: response }}
    split: {{ validation: 0.1 }}
    leakage_key: [prompt]
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 300
  lm:
    kind: pretrain
    model: {{ init: {{ arch: llama, layers: 1, d_model: 32, heads: 2, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 48
    train: {{ epochs: 8, batch_size: 8, lr: 3.0e-3, warmup_steps: 4, eval_every: 10, checkpoint_every: 5 }}
  sft:
    kind: sft
    model: {{ from: lm }}
    data: {{ from: qa }}
    max_length: 48
    eval_max_new_tokens: 4
    peft: {{ method: lora, r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj] }}
    train: {{ epochs: 6, batch_size: 8, grad_accum: 2, lr: 1.0e-2, checkpoint_every: 4 }}
"#,
        data = data.display()
    )
}

fn artifacts(p: &Project) -> serde_yaml::Value {
    serde_yaml::from_str(&std::fs::read_to_string(p.path("r.lock")).unwrap()).unwrap()
}

#[test]
fn a_killed_training_run_resumes_to_the_same_artifacts() {
    let whole = Project::new();
    whole.write("r.yaml", &recipe());
    whole.hone(&["run", "r.yaml"]).ok();

    let p = Project::new();
    p.write("r.yaml", &recipe());
    // Killed right after pretraining's step-20 checkpoint.
    crate::common::kill_at(&p, &["run", "r.yaml"], "checkpoint-20");
    // The rerun resumes pretraining there and is killed in SFT while it writes its step-12
    // checkpoint (after step 8's was complete).
    let second = crate::common::kill_at(&p, &["run", "r.yaml"], "checkpoint-12-written");
    assert!(
        second
            .iter()
            .any(|l| l.contains("resuming  lm") && l.contains("step 20")),
        "{second:#?}"
    );
    let third = p.hone(&["run", "r.yaml"]);
    third.ok();
    assert_eq!(third.ran(), ["sft"]);
    assert!(
        third.stderr().contains("resuming  sft") && third.stderr().contains("step 8"),
        "{}",
        third.stderr()
    );

    let (a, b) = (artifacts(&whole), artifacts(&p));
    for stage in ["lm", "sft"] {
        assert_eq!(
            a["stages"][stage]["artifact"], b["stages"][stage]["artifact"],
            "stage {stage}: the resumed run's artifact differs from the uninterrupted one"
        );
    }
    // The step log survived the kills: every step is in the summary's count.
    let show = p.hone(&["show", "r.yaml", "lm"]).ok();
    assert!(show.contains("resumed_from"), "{show}");
    // Committed actions drop their checkpoints; nothing is left to collect.
    let left = std::fs::read_dir(p.store().join("checkpoints"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "checkpoints of committed actions were removed");
    let verify = p.hone(&["cache", "verify"]).ok();
    assert!(verify.contains("0 problems"), "{verify}");
}
