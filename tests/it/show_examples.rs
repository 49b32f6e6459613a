//! `hone show STAGE --examples`: a stage's first training examples exactly as it encodes them,
//! with the stretches the loss covers marked, read from the cached results of the stages it
//! reads: an SFT example is its prompt then `[[answer<|endoftext|>]]`, a DPO pair its prompt
//! with each answer in the loss.

use std::collections::HashMap;
use std::path::Path;

use crate::common::{Project, tiny_sft_dpo_recipe};

fn rows(file: &str, key: &str, value: &str) -> HashMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/cars")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v[key].as_str().unwrap().to_owned(),
                v[value].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn show_examples_prints_what_the_loss_covers() {
    let p = Project::new();
    p.write("r.yaml", &tiny_sft_dpo_recipe("ex", 3, ""));

    p.hone(&["run", "r.yaml", "--until", "qa"]).ok();
    let early = p.hone(&["show", "r.yaml", "sft", "--examples"]);
    assert_ne!(early.code(), 0);
    assert!(
        early
            .stderr()
            .contains("reads `tok`, which has no result in the store yet")
            && early.stderr().contains("--until tok"),
        "{}",
        early.stderr()
    );

    // What sft reads, and not sft itself.
    p.hone(&["run", "r.yaml", "--until", "tok"]).ok();
    let out = p.hone(&["show", "r.yaml", "sft", "--examples", "2"]).ok();
    assert!(out.starts_with("2 training examples of `sft`"), "{out}");
    let answers = rows("qa.jsonl", "question", "answer");
    let mut seen = 0;
    for block in out.split("\n--- ").skip(1) {
        let (head, text) = block.split_once('\n').unwrap();
        assert!(head.starts_with("train "), "{head}");
        let (prompt, rest) = text.split_once("[[").unwrap();
        let target = rest.trim_end().strip_suffix("]]").unwrap();
        let question = prompt.strip_suffix('\n').unwrap();
        assert_eq!(
            target,
            format!("{}<|endoftext|>", answers[question]),
            "the answer and the end of text are the target"
        );
        seen += 1;
    }
    assert_eq!(seen, 2);

    let json = p.hone(&["show", "r.yaml", "dpo", "--examples", "1", "--json"]);
    // DPO reads the SFT model: it has to have run.
    assert_ne!(json.code(), 0);
    p.hone(&["run", "r.yaml"]).ok();
    let json: serde_json::Value = serde_json::from_str(
        &p.hone(&["show", "r.yaml", "dpo", "--examples", "1", "--json"])
            .ok(),
    )
    .unwrap();
    let pairs = json.as_array().unwrap();
    assert_eq!(pairs.len(), 2, "both answers of one pair");
    let prefs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars/preferences.jsonl"),
    )
    .unwrap();
    for (e, side) in pairs.iter().zip(["chosen", "rejected"]) {
        assert!(e["label"].as_str().unwrap().ends_with(side), "{e}");
        let pieces = e["pieces"].as_array().unwrap();
        let (prompt, target) = (
            pieces[0][0].as_str().unwrap(),
            pieces[1][0].as_str().unwrap(),
        );
        assert_eq!(pieces[1][1], true);
        let row: serde_json::Value = prefs
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|r| format!("{}\n", r["prompt"].as_str().unwrap()) == prompt)
            .unwrap_or_else(|| panic!("no pair with prompt {prompt:?}"));
        assert_eq!(
            target,
            format!("{}<|endoftext|>", row[side].as_str().unwrap())
        );
        assert!(e["target_tokens"].as_u64().unwrap() < e["tokens"].as_u64().unwrap());
    }

    let none = p.hone(&["show", "r.yaml", "corpus", "--examples"]);
    assert_ne!(none.code(), 0);
    assert!(
        none.stderr().contains("trains on no text examples"),
        "{}",
        none.stderr()
    );
}
