//! Data leakage: examples of one set that also appear, exactly or after normalisation, in
//! another (train vs validation/test, train vs an evaluation dataset).

use std::collections::HashMap;

use serde::Serialize;

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

/// The text identifying one example, exactly and normalised.
#[derive(Debug, Clone)]
pub struct Key {
    pub exact: String,
    pub normalized: String,
    /// Where the example came from, for messages (`data/qa.jsonl:14`).
    pub origin: String,
}

/// Overlap of set `a` with set `b`.
#[derive(Debug, Clone, Serialize)]
pub struct Overlap {
    pub a: String,
    pub b: String,
    /// Examples of `a` whose text equals one in `b`.
    pub exact: usize,
    /// Examples of `a` equal to one in `b` only after normalisation (case, punctuation, spaces).
    pub near: usize,
    /// A few of them: "origin in a = origin in b: text".
    pub examples: Vec<String>,
}

impl Overlap {
    pub fn total(&self) -> usize {
        self.exact + self.near
    }
}

/// How many examples of `a` also occur in `b`. Empty texts are ignored.
pub fn overlap(a_name: &str, a: &[Key], b_name: &str, b: &[Key]) -> Overlap {
    let mut exact_b: HashMap<&str, &Key> = HashMap::new();
    let mut norm_b: HashMap<&str, &Key> = HashMap::new();
    for k in b.iter().filter(|k| !k.normalized.is_empty()) {
        exact_b.entry(k.exact.as_str()).or_insert(k);
        norm_b.entry(k.normalized.as_str()).or_insert(k);
    }
    let mut o = Overlap {
        a: a_name.to_owned(),
        b: b_name.to_owned(),
        exact: 0,
        near: 0,
        examples: vec![],
    };
    for k in a.iter().filter(|k| !k.normalized.is_empty()) {
        let hit = if let Some(m) = exact_b.get(k.exact.as_str()) {
            o.exact += 1;
            m
        } else if let Some(m) = norm_b.get(k.normalized.as_str()) {
            o.near += 1;
            m
        } else {
            continue;
        };
        if o.examples.len() < 3 {
            let text: String = k.exact.chars().take(60).collect();
            o.examples
                .push(format!("{} = {}: {text:?}", k.origin, hit.origin));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(texts: &[&str]) -> Vec<Key> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Key {
                exact: t.to_string(),
                normalized: normalize(t),
                origin: format!("line {}", i + 1),
            })
            .collect()
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
        let o = overlap("train", &train, "test", &test);
        assert_eq!((o.exact, o.near), (1, 1));
        assert_eq!(o.examples.len(), 2);
        assert!(
            o.examples[0].starts_with("line 1 = line 1"),
            "{:?}",
            o.examples
        );
    }
}
