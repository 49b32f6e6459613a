//! A stage's model input: a new model from `init` (seeded from the recipe) or a checkpoint (a
//! file, or a model artifact of an upstream stage), with its tokenizer and the tokens that end
//! its answers.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::model::Backbone;
use crate::model::decoder::LanguageModel;
use crate::spec::context::{ResolvedInput, StageContext};
use crate::spec::settings::{Arch, ModelInit, ModelInput};

pub use crate::model::EOS;

/// The tokenizer of a checkpoint or tokenizer artifact: an HF directory, a `tokenizer.json`,
/// a `.gguf` file, or a stage's `tokenizer`/`model` output.
pub fn load_tokenizer(input: &ResolvedInput) -> Result<Tokenizer> {
    let from_file = |p: &Path| -> Result<Tokenizer> { Ok(crate::model::load_tokenizer_file(p)?) };
    match input {
        ResolvedInput::File { path, label, .. } => {
            if path.is_dir() {
                from_file(&path.join("tokenizer.json"))
                    .with_context(|| format!("{label} has no tokenizer.json"))
            } else if path.extension().is_some_and(|e| e == "gguf") {
                // Only the metadata: the file is mapped, its tensors never read.
                let gguf = crate::model::gguf::Gguf::open(path)?;
                crate::model::gguf_tokenizer::build(&gguf)?
                    .with_context(|| format!("{label} carries no tokenizer hone can rebuild"))
            } else {
                from_file(path)
            }
        }
        ResolvedInput::Artifact(view) => {
            let file = view
                .file(None, "tokenizer.json")
                .with_context(|| format!("`{}` has no tokenizer.json", view.label))?;
            from_file(file)
        }
    }
}

/// The model of a training stage and its tokenizer: a new decoder (`init`, seeded from the
/// recipe) or a checkpoint; the stage's `tokenizer` input, when given, wins over the model's.
/// A training stage's starting model.
pub(crate) struct LoadedModel {
    pub backbone: Backbone,
    /// The checkpoint's classification / score head, if it has one.
    pub score: Option<crate::model::layers::Proj>,
    pub config: Value,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<crate::model::chat::ChatTemplate>,
}

/// `model` is the stage's setting, read from input `model_key` when it is not `init`;
/// `tokenizer_key` is the stage's tokenizer input, when it has one.
pub(crate) fn load_model_input(
    model: &ModelInput,
    model_key: &str,
    tokenizer_key: Option<&str>,
    need_decoder: bool,
    ctx: &mut StageContext,
    device: &Device,
) -> Result<LoadedModel> {
    let stage_tokenizer = match tokenizer_key {
        Some(key) => Some(load_tokenizer(ctx.input(key)?)?),
        None => None,
    };
    match model {
        ModelInput::Init { init } => {
            let tokenizer = stage_tokenizer.context("a new model needs a `tokenizer`")?;
            // Seed right before the random init: the init is then a function of the seed.
            device.seed(ctx.seed);
            let (backbone, config) = init_model(init, &tokenizer, device)?;
            Ok(LoadedModel {
                backbone,
                score: None,
                config,
                tokenizer,
                chat_template: None,
            })
        }
        ModelInput::Input(_) => {
            let loaded = load_checkpoint(ctx, model_key, stage_tokenizer, need_decoder, device)?;
            ctx.source_precision = loaded
                .config
                .get(crate::model::SOURCE_DTYPE)
                .and_then(|d| d.as_str())
                .and_then(crate::model::precision::Precision::from_config_name);
            Ok(loaded)
        }
    }
}

/// Where checkpoint input `rel` of the stage lies: its path, or the upstream model artifact
/// laid out as a directory in the stage's work dir (once; later calls find it there).
pub(crate) fn checkpoint_path(ctx: &StageContext, rel: &str) -> Result<std::path::PathBuf> {
    Ok(match ctx.input(rel)? {
        ResolvedInput::File { path, .. } => path.clone(),
        ResolvedInput::Artifact(view) => {
            let out = if view.outputs.contains_key("model") {
                "model"
            } else {
                view.outputs
                    .keys()
                    .next()
                    .map(String::as_str)
                    .unwrap_or("model")
            };
            view.materialize(out, &ctx.work_dir()?.join(rel))?
        }
    })
}

