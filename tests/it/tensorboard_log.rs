//! `logging: { tensorboard: DIR }`: every training stage of a run writes an event file as it
//! trains, which reads back (CRCs checked, as TensorBoard's reader does) with a point per
//! optimizer step, validation points, the stage's final metrics, and for DPO TRL's per-step
//! metrics, which show the preference being learnt.

use std::path::{Path, PathBuf};

use crate::common::{Project, metric, tiny_sft_dpo_recipe};
use hone::exec::tensorboard::read_scalars;

fn event_file(dir: &Path, stage: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "one run: {runs:?}");
    let stage_dir = runs[0].join(stage);
    let files: Vec<PathBuf> = std::fs::read_dir(&stage_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", stage_dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("events.out.tfevents.")
    );
    files[0].clone()
}

#[test]
fn training_stages_log_tensorboard_events_with_trl_dpo_metrics() {
    let p = Project::new();
    p.write(
        "r.yaml",
        &tiny_sft_dpo_recipe("tb", 6, "logging: { tensorboard: tb }\n"),
    );
    p.hone(&["run", "r.yaml"]).ok();

    let sft = read_scalars(&event_file(&p.path("tb"), "sft")).unwrap();
    let show = p.hone(&["show", "r.yaml", "sft"]).ok();
    let tagged = |events: &[(i64, String, f32)], tag: &str| -> Vec<(i64, f32)> {
        events
            .iter()
            .filter(|(_, t, _)| t == tag)
            .map(|(s, _, v)| (*s, *v))
            .collect()
    };
    let loss = tagged(&sft, "train/loss");
    assert_eq!(
        loss.len() as f64,
        metric(&show, "steps"),
        "a point per step"
    );
    assert_eq!(loss[0].0, 1);
    assert!(
        (f64::from(loss[0].1) - metric(&show, "train_loss_first")).abs() < 1e-3,
        "{loss:?}"
    );
    assert_eq!(
        tagged(&sft, "eval/loss").len(),
        3,
        "a validation point per epoch"
    );
    assert_eq!(tagged(&sft, "train/lr").len(), loss.len());
    assert_eq!(tagged(&sft, "metrics/steps").len(), 1, "{sft:?}");

    let dpo = read_scalars(&event_file(&p.path("tb"), "dpo")).unwrap();
    for tag in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(!tagged(&dpo, tag).is_empty(), "no {tag}: {dpo:?}");
    }
    let margins = tagged(&dpo, "rewards/margins");
    // The first step is measured before any update: the policy is the reference.
    assert!(margins[0].1.abs() < 1e-4, "{margins:?}");
    let last: f32 = margins[margins.len() - 3..]
        .iter()
        .map(|m| m.1)
        .sum::<f32>()
        / 3.0;
    assert!(last > 0.0, "the chosen answers pull ahead: {margins:?}");
    assert!(
        tagged(&dpo, "rewards/accuracies")
            .iter()
            .all(|(_, a)| (0.0..=1.0).contains(a))
    );

    // The same per-step metrics are in the run's metrics.jsonl.
    let jsonl = crate::common::first_run_metrics(&p);
    assert!(jsonl.contains("\"rewards/margins\""), "{jsonl}");
}

/// A run of data stages only writes no TensorBoard directory: there is nothing to plot.
#[test]
fn a_data_only_run_leaves_no_tensorboard_directory() {
    let p = Project::new();
    let rows: String = (0..20)
        .map(|i| format!("{{\"text\": \"row number {i}\"}}\n"))
        .collect();
    p.write("d.jsonl", &rows);
    p.write(
        "r.yaml",
        "version: 1\nname: data-only\nlogging: { tensorboard: tb }\nstages:\n  data:\n    kind: dataset\n    source: { path: d.jsonl }\n    split: { validation: 0.25 }\n",
    );
    p.hone(&["run", "r.yaml"]).ok();
    assert!(
        !p.path("tb").exists(),
        "a TensorBoard directory for a data-only run"
    );
}
