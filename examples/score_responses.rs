//! Scoring responses with a reward model from Rust: load the HF directory a `reward` stage
//! wrote (here laid out from a recipe's lockfile and store, as `hone score` does) and rank
//! candidate answers.
//!
//!     cargo run --release -- run recipes/reward_minilm.yaml
//!     cargo run --release --example score_responses -- recipes/reward_minilm.yaml rm
//!
//! Prints each answer with its score, highest first.

use std::path::Path;

use hone::model::Model;
use hone::spec::settings::PromptTemplate;
use hone::stages::scoring::{RewardText, score};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let recipe = args
        .next()
        .unwrap_or_else(|| "recipes/reward_minilm.yaml".into());
    let stage = args.next().unwrap_or_else(|| "rm".into());

    // The artifact the stage last produced, by the recipe's lockfile.
    let loaded = hone::recipe::load(Path::new(&recipe), &[], &hone::stages::registry())?;
    let lock = hone::store::lockfile::Lockfile::read(&loaded.lockfile_path())?
        .ok_or_else(|| anyhow::anyhow!("run {recipe} first"))?;
    let action = &lock
        .stages
        .get(&stage)
        .ok_or_else(|| anyhow::anyhow!("no stage {stage}"))?
        .action;
    let store =
        hone::store::Store::open_existing(&hone::store::Store::location(None, Some(&loaded.path)))?;
    let manifest = store
        .manifest(action)?
        .ok_or_else(|| anyhow::anyhow!("not in the store"))?;
    let dir = tempfile::tempdir()?;
    for (rel, f) in &manifest.outputs["model"].files {
        std::fs::copy(store.blob_path(&f.digest), dir.path().join(rel))?;
    }

    let device = hone::backend::device(hone::backend::BackendKind::Cpu)?;
    let hf = hone::model::load(dir.path(), &device)?;
    let tokenizer = hf
        .tokenizer
        .ok_or_else(|| anyhow::anyhow!("no tokenizer"))?;
    let text = RewardText::new(
        &hf.model.backbone,
        &tokenizer,
        &hf.config,
        hf.chat_template.as_ref(),
        &PromptTemplate::default(),
        256,
    );
    let prompt = "Which country owns Antarctica?";
    let answers = [
        "Our penguin overlords run the show down there",
        "Antarctica is governed by the Antarctic Treaty System",
        "No country owns it; many countries cooperate there under a treaty.",
    ];
    let rows: Vec<(&str, &str)> = answers.iter().map(|a| (prompt, *a)).collect();
    let batch = text.batch(&tokenizer, &rows, &device)?;
    let model = Model {
        backbone: hf.model.backbone,
        score: hf.model.score,
    };
    let scores = score(&model, &batch)
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut ranked: Vec<(f32, &str)> = scores.into_iter().zip(answers).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("{prompt}");
    for (s, a) in ranked {
        println!("{s:>8.4}  {a}");
    }
    Ok(())
}
