//! Data leakage: examples of one set that also appear in another (train vs validation/test,
//! train vs an evaluation dataset), on every data shape hone reads.
//!
//! An example is compared two ways:
//! - **whole**: the text of its key columns, exactly and after `normalize`;
//! - **by part**: each prompt, answer and plain text it holds. A prompt is a user turn of a
//!   conversation (`messages`, ShareGPT, conversational preference pairs) or a prompt-like
//!   column (`prompt`, `question`, `instruction`, ...); an answer is an assistant turn or an
//!   answer-like column (`response`, `answer`, `chosen`, ...). A held-out prompt found as a
//!   user turn, or a held-out answer found as an assistant turn, is a leak, exactly, after
//!   normalising, or as a near-duplicate (see `SIMILAR_JACCARD`). System and tool turns are
//!   not compared (a shared system prompt says nothing about leakage), nor are parts shorter
//!   than `MIN_WORDS` words ("thanks", "go on", "42" recur in unrelated examples).

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use super::table::{ColumnType, Table};

/// Parts shorter than this (in words, after normalising) are not compared on their own.
pub const MIN_WORDS: usize = 3;
/// Near-duplicates are looked for among parts of at least this many words (a paragraph, a
/// worked answer). In a short text one changed word can be all the difference: templated
/// reviews "they replaced the gearbox" and "... the crankshaft" are two examples, not one.
pub const SIMILAR_MIN_WORDS: usize = 20;
/// Words per shingle.
pub const SHINGLE_WORDS: usize = 3;
/// Two parts are near-duplicates when the Jaccard similarity of their sets of word 3-shingles
/// (after normalising) is at least this: about one word in ten changed, added or dropped
/// (each edit changes up to 3 shingles). A reworded short question is not caught.
pub const SIMILAR_JACCARD: f64 = 0.5;
/// MinHash signature length and its LSH banding (42 bands of 3 hashes): a pair at the
/// threshold becomes a candidate with probability 1 - (1 - 0.5^3)^42 = 0.996, at 0.6 with
/// 0.99996. Candidates are verified by their exact Jaccard similarity, so nothing below the
/// threshold is reported.
const MINHASHES: usize = 126;
const BAND_ROWS: usize = 3;
/// A part found in more than this many examples of one set is boilerplate (a greeting, a
/// template's instruction, a stock reply) and is not compared: it says nothing about leakage.
/// A held-out example copied into training more often is still found by its whole text or
/// its other parts.
pub const BOILERPLATE_EXAMPLES: usize = 3;

/// Lowercase, letters and digits only (any script), single spaces: "What's  the CAPITAL?" and
/// "whats the capital" normalise alike.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.extend(c.to_lowercase());
        } else if c == '\'' || c == '\u{2019}' {
            // "what's" and "whats" are the same words.
        } else {
            space = true;
        }
    }
    out
}

/// What a piece of an example is, which decides what it is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// What a model is asked: a user turn, a `prompt`/`question`/`instruction` column.
    Prompt,
    /// What a model answers: an assistant turn, a `response`/`answer`/`chosen` column.
    Answer,
    /// Text that is neither (a document, a review): compared with every part.
    Text,
}

impl Part {
    /// The part a text column holds, by its name.
    pub fn of_column(name: &str) -> Part {
        match name.to_ascii_lowercase().as_str() {
            "prompt" | "question" | "instruction" | "input" | "query" | "problem" | "user" => {
                Part::Prompt
            }
            "response" | "answer" | "output" | "completion" | "chosen" | "rejected"
            | "solution" | "target" | "reference" | "assistant" => Part::Answer,
            _ => Part::Text,
        }
    }

    fn matches(self, other: Part) -> bool {
        self == other || self == Part::Text || other == Part::Text
    }
}

/// One compared piece of an example.
#[derive(Debug, Clone)]
pub struct Unit {
    pub part: Part,
    /// Whether it is the example's only prompt (or only answer): a single-turn question, a
    /// `prompt` column. Two parts are compared only when one of them is: two multi-turn
    /// conversations that share a turn ("And the brakes?") are different examples, each turn
    /// answered in its own context; a held-out question found as any turn of a training
    /// conversation is a leak.
    pub sole: bool,
    /// Where in the example: `user turn 2 of messages`, `` `prompt` ``.
    pub label: String,
    pub exact: String,
    pub normalized: String,
}

