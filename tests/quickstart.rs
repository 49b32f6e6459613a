//! The README's main job: the quickstart recipe runs end to end on CPU from an empty store,
//! prints the comparison table, SFT beats the base model on held-out exact match, and a second
//! run is fully cached.

mod common;
use std::path::Path;

use common::{Project, metric};

#[test]
fn the_quickstart_runs_end_to_end_and_then_is_cached() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let recipe = std::fs::read_to_string(root.join("recipes/quickstart.yaml"))
        .unwrap()
        .replace("../data/", &format!("{}/data/", root.display()))
        .replace("../schemas/", &format!("{}/schemas/", root.display()))
        .replace("../dist/", "dist/");
    let p = Project::new();
    p.write("quickstart.yaml", &recipe);
    let first = p.hone(&["run", "quickstart.yaml"]);
    let out = first.ok();
    assert_eq!(first.ran().len(), 13, "{out}");
    assert!(
        out.contains("model  perplexity  token_accuracy  exact_match  answer_perplexity  reward_score  win_rate_vs_base"),
        "{out}"
    );
    let eval = p.hone(&["show", "quickstart.yaml", "evaluate"]).ok();
    assert!(
        metric(&eval, "sft.exact_match") > metric(&eval, "base.exact_match"),
        "{eval}"
    );
    assert!(metric(&eval, "sft.reward_score") > metric(&eval, "base.reward_score"));
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
        card.contains("from `dpo`") && card.contains("GPT2LMHeadModel"),
        "{card}"
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
}
