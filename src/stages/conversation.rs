//! Conversations as a model sees them: a prompt template turns turns into text (the prompt a
//! model answers, and the pieces of a training example with the assistant's text marked as
//! the target), then tokens, cut to a length and batched. Shared by every stage that trains or
//! prompts a chat model (sft, dpo, reward, grpo, ppo, generate, evaluate).

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use tokenizers::Tokenizer;

use super::answer_scores::AnswerScores;
use super::model_input::EOS;
use crate::data::leakage::{Key, Part, Unit, mark_sole, normalize};
use crate::data::tokenized::Encoded;
use crate::model::Backbone;
use crate::model::chat::{ChatTemplate, Message};
use crate::model::sampling::{SamplingConfig, generate};
use crate::spec::settings::{NamedTemplate, PromptTemplate, Truncation};
use crate::train::objectives::LmBatch;

/// Conversations (a prompt/response pair is a one-turn conversation).
pub type Conversations = Vec<Vec<Message>>;

/// Turns conversations into text: the prompt a model answers, and the pieces of a training
/// example with the assistant's text marked as the target.
pub struct Format {
    template: Option<ChatTemplate>,
    /// The text that ends an answer (ChatML's end of turn); generation is cut there.
    end: Option<String>,
}

/// A stretch of an example's text and whether the loss covers it.
pub(crate) type Piece = (String, bool);

impl Format {
    /// `model_template` is the model's own chat template (`template: model`); ChatML stands in
    /// where it has none.
    pub(crate) fn new(t: &PromptTemplate, model_template: Option<&ChatTemplate>) -> Format {
        let chatml = || Format {
            template: Some(ChatTemplate::chatml()),
            end: Some("<|im_end|>".into()),
        };
        match t {
            PromptTemplate::Named(NamedTemplate::Plain) => Format {
                template: None,
                end: None,
            },
            PromptTemplate::Named(NamedTemplate::Model) => match model_template {
                Some(t) => Format {
                    template: Some(t.clone()),
                    end: Some(t.end_of_turn()),
                },
                None => chatml(),
            },
            PromptTemplate::Named(NamedTemplate::Chatml) => chatml(),
            PromptTemplate::Custom(c) => Format {
                template: Some(ChatTemplate::new(&c.jinja, &c.bos_token, &c.eos_token)),
                end: c.end_of_turn.clone(),
            },
        }
    }

    /// How a model trained in this format is prompted, for its saved files: the chat template
    /// (for plain text, one that writes each turn as `{content}\n`, as this format does) and
    /// the recipe's `template:` setting.
    pub(crate) fn prompting(
        &self,
        recipe_template: &PromptTemplate,
        tok: &Tokenizer,
    ) -> Result<crate::model::serving::Prompting> {
        let chat = match &self.template {
            Some(t) => t.clone(),
            None => {
                let bos: Vec<String> = self
                    .leading_tokens(tok)?
                    .iter()
                    .filter_map(|&id| tok.id_to_token(id))
                    .collect();
                let eos = tok
                    .token_to_id(EOS)
                    .map(|_| EOS.to_owned())
                    .unwrap_or_default();
                let lead = if bos.is_empty() {
                    ""
                } else {
                    "{{ bos_token }}"
                };
                ChatTemplate::new(
                    format!(
                        "{lead}{{% for message in messages %}}{{{{ message['content'] + '\n' }}}}{{% endfor %}}"
                    ),
                    &bos.concat(),
                    &eos,
                )
            }
        };
        Ok(crate::model::serving::Prompting {
            chat,
            recipe_template: Some(serde_json::to_value(recipe_template)?),
        })
    }

    /// Whether the format ends answers with the end-of-text token (plain text has no other
    /// end marker).
    pub(crate) fn plain(&self) -> bool {
        self.template.is_none()
    }

    /// The token ids of a formatted one-turn prompt.
    pub(crate) fn encode_prompt(&self, tok: &Tokenizer, p: &str) -> Result<Vec<u32>> {
        self.encode_conversation_prompt(tok, &[Message::new("user", p)])
    }

    /// The token ids of the prompt that asks for the next assistant turn after `history`.
    pub(crate) fn encode_conversation_prompt(
        &self,
        tok: &Tokenizer,
        history: &[Message],
    ) -> Result<Vec<u32>> {
        let mut ids = self.leading_tokens(tok)?;
        ids.extend(encode(tok, &self.prompt(history)?)?);
        Ok(ids)
    }

