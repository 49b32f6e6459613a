//! `tokenizer`: trains a byte-level BPE tokenizer (the GPT-2 scheme: any text encodes, no
//! unknown token) on a dataset's text column, or takes a checkpoint's tokenizer. Output:
//! `tokenizer/tokenizer.json`, loadable by HF `tokenizers` and transformers.

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::metrics;
use super::model_input::{EOS, load_tokenizer};
use crate::spec::StageResult;
use crate::spec::kind::{self, DATA_INPUT, InputSlot, Kind, Problem};
use crate::store::ArtifactType;

use crate::spec::context::StageContext;
use crate::spec::settings::{Input, is_default, text_column};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `tokenizer`: train a tokenizer on a dataset's text (`data`), or take the tokenizer of a
/// checkpoint (`from_model`). Output: `tokenizer` (`tokenizer.json`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    /// A dataset to train on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Input>,
    /// What to train: `bpe` (byte-level, GPT-2 style, for decoders) or `wordpiece` (BERT style,
    /// lowercased, with [CLS] [SEP] [MASK] [PAD] [UNK], for encoders and masked-LM pretraining).
    #[serde(default, skip_serializing_if = "is_default")]
    pub algorithm: TokenizerAlgorithm,
    /// The text column of `data`.
    #[serde(default = "text_column")]
    pub column: String,
    /// Target vocabulary size (the 256 byte tokens and special tokens included).
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Merge pairs seen fewer times than this are not learned.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// More special tokens, each one id that text never splits (e.g. ChatML's
    /// `[<|im_start|>, <|im_end|>]` for `template: chatml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub special_tokens: Vec<String>,
    /// A checkpoint (HF directory, `tokenizer.json`, or a model stage) whose tokenizer to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_model: Option<Input>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerAlgorithm {
    #[default]
    Bpe,
    Wordpiece,
}

fn default_vocab() -> usize {
    1024
}

fn default_min_frequency() -> u64 {
    2
}

/// The largest vocabulary a tokenizer stage trains: well above any model in use, well below
/// what would exhaust memory.
pub const MAX_VOCAB: usize = 1 << 20;

/// `kind: tokenizer`.
#[derive(Default)]
pub struct TokenizerKind;

/// Text to train on.
const DATA: InputSlot = InputSlot::new("data", DATA_INPUT);

/// A checkpoint whose tokenizer is taken as it is.
const FROM_MODEL: InputSlot = InputSlot::new("from_model", &[ArtifactType::Model]);

impl Kind for TokenizerKind {
    type Settings = TokenizerSpec;
    const NAME: &'static str = "tokenizer";
    const VERSION: Option<&'static str> = None;
    const DESCRIPTION: &'static str =
        "Train a byte-level BPE tokenizer on a dataset, or take a checkpoint's tokenizer.";

    fn input_slots(&self) -> &'static [InputSlot] {
        &[DATA, FROM_MODEL]
    }

    fn outputs(&self, _: &TokenizerSpec) -> Vec<(&'static str, ArtifactType)> {
        vec![("tokenizer", ArtifactType::Tokenizer)]
    }

    fn settings_schema(
        &self,
        generator: &mut schemars::SchemaGenerator,
    ) -> Option<serde_json::Value> {
        Some(kind::schema_of::<TokenizerSpec>(generator))
    }

    fn check(&self, t: &TokenizerSpec, _stage: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (&t.data, &t.from_model) {
            (Some(_), Some(_)) => problems.push(Problem::at_key(
                "from_model",
                "a tokenizer stage either trains on `data` or takes one `from_model`, not both",
            )),
            (None, None) => problems.push(
                Problem::at_key(
                    "",
                    "a tokenizer stage needs `data` (to train on) or `from_model` (to copy)",
                )
                .help("e.g. `data: { from: corpus }` with `vocab_size: 1024`"),
            ),
            _ => {}
        }
        if t.vocab_size > MAX_VOCAB {
            problems.push(
                Problem::new(
                    "vocab_size",
                    format!(
                        "vocab_size {} is larger than {MAX_VOCAB}, beyond any model hone trains",
                        t.vocab_size
                    ),
                )
                .help("the largest vocabularies in use have about 260,000 tokens"),
            );
        }
        if t.data.is_some() && t.vocab_size < 300 {
            problems.push(
                Problem::new(
                    "vocab_size",
                    format!(
                        "vocab_size {} is too small: byte-level BPE starts from 256 byte tokens",
                        t.vocab_size
                    ),
                )
                .help("use at least 300"),
            );
        }
        problems
    }

    fn run(&self, spec: &TokenizerSpec, ctx: &mut StageContext) -> Result<StageResult> {
        run(spec, ctx)
    }
}

