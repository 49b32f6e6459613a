//! Pitfall guards in training stages: catastrophic forgetting measured on a probe set (warn,
//! or fail and commit nothing), replay of general text that prevents it, and the train /
//! validation gap reported as a number.

use crate::common::{Project, metric};

fn recipe(fail: bool) -> String {
    format!(
        r#"version: 1
name: forget
seed: 42
stages:
{car_lm}  sft:
    kind: sft
    model: {{ from: lm }}
    data: {{ from: qa }}
    max_length: 64
    forgetting_probe: {{ data: {{ from: corpus.validation }}, fail: {fail} }}
    train: {{ epochs: 20, batch_size: 8, lr: 2.0e-3, warmup_steps: 10 }}
  sft_replay:
    kind: sft
    model: {{ from: lm }}
    data: {{ from: qa }}
    max_length: 64
    forgetting_probe: {{ data: {{ from: corpus.validation }} }}
    replay: {{ data: {{ from: corpus.train }}, ratio: 0.5 }}
    train: {{ epochs: 20, batch_size: 8, lr: 2.0e-3, warmup_steps: 10 }}
  eval_heldout:
    kind: evaluate
    models: {{ sft: {{ from: sft }} }}
    qa: {{ data: {{ from: qa }} }}
  eval_leaky:
    kind: evaluate
    models: {{ sft: {{ from: sft }} }}
    qa: {{ data: {{ from: qa.train }} }}
"#,
        car_lm = crate::common::car_lm_stages()
    )
}

#[test]
fn forgetting_is_measured_flagged_and_prevented_by_replay() {
    let p = Project::new();
    p.write("r.yaml", &recipe(false));
    let run = p.hone(&["run", "r.yaml"]).ok();

    let sft = p.hone(&["show", "r.yaml", "sft"]).ok();
    let (before, after) = (
        metric(&sft, "probe_ppl_before"),
        metric(&sft, "probe_ppl_after"),
    );
    assert!(
        after > before * 1.25,
        "full SFT forgets: {before} -> {after}"
    );
    assert!(
        run.contains("warning sft")
            && run.contains("catastrophic forgetting: perplexity on the forgetting probe rose"),
        "{run}"
    );

    let replay = p.hone(&["show", "r.yaml", "sft_replay"]).ok();
    let replayed = metric(&replay, "probe_ppl_after");
    assert!(
        replayed < before * 1.25 && replayed < after / 2.0,
        "replay keeps the probe's perplexity: {before} -> {replayed} (without replay {after})"
    );
    assert!(
        metric(&replay, "exact_match_after") >= metric(&sft, "exact_match_after") - 0.15,
        "replay costs little of what SFT learns:\n{replay}\n{sft}"
    );
    assert!(
        !run.contains("warning sft_replay             catastrophic"),
        "{run}"
    );
    // The gap between validation and training loss is a number in every training stage.
    for stage in ["lm", "sft", "sft_replay"] {
        let show = p.hone(&["show", "r.yaml", stage]).ok();
        metric(&show, "train_val_gap");
    }

    // Evaluating on the training split is flagged; the held-out split is clean.
    assert!(
        run.contains("warning eval_leaky")
            && run.contains(
                "leakage: 59 of 59 examples of qa evaluation also in the training data of `sft`"
            ),
        "{run}"
    );
    assert!(!run.contains("warning eval_heldout"), "{run}");

    // `fail: true`: the same forgetting stops the stage and commits nothing.
    let strict = Project::new();
    strict.write("r.yaml", &recipe(true));
    let run = strict.hone(&["run", "r.yaml", "--until", "sft"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr().contains("catastrophic forgetting")
            && run.stderr().contains("nothing was committed"),
        "{}",
        run.stderr()
    );
    let lock = std::fs::read_to_string(strict.path("r.lock")).unwrap();
    assert!(lock.contains("  lm:") && !lock.contains("  sft:"), "{lock}");
}
