//! The dataset layouts people share, read into the columns hone's stages read: ShareGPT
//! (`conversations`, a list of `{ from, value }`) becomes `messages` (a list of
//! `{ role, content }`, as `task: chat` reads it); Alpaca (`instruction`, optional `input`,
//! `output`) becomes `prompt` and `response`, the prompt written as Alpaca's template writes
//! it. Other columns are kept.

use anyhow::Result;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::table::{ColumnType, Table};
use crate::diag::{Diagnostic, input_error};

/// How a dataset's rows are laid out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// ShareGPT and Alpaca files are recognised by their columns and converted; anything
    /// else is read as it is.
    #[default]
    Auto,
    /// Read the columns as they are.
    AsIs,
    /// `conversations: [{ from, value }]` becomes `messages: [{ role, content }]` (`human` is
    /// the user, `gpt` the assistant).
    Sharegpt,
    /// `instruction`, `input`, `output` become `prompt` (Alpaca's prompt template) and
    /// `response`.
    Alpaca,
}

impl Layout {
    pub fn is_auto(&self) -> bool {
        *self == Layout::Auto
    }
}

const SHAREGPT_COLUMN: &str = "conversations";

/// Alpaca's prompt templates (tatsu-lab/stanford_alpaca), with and without an input; the
/// response follows the newline after "### Response:", which the prompt template of the
/// training stage adds.
const ALPACA_WITH_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
const ALPACA_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

/// The layout `t` is in, as `Auto` sees it.
fn detect(t: &Table) -> Layout {
    if let Some(i) = t.column(SHAREGPT_COLUMN) {
        let first = t.rows.iter().find_map(|r| r.values[i].as_array());
        if first
            .and_then(|turns| turns.first())
            .is_some_and(|turn| turn.get("from").is_some() && turn.get("value").is_some())
        {
            return Layout::Sharegpt;
        }
    }
    if t.column("instruction").is_some() && t.column("output").is_some() {
        return Layout::Alpaca;
    }
    Layout::AsIs
}

/// Converts `t` from `layout` (`Auto`: what it looks like); returns what was done, for the
/// stage's summary, or `None` when the rows are read as they are.
pub fn convert(t: &mut Table, layout: Layout) -> Result<Option<String>> {
    let layout = match layout {
        Layout::Auto => detect(t),
        l => l,
    };
    match layout {
        Layout::Auto | Layout::AsIs => Ok(None),
        Layout::Sharegpt => {
            sharegpt(t)?;
            Ok(Some(
                "read as ShareGPT: `conversations` became `messages`".into(),
            ))
        }
        Layout::Alpaca => {
            alpaca(t)?;
            Ok(Some(
                "read as Alpaca: `instruction`/`input` became `prompt` (Alpaca's template), `output` became `response`".into(),
            ))
        }
    }
}

/// The role a ShareGPT speaker plays, in OpenAI's names.
fn role(from: &str) -> Option<&'static str> {
    Some(match from.to_ascii_lowercase().as_str() {
        "human" | "user" => "user",
        "gpt" | "assistant" | "model" | "chatgpt" | "bard" | "bing" => "assistant",
        "system" => "system",
        "tool" | "function" | "function_response" | "observation" | "ipython" => "tool",
        _ => return None,
    })
}

fn sharegpt(t: &mut Table) -> Result<()> {
    let i = needed(t, SHAREGPT_COLUMN, "ShareGPT")?;
    free(t, "messages", "ShareGPT")?;
    let mut errors = Vec::new();
    for r in &mut t.rows {
        let converted = match &r.values[i] {
            Value::Null => Ok(Value::Null),
            Value::Array(turns) => turns
                .iter()
                .enumerate()
                .map(|(n, turn)| {
                    let text = |k: &str| turn.get(k).and_then(Value::as_str);
                    let from = text("from").ok_or_else(|| {
                        format!("turn {} has no `from` (who speaks: human, gpt, system)", n + 1)
                    })?;
                    let value = text("value")
                        .ok_or_else(|| format!("turn {} has no `value` text", n + 1))?;
                    let role = role(from).ok_or_else(|| {
                        format!("turn {} is from `{from}`, which is none of human, user, gpt, assistant, model, system, tool", n + 1)
                    })?;
                    Ok(json!({ "role": role, "content": value }))
                })
                .collect::<Result<Vec<_>, String>>()
                .map(Value::Array),
            _ => Err("`conversations` is not a list of turns".to_owned()),
        };
        match converted {
            Ok(v) => r.values[i] = v,
            Err(e) => errors.push((r.line, e)),
        }
    }
    if let Some((line, e)) = errors.first() {
        let origin = origin(t, *line);
        return Err(input_error(
            Diagnostic::new(format!("{origin}: {e}")).help(format!(
                "{} rows of {} are not ShareGPT conversations; set `layout: as_is` to read the columns as they are",
                errors.len(),
                t.source
            )),
        ));
    }
    t.columns[i] = "messages".into();
    Ok(())
}