impl Unit {
    pub fn new(part: Part, label: impl Into<String>, text: &str) -> Unit {
        Unit {
            part,
            sole: true,
            label: label.into(),
            exact: text.to_owned(),
            normalized: normalize(text),
        }
    }

    fn words(&self) -> usize {
        self.normalized.split(' ').filter(|w| !w.is_empty()).count()
    }
}

/// The text identifying one example: all of it, exactly and normalised, and its parts.
#[derive(Debug, Clone)]
pub struct Key {
    pub exact: String,
    pub normalized: String,
    /// Where the example came from, for messages (`data/qa.jsonl:14`).
    pub origin: String,
    pub units: Vec<Unit>,
}

impl Key {
    /// An example that is one text of one part.
    pub fn text(origin: impl Into<String>, part: Part, text: &str) -> Key {
        let unit = Unit::new(part, "text", text);
        Key {
            exact: text.to_owned(),
            normalized: unit.normalized.clone(),
            origin: origin.into(),
            units: vec![unit],
        }
    }
}

/// Texts of one part as keys, named `name #1`, `name #2`, ...
pub fn text_keys(name: &str, part: Part, texts: &[String]) -> Vec<Key> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| Key::text(format!("{name} #{}", i + 1), part, t))
        .collect()
}

/// The turns of a conversation value, as (role, text): a list of `{ role, content }` (OpenAI,
/// TRL) or `{ from, value }` (ShareGPT) objects. `None` for anything else.
pub fn conversation_turns(v: &Value) -> Option<Vec<(&str, &str)>> {
    let turns = v.as_array()?;
    turns
        .iter()
        .map(|t| {
            let field = |a: &str, b: &str| t.get(a).or_else(|| t.get(b)).and_then(Value::as_str);
            Some((field("role", "from")?, field("content", "value")?))
        })
        .collect::<Option<Vec<_>>>()
        .filter(|t| !t.is_empty())
}

fn turn_part(role: &str) -> Option<Part> {
    match role.to_ascii_lowercase().as_str() {
        "user" | "human" => Some(Part::Prompt),
        "assistant" | "gpt" | "model" | "chatgpt" | "bard" | "bing" => Some(Part::Answer),
        _ => None,
    }
}

/// Whether column `i` of `t` holds conversations (every value that is not null).
fn holds_conversations(t: &Table, i: usize) -> bool {
    t.types[i] == ColumnType::Json
        && t.rows.iter().any(|r| !r.values[i].is_null())
        && t.rows
            .iter()
            .all(|r| r.values[i].is_null() || conversation_turns(&r.values[i]).is_some())
}

/// The columns an example's text is in: text columns and conversation columns.
pub fn text_columns(t: &Table) -> Vec<String> {
    (0..t.columns.len())
        .filter(|&i| t.types[i] == ColumnType::Text || holds_conversations(t, i))
        .map(|i| t.columns[i].clone())
        .collect()
}

/// The key of each row of `t` from `columns` (see `text_columns`). A conversation column
/// contributes each user and assistant turn as a part, and its turns' text to the whole.
pub fn table_keys(t: &Table, columns: &[String]) -> Result<Vec<Key>> {
    let idx = t.indices(columns, "`leakage_key` names")?;
    Ok(t.rows
        .iter()
        .map(|r| {
            let mut units = Vec::new();
            let parts: Vec<String> = idx
                .iter()
                .map(|&i| {
                    let column = &t.columns[i];
                    let v = &r.values[i];
                    if let Some(turns) = conversation_turns(v) {
                        for (n, (role, text)) in turns.iter().enumerate() {
                            if let Some(part) = turn_part(role) {
                                let label = format!("{role} turn {} of `{column}`", n + 1);
                                units.push(Unit::new(part, label, text));
                            }
                        }
                        let lines: Vec<String> =
                            turns.iter().map(|(r, c)| format!("{r}: {c}")).collect();
                        return lines.join("\n");
                    }
                    let text = match v {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        v => v.to_string(),
                    };
                    if v.is_string() {
                        units.push(Unit::new(
                            Part::of_column(column),
                            format!("`{column}`"),
                            &text,
                        ));
                    }
                    text
                })
                .collect();
            mark_sole(&mut units);
            let exact = parts.join("\u{1f}");
            let normalized = parts
                .iter()
                .map(|p| normalize(p))
                .collect::<Vec<_>>()
                .join(" | ");
            let normalized = if normalized.chars().all(|c| c == ' ' || c == '|') {
                String::new()
            } else {
                normalized
            };
            Key {
                exact,
                normalized,
                origin: t.origin(r),
                units,
            }
        })
        .collect())
}