/// A checkpoint input (`rel` of the stage): a file path or a model artifact, laid out as a
/// directory. `tokenizer`, when given, wins over the checkpoint's own.
pub(crate) fn load_checkpoint(
    ctx: &StageContext,
    rel: &str,
    tokenizer: Option<Tokenizer>,
    need_decoder: bool,
    device: &Device,
) -> Result<LoadedModel> {
    let path = checkpoint_path(ctx, rel)?;
    // The stage's own model may keep a frozen base as the checkpoint stores it, or quantised;
    // a reference model, frozen whole, may keep its stored dtype.
    let supported = |dtypes: &[burn::tensor::DType]| -> Vec<burn::tensor::DType> {
        let on_device = dtypes.iter().copied();
        on_device.filter(|d| device.supports_dtype(*d)).collect()
    };
    let frozen = match rel {
        "model" => crate::model::Frozen {
            keep: supported(&ctx.frozen_base_dtypes),
            quantize: ctx.frozen_base_quant,
        },
        "reference" => crate::model::Frozen {
            keep: supported(&ctx.frozen_reference_dtypes),
            quantize: None,
        },
        _ => crate::model::Frozen::default(),
    };
    let loaded = crate::model::load_keeping(&path, device, &frozen)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let table = loaded.model.backbone.token_table().val().dtype();
    if table != burn::tensor::DType::F32 {
        tracing::info!(
            "`{rel}`: the frozen base stays in {}, as {} stores it (projections, token table, LM head)",
            crate::model::precision::Precision::from_dtype(table).map_or("its dtype", |p| p.name()),
            path.display()
        );
    }
    if need_decoder {
        language_model(&loaded.model.backbone)
            .with_context(|| format!("this stage needs a language model: {}", path.display()))?;
    }
    let tokenizer = tokenizer.or(loaded.tokenizer).with_context(|| {
        format!(
            "{} has no tokenizer; add `tokenizer:` to the stage",
            path.display()
        )
    })?;
    Ok(LoadedModel {
        backbone: loaded.model.backbone,
        score: loaded.model.score,
        config: loaded.config,
        tokenizer,
        chat_template: loaded.chat_template,
    })
}

/// `backbone` as a language model (a decoder with its LM head); an error saying what it is
/// instead.
pub(crate) fn language_model(backbone: &Backbone) -> Result<LanguageModel<'_>> {
    let family = backbone.family().name();
    backbone.language_model().with_context(|| match backbone.decoder() {
        Some(_) => format!(
            "this {family} decoder was saved without its LM head (a classifier's body), so it cannot generate or score text"
        ),
        None => format!("a {family} model is an encoder: it cannot generate or score text"),
    })
}

impl LoadedModel {
    /// The model as a language model; an error for an encoder or a decoder without its head.
    pub(crate) fn language_model(&self) -> Result<LanguageModel<'_>> {
        language_model(&self.backbone)
    }

    /// Tokens that end a generated answer: end-of-text, ChatML's end of turn, the config's EOS.
    pub(crate) fn stop_tokens(&self) -> Vec<u32> {
        crate::model::stop_tokens(&self.config, Some(&self.tokenizer))
    }
}

/// A new decoder sized by `init`, its vocabulary the tokenizer's; returns it with an HF
/// `config.json`.
fn init_model(
    init: &ModelInit,
    tokenizer: &Tokenizer,
    device: &Device,
) -> Result<(Backbone, Value)> {
    let vocab = tokenizer.get_vocab_size(true);
    if let Some(why) = crate::backend::training_memory_problem(init.parameters(vocab)) {
        bail!(
            "{why}; make the model smaller (`layers`, `d_model`, `intermediate`, or the vocabulary)"
        );
    }
    let shape = crate::model::family::NewModel {
        vocab,
        layers: init.layers,
        d_model: init.d_model,
        heads: init.heads,
        kv_heads: init.kv_heads,
        context: init.context,
        intermediate: init.intermediate,
        eos: tokenizer.token_to_id(EOS),
        pad: tokenizer.token_to_id("[PAD]"),
    };
    let name = match init.arch {
        Arch::Gpt2 => "gpt2",
        Arch::Llama => "llama",
        Arch::Bert => "bert",
    };
    let family = crate::model::family::by_model_type(name)
        .with_context(|| format!("no model family `{name}`"))?;
    match family.init(&shape, device) {
        Some(Ok(built)) => Ok(built),
        Some(Err(crate::model::family::BuildError::Config(why))) => {
            bail!("a new `{name}` model: {why}")
        }
        Some(Err(crate::model::family::BuildError::Model(e))) => Err(e.into()),
        None => bail!("hone cannot make a new `{name}` model from `init`"),
    }
}
