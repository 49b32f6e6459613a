//! Chat templates: the Jinja templates that HF tokenizers and GGUF files ship, rendered with
//! minijinja (with Python-style string methods, as HF templates use them), plus ChatML.

use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// ChatML: `<|im_start|>{role}\n{content}<|im_end|>\n`, generation prompt `<|im_start|>assistant\n`.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turns (`<start_of_turn>user ... <end_of_turn>`, the assistant called `model`, a
/// system message put before the first user turn), for Gemma checkpoints that ship no
/// template (the GGUF of Gemma 3 270M has none): the format the model was tuned on, not ChatML.
pub const GEMMA: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// The markers that end a turn in the chat formats people use (ChatML, Gemma, Llama 3, Phi-3),
/// searched for in a template to know where a generated answer ends.
pub const TURN_ENDS: [&str; 4] = ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"];

/// Why a chat template cannot turn messages into a prompt: the template does not parse, or
/// rendering it fails (a `raise_exception` in the template, a method it cannot call).
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The template's Jinja source does not parse.
    #[error("invalid chat template: {0}")]
    Invalid(minijinja::Error),
    /// The parsed template cannot be looked up again.
    #[error("{0}")]
    Lookup(minijinja::Error),
    /// Rendering the messages failed.
    #[error("cannot render chat template: {0}")]
    Render(minijinja::Error),
    /// The template ran past [`TEMPLATE_FUEL`] steps on one conversation.
    #[error(
        "the chat template did not finish within {TEMPLATE_FUEL} steps on one conversation: does it loop without end?"
    )]
    OutOfFuel,
}

/// Steps one rendering may take. Real chat templates take thousands per conversation; a
/// template from a checkpoint or a recipe is code from elsewhere, and must not hang a run.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

#[derive(Debug, Clone)]
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    pub fn chatml() -> ChatTemplate {
        ChatTemplate {
            source: CHATML.into(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        }
    }

    pub fn new(source: impl Into<String>, bos_token: &str, eos_token: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        }
    }

    /// The text that ends an assistant turn in this template: a known end-of-turn marker it
    /// writes, else its EOS token when it writes that, else ChatML's.
    pub fn end_of_turn(&self) -> String {
        if let Some(end) = TURN_ENDS.iter().find(|e| self.source.contains(*e)) {
            return (*end).to_owned();
        }
        if self.source.contains("eos_token") && !self.eos_token.is_empty() {
            return self.eos_token.clone();
        }
        "<|im_end|>".to_owned()
    }

    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template("chat", &self.source)
            .map_err(ChatError::Invalid)?;
        let tmpl = env.get_template("chat").map_err(ChatError::Lookup)?;
        tmpl.render(minijinja::context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        })
        .map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => ChatError::OutOfFuel,
            _ => ChatError::Render(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_matches_the_reference_format() {
        let text = ChatTemplate::chatml()
            .render(&[Message::new("user", "Hi")], true)
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_turns_match_the_reference_format_and_name_their_end() {
        let t = ChatTemplate::new(GEMMA, "<bos>", "<eos>");
        let text = t
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", " Hi "),
                    Message::new("assistant", "Hello."),
                    Message::new("user", "Bye"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(t.end_of_turn(), "<end_of_turn>");
        assert_eq!(ChatTemplate::chatml().end_of_turn(), "<|im_end|>");
        let llama2 = ChatTemplate::new("{{ m }}{{ eos_token }}", "<s>", "</s>");
        assert_eq!(llama2.end_of_turn(), "</s>");
    }

    #[test]
    fn a_template_that_loops_for_ever_stops_with_an_error() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            "",
            "",
        );
        let e = t.render(&[Message::new("user", "Hi")], true).unwrap_err();
        assert!(matches!(e, ChatError::OutOfFuel), "{e}");
    }

    #[test]
    fn hf_style_templates_with_python_methods_render() {
        let src = "{% for m in messages %}{% if m['role'] == 'bad' %}{{ raise_exception('no') }}{% endif %}{{ m['content'].strip() }}|{% endfor %}";
        let t = ChatTemplate::new(src, "", "");
        assert_eq!(
            t.render(
                &[
                    Message::new("user", "  a  "),
                    Message::new("assistant", "b")
                ],
                false
            )
            .unwrap(),
            "a|b|"
        );
        assert!(
            t.render(&[Message::new("bad", "x")], false)
                .unwrap_err()
                .to_string()
                .contains("no")
        );
    }
}
