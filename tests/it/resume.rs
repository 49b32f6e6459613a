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

/// A project that ran `recipe` uninterrupted, and a fresh one with it.
fn uninterrupted_and_fresh(recipe: &str) -> (Project, Project) {
    let whole = Project::new();
    whole.write("r.yaml", recipe);
    whole.hone(&["run", "r.yaml"]).ok();
    let p = Project::new();
    p.write("r.yaml", recipe);
    (whole, p)
}

#[test]
fn a_killed_training_run_resumes_to_the_same_artifacts() {
    let (whole, p) = uninterrupted_and_fresh(&recipe());
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

/// Every file under `dir`, recursively.
#[test]
fn a_killed_f16_run_resumes_to_the_same_artifacts() {
    // f16 LoRA: the base stored in f16, the loss scale carried in the checkpoint.
    let recipe = recipe().replace(
        "checkpoint_every: 4 }",
        "checkpoint_every: 4, precision: f16 }",
    );
    let (whole, p) = uninterrupted_and_fresh(&recipe);
    crate::common::kill_at(&p, &["run", "r.yaml"], "checkpoint-8");
    let again = p.hone(&["run", "r.yaml"]);
    again.ok();
    assert!(
        again.stderr().contains("resuming  sft") && again.stderr().contains("step 8"),
        "{}",
        again.stderr()
    );
    let (a, b) = (artifacts(&whole), artifacts(&p));
    assert_eq!(
        a["stages"]["sft"]["artifact"],
        b["stages"]["sft"]["artifact"]
    );
    let show = p.hone(&["show", "r.yaml", "sft"]).ok();
    assert!(show.contains("resumed_from"), "{show}");
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn flip_a_bit(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x04;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_tokenized_entry_is_recomputed_not_trained_on() {
    let p = Project::new();
    p.write("r.yaml", &recipe());
    p.hone(&["run", "r.yaml", "--until", "lm"]).ok();
    let locked = artifacts(&p);
    let entries = files_under(&p.store().join("tokenized"));
    assert!(!entries.is_empty(), "pretraining caches its tokens");
    // A flipped bit in the token ids (past the header) of every entry.
    for e in &entries {
        flip_a_bit(e, 40);
    }
    let verify = p.hone(&["cache", "verify"]);
    assert_eq!(verify.code(), 1, "{}", verify.stdout());
    assert!(
        verify.stdout().contains("damaged tokenized cache entry"),
        "{}",
        verify.stdout()
    );
    let rerun = p.hone(&["run", "r.yaml", "--until", "lm", "--force", "lm"]);
    rerun.ok();
    assert!(
        rerun
            .stderr()
            .contains("discarding a damaged tokenized cache entry"),
        "{}",
        rerun.stderr()
    );
    assert_eq!(
        artifacts(&p)["stages"]["lm"]["artifact"],
        locked["stages"]["lm"]["artifact"],
        "a damaged cache must not train a different model"
    );
    assert!(p.hone(&["cache", "verify"]).ok().contains("0 problems"));
}

#[test]
fn a_damaged_checkpoint_is_discarded_and_the_stage_trains_again() {
    let whole = Project::new();
    whole.write("r.yaml", &recipe());
    whole.hone(&["run", "r.yaml", "--until", "lm"]).ok();

    for damage in ["truncate", "huge count"] {
        let p = Project::new();
        p.write("r.yaml", &recipe());
        crate::common::kill_at(&p, &["run", "r.yaml", "--until", "lm"], "checkpoint-20");
        let params = files_under(&p.store().join("checkpoints"))
            .into_iter()
            .find(|f| f.ends_with("current/params.bin"))
            .expect("a checkpoint");
        let mut bytes = std::fs::read(&params).unwrap();
        match damage {
            "truncate" => bytes.truncate(bytes.len() / 2),
            // A tensor count of 2^60: no reader may try to reserve room for it.
            _ => bytes[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes()),
        }
        std::fs::write(&params, bytes).unwrap();

        let verify = p.hone(&["cache", "verify"]);
        assert_eq!(verify.code(), 1, "{damage}: {}", verify.stdout());
        assert!(
            verify.stdout().contains("damaged checkpoint"),
            "{damage}: {}",
            verify.stdout()
        );
        let rerun = p.hone(&["run", "r.yaml", "--until", "lm"]);
        rerun.ok();
        assert!(
            rerun.stderr().contains("discarding a damaged checkpoint")
                && !rerun.stderr().contains("resuming"),
            "{damage}: {}",
            rerun.stderr()
        );
        assert_eq!(
            artifacts(&p)["stages"]["lm"]["artifact"],
            artifacts(&whole)["stages"]["lm"]["artifact"],
            "{damage}: training again gives the uninterrupted run's model"
        );
    }
}

/// A verifier program for the resumed GRPO stage: 1 for an answer of one to three words.
const SHORT_ANSWERS: &str = "import json, sys\nfor line in sys.stdin:\n    print(1 if 1 <= len(json.loads(line)['response'].split()) <= 3 else 0)\n";

/// A tiny policy, a reward model on the preference pairs, then PPO (two passes over each
/// rollout) and GRPO (twice: once with two passes per rollout, DAPO's loss and a verifier
/// program beside the reward model), checkpointing at every step they can resume from.
fn rl_recipe() -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    format!(
        r#"version: 1
name: rl_resume
seed: 5
stages:
  corpus:
    kind: dataset
    source: {{ path: {data}/corpus.jsonl }}
  prefs:
    kind: dataset
    source: {{ path: {data}/preferences.jsonl }}
    split: {{ validation: 0.2 }}
    leakage_key: [prompt]
  prompts:
    kind: dataset
    source: {{ path: {data}/prompts.jsonl }}
    split: {{ validation: 0.25 }}
  tok:
    kind: tokenizer
    data: {{ from: corpus }}
    vocab_size: 300
  lm:
    kind: pretrain
    model: {{ init: {{ arch: llama, layers: 1, d_model: 32, heads: 2, context: 64 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: corpus }}
    max_length: 48
    train: {{ epochs: 2, batch_size: 8, lr: 3.0e-3 }}
  rm:
    kind: reward
    model: {{ from: lm }}
    data: {{ from: prefs }}
    max_length: 48
    train: {{ epochs: 1, batch_size: 8, lr: 1.0e-3 }}
  ppo:
    kind: ppo
    model: {{ from: lm }}
    reward_model: {{ from: rm }}
    prompts: {{ from: prompts }}
    max_new_tokens: 6
    ppo_epochs: 2
    train: {{ epochs: 2, batch_size: 6, lr: 1.0e-3, checkpoint_every: 1 }}
  grpo:
    kind: grpo
    model: {{ from: lm }}
    prompts: {{ from: prompts }}
    reward: {{ model: {{ from: rm }} }}
    group_size: 2
    max_new_tokens: 6
    train: {{ epochs: 2, batch_size: 6, lr: 1.0e-3, checkpoint_every: 1 }}
  dapo:
    kind: grpo
    model: {{ from: lm }}
    prompts: {{ from: prompts }}
    reward: {{ model: {{ from: rm }}, command: [python3, verify.py] }}
    group_size: 2
    max_new_tokens: 6
    loss_type: dapo
    mask_truncated: true
    num_iterations: 2
    scale_rewards: batch
    train: {{ epochs: 2, batch_size: 6, lr: 1.0e-3, checkpoint_every: 1 }}
"#,
        data = data.display()
    )
}

#[test]
fn ppo_and_grpo_resume_to_the_same_bytes_and_metrics() {
    let whole = Project::new();
    whole.write("r.yaml", &rl_recipe());
    whole.write("verify.py", SHORT_ANSWERS);
    whole.hone(&["run", "r.yaml"]).ok();
    let expected = artifacts(&whole);

    let p = Project::new();
    p.write("r.yaml", &rl_recipe());
    p.write("verify.py", SHORT_ANSWERS);
    p.hone(&["run", "r.yaml", "--until", "rm"]).ok();
    // Ctrl-C in PPO's step 3, the first pass over the second rollout: the checkpoint can
    // only be the one after step 2, the end of the first rollout.
    let stopped = crate::common::ctrl_c_at(&p, &["run", "r.yaml", "--until", "ppo"], "step-3");
    // And it says so: the checkpoint kept is step 2's, not one at the step it stopped after.
    assert!(
        stopped.iter().any(|l| l.contains(
            "stage `ppo` stopped after step 3: its checkpoint of step 2 is kept; the next run resumes there"
        )),
        "{stopped:#?}"
    );
    assert!(
        !stopped.iter().any(|l| l.contains("failed")),
        "{stopped:#?}"
    );
    // Killed in GRPO right after its step-2 checkpoint.
    crate::common::kill_at(&p, &["run", "r.yaml", "--until", "grpo"], "checkpoint-2");
    let rerun = p.hone(&["run", "r.yaml", "--until", "grpo"]);
    rerun.ok();
    assert!(
        rerun.stderr().contains("resuming  grpo"),
        "{}",
        rerun.stderr()
    );
    // Two passes per rollout: Ctrl-C in step 3, the first pass over the second rollout, keeps
    // the checkpoint of step 2, the end of the first.
    let stopped = crate::common::ctrl_c_at(&p, &["run", "r.yaml", "--until", "dapo"], "step-3");
    assert!(
        stopped.iter().any(|l| l.contains(
            "stage `dapo` stopped after step 3: its checkpoint of step 2 is kept; the next run resumes there"
        )),
        "{stopped:#?}"
    );
    let rerun = p.hone(&["run", "r.yaml"]);
    rerun.ok();
    assert!(
        rerun.stderr().contains("resuming  ppo") && rerun.stderr().contains("resuming  dapo"),
        "{}",
        rerun.stderr()
    );
    let got = artifacts(&p);
    for stage in ["ppo", "grpo", "dapo"] {
        assert_eq!(
            got["stages"][stage]["artifact"], expected["stages"][stage]["artifact"],
            "{stage}: the resumed run's model differs from the uninterrupted one"
        );
        assert_eq!(
            got["stages"][stage]["metrics"], expected["stages"][stage]["metrics"],
            "{stage}: the resumed run's metrics differ from the uninterrupted one"
        );
    }
    let show = p.hone(&["show", "r.yaml", "ppo"]).ok();
    assert!(show.contains("resumed_from"), "{show}");
}

#[test]
fn a_kill_while_checkpoints_rotate_leaves_nothing_damaged_and_resumes() {
    let (whole, p) = uninterrupted_and_fresh(&recipe());
    crate::common::kill_at(&p, &["run", "r.yaml"], "checkpoint-8");
    // What a SIGKILL part-way through deleting the previous checkpoint leaves: `old/` with
    // only some of its files, beside the new, intact `current/`.
    let checkpoints: Vec<_> = std::fs::read_dir(p.store().join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let (current, old) = (checkpoints[0].join("current"), checkpoints[0].join("old"));
    assert!(current.join("params.bin").is_file() && !old.exists());
    std::fs::create_dir(&old).unwrap();
    std::fs::copy(current.join("params.bin"), old.join("params.bin")).unwrap();
    let verify = p.hone(&["cache", "verify"]);
    assert_eq!(verify.code(), 0, "{}{}", verify.stdout(), verify.stderr());
    assert!(
        verify.stdout().contains("0 problems"),
        "{}",
        verify.stdout()
    );
    let again = p.hone(&["run", "r.yaml"]);
    again.ok();
    assert!(
        again.stderr().contains("resuming  sft") && again.stderr().contains("step 8"),
        "{}",
        again.stderr()
    );
    assert_eq!(
        artifacts(&whole)["stages"]["sft"]["artifact"],
        artifacts(&p)["stages"]["sft"]["artifact"]
    );
}