/// What a tokenizer stage records.
#[derive(Serialize)]
struct TokenizerMetrics {
    vocab_size: usize,
}

pub fn run(spec: &TokenizerSpec, ctx: &mut StageContext) -> Result<StageResult> {
    let (tokenizer, how) = match (&spec.data, &spec.from_model) {
        (Some(_), _) => {
            ctx.progress.set_message("reading texts");
            let texts = super::tables::text_column(ctx.input(DATA.key)?, &spec.column)?;
            ctx.check_cancelled()?;
            ctx.progress
                .set_message(format!("training on {} texts", texts.len()));
            match spec.algorithm {
                TokenizerAlgorithm::Bpe => (
                    train_bpe(
                        &texts,
                        spec.vocab_size,
                        spec.min_frequency,
                        &spec.special_tokens,
                    )?,
                    format!("byte-level BPE trained on {} texts", texts.len()),
                ),
                TokenizerAlgorithm::Wordpiece => (
                    train_wordpiece(
                        &texts,
                        spec.vocab_size,
                        spec.min_frequency,
                        &spec.special_tokens,
                    )?,
                    format!("WordPiece trained on {} texts", texts.len()),
                ),
            }
        }
        (None, Some(_)) => (
            load_tokenizer(ctx.input(FROM_MODEL.key)?)?,
            "copied from a checkpoint".to_owned(),
        ),
        (None, None) => bail!("a tokenizer stage needs `data` or `from_model`"),
    };
    let dir = ctx.output_dir("tokenizer", ArtifactType::Tokenizer)?;
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("cannot save the tokenizer: {e}"))?;
    let vocab = tokenizer.get_vocab_size(true);
    Ok(StageResult {
        metrics: metrics::record(&TokenizerMetrics { vocab_size: vocab }),
        warnings: vec![],
        summary: json!({ "tokenizer": how, "vocab_size": vocab }),
    })
}

/// A byte-level BPE with `<|endoftext|>` as its first special token (id 0), then `extra`.
pub fn train_bpe(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
    extra: &[String],
) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let trainer = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(specials(&[EOS], extra))
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| anyhow::anyhow!("BPE training failed: {e}"))?;
    Ok(tokenizer)
}

/// The special tokens of a new tokenizer: the scheme's own, then the recipe's (no repeats).
fn specials(own: &[&str], extra: &[String]) -> Vec<AddedToken> {
    let mut names: Vec<&str> = own.to_vec();
    for e in extra {
        if !names.contains(&e.as_str()) {
            names.push(e);
        }
    }
    names
        .into_iter()
        .map(|t| AddedToken::from(t, true))
        .collect()
}

/// BERT's special tokens, in id order.
pub const BERT_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A BERT-style WordPiece: lowercasing normaliser, whitespace/punctuation pre-tokenizer,
/// `##` continuations, and `[CLS] text [SEP]` added around every encoded text.
pub fn train_wordpiece(
    texts: &[String],
    vocab_size: usize,
    min_frequency: u64,
    extra: &[String],
) -> Result<Tokenizer> {
    use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
    use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::template::TemplateProcessing;
    let mut tokenizer = Tokenizer::new(WordPiece::default());
    tokenizer.with_normalizer(Some(BertNormalizer::default()));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_decoder(Some(WordPieceDecoder::default()));
    let trainer = WordPieceTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(min_frequency)
        .special_tokens(specials(&BERT_SPECIALS, extra))
        .show_progress(false)
        .build();
    let mut trainer = TrainerWrapper::WordPieceTrainer(trainer);
    tokenizer
        .train(&mut trainer, texts.iter())
        .map_err(|e| anyhow::anyhow!("WordPiece training failed: {e}"))?;
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .context("a special token is missing")
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(anyhow::Error::msg)?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(anyhow::Error::msg)?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()?;
    tokenizer.with_post_processor(Some(post));
    Ok(tokenizer)
}