/// Marks each prompt and answer that is the only one of its part in `units`.
pub fn mark_sole(units: &mut [Unit]) {
    // Distinct texts: a conversational pair's `chosen` and `rejected` repeat one prompt.
    let count = |part: Part, units: &[Unit]| {
        units
            .iter()
            .filter(|u| u.part == part)
            .map(|u| u.normalized.as_str())
            .collect::<HashSet<_>>()
            .len()
    };
    let (prompts, answers) = (count(Part::Prompt, units), count(Part::Answer, units));
    for u in units {
        u.sole = match u.part {
            Part::Prompt => prompts == 1,
            Part::Answer => answers == 1,
            Part::Text => true,
        };
    }
}

/// The split group of each example: examples that share their whole normalised text, or a
/// sole prompt, answer or text (see `Unit::sole`; boilerplate aside), are one group, so a
/// split never puts a leak between its own parts. Each group is named by the normalised text
/// of its first example; an example with no text is a group of its own (named "").
pub fn groups(keys: &[Key]) -> Vec<String> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let boilerplate = boilerplate(keys);
    let mut parent: Vec<usize> = (0..keys.len()).collect();
    let mut first: HashMap<(u8, &str), usize> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let whole = (!k.normalized.is_empty()).then_some((0, k.normalized.as_str()));
        let parts = k
            .units
            .iter()
            .filter(|u| u.sole && u.words() >= MIN_WORDS)
            .filter(|u| !boilerplate.contains(u.normalized.as_str()))
            .map(|u| (1, u.normalized.as_str()));
        for text in whole.into_iter().chain(parts) {
            let j = *first.entry(text).or_insert(i);
            let (a, b) = (root(&mut parent, i), root(&mut parent, j));
            // The earlier example roots the group, so its text names it.
            parent[a.max(b)] = a.min(b);
        }
    }
    (0..keys.len())
        .map(|i| keys[root(&mut parent, i)].normalized.clone())
        .collect()
}

/// How an example of one set matched one of another, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Match {
    Exact,
    Normalized,
    Similar,
}

/// Overlap of set `a` with set `b`.
#[derive(Debug, Clone, Serialize)]
pub struct Overlap {
    pub a: String,
    pub b: String,
    /// Examples in `a`.
    pub compared: usize,
    /// Examples of `a` whose text, or a prompt or answer of it, equals one in `b`.
    pub exact: usize,
    /// Examples of `a` equal to one in `b` only after normalisation (case, punctuation, spaces).
    pub normalized: usize,
    /// Examples of `a` with a part that is a near-duplicate of one in `b` (word 3-shingle
    /// Jaccard >= `SIMILAR_JACCARD`), and no closer match.
    pub similar: usize,
    /// The leaked (exact or normalised) examples of `a`, by origin (the first `NAMED_ROWS`).
    pub rows: Vec<String>,
    /// A few of them: "origin in a (part) = origin in b (part): text".
    pub examples: Vec<String>,
    /// The near-duplicate examples of `a`, by origin (the first `NAMED_ROWS`).
    pub similar_rows: Vec<String>,
    pub similar_examples: Vec<String>,
}

/// How many leaked rows an overlap names.
pub const NAMED_ROWS: usize = 20;

