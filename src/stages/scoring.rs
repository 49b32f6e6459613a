//! Scoring answers with a reward model: prompt and answer as the model was trained to read
//! them (two segments for an encoder, the training template for a decoder), padded into a
//! batch, one scalar each. Shared by the reward stage, RL rollouts, evaluation and `hone score`.

use anyhow::Result;
use burn::prelude::*;
use tokenizers::Tokenizer;

use super::conversation::{Format, eos_token, one_turn};
use crate::model::Backbone;
use crate::model::Model;

/// Token ids of (prompt, response) texts, right-padded.
#[derive(Debug, Clone)]
pub struct Scored {
    pub ids: Tensor<2, Int>,
    pub padding: Tensor<2, Bool>,
}

/// The scalar reward of each row.
pub fn score(model: &Model, s: &Scored) -> Tensor<1> {
    let scores = model
        .scores(s.ids.clone(), s.padding.clone())
        .expect("a reward model has a score head");
    let b = scores.dims()[0];
    scores.narrow(1, 0, 1).reshape([b])
}

/// How prompt + response become token ids for a reward model: two segments for an encoder
/// (its tokenizer adds [CLS] ... [SEP] ... [SEP]), the SFT format for a decoder.
pub struct RewardText {
    format: Format,
    encoder: bool,
    eos: Option<u32>,
    max_len: usize,
}

impl RewardText {
    /// For a model with this backbone, tokenizer, `config.json` and shipped chat template.
    pub fn new(
        backbone: &Backbone,
        tokenizer: &Tokenizer,
        config: &serde_json::Value,
        chat_template: Option<&crate::model::chat::ChatTemplate>,
        template: &crate::spec::settings::PromptTemplate,
        max_len: usize,
    ) -> Self {
        RewardText {
            format: Format::new(template, chat_template),
            encoder: matches!(backbone, Backbone::Bert(_)),
            eos: eos_token(tokenizer, config),
            max_len: max_len.max(2),
        }
    }

    pub fn encode(&self, tok: &Tokenizer, prompt: &str, response: &str) -> Result<Vec<u32>> {
        let err = |e| anyhow::anyhow!("cannot tokenize: {e}");
        let mut ids = if self.encoder {
            tok.encode((prompt, response), true)
                .map_err(err)?
                .get_ids()
                .to_vec()
        } else {
            let mut ids = self.format.leading_tokens(tok)?;
            for (text, _) in self.format.pieces(&one_turn(prompt, response))? {
                ids.extend(tok.encode(text.as_str(), false).map_err(err)?.get_ids());
            }
            if self.format.plain() {
                ids.extend(self.eos);
            }
            ids
        };
        // Keep the end: the response decides the reward.
        if ids.len() > self.max_len {
            ids.drain(..ids.len() - self.max_len);
        }
        Ok(ids)
    }

    pub fn batch(&self, tok: &Tokenizer, rows: &[(&str, &str)], device: &Device) -> Result<Scored> {
        let seqs: Vec<Vec<u32>> = rows
            .iter()
            .map(|(p, r)| self.encode(tok, p, r))
            .collect::<Result<_>>()?;
        Ok(pad(&seqs, device))
    }
}

/// The template a reward model was trained with (`plain` when its config does not say).
pub fn trained_template(config: &serde_json::Value) -> crate::spec::settings::PromptTemplate {
    serde_json::from_value(config["hone_reward_template"].clone()).unwrap_or_default()
}

pub(crate) fn pad(seqs: &[Vec<u32>], device: &Device) -> Scored {
    use burn::tensor::TensorData;
    let b = seqs.len();
    let s = seqs.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let (mut ids, mut real) = (vec![0i64; b * s], vec![false; b * s]);
    for (i, seq) in seqs.iter().enumerate() {
        for (j, &t) in seq.iter().enumerate() {
            ids[i * s + j] = t as i64;
            real[i * s + j] = true;
        }
    }
    Scored {
        ids: Tensor::from_data(TensorData::new(ids, [b, s]), device),
        padding: Tensor::from_data(TensorData::new(real, [b, s]), device),
    }
}
