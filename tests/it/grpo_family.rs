//! TRL's GRPO family in a real stage: DAPO's settings (token mean over the step, clip-higher,
//! truncated answers masked, two passes per rollout) and RLOO's baseline with GSPO's
//! sequence-level ratio each learn the length rule; a rollout's second pass logs the ratios
//! it clipped; settings that contradict each other are recipe errors.

use crate::common::{Project, metric};

fn recipe(family: &str) -> String {
    format!(
        "version: 1\nname: family\nseed: 42\nstages:\n{}{}{}",
        crate::common::car_sft_stages(),
        stage("dapo", family),
        stage(
            "rloo",
            "    advantage: rloo\n    importance_sampling_level: sequence\n"
        )
    )
}

/// A GRPO stage on the SFT'd car model learning the length rule, with `settings`; they may
/// bring their own `train:`.
fn stage(name: &str, settings: &str) -> String {
    let train = if settings.contains("train:") {
        ""
    } else {
        "    train: { epochs: 4, batch_size: 4, lr: 5.0e-4 }\n"
    };
    format!(
        r#"  {name}:
    kind: grpo
    model: {{ from: sft }}
    prompts: {{ from: qa }}
    reward: {{ length: {{ min: 1, max: 6 }} }}
    group_size: 6
    max_new_tokens: 24
{settings}{train}"#
    )
}

const DAPO: &str = "    loss_type: dapo
    epsilon_high: 0.28
    mask_truncated: true
    num_iterations: 2
";

#[test]
fn dapo_and_rloo_settings_learn_and_a_second_pass_logs_its_clipping() {
    let p = Project::new();
    p.write("r.yaml", &recipe(DAPO));
    p.hone(&["run", "r.yaml"]).ok();
    for stage in ["dapo", "rloo"] {
        let show = p.hone(&["show", "r.yaml", stage]).ok();
        assert!(
            metric(&show, "reward_after") >= metric(&show, "reward_before") + 0.4,
            "{stage} learns the length rule:\n{show}"
        );
    }

    // Two passes per rollout: odd steps sample (and log the rewards), even steps train on the
    // same answers again, where the ratio has moved and clipping bites.
    let jsonl = crate::common::first_run_metrics(&p);
    let steps: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["stage"] == "dapo" && v["event"] == "step")
        .collect();
    assert!(steps.len() >= 4 && steps.len().is_multiple_of(2), "{jsonl}");
    for (i, s) in steps.iter().enumerate() {
        let sampled = i % 2 == 0;
        assert_eq!(s.get("reward").is_some(), sampled, "step {}: {s}", i + 1);
        let region = s["clip_ratio/region_mean"].as_f64().unwrap();
        if sampled {
            assert_eq!(region, 0.0, "a first pass has ratio 1: {s}");
        }
    }
    assert!(
        steps
            .iter()
            .any(|s| s["clip_ratio/region_mean"].as_f64().unwrap() > 0.0),
        "some second pass clips: {jsonl}"
    );
    let show = p.hone(&["show", "r.yaml", "dapo"]).ok();
    assert_eq!(metric(&show, "steps") as usize, steps.len(), "{show}");
}

#[test]
fn contradictory_family_settings_are_recipe_errors() {
    let p = Project::new();
    for (settings, expected) in [
        (
            "    num_iterations: 2\n    train: { epochs: 1, batch_size: 2, grad_accum: 2 }\n",
            "`num_iterations` above 1 takes one micro-batch per optimizer step",
        ),
        (
            "    advantage: rloo\n    scale_rewards: batch\n",
            "RLOO's advantages (`advantage: rloo`) are not scaled",
        ),
        (
            "    epsilon_high: -0.1\n",
            "`epsilon_high: -0.1` is not a non-negative number",
        ),
        (
            "    num_iterations: 0\n",
            "`num_iterations` must be at least 1",
        ),
        (
            "    loss_type: gspo\n",
            "`gspo` is not a valid value for `stages.dapo.loss_type`",
        ),
    ] {
        let yaml = recipe(settings);
        p.write("r.yaml", &yaml);
        let run = p.hone(&["run", "r.yaml"]);
        assert_eq!(run.code(), 2, "{settings}: {}", run.transcript());
        assert!(
            run.stderr().contains(expected) && run.stderr().contains("r.yaml:"),
            "{settings}: {}",
            run.stderr()
        );
    }
}
