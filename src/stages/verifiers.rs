//! Verifiable rewards that need no model: whether an answer's final number is the reference's
//! (`math`), whether a response thinks before it answers (`think`) (both score 1 or 0), and a
//! verifier program of the user's (`command`).
//!
//! The `command` protocol: hone starts the program once per batch of answers, in the recipe's
//! directory with hone's environment, writes one JSON object a line to its stdin (every column
//! of the prompt's row, then `prompt` and `response`, the answer to score, which take the place
//! of columns of those names), closes stdin, and reads one number a line from its stdout, in
//! the same order. A crash (non-zero exit), a time-out, a line that is
//! not a finite number, too few or too many lines, or more than `MAX_OUTPUT` bytes fail the
//! stage with the program's stderr.
//!
//! What `math` accepts, for the answer and the reference alike:
//! - the final result is the last `\boxed{...}`, else what follows the last `####` (GSM8K's
//!   marker), else the last number in the text (after any `</think>`);
//! - a number is an integer or decimal with an optional sign and thousands commas (`-1,234.5`),
//!   a fraction `a/b` or `\frac{a}{b}`, optionally with `$` around it, a trailing `%` (which
//!   divides by 100) or a trailing full stop;
//! - two results are equal when they differ by at most 1e-9 relative: `1/2`, `0.5`, `.50` and
//!   `50%` are one value; `50` is another.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The most a verifier may write to stdout for one batch; more is an error, not a reward.
pub const MAX_OUTPUT: u64 = 16 << 20;
/// How much of a failed verifier's stderr an error shows (its end).
const STDERR_SHOWN: usize = 4000;

/// A verifier program: `argv` run in `dir`, each call allowed `timeout`.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub argv: Vec<String>,
    pub dir: PathBuf,
    pub timeout: Duration,
}

impl Verifier {
    /// The program's score of each line of `inputs` (JSON objects), in order.
    pub fn scores(&self, inputs: &[serde_json::Value]) -> Result<Vec<f64>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let shown = self.argv.join(" ");
        // A program named by a path runs from the recipe's directory, as its arguments do.
        let program = &self.argv[0];
        let program: PathBuf = if program.contains('/') {
            self.dir.join(program)
        } else {
            PathBuf::from(program)
        };
        let mut child = Command::new(&program)
            .args(&self.argv[1..])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the reward program `{shown}` in {}",
                    self.dir.display()
                )
            })?;
        let mut payload = Vec::new();
        for v in inputs {
            serde_json::to_writer(&mut payload, v)?;
            payload.push(b'\n');
        }
        // Writing, reading and reading stderr each on a thread of its own: a program that
        // answers as it reads must not block on a full pipe.
        let mut stdin = child.stdin.take().expect("piped");
        let writer = std::thread::spawn(move || {
            // A program that exits without reading everything closes the pipe: its exit
            // status and output say what went wrong.
            let _ = stdin.write_all(&payload);
        });
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let read = stdout.take(MAX_OUTPUT + 1).read_to_end(&mut out);
            read.map(|_| out)
        });
        let stderr = child.stderr.take().expect("piped");
        let errors = std::thread::spawn(move || {
            let mut err = Vec::new();
            let _ = stderr.take(MAX_OUTPUT).read_to_end(&mut err);
            err
        });
        let flooded = || {
            anyhow::anyhow!(
                "the reward program `{shown}` wrote more than {} MiB for {} answers: it must write one number a line",
                MAX_OUTPUT >> 20,
                inputs.len()
            )
        };
        let started = Instant::now();
        let mut reader = Some(reader);
        let mut out = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            // A program that floods its output is stopped once past the limit: it would
            // block on the pipe otherwise.
            if reader.as_ref().is_some_and(|r| r.is_finished()) {
                let read = reader.take().expect("present").join();
                let read = read
                    .map_err(|_| anyhow::anyhow!("reading the reward program's output failed"))??;
                if read.len() as u64 > MAX_OUTPUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(flooded());
                }
                out = Some(read);
            }
            if started.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the reward program `{shown}` took longer than {:.0}s on {} answers and was stopped{}\nraise `reward.timeout`, or make the program faster",
                    self.timeout.as_secs_f64(),
                    inputs.len(),
                    stderr_tail(&errors.join().unwrap_or_default())
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = writer.join();
        let out = match (out, reader) {
            (Some(out), _) => out,
            (None, Some(r)) => r
                .join()
                .map_err(|_| anyhow::anyhow!("reading the reward program's output failed"))??,
            (None, None) => unreachable!("the output is read or being read"),
        };
        let err = errors.join().unwrap_or_default();
        if !status.success() {
            bail!(
                "the reward program `{shown}` failed ({status}){}",
                stderr_tail(&err)
            );
        }
        if out.len() as u64 > MAX_OUTPUT {
            return Err(flooded());
        }
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != inputs.len() {
            bail!(
                "the reward program `{shown}` wrote {} lines for {} answers: it must write one number a line, in order{}",
                lines.len(),
                inputs.len(),
                stderr_tail(&err)
            );
        }
        lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                line.trim().parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| {
                    let line: String = line.chars().take(80).collect();
                    anyhow::anyhow!(
                        "line {} of the reward program `{shown}`'s output is not a number: {line:?}{}",
                        i + 1,
                        stderr_tail(&err)
                    )
                })
            })
            .collect()
    }
}