    /// The tokens every example and prompt starts with. Plain text starts as the tokenizer
    /// starts a raw text (a SentencePiece model's BOS, where its file asks for one, as
    /// llama.cpp and transformers do); a chat template writes its own `bos_token`.
    pub(crate) fn leading_tokens(&self, tok: &Tokenizer) -> Result<Vec<u32>> {
        if !self.plain() {
            return Ok(Vec::new());
        }
        let e = tok
            .encode("a", true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?;
        Ok(e.get_ids()
            .iter()
            .zip(e.get_special_tokens_mask())
            .take_while(|(_, special)| **special == 1)
            .map(|(id, _)| *id)
            .collect())
    }

    fn prompt(&self, history: &[Message]) -> Result<String> {
        match &self.template {
            None => Ok(history.iter().map(|m| format!("{}\n", m.content)).collect()),
            Some(t) => Ok(t.render(history, true)?),
        }
    }

    /// The conversation as pieces, the assistant turns marked as targets. With a chat
    /// template, an assistant turn is what rendering it adds after the generation prompt (its
    /// end-of-turn marker included), so training sees exactly what inference will.
    pub(crate) fn pieces(&self, conv: &[Message]) -> Result<Vec<Piece>> {
        let Some(t) = &self.template else {
            return Ok(conv
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let assistant = m.role == "assistant";
                    let last = i + 1 == conv.len();
                    let sep = if assistant && last { "" } else { "\n" };
                    (format!("{}{sep}", m.content), assistant)
                })
                .collect());
        };
        let render = |msgs: &[Message], generation| t.render(msgs, generation);
        let mut out = Vec::new();
        let mut done = String::new();
        for i in 0..conv.len() {
            if conv[i].role != "assistant" {
                continue;
            }
            let before = render(&conv[..i], true)?;
            let after = render(&conv[..=i], false)?;
            let (Some(context), Some(answer)) =
                (before.strip_prefix(&done), after.strip_prefix(&before))
            else {
                bail!(
                    "the chat template does not render conversations incrementally (turn {} changes the text before it), so the assistant's tokens cannot be found",
                    i + 1
                );
            };
            out.push((context.to_owned(), false));
            out.push((answer.to_owned(), true));
            done = after;
        }
        Ok(out)
    }

    /// A generated answer up to the end-of-turn marker.
    pub(crate) fn answer<'a>(&self, generated: &'a str) -> &'a str {
        match &self.end {
            Some(end) => generated.split(end.as_str()).next().unwrap_or(generated),
            None => generated,
        }
    }
}

fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tok
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("cannot tokenize: {e}"))?
        .get_ids()
        .to_vec())
}

/// A prompt/response pair as a conversation.
pub(crate) fn one_turn(prompt: &str, response: &str) -> Vec<Message> {
    vec![
        Message::new("user", prompt),
        Message::new("assistant", response),
    ]
}

/// An OpenAI-style message list: `[{ "role": "user", "content": "..." }, ...]`, with at least
/// one assistant turn.
pub(crate) fn parse_messages(v: &serde_json::Value) -> Result<Vec<Message>> {
    let messages: Vec<Message> = serde_json::from_value(v.clone())
        .map_err(|e| anyhow::anyhow!("expected a list of {{ role, content }} objects ({e})"))?;
    if let Some(m) = messages
        .iter()
        .find(|m| !["system", "user", "assistant", "tool"].contains(&m.role.as_str()))
    {
        bail!(
            "unknown role `{}` (roles: system, user, assistant, tool)",
            m.role
        );
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        bail!("the conversation has no assistant turn to learn from");
    }
    Ok(messages)
}

/// Conversations as leakage keys, by what the user said: the whole is the user turns, and each
/// user turn is a part (see `data::leakage`). A validation question that also occurs in
/// training measures memory, not skill; answers are left out, since held-out phrasings of a
/// trained question may share its answer (the dataset stage's `leakage_key` decides that).
pub(crate) fn conversation_keys(name: &str, convs: &[Vec<Message>]) -> Vec<Key> {
    convs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let said: Vec<&Message> = c.iter().filter(|m| m.role == "user").collect();
            let exact = said
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            let mut units: Vec<Unit> = said
                .iter()
                .enumerate()
                .map(|(n, m)| Unit::new(Part::Prompt, format!("user turn {}", n + 1), &m.content))
                .collect();
            mark_sole(&mut units);
            Key {
                normalized: normalize(&exact),
                exact,
                origin: format!("{name} #{}", i + 1),
                units,
            }
        })
        .collect()
}

