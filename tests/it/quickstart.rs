//! The README's main job: the quickstart recipe runs end to end on CPU from an empty store,
//! prints the comparison table, SFT beats the base model on held-out exact match and PPO
//! beats SFT on the judge's score of sampled answers, a second run is fully cached, and a new
//! DPO beta reruns only DPO and the evaluation.

use std::path::Path;

use crate::common::{Project, metric, quickstart_recipe};

#[test]
fn the_quickstart_runs_end_to_end_and_then_is_cached() {
    let recipe = quickstart_recipe();
    let p = Project::new();
    p.write("quickstart.yaml", &recipe);
    let first = p.hone(&["run", "quickstart.yaml"]);
    let out = first.ok();
    assert_eq!(first.ran().len(), 13, "{out}");
    outputs_match_the_cache_format(&p);
    assert!(
        out.contains("model  cars_mc.acc  cars_mc.acc_norm  perplexity  token_accuracy  exact_match  contains  token_f1   rouge_l  answer_perplexity  reward_score  reward_score_sampled  win_rate_vs_base"),
        "{out}"
    );
    // `hone generate` on a stage's model prompts it the way the stage trained it (the
    // quickstart's SFT uses the plain template; a chat template would get garbage back), also
    // through the export of a later stage, which answers exactly as the stage it exports.
    // (What PPO makes of the SFT model varies from seed to seed on a model this small; the
    // export must only not change it.)
    let generate = |stage: &str| {
        p.hone(&[
            "generate",
            "--model",
            stage,
            "--prompt",
            "What does the radiator do?",
            "--max-new-tokens",
            "12",
        ])
        .ok()
    };
    let sft = generate("quickstart.yaml:sft");
    assert!(sft.trim().starts_with("The radiator"), "sft: {sft}");
    assert_eq!(
        generate("quickstart.yaml:export"),
        generate("quickstart.yaml:ppo"),
        "the export answers as the PPO stage it exports"
    );
    let eval = p.hone(&["show", "quickstart.yaml", "evaluate"]).ok();
    assert!(
        metric(&eval, "sft.exact_match") > metric(&eval, "base.exact_match"),
        "{eval}"
    );
    assert!(metric(&eval, "sft.reward_score") > metric(&eval, "base.reward_score"));
    // The car benchmark (lm-eval's format, four choices): the pretrained model learnt the
    // corpus's facts (above chance); none of its questions is in any model's training data.
    assert!(metric(&eval, "base.cars_mc.acc") > 0.25, "{eval}");
    assert!(!out.contains("benchmark `cars_mc`"), "{out}");
    // PPO optimises the judge's score of sampled answers, and it rose past SFT's there.
    assert!(
        metric(&eval, "ppo.reward_score_sampled") > metric(&eval, "sft.reward_score_sampled"),
        "{eval}"
    );
    // The export: an HF directory with a model card, outside the store.
    let exported = p.path("dist/car-assistant");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "README.md",
    ] {
        assert!(exported.join(f).is_file(), "export lacks {f}");
    }
    let card = std::fs::read_to_string(exported.join("README.md")).unwrap();
    assert!(
        card.contains("from `ppo`") && card.contains("GPT2LMHeadModel"),
        "{card}"
    );

    // The same model as a GGUF for llama.cpp (f16), from the HF export: one file beside a
    // model card, that answers a raw prompt as the HF directory does.
    p.write(
        "gguf.yaml",
        "version: 1\nname: gguf\nstages:\n  gguf:\n    kind: export\n    model: { path: dist/car-assistant }\n    to: dist/car-assistant-gguf\n    format: gguf\n    quant: f16\n",
    );
    p.hone(&["run", "gguf.yaml"]).ok();
    let gguf = p.path("dist/car-assistant-gguf/car-assistant-gguf-F16.gguf");
    assert!(gguf.is_file());
    let card = std::fs::read_to_string(p.path("dist/car-assistant-gguf/README.md")).unwrap();
    assert!(
        card.contains("llama-cli -m car-assistant-gguf-F16.gguf"),
        "{card}"
    );
    let answer = |model: &str| {
        p.hone(&[
            "generate",
            "--model",
            model,
            "--raw",
            "--prompt",
            "What does the radiator do?\n",
            "--max-new-tokens",
            "12",
        ])
        .ok()
    };
    assert_eq!(
        answer("dist/car-assistant-gguf"),
        answer("dist/car-assistant")
    );

    // A new DPO beta reruns DPO and the evaluation only.
    let status = p
        .hone(&["status", "quickstart.yaml", "--set", "stages.dpo.beta=0.2"])
        .ok();
    let stale: Vec<&str> = status
        .lines()
        .filter(|l| l.trim_start().starts_with("stale") || l.trim_start().starts_with("maybe"))
        .collect();
    assert_eq!(stale.len(), 2, "{status}");
    assert!(
        stale[0].contains("dpo") && stale[1].contains("evaluate"),
        "{status}"
    );

    // Cached: nothing runs; a deleted export is written again from the store.
    std::fs::remove_dir_all(&exported).unwrap();
    let again = p.hone(&["run", "quickstart.yaml"]);
    let out = again.ok();
    assert!(again.ran().is_empty(), "the second run is fully cached");
    assert!(
        out.contains("exported export") && exported.join("config.json").is_file(),
        "{out}"
    );
    let rerun = p.hone(&["run", "quickstart.yaml", "--set", "stages.dpo.beta=0.2"]);
    rerun.ok();
    assert_eq!(rerun.ran(), ["dpo", "evaluate"]);
}

/// The cache format, not hone's version, is what invalidates every team's cache (local and
/// remote), so it must change exactly when outputs do: the quickstart's outputs are recorded
/// per format in a fixture, and an output that changes under the same format fails here.
fn outputs_match_the_cache_format(p: &Project) {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cache_format_outputs.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        fixture["format"],
        hone::store::CACHE_FORMAT,
        "CACHE_FORMAT changed: relock the shipped recipes and record the quickstart's new outputs in tests/fixtures/cache_format_outputs.json"
    );
    let lock: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(p.path("quickstart.lock")).unwrap()).unwrap();
    let expected = fixture["artifacts"].as_object().unwrap();
    assert_eq!(lock["stages"].as_mapping().unwrap().len(), expected.len());
    for (stage, digest) in expected {
        assert_eq!(
            lock["stages"][stage.as_str()]["artifact"].as_str(),
            digest.as_str(),
            "stage `{stage}` produced another output under cache format {}: if the change means to alter outputs, bump CACHE_FORMAT (src/store/mod.rs) and update tests/fixtures/cache_format_outputs.json; if not, it is a regression",
            hone::store::CACHE_FORMAT
        );
    }
}