/// "\nits stderr ends: ..." when there is any.
fn stderr_tail(err: &[u8]) -> String {
    let text = String::from_utf8_lossy(err);
    let text = text.trim_end();
    if text.is_empty() {
        return String::new();
    }
    let start = text.len().saturating_sub(STDERR_SHOWN);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    format!("\nits stderr ends:\n{}", &text[start..])
}

/// The final numeric result of `text` (see the module docs), if it has one.
pub fn final_number(text: &str) -> Option<f64> {
    let text = text
        .rsplit_once("</think>")
        .map_or(text, |(_, after)| after);
    if let Some(boxed) = last_boxed(text) {
        return number(boxed.trim());
    }
    if let Some((_, after)) = text.rsplit_once("####") {
        return numbers(after).into_iter().next();
    }
    numbers(text).pop()
}

/// 1 when `answer`'s final result equals `reference`'s, else 0 (also when either has none).
pub fn math_reward(answer: &str, reference: &str) -> f64 {
    match (final_number(answer), final_number(reference)) {
        (Some(a), Some(r)) if (a - r).abs() <= 1e-9 * a.abs().max(r.abs()).max(1.0) => 1.0,
        _ => 0.0,
    }
}

/// 1 when `response` is one `<think>...</think>` with something in it, then a non-empty answer.
pub fn think_reward(response: &str) -> f64 {
    let r = response.trim_start();
    let Some(rest) = r.strip_prefix("<think>") else {
        return 0.0;
    };
    let Some((thought, answer)) = rest.split_once("</think>") else {
        return 0.0;
    };
    let well_formed = !thought.trim().is_empty()
        && !thought.contains("<think>")
        && !answer.trim().is_empty()
        && !answer.contains("<think>")
        && !answer.contains("</think>");
    f64::from(u8::from(well_formed))
}

