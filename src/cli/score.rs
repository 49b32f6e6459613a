//! `hone score`: a reward model's scores for responses to a prompt.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::model::Model;
use crate::stages::scoring::{RewardText, score};

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A reward model: an HF directory, or RECIPE:STAGE (what a `reward` stage last produced).
    #[arg(long, short)]
    model: String,
    /// The prompt the responses answer.
    #[arg(long, short)]
    prompt: String,
    /// A response to score (repeatable; printed from the highest score down).
    #[arg(long, short, required = true)]
    response: Vec<String>,
    /// How a decoder reward model saw prompt + response (`plain`, `chatml`, `model`); default:
    /// what its `reward` stage recorded. Encoders always see the pair as two segments.
    #[arg(long)]
    template: Option<String>,
    #[arg(long, default_value_t = 512)]
    max_length: usize,
}

/// `store`: the global `--store`, where RECIPE:STAGE artifacts are read from.
pub fn run(g: &super::args::Globals, args: &ScoreArgs) -> Result<ExitCode> {
    let store = g.store;
    let device = crate::backend::device(crate::backend::BackendKind::Cpu)?;
    let at = super::artifact::resolve_model(&args.model, store, g.kinds)?;
    let loaded = crate::model::load(&at.path, &device)
        .with_context(|| format!("cannot load {}", at.label))?;
    if loaded.model.num_labels() != Some(1) {
        bail!(
            "{} is not a reward model (it has no single-score head); train one with a `reward` stage",
            at.label
        );
    }
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .with_context(|| format!("{} has no tokenizer.json", at.label))?;
    let template: crate::spec::settings::PromptTemplate = match &args.template {
        Some(t) => serde_json::from_value(serde_json::Value::String(t.clone()))
            .map_err(|e| anyhow::anyhow!("--template: {e}"))?,
        None => crate::stages::scoring::trained_template(&loaded.config),
    };
    let text = RewardText::new(
        &loaded.model.backbone,
        tokenizer,
        &loaded.config,
        loaded.chat_template.as_ref(),
        &template,
        args.max_length,
    );
    let rows: Vec<(&str, &str)> = args
        .response
        .iter()
        .map(|r| (args.prompt.as_str(), r.as_str()))
        .collect();
    let batch = text.batch(tokenizer, &rows, &device)?;
    let model = Model {
        backbone: loaded.model.backbone,
        score: loaded.model.score,
    };
    let scores = score(&model, &batch)
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut ranked: Vec<(f32, &String)> = scores.into_iter().zip(&args.response).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (s, r) in ranked {
        println!("{s:>9.4}  {r}");
    }
    Ok(ExitCode::SUCCESS)
}