fn alpaca(t: &mut Table) -> Result<()> {
    let instruction = needed(t, "instruction", "Alpaca")?;
    let output = needed(t, "output", "Alpaca")?;
    let input = t.column("input");
    free(t, "prompt", "Alpaca")?;
    free(t, "response", "Alpaca")?;
    let text = |v: &Value| -> Option<String> {
        match v {
            Value::Null => Some(String::new()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    };
    let mut bad = None;
    for r in &mut t.rows {
        let (Some(ins), Some(extra)) = (
            text(&r.values[instruction]),
            input.map_or(Some(String::new()), |k| text(&r.values[k])),
        ) else {
            bad = Some(r.line);
            break;
        };
        let prompt = if extra.trim().is_empty() {
            ALPACA_NO_INPUT.replace("{instruction}", &ins)
        } else {
            ALPACA_WITH_INPUT
                .replace("{instruction}", &ins)
                .replace("{input}", &extra)
        };
        r.values[instruction] = Value::String(prompt);
    }
    if let Some(line) = bad {
        return Err(input_error(Diagnostic::new(format!(
            "{}: `instruction` and `input` must be text",
            origin(t, line)
        ))));
    }
    t.columns[instruction] = "prompt".into();
    t.types[instruction] = ColumnType::Text;
    t.columns[output] = "response".into();
    if let Some(k) = input {
        t.columns.remove(k);
        t.types.remove(k);
        for r in &mut t.rows {
            r.values.remove(k);
        }
    }
    Ok(())
}

fn needed(t: &Table, column: &str, layout: &str) -> Result<usize> {
    t.column(column).ok_or_else(|| {
        input_error(
            Diagnostic::new(format!(
                "{} has no `{column}` column, which {layout} data has",
                t.source
            ))
            .help(format!("columns: {}", t.columns.join(", "))),
        )
    })
}

/// Fails when converting would make a second column named `column`.
fn free(t: &Table, column: &str, layout: &str) -> Result<()> {
    if t.column(column).is_some() {
        return Err(input_error(
            Diagnostic::new(format!(
                "{} already has a `{column}` column, which reading it as {layout} would write",
                t.source
            ))
            .help("rename or drop it with `columns:`, or set `layout: as_is`"),
        ));
    }
    Ok(())
}

fn origin(t: &Table, line: usize) -> String {
    if t.line_numbers {
        format!("{}:{line}", t.source)
    } else {
        format!("{} row {line}", t.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(columns: &[&str], rows: Vec<Vec<Value>>) -> Table {
        Table::of_rows(columns, rows)
    }

    #[test]
    fn sharegpt_turns_become_messages() {
        let mut t = table(
            &["id", "conversations"],
            vec![vec![
                json!("a"),
                json!([{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]),
            ]],
        );
        let what = convert(&mut t, Layout::Auto).unwrap();
        assert!(what.unwrap().contains("ShareGPT"));
        assert_eq!(t.columns, ["id", "messages"]);
        assert_eq!(
            t.rows[0].values[1],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}])
        );
    }

    #[test]
    fn an_unknown_speaker_is_named_with_its_line() {
        let mut t = table(
            &["conversations"],
            vec![
                vec![json!([{"from": "human", "value": "Hi?"}])],
                vec![json!([{"from": "narrator", "value": "..."}])],
            ],
        );
        let e = convert(&mut t, Layout::Sharegpt).unwrap_err().to_string();
        assert!(e.contains("data.jsonl:2") && e.contains("narrator"), "{e}");
    }

    #[test]
    fn alpaca_rows_become_prompts_written_as_alpaca_does() {
        let mut t = table(
            &["instruction", "input", "output"],
            vec![
                vec![json!("Add the numbers."), json!("2 and 3"), json!("5")],
                vec![json!("Name a colour."), json!(""), json!("Red")],
            ],
        );
        convert(&mut t, Layout::Auto).unwrap();
        assert_eq!(t.columns, ["prompt", "response"]);
        let prompt = |r: usize| t.rows[r].values[0].as_str().unwrap().to_owned();
        assert!(prompt(0).ends_with(
            "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:"
        ));
        assert!(prompt(1).ends_with("### Instruction:\nName a colour.\n\n### Response:"));
        assert!(!prompt(1).contains("### Input"));
        assert_eq!(t.rows[1].values[1], json!("Red"));
    }

    #[test]
    fn other_tables_and_as_is_are_left_alone() {
        let rows = vec![vec![json!("q"), json!("a")]];
        let mut t = table(&["prompt", "response"], rows.clone());
        assert!(convert(&mut t, Layout::Auto).unwrap().is_none());
        let mut t = table(&["instruction", "output"], rows);
        assert!(convert(&mut t, Layout::AsIs).unwrap().is_none());
        assert_eq!(t.columns, ["instruction", "output"]);
    }
}