/// The contents of the last `\boxed{...}` (braces balanced).
fn last_boxed(text: &str) -> Option<&str> {
    let start = text.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// A whole string as one number (see the module docs).
fn number(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches('.').trim();
    let s = s.trim_matches('$').trim();
    if let Some(frac) = s
        .strip_prefix("\\frac")
        .or_else(|| s.strip_prefix("\\dfrac"))
        .or_else(|| s.strip_prefix("\\tfrac"))
    {
        let num = last_boxed_like(frac)?;
        let den = last_boxed_like(&frac[num.len() + 2..])?;
        return Some(number(num)? / number(den)?);
    }
    if let Some(p) = s.strip_suffix("\\%").or_else(|| s.strip_suffix('%')) {
        return Some(number(p)? / 100.0);
    }
    if let Some((a, b)) = s.split_once('/') {
        let d = number(b)?;
        return (d != 0.0).then_some(number(a)? / d);
    }
    let plain: String = s.chars().filter(|c| *c != ',').collect();
    let valid = !plain.is_empty()
        && plain
            .trim_start_matches(['-', '+'])
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.')
        && plain.chars().any(|c| c.is_ascii_digit());
    if valid { plain.parse().ok() } else { None }
}

/// `{...}` at the start of `s`: its contents.
fn last_boxed_like(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('{')?;
    let mut depth = 1;
    for (i, c) in rest.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// Every number in running text, in order: fractions and percentages whole, thousands commas
/// kept inside a number (`1,234`), a sentence's full stop left out.
fn numbers(text: &str) -> Vec<f64> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let signed = (chars[i] == '-' || chars[i] == '+')
            && chars
                .get(i + 1)
                .is_some_and(|c| c.is_ascii_digit() || *c == '.')
            && (i == 0 || !chars[i - 1].is_alphanumeric());
        let starts = chars[i].is_ascii_digit()
            || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if !signed && !starts {
            i += 1;
            continue;
        }
        let begin = i;
        i += 1;
        while i < chars.len() {
            let c = chars[i];
            let next_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
            let continues = c.is_ascii_digit()
                || ((c == '.' || c == ',' || c == '/') && next_digit)
                || c == '%';
            if !continues {
                break;
            }
            i += 1;
            if c == '%' {
                break;
            }
        }
        let token: String = chars[begin..i].iter().collect();
        if let Some(v) = number(&token) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_result_is_boxed_then_after_hashes_then_the_last_number() {
        assert_eq!(
            final_number("3 + 4 = 7, so \\boxed{7}. Check: 8"),
            Some(7.0)
        );
        assert_eq!(final_number("He has 3 then 5 more.\n#### 8"), Some(8.0));
        assert_eq!(
            final_number("First 12 apples, then 1,234 pears."),
            Some(1234.0)
        );
        assert_eq!(
            final_number("<think>2 and 2 is 5</think> It is 4."),
            Some(4.0)
        );
        assert_eq!(final_number("\\boxed{\\frac{1}{2}}"), Some(0.5));
        assert_eq!(final_number("about -3.5 degrees"), Some(-3.5));
        assert_eq!(final_number("no numbers here"), None);
        assert_eq!(
            final_number("item-3"),
            Some(3.0),
            "a hyphen in a word is no sign"
        );
    }

    #[test]
    fn equal_values_in_any_accepted_form_score_one() {
        for (answer, reference) in [
            ("The answer is 1/2.", "0.5"),
            ("\\boxed{50\\%}", "1/2"),
            ("So .50", "#### 0.5"),
            ("$1,000", "1000"),
            ("It costs 12 dollars.", "12"),
        ] {
            assert_eq!(
                math_reward(answer, reference),
                1.0,
                "{answer} vs {reference}"
            );
        }
        for (answer, reference) in [
            ("50", "0.5"),
            ("The answer is 13.", "12"),
            ("I don't know.", "12"),
            ("12", "no number"),
            ("1/0", "1"),
        ] {
            assert_eq!(
                math_reward(answer, reference),
                0.0,
                "{answer} vs {reference}"
            );
        }
    }

    #[test]
    fn thinking_then_answering_is_the_layout_think_rewards() {
        assert_eq!(think_reward("<think>3 + 4 is 7</think> 7"), 1.0);
        assert_eq!(think_reward("  <think>a\nb</think>\nThe answer: 7"), 1.0);
        for bad in [
            "7",
            "<think></think> 7",
            "<think>3 + 4 is 7</think>",
            "<think>3 + 4 is 7 7",
            "<think>a</think> 7 <think>b</think> 8",
            "Answer first <think>a</think> 7",
        ] {
            assert_eq!(think_reward(bad), 0.0, "{bad}");
        }
    }
}