impl Overlap {
    /// Examples of `a` found in `b` exactly or after normalising: leaks beyond doubt.
    pub fn leaked(&self) -> usize {
        self.exact + self.normalized
    }

    /// The leaks as one line: counts by kind, the rows, examples.
    pub fn describe(&self) -> String {
        format!(
            "{} of {} examples of {} also in {} ({} exact, {} after normalising): rows {}; e.g. {}",
            self.leaked(),
            self.compared,
            self.a,
            self.b,
            self.exact,
            self.normalized,
            named(&self.rows, self.leaked()),
            self.examples.join("; ")
        )
    }

    /// The near-duplicates as one line.
    pub fn describe_similar(&self) -> String {
        format!(
            "{} of {} examples of {} are near-duplicates of examples in {} (word {SHINGLE_WORDS}-shingle Jaccard >= {SIMILAR_JACCARD}): rows {}; e.g. {}",
            self.similar,
            self.compared,
            self.a,
            self.b,
            named(&self.similar_rows, self.similar),
            self.similar_examples.join("; ")
        )
    }
}

/// "r1, r2 and 3 more".
fn named(rows: &[String], total: usize) -> String {
    let more = total.saturating_sub(rows.len());
    if more > 0 {
        format!("{} and {more} more", rows.join(", "))
    } else {
        rows.join(", ")
    }
}

/// Word shingles of a normalised text, hashed (FNV-1a: fixed across platforms and releases).
fn shingles(normalized: &str) -> HashSet<u64> {
    let words: Vec<&str> = normalized.split(' ').filter(|w| !w.is_empty()).collect();
    words
        .windows(SHINGLE_WORDS.min(words.len()).max(1))
        .map(|w| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in w.join(" ").bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
            h
        })
        .collect()
}

/// SplitMix64's finaliser: the i-th MinHash "permutation" is `mix(h ^ seed_i)`.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The LSH band keys of a shingle set's MinHash signature.
fn bands(shingles: &HashSet<u64>) -> Vec<u64> {
    let signature: Vec<u64> = (0..MINHASHES as u64)
        .map(|i| {
            let seed = mix(i.wrapping_add(0x9e37_79b9_7f4a_7c15));
            shingles.iter().map(|&h| mix(h ^ seed)).min().unwrap_or(0)
        })
        .collect();
    signature
        .chunks(BAND_ROWS)
        .enumerate()
        .map(|(band, rows)| {
            rows.iter()
                .fold(mix(band as u64), |acc, &r| mix(acc ^ r.rotate_left(17)))
        })
        .collect()
}

fn jaccard(a: &HashSet<u64>, b: &HashSet<u64>) -> f64 {
    let common = a.intersection(b).count();
    common as f64 / (a.len() + b.len() - common).max(1) as f64
}

/// Whether parts `u` and `m` of two examples are compared (see `Unit::sole`).
fn comparable(u: &Unit, m: &Unit) -> bool {
    u.part.matches(m.part) && (u.sole || m.sole)
}

/// The parts of `b`, indexed for lookups by exact text, normalised text and MinHash band.
struct Index<'a> {
    exact: HashMap<&'a str, Vec<(&'a Key, &'a Unit)>>,
    normalized: HashMap<&'a str, Vec<(&'a Key, &'a Unit)>>,
    similar: Vec<(&'a Key, &'a Unit, HashSet<u64>)>,
    bands: HashMap<(usize, u64), Vec<usize>>,
}