/// A preference example: the conversation so far, and the answer preferred to it over the
/// other.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Preference {
    pub history: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
}

impl Preference {
    /// The prompt as one text, for models that read (prompt, answer) text pairs: a lone user
    /// turn as it is, a longer history one `role: content` line per turn.
    pub(crate) fn prompt_text(&self) -> String {
        match self.history.as_slice() {
            [m] if m.role == "user" => m.content.clone(),
            turns => turns
                .iter()
                .map(|m| format!("{}: {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Reads a preference row in either of TRL's forms: text (`prompt`, `chosen`, `rejected`
/// strings; the prompt is a user turn) or conversational (message lists: `prompt` the turns so
/// far, `chosen` and `rejected` the assistant's answer; without a prompt column, the turns
/// the two lists share are the prompt). `None` when a value is missing (null).
pub(crate) fn parse_preference(
    prompt: Option<&serde_json::Value>,
    chosen: &serde_json::Value,
    rejected: &serde_json::Value,
) -> Result<Option<Preference>> {
    use serde_json::Value;
    let turns = |v: &Value, what: &str| -> Result<Option<Vec<Message>>> {
        Ok(match v {
            Value::Null => None,
            Value::String(s) if what == "prompt" => Some(vec![Message::new("user", s)]),
            Value::String(s) => Some(vec![Message::new("assistant", s)]),
            Value::Array(_) => {
                let m: Vec<Message> = serde_json::from_value(v.clone()).map_err(|e| {
                    anyhow::anyhow!("`{what}` is not a list of {{ role, content }} objects ({e})")
                })?;
                Some(m)
            }
            _ => bail!("`{what}` is neither text nor a list of messages"),
        })
    };
    let history = match prompt {
        Some(p) => match turns(p, "prompt")? {
            Some(h) => h,
            None => return Ok(None),
        },
        None => Vec::new(),
    };
    let (Some(mut c), Some(mut r)) = (turns(chosen, "chosen")?, turns(rejected, "rejected")?)
    else {
        return Ok(None);
    };
    let answer = |turns: &mut Vec<Message>, what: &str| -> Result<String> {
        match turns.pop() {
            Some(m) if m.role == "assistant" => Ok(m.content),
            _ => bail!("`{what}` does not end with an assistant turn"),
        }
    };
    let chosen = answer(&mut c, "chosen")?;
    let rejected = answer(&mut r, "rejected")?;
    if c != r {
        bail!(
            "`chosen` and `rejected` answer different conversations (their turns before the answer differ)"
        );
    }
    let mut history = history;
    history.extend(c);
    if !history.iter().any(|m| m.role == "user") {
        bail!("no prompt: neither a `prompt` nor user turns before the answers");
    }
    Ok(Some(Preference {
        history,
        chosen,
        rejected,
    }))
}

/// The preference pairs of a table (see `parse_preference`), each with the index of its row;
/// rows with a missing value are left out. The prompt column may be absent when the answers
/// are message lists.
pub(crate) fn preference_rows(
    t: &crate::data::table::Table,
    prompt: &str,
    chosen: &str,
    rejected: &str,
    what: &str,
) -> Result<Vec<(Preference, usize)>> {
    use crate::data::table::ColumnType;
    let idx = t.indices(&[chosen.to_owned(), rejected.to_owned()], what)?;
    let prompt = match t.column(prompt) {
        Some(i) => Some(i),
        None if t.types[idx[0]] == ColumnType::Json => None,
        None => Some(t.indices(&[prompt.to_owned()], what)?[0]),
    };
    let mut out = Vec::with_capacity(t.rows.len());
    for (n, r) in t.rows.iter().enumerate() {
        let p = prompt.map(|i| &r.values[i]);
        let parsed = parse_preference(p, &r.values[idx[0]], &r.values[idx[1]])
            .with_context(|| t.origin(r))?;
        out.extend(parsed.map(|p| (p, n)));
    }
    Ok(out)
}

/// The end-of-text token appended to training texts: the tokenizer's `<|endoftext|>`, else the
/// config's `eos_token_id`.
pub(crate) fn eos_token(tok: &Tokenizer, config: &serde_json::Value) -> Option<u32> {
    tok.token_to_id(EOS)
        .or_else(|| config["eos_token_id"].as_u64().map(|v| v as u32))
}

/// Batches whose targets are the assistant's tokens (and, for plain text, the end-of-text
/// token after the last answer).
pub(crate) fn encode_conversations(
    tok: &Tokenizer,
    format: &Format,
    convs: &[Vec<Message>],
    eos: Option<u32>,
    max_len: usize,
    batch: usize,
    device: &Device,
) -> Result<Vec<LmBatch>> {
    let (encoded, _) = truncate(
        tokenize_conversations(tok, format, convs, eos)?,
        max_len,
        Truncation::End,
    );
    Ok(conversation_batches(&encoded, batch, device))
}

/// Each conversation's tokens with the assistant's marked as targets, whole. Each piece is
/// tokenized on its own, so a target never shares a token with its context.
pub(crate) fn tokenize_conversations(
    tok: &Tokenizer,
    format: &Format,
    convs: &[Vec<Message>],
    eos: Option<u32>,
) -> Result<Vec<Encoded>> {
    let mut out = Vec::with_capacity(convs.len());
    let lead = format.leading_tokens(tok)?;
    for conv in convs {
        let (mut ids, mut targets) = (lead.clone(), vec![false; lead.len()]);
        for (text, is_target) in format.pieces(conv)? {
            let piece = encode(tok, &text)?;
            targets.extend(std::iter::repeat_n(is_target, piece.len()));
            ids.extend(piece);
        }
        if format.plain() && targets.last() == Some(&true) {
            ids.extend(eos);
            targets.extend(eos.map(|_| true));
        }
        out.push(Encoded { ids, targets });
    }
    Ok(out)
}

/// Examples cut to `max_len` tokens by `policy`; returns them and how many were longer.
/// `Prompt` removes tokens from the start so the last answer survives (and cuts the answer's
/// end only when the answer alone is too long); `Drop` leaves long examples out.
pub(crate) fn truncate(
    encoded: Vec<Encoded>,
    max_len: usize,
    policy: Truncation,
) -> (Vec<Encoded>, usize) {
    let mut long = 0;
    let mut out = Vec::with_capacity(encoded.len());
    for mut e in encoded {
        if e.ids.len() <= max_len {
            out.push(e);
            continue;
        }
        long += 1;
        match policy {
            Truncation::Drop => continue,
            Truncation::Prompt => {
                // The start of the last run of targets (the last answer).
                let answer_start = match e.targets.iter().rposition(|t| *t) {
                    Some(end) => e.targets[..=end]
                        .iter()
                        .rposition(|t| !t)
                        .map_or(0, |i| i + 1),
                    None => e.ids.len(),
                };
                let cut = (e.ids.len() - max_len).min(answer_start);
                e.ids.drain(..cut);
                e.targets.drain(..cut);
            }
            Truncation::End => {}
        }
        e.ids.truncate(max_len);
        e.targets.truncate(max_len);
        out.push(e);
    }
    (out, long)
}

/// Batches of encoded conversations; one whose targets were all cut off is dropped.
pub(crate) fn conversation_batches(
    encoded: &[Encoded],
    batch: usize,
    device: &Device,
) -> Vec<LmBatch> {
    let kept: Vec<&Encoded> = encoded
        .iter()
        .filter(|e| e.targets.iter().any(|t| *t))
        .collect();
    kept.chunks(batch)
        .map(|c| {
            let seqs: Vec<Vec<u32>> = c.iter().map(|e| e.ids.clone()).collect();
            let targets: Vec<Vec<bool>> = c.iter().map(|e| e.targets.clone()).collect();
            LmBatch::with_targets(&seqs, &targets, device)
        })
        .collect()
}

/// Encoded examples as their text, in stretches of tokens the loss covers or not, for
/// `hone show --examples`: special tokens are shown as written.
pub(crate) fn shown_examples(
    tok: &Tokenizer,
    whole: Vec<Encoded>,
    max_len: usize,
    policy: Truncation,
    labels: impl Iterator<Item = String>,
) -> Result<Vec<crate::spec::kind::EncodedExample>> {
    let mut out = Vec::new();
    for (w, mut label) in whole.into_iter().zip(labels) {
        let full = w.ids.len();
        // Each alone, so an example `truncation: drop` leaves out is shown, and said to be.
        let e = match truncate(vec![w.clone()], max_len, policy).0.pop() {
            Some(e) => e,
            None => {
                label.push_str(" (left out: longer than max_length)");
                w
            }
        };
        let mut pieces: Vec<(String, bool)> = Vec::new();
        let mut start = 0;
        for k in 1..=e.ids.len() {
            if k == e.ids.len() || e.targets[k] != e.targets[start] {
                let text = tok
                    .decode(&e.ids[start..k], false)
                    .map_err(|err| anyhow::anyhow!("cannot decode: {err}"))?;
                pieces.push((text, e.targets[start]));
                start = k;
            }
        }
        out.push(crate::spec::kind::EncodedExample {
            label,
            pieces,
            tokens: e.ids.len(),
            target_tokens: e.targets.iter().filter(|t| **t).count(),
            cut: full - e.ids.len(),
        });
    }
    Ok(out)
}

/// A held-out conversation's last assistant turn, and what a model answered in its place.
#[derive(Debug, Clone)]
pub(crate) struct Answered {
    /// The last user turn before the answer (what a reader needs to judge it).
    pub prompt: String,
    pub reference: String,
    pub answer: String,
}

/// Each conversation's last assistant turn answered greedily by the model from the turns
/// before it.
pub(crate) fn greedy_answers(
    model: &Backbone,
    tok: &Tokenizer,
    format: &Format,
    convs: &[Vec<Message>],
    sampling: &SamplingConfig,
    device: &Device,
) -> Result<Vec<Answered>> {
    let cases: Vec<(&[Message], &str)> = convs
        .iter()
        .filter_map(|c| {
            let last = c.iter().rposition(|m| m.role == "assistant")?;
            Some((&c[..last], c[last].content.as_str()))
        })
        .collect();
    let mut out = Vec::with_capacity(cases.len());
    for chunk in cases.chunks(16) {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(history, _)| format.encode_conversation_prompt(tok, history))
            .collect::<Result<_>>()?;
        let outputs = generate(
            super::model_input::language_model(model)?,
            &prompts,
            sampling,
            device,
        );
        for ((history, want), ids) in chunk.iter().zip(outputs) {
            let text = tok.decode(&ids, true).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.push(Answered {
                prompt: history
                    .iter()
                    .rfind(|m| m.role == "user")
                    .map(|m| m.content.clone())
                    .unwrap_or_default(),
                reference: (*want).to_owned(),
                answer: format.answer(&text).to_owned(),
            });
        }
    }
    Ok(out)
}

/// Validation answers a stage keeps in its summary, at most.
pub(crate) const ANSWERS_KEPT: usize = 100;

/// How validation answers compare with their references, before and after training: the mean
/// of each score (`None` without validation data), and the first `ANSWERS_KEPT` answers with
/// their scores, for `hone show` and the report (a row per question and `model`: `before` or
/// `after`).
pub(crate) fn before_and_after(
    before: &[Answered],
    after: &[Answered],
) -> (Option<[AnswerScores; 2]>, Vec<serde_json::Value>) {
    let score = |answered: &[Answered]| -> Vec<AnswerScores> {
        answered
            .iter()
            .map(|a| AnswerScores::of(&a.answer, &a.reference))
            .collect()
    };
    let (sb, sa) = (score(before), score(after));
    let mean = |s: &[AnswerScores]| {
        AnswerScores::mean(s).map(|[exact_match, contains, token_f1, rouge_l]| AnswerScores {
            exact_match,
            contains,
            token_f1,
            rouge_l,
        })
    };
    let means = mean(&sb).zip(mean(&sa)).map(|(b, a)| [b, a]);
    let mut rows = Vec::new();
    for (i, (b, a)) in before.iter().zip(after).enumerate().take(ANSWERS_KEPT) {
        for (model, answered, s) in [("before", b, &sb[i]), ("after", a, &sa[i])] {
            let mut row = serde_json::json!({
                "model": model,
                "prompt": answered.prompt,
                "reference": answered.reference,
                "answer": answered.answer,
            });
            for (name, v) in super::answer_scores::NAMES.iter().zip(s.values()) {
                row[*name] = v.into();
            }
            rows.push(row);
        }
    }
    (means, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_read_as_text_or_as_trl_conversations() {
        use serde_json::json;
        let text = parse_preference(Some(&json!("Q?")), &json!("yes"), &json!("no"))
            .unwrap()
            .unwrap();
        assert_eq!(text.history, vec![Message::new("user", "Q?")]);
        let turn = |r: &str, c: &str| json!({ "role": r, "content": c });
        let sys = turn("system", "Be brief.");
        let implicit = parse_preference(
            None,
            &json!([sys, turn("user", "Q?"), turn("assistant", "yes")]),
            &json!([sys, turn("user", "Q?"), turn("assistant", "no")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(implicit.history.len(), 2);
        assert_eq!(
            (implicit.chosen.as_str(), implicit.rejected.as_str()),
            ("yes", "no")
        );
        assert_eq!(implicit.prompt_text(), "system: Be brief.\nuser: Q?");
        let explicit = parse_preference(
            Some(&json!([turn("user", "Q?")])),
            &json!([turn("assistant", "yes")]),
            &json!([turn("assistant", "no")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(explicit, text);
        assert!(
            parse_preference(Some(&json!(null)), &json!("a"), &json!("b"))
                .unwrap()
                .is_none()
        );
        let e = parse_preference(
            None,
            &json!([turn("user", "Q?"), turn("assistant", "yes")]),
            &json!([turn("user", "Other?"), turn("assistant", "no")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("different conversations"), "{e}");
        let e = parse_preference(
            None,
            &json!([turn("assistant", "yes")]),
            &json!([turn("assistant", "no")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("no prompt"), "{e}");
    }
    use crate::spec::settings::CustomTemplate;

    fn two_turns() -> Vec<Message> {
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Q1"),
            Message::new("assistant", "A1"),
            Message::new("user", "Q2"),
            Message::new("assistant", "A2"),
        ]
    }

    #[test]
    fn chatml_marks_every_assistant_turn_with_its_end_of_turn() {
        let f = Format::new(&PromptTemplate::Named(NamedTemplate::Chatml), None);
        let pieces = f.pieces(&two_turns()).unwrap();
        let im = |r: &str, c: &str| format!("<|im_start|>{r}\n{c}<|im_end|>\n");
        assert_eq!(
            pieces,
            vec![
                (
                    format!(
                        "{}{}<|im_start|>assistant\n",
                        im("system", "Be brief."),
                        im("user", "Q1")
                    ),
                    false
                ),
                ("A1<|im_end|>\n".to_owned(), true),
                (
                    format!("{}<|im_start|>assistant\n", im("user", "Q2")),
                    false
                ),
                ("A2<|im_end|>\n".to_owned(), true),
            ]
        );
        // Training text is exactly what the template renders for the whole conversation.
        let whole: String = pieces.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            whole,
            ChatTemplate::chatml().render(&two_turns(), false).unwrap()
        );
    }

    #[test]
    fn plain_text_joins_turns_with_newlines() {
        let f = Format::new(&PromptTemplate::default(), None);
        let pieces = f.pieces(&two_turns()[1..]).unwrap();
        assert_eq!(
            pieces,
            vec![
                ("Q1\n".to_owned(), false),
                ("A1\n".to_owned(), true),
                ("Q2\n".to_owned(), false),
                ("A2".to_owned(), true),
            ]
        );
    }

    /// A word-level tokenizer of `words` (ids in order) whose post-processor puts `<s>` (id 0)
    /// before every text, as a SentencePiece GGUF asks.
    fn tokenizer_adding_bos(words: &[&str]) -> Tokenizer {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        use tokenizers::processors::template::TemplateProcessing;
        let vocab = std::iter::once("<s>")
            .chain(words.iter().copied())
            .enumerate()
            .map(|(i, w)| (w.to_owned(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<s>".into())
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        tok.add_special_tokens(&[
            tokenizers::AddedToken::from("<s>", true),
            tokenizers::AddedToken::from("<end_of_turn>", true),
        ]);
        let bos = TemplateProcessing::builder()
            .try_single("<s> $A")
            .unwrap()
            .special_tokens(vec![("<s>", 0)])
            .build()
            .unwrap();
        tok.with_post_processor(Some(bos));
        tok
    }

    #[test]
    fn plain_text_starts_with_the_bos_its_tokenizer_adds_and_a_model_template_writes_its_own() {
        let tok = tokenizer_adding_bos(&["Q1", "A1", "<end_of_turn>"]);
        let plain = Format::new(&PromptTemplate::default(), None);
        let conv = &two_turns()[1..3];
        let encoded = tokenize_conversations(&tok, &plain, &[conv.to_vec()], None).unwrap();
        assert_eq!(encoded[0].ids, [0, 1, 2]);
        assert_eq!(encoded[0].targets, [false, false, true]);
        assert_eq!(plain.encode_prompt(&tok, "Q1").unwrap(), [0, 1]);
        // A model template renders its own `bos_token`: no second one.
        let own = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{{ m.content }} <end_of_turn> {% endfor %}",
            "<s>",
            "",
        );
        let model = Format::new(&PromptTemplate::Named(NamedTemplate::Model), Some(&own));
        assert_eq!(model.encode_prompt(&tok, "Q1").unwrap(), [0, 1, 3]);
        assert_eq!(model.answer("A1 <end_of_turn> Q1"), "A1 ");
    }

    #[test]
    fn a_recipe_template_renders_and_a_non_incremental_one_is_refused() {
        let custom = |jinja: &str| {
            Format::new(
                &PromptTemplate::Custom(CustomTemplate {
                    jinja: jinja.into(),
                    end_of_turn: Some("</s>".into()),
                    bos_token: String::new(),
                    eos_token: String::new(),
                }),
                None,
            )
        };
        let f = custom(
            "{% for m in messages %}[{{ m.role }}] {{ m.content }}{% if m.role == 'assistant' %}</s>{% endif %}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}",
        );
        let pieces = f.pieces(&two_turns()[1..3]).unwrap();
        assert_eq!(
            pieces,
            vec![
                ("[user] Q1\n[assistant] ".to_owned(), false),
                ("A1</s>\n".to_owned(), true)
            ]
        );
        assert_eq!(f.answer("A1</s>\n[user]"), "A1");
        // A template that shows only the last message cannot be split into turns.
        let last_only =
            custom("{{ messages[-1].content }}{% if add_generation_prompt %}>{% endif %}");
        let err = last_only.pieces(&two_turns()).unwrap_err().to_string();
        assert!(err.contains("incrementally"), "{err}");
    }

    #[test]
    fn truncation_policies_keep_the_answer_or_drop_the_example() {
        let e = |n_prompt: usize, n_answer: usize| Encoded {
            ids: (0..(n_prompt + n_answer) as u32).collect(),
            targets: (0..n_prompt + n_answer).map(|i| i >= n_prompt).collect(),
        };
        let (end, long) = truncate(vec![e(6, 3), e(2, 2)], 5, Truncation::End);
        assert_eq!(long, 1);
        assert_eq!(end[0].ids, vec![0, 1, 2, 3, 4]);
        assert!(end[0].targets.iter().all(|t| !t), "the answer was cut off");
        let (prompt, _) = truncate(vec![e(6, 3)], 5, Truncation::Prompt);
        assert_eq!(prompt[0].ids, vec![4, 5, 6, 7, 8]);
        assert_eq!(prompt[0].targets, vec![false, false, true, true, true]);
        // An answer longer than the limit keeps its start.
        let (long_answer, _) = truncate(vec![e(2, 7)], 5, Truncation::Prompt);
        assert_eq!(long_answer[0].ids, vec![2, 3, 4, 5, 6]);
        let (dropped, long) = truncate(vec![e(6, 3), e(2, 2)], 5, Truncation::Drop);
        assert_eq!((dropped.len(), long), (1, 1));
    }

    #[test]
    fn messages_must_be_role_content_lists_with_an_answer() {
        let ok = serde_json::json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]);
        assert_eq!(parse_messages(&ok).unwrap().len(), 2);
        let no_answer = serde_json::json!([{"role": "user", "content": "hi"}]);
        assert!(
            parse_messages(&no_answer)
                .unwrap_err()
                .to_string()
                .contains("no assistant turn")
        );
        let bad_role = serde_json::json!([{"role": "bot", "content": "hi"}]);
        assert!(
            parse_messages(&bad_role)
                .unwrap_err()
                .to_string()
                .contains("unknown role `bot`")
        );
        assert!(parse_messages(&serde_json::json!("text")).is_err());
    }
}
