//! `hone generate`: try a model on prompts, outside any recipe.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::model::chat::Message;
use crate::model::sampling::{SamplingConfig, generate};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// An HF model directory (config.json, model.safetensors, tokenizer.json), a .gguf file,
    /// or RECIPE:STAGE (the model a recipe's stage last produced).
    #[arg(long, short)]
    model: String,
    /// A prompt (repeatable: prompts run as one batch).
    #[arg(long, short, required = true)]
    prompt: Vec<String>,
    /// A system message for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Send prompts as raw text instead of through a template. Without it, prompts to a
    /// model a hone stage trained (RECIPE:STAGE, or its export) go through the template the
    /// stage trained with, and to other models through their own chat template (or ChatML).
    #[arg(long)]
    raw: bool,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tensor backend.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|wgpu|cuda")]
    backend: crate::recipe::types::BackendChoice,
}

/// `store`: the global `--store`, where RECIPE:STAGE artifacts are read from.
pub fn run(g: &super::args::Globals, args: &GenerateArgs) -> Result<ExitCode> {
    let store = g.store;
    crate::backend::check_available(args.backend)?;
    let device = crate::backend::device(crate::backend::resolve(args.backend))?;
    let at = super::artifact::resolve_model(&args.model, store, g.kinds)?;
    let model = crate::model::load(&at.path, &device)
        .with_context(|| format!("cannot load {}", at.label))?;
    let Some(tokenizer) = &model.tokenizer else {
        // A GGUF carries its tokenizer in its metadata; an HF directory in tokenizer.json.
        let missing = if at.path.extension().is_some_and(|e| e == "gguf") {
            "hone cannot rebuild this GGUF's kind of tokenizer (it rebuilds gpt2 byte-level BPE and llama SentencePiece vocabularies)"
        } else {
            "the directory has no tokenizer.json"
        };
        bail!(
            "{} has no tokenizer: {missing}; hone needs one to turn prompts into tokens",
            at.label
        );
    };
    let Some(lm) = model.model.backbone.language_model() else {
        let what = match model.model.backbone.decoder() {
            Some(_) => "a decoder saved without its LM head (a classifier's body)",
            None => "an encoder",
        };
        bail!(
            "{} is {what} ({}); only a decoder with its LM head generates text",
            at.label,
            model.model.backbone.family().name()
        );
    };
    // A model a recipe stage trained gets the template it trained with (named by the recipe,
    // or recorded in the model's tokenizer_config.json, as in an export); anything else its
    // own chat template (or ChatML).
    let trained = at.template.clone().or_else(|| {
        model
            .trained_template
            .clone()
            .and_then(|t| serde_json::from_value(t).ok())
    });
    let format = trained
        .as_ref()
        .map(|t| crate::stages::conversation::Format::new(t, model.chat_template.as_ref()));
    let template = model.chat();
    let mut prompts = Vec::new();
    for p in &args.prompt {
        let mut messages = Vec::new();
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", p));
        let ids = match &format {
            // A raw prompt starts as the tokenizer starts any text (BOS where the model's
            // tokenizer adds one), as llama.cpp and transformers do.
            _ if args.raw => encode(tokenizer, p, true)?,
            Some(f) => f.encode_conversation_prompt(tokenizer, &messages)?,
            None => encode(tokenizer, &template.render(&messages, true)?, false)?,
        };
        prompts.push(ids);
    }
    let cfg = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        stop_tokens: model.stop_tokens(),
        seed: args.seed,
    };
    let outputs = generate(lm, &prompts, &cfg, &device);
    for (p, out) in args.prompt.iter().zip(outputs) {
        let text = tokenizer
            .decode(&out, true)
            .map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
        if args.prompt.len() > 1 {
            println!("> {p}");
        }
        println!("{}", text.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

fn encode(tokenizer: &tokenizers::Tokenizer, text: &str, specials: bool) -> Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, specials)
        .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
        .get_ids()
        .to_vec())
}