/// Shingles of the long parts of `keys` found in more than `BOILERPLATE_EXAMPLES` examples: a
/// prompt template's words (Alpaca's "Below is an instruction that describes a task...") would
/// make every templated prompt a near-duplicate of every other.
fn common_shingles(keys: &[Key]) -> HashSet<u64> {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for k in keys {
        let distinct: HashSet<u64> = k
            .units
            .iter()
            .filter(|u| u.words() >= SIMILAR_MIN_WORDS)
            .flat_map(|u| shingles(&u.normalized))
            .collect();
        for h in distinct {
            *seen.entry(h).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n > BOILERPLATE_EXAMPLES)
        .map(|(h, _)| h)
        .collect()
}

/// The shingles a part is compared by for near-duplicates: its own (common ones dropped), when
/// it is long enough and enough of them are left.
fn own_shingles(u: &Unit, common: &HashSet<u64>) -> Option<HashSet<u64>> {
    if u.words() < SIMILAR_MIN_WORDS {
        return None;
    }
    let own: HashSet<u64> = shingles(&u.normalized)
        .into_iter()
        .filter(|h| !common.contains(h))
        .collect();
    (own.len() + SHINGLE_WORDS > SIMILAR_MIN_WORDS).then_some(own)
}

/// Normalised parts found in more than `BOILERPLATE_EXAMPLES` examples of `keys`.
fn boilerplate(keys: &[Key]) -> HashSet<&str> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for k in keys {
        let distinct: HashSet<&str> = k.units.iter().map(|u| u.normalized.as_str()).collect();
        for text in distinct {
            *seen.entry(text).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|(_, n)| *n > BOILERPLATE_EXAMPLES)
        .map(|(text, _)| text)
        .collect()
}

impl<'a> Index<'a> {
    /// The parts of `b` worth comparing: long enough, and boilerplate in neither set; with
    /// `common` (shingles common in either set), indexed for near-duplicates too.
    fn new(b: &'a [Key], boilerplate: &HashSet<&str>, common: Option<&HashSet<u64>>) -> Index<'a> {
        let mut index = Index {
            exact: HashMap::new(),
            normalized: HashMap::new(),
            similar: Vec::new(),
            bands: HashMap::new(),
        };
        for k in b {
            for u in &k.units {
                let words = u.words();
                if words < MIN_WORDS || boilerplate.contains(u.normalized.as_str()) {
                    continue;
                }
                index
                    .exact
                    .entry(u.exact.as_str())
                    .or_default()
                    .push((k, u));
                index
                    .normalized
                    .entry(u.normalized.as_str())
                    .or_default()
                    .push((k, u));
                if let Some(s) = common.and_then(|c| own_shingles(u, c)) {
                    for (band, key) in bands(&s).into_iter().enumerate() {
                        index
                            .bands
                            .entry((band, key))
                            .or_default()
                            .push(index.similar.len());
                    }
                    index.similar.push((k, u, s));
                }
            }
        }
        index
    }

    /// The strongest match of part `u` in `b` (`common` as for `new`).
    fn find(&self, u: &Unit, common: Option<&HashSet<u64>>) -> Option<(Match, &'a Key, &'a Unit)> {
        let words = u.words();
        if words < MIN_WORDS {
            return None;
        }
        let first = |hits: Option<&Vec<(&'a Key, &'a Unit)>>| {
            hits.into_iter()
                .flatten()
                .find(|(_, m)| comparable(u, m))
                .copied()
        };
        if let Some((k, m)) = first(self.exact.get(u.exact.as_str())) {
            return Some((Match::Exact, k, m));
        }
        if let Some((k, m)) = first(self.normalized.get(u.normalized.as_str())) {
            return Some((Match::Normalized, k, m));
        }
        if self.similar.is_empty() {
            return None;
        }
        let s = own_shingles(u, common?)?;
        let mut candidates: Vec<usize> = bands(&s)
            .into_iter()
            .enumerate()
            .filter_map(|(band, key)| self.bands.get(&(band, key)))
            .flatten()
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.dedup();
        candidates
            .into_iter()
            .map(|c| &self.similar[c])
            .filter(|(_, m, _)| comparable(u, m))
            .map(|(k, m, t)| (jaccard(&s, t), *k, *m))
            .filter(|(j, ..)| *j >= SIMILAR_JACCARD)
            .max_by(|x, y| x.0.total_cmp(&y.0))
            .map(|(_, k, m)| (Match::Similar, k, m))
    }
}

/// How many examples of `a` also occur in `b`, whole or by a part; with `similar`, also as
/// near-duplicates. Empty texts are ignored.
pub fn overlap(a_name: &str, a: &[Key], b_name: &str, b: &[Key], similar: bool) -> Overlap {
    let mut exact_b: HashMap<&str, &Key> = HashMap::new();
    let mut norm_b: HashMap<&str, &Key> = HashMap::new();
    for k in b.iter().filter(|k| !k.normalized.is_empty()) {
        exact_b.entry(k.exact.as_str()).or_insert(k);
        norm_b.entry(k.normalized.as_str()).or_insert(k);
    }
    let mut skipped = boilerplate(a);
    skipped.extend(boilerplate(b));
    let common = similar.then(|| {
        let mut c = common_shingles(a);
        c.extend(common_shingles(b));
        c
    });
    let parts_b = Index::new(b, &skipped, common.as_ref());
    let mut o = Overlap {
        a: a_name.to_owned(),
        b: b_name.to_owned(),
        compared: a.len(),
        exact: 0,
        normalized: 0,
        similar: 0,
        rows: vec![],
        examples: vec![],
        similar_rows: vec![],
        similar_examples: vec![],
    };
    for k in a {
        let whole = if k.normalized.is_empty() {
            None
        } else if let Some(m) = exact_b.get(k.exact.as_str()) {
            Some((Match::Exact, *m, None))
        } else {
            norm_b
                .get(k.normalized.as_str())
                .map(|m| (Match::Normalized, *m, None))
        };
        let hit = whole.or_else(|| {
            k.units
                .iter()
                .filter(|u| !skipped.contains(u.normalized.as_str()))
                .filter_map(|u| {
                    parts_b
                        .find(u, common.as_ref())
                        .map(|(how, key, m)| (how, key, Some((u, m))))
                })
                .min_by_key(|(how, ..)| *how)
        });
        let Some((how, key_b, parts)) = hit else {
            continue;
        };
        let (rows, examples) = match how {
            Match::Exact => {
                o.exact += 1;
                (&mut o.rows, &mut o.examples)
            }
            Match::Normalized => {
                o.normalized += 1;
                (&mut o.rows, &mut o.examples)
            }
            Match::Similar => {
                o.similar += 1;
                (&mut o.similar_rows, &mut o.similar_examples)
            }
        };
        if rows.len() < NAMED_ROWS {
            rows.push(k.origin.clone());
        }
        if examples.len() < 3 {
            let (text, at) = match parts {
                Some((u, m)) => (
                    u.exact.as_str(),
                    format!(
                        "{} ({}) = {} ({})",
                        k.origin, u.label, key_b.origin, m.label
                    ),
                ),
                None => (k.exact.as_str(), format!("{} = {}", k.origin, key_b.origin)),
            };
            let text: String = text.chars().take(60).collect();
            examples.push(format!("{at}: {text:?}"));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(texts: &[&str]) -> Vec<Key> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Key::text(format!("line {}", i + 1), Part::Text, t))
            .collect()
    }

    fn table(columns: &[&str], rows: Vec<Vec<Value>>) -> Table {
        Table::of_rows(columns, rows)
    }

    fn all_keys(t: &Table) -> Vec<Key> {
        table_keys(t, &text_columns(t)).unwrap()
    }

    const HELD_OUT_Q: &str = "How often should I replace the cabin air filter?";
    const HELD_OUT_A: &str = "Every 15,000 to 25,000 miles, or once a year if you drive on dusty roads; check the owner's manual for your model.";

    fn held_out() -> Vec<Key> {
        all_keys(&table(
            &["question", "answer"],
            vec![
                vec![json!(HELD_OUT_Q), json!(HELD_OUT_A)],
                vec![
                    json!("What does a torque converter do?"),
                    json!("It couples the engine to an automatic gearbox through fluid."),
                ],
            ],
        ))
    }

    #[test]
    fn normalisation_ignores_case_punctuation_and_spacing() {
        assert_eq!(
            normalize("What's  the CAPITAL of France?"),
            "whats the capital of france"
        );
        assert_eq!(normalize("  Ünïcode—Straße! "), "ünïcode straße");
        assert_eq!(normalize("?!"), "");
    }

    #[test]
    fn counts_exact_and_near_overlaps() {
        let train = keys(&["What is a V8?", "what is a v8", "Torque explained", "", "?"]);
        let test = keys(&["What is a V8?", "?!"]);
        let o = overlap("train", &train, "test", &test, true);
        assert_eq!((o.exact, o.normalized, o.similar), (1, 1, 0));
        assert_eq!(o.rows, ["line 1", "line 2"]);
        assert!(
            o.examples[0].starts_with("line 1 = line 1"),
            "{:?}",
            o.examples
        );
    }

    #[test]
    fn a_held_out_pair_copied_into_openai_messages_is_found_by_its_turns() {
        let messages = |q: &str, a: &str| {
            json!([
                { "role": "system", "content": "You are a helpful mechanic." },
                { "role": "user", "content": "Hi there, I have a few car questions." },
                { "role": "assistant", "content": "Sure, ask away." },
                { "role": "user", "content": q },
                { "role": "assistant", "content": a },
            ])
        };
        let train = table(
            &["messages"],
            vec![
                vec![messages(
                    "Why is my brake pedal soft?",
                    "Air in the lines, most likely.",
                )],
                vec![messages(HELD_OUT_Q, "Once a year.")],
                vec![messages("Is it ok?", HELD_OUT_A)],
                vec![messages(
                    "how often should i replace the CABIN air filter",
                    "Often.",
                )],
                vec![messages(
                    "Should I warm up the engine in winter?",
                    "Only for half a minute.",
                )],
            ],
        );
        assert_eq!(text_columns(&train), ["messages"]);
        let o = overlap("train", &all_keys(&train), "heldout", &held_out(), true);
        assert_eq!((o.exact, o.normalized, o.similar), (2, 1, 0), "{o:?}");
        assert_eq!(o.rows, ["data.jsonl:2", "data.jsonl:3", "data.jsonl:4"]);
        assert!(
            o.examples[0].contains("user turn 4 of `messages`")
                && o.examples[0].contains("`question`"),
            "{:?}",
            o.examples
        );
        // Two conversations sharing a turn are two examples; a shared system prompt never
        // counts, nor does a greeting found in more than 3 examples.
        let o = overlap(
            "a",
            &all_keys(&train)[..1],
            "b",
            &all_keys(&train)[1..],
            true,
        );
        assert_eq!(o.leaked() + o.similar, 0, "{o:?}");
        let greeting = table(
            &["messages"],
            vec![vec![json!([
                { "role": "user", "content": "Hi there, I have a few car questions." },
                { "role": "assistant", "content": "Go ahead." },
            ])]],
        );
        let o = overlap("a", &all_keys(&greeting), "b", &all_keys(&train)[1..], true);
        assert_eq!(o.leaked() + o.similar, 0, "{o:?}");
        let o = overlap(
            "a",
            &all_keys(&greeting),
            "b",
            &all_keys(&train)[1..3],
            true,
        );
        assert_eq!(
            o.leaked(),
            1,
            "a greeting in 2 examples is not yet boilerplate: {o:?}"
        );
    }

    #[test]
    fn sharegpt_turns_and_conversational_pairs_are_compared_by_role() {
        let sharegpt = table(
            &["conversations"],
            vec![vec![json!([
                { "from": "human", "value": HELD_OUT_A },
                { "from": "gpt", "value": "Thanks for the info." },
            ])]],
        );
        // The held-out answer as a *user* turn is not an answer leak.
        let o = overlap("train", &all_keys(&sharegpt), "heldout", &held_out(), true);
        assert_eq!(o.leaked() + o.similar, 0, "{o:?}");
        let sharegpt = table(
            &["conversations"],
            vec![vec![json!([
                { "from": "human", "value": "Tell me." },
                { "from": "gpt", "value": HELD_OUT_A },
            ])]],
        );
        let o = overlap("train", &all_keys(&sharegpt), "heldout", &held_out(), true);
        assert_eq!(o.exact, 1, "{o:?}");

        let pairs = table(
            &["chosen", "rejected"],
            vec![vec![
                json!([{ "role": "user", "content": HELD_OUT_Q }, { "role": "assistant", "content": "Yearly." }]),
                json!([{ "role": "user", "content": HELD_OUT_Q }, { "role": "assistant", "content": "Never." }]),
            ]],
        );
        assert_eq!(text_columns(&pairs), ["chosen", "rejected"]);
        let o = overlap("train", &all_keys(&pairs), "heldout", &held_out(), true);
        assert_eq!(o.exact, 1, "{o:?}");
    }

    #[test]
    fn near_duplicates_are_found_above_the_threshold_and_only_there() {
        let long = "To bleed the brakes start at the wheel farthest from the master cylinder, open the bleeder valve, have a helper press the pedal, and close the valve before the pedal is released.";
        // Three words changed in 33.
        let edited = "To bleed your brakes start at the wheel farthest from the master cylinder, open its bleeder valve, have a friend press the pedal, and close the valve before the pedal is released.";
        let other = "To rotate the tyres start at the front left wheel, loosen the lug nuts, raise the car on stands, and move each wheel to the position the manual shows for your drive type.";
        let shingle_sim = jaccard(&shingles(&normalize(long)), &shingles(&normalize(edited)));
        assert!(shingle_sim >= SIMILAR_JACCARD, "{shingle_sim}");
        let unrelated = jaccard(&shingles(&normalize(long)), &shingles(&normalize(other)));
        assert!(unrelated < SIMILAR_JACCARD, "{unrelated}");

        let train = keys(&[edited, other]);
        let o = overlap("train", &train, "test", &keys(&[long]), true);
        assert_eq!((o.exact, o.normalized, o.similar), (0, 0, 1), "{o:?}");
        assert_eq!(o.similar_rows, ["line 1"]);
        assert!(
            o.describe_similar()
                .starts_with("1 of 2 examples of train are near-duplicates of examples in test"),
            "{}",
            o.describe_similar()
        );
        let o = overlap("train", &train, "test", &keys(&[long]), false);
        assert_eq!(o.similar, 0, "not looked for");
    }

    #[test]
    fn rows_sharing_a_prompt_or_an_answer_are_one_split_group() {
        let t = table(
            &["prompt", "response"],
            vec![
                vec![
                    json!("What does the water pump do?"),
                    json!("It moves coolant around the engine."),
                ],
                vec![
                    json!("Explain the water pump, please."),
                    json!("It moves coolant around the engine."),
                ],
                vec![
                    json!("What does the water pump do?"),
                    json!("It circulates coolant."),
                ],
                vec![json!("What is a spark plug?"), json!("It lights the fuel.")],
                vec![json!("Is it ok?"), json!("Yes.")],
                vec![json!("Fine?"), json!("Yes.")],
            ],
        );
        let g = groups(&all_keys(&t));
        assert_eq!(g[0], g[1], "a shared answer");
        assert_eq!(g[0], g[2], "a shared prompt");
        assert_ne!(g[0], g[3]);
        // Parts under 3 words tie nothing together.
        assert_ne!(g[4], g[5]);
        assert_eq!(g[0], normalize_whole(&t, 0));
        // A prompt in more than 3 rows is boilerplate and ties nothing together.
        let t = table(
            &["prompt", "text"],
            (0..5)
                .map(|i| {
                    vec![
                        json!("Classify the sentiment of this review."),
                        json!(format!("review number {i}")),
                    ]
                })
                .collect(),
        );
        let g = groups(&all_keys(&t));
        assert_eq!(g.iter().collect::<HashSet<_>>().len(), 5, "{g:?}");
    }

    fn normalize_whole(t: &Table, row: usize) -> String {
        all_keys(t)[row].normalized.clone()
    }

    #[test]
    fn short_parts_and_other_columns_are_not_compared_alone() {
        let train = table(
            &["prompt", "response", "id"],
            vec![vec![json!("Any other tips?"), json!("Yes."), json!(7)]],
        );
        let test = table(
            &["prompt", "response", "id"],
            vec![vec![json!("What else?"), json!("Yes."), json!(7)]],
        );
        assert_eq!(text_columns(&train), ["prompt", "response"]);
        let o = overlap("train", &all_keys(&train), "test", &all_keys(&test), true);
        assert_eq!(o.leaked() + o.similar, 0, "{o:?}");
    }
}
