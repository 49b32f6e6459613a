//! How close a generated answer is to the reference: exact match and containment after
//! normalising, SQuAD's token F1, and ROUGE-L. Exact match alone ranks nothing on real answers
//! (a correct answer in other words scores 0); the overlap scores give partial credit.

use std::collections::HashMap;

use serde::Serialize;

use crate::data::leakage::normalize;

/// The scores of one answer against its reference, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AnswerScores {
    /// 1 when the answer equals the reference after normalising case, punctuation and spaces.
    pub exact_match: f64,
    /// 1 when the normalised reference occurs in the normalised answer as whole words.
    pub contains: f64,
    /// SQuAD's token F1: lowercased, punctuation and articles (a, an, the) removed, the
    /// harmonic mean of the word overlap's precision and recall.
    pub token_f1: f64,
    /// ROUGE-L F-measure (rouge-score's, β = 1): the longest common subsequence of the words,
    /// lowercased with punctuation removed.
    pub rouge_l: f64,
}

/// The metric names, in the order `AnswerScores::values` gives them.
pub const NAMES: [&str; 4] = ["exact_match", "contains", "token_f1", "rouge_l"];

impl AnswerScores {
    pub fn of(answer: &str, reference: &str) -> AnswerScores {
        let (a, r) = (normalize(answer), normalize(reference));
        AnswerScores {
            exact_match: (a == r) as u8 as f64,
            contains: (!r.is_empty() && format!(" {a} ").contains(&format!(" {r} "))) as u8 as f64,
            token_f1: token_f1(answer, reference),
            rouge_l: rouge_l(answer, reference),
        }
    }

    pub fn values(&self) -> [f64; 4] {
        [self.exact_match, self.contains, self.token_f1, self.rouge_l]
    }

    /// The mean of each score over `all`; `None` when there are none.
    pub fn mean(all: &[AnswerScores]) -> Option<[f64; 4]> {
        if all.is_empty() {
            return None;
        }
        let mut sum = [0.0; 4];
        for s in all {
            for (t, v) in sum.iter_mut().zip(s.values()) {
                *t += v;
            }
        }
        Some(sum.map(|t| t / all.len() as f64))
    }
}

/// rouge-score's tokens: lowercased runs of letters and digits (rouge-score keeps only ASCII
/// ones; other scripts' letters are kept here, which changes nothing for English).
fn rouge_words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// SQuAD's `normalize_answer` as words: lowercased, ASCII punctuation deleted (so "5,000" is
/// "5000"), the articles a, an, the dropped.
fn squad_words(text: &str) -> Vec<String> {
    let kept: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    kept.split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_owned)
        .collect()
}

/// SQuAD v1.1's `f1_score`: both empty is a match, one empty is not.
fn token_f1(answer: &str, reference: &str) -> f64 {
    let (a, r) = (squad_words(answer), squad_words(reference));
    if a.is_empty() || r.is_empty() {
        return (a.is_empty() && r.is_empty()) as u8 as f64;
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &r {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0usize;
    for w in &a {
        if let Some(c) = counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / a.len() as f64;
    let recall = common as f64 / r.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// rouge-score's `rougeL` F-measure (no stemming); 0 when either side has no words.
fn rouge_l(answer: &str, reference: &str) -> f64 {
    let (a, r) = (rouge_words(answer), rouge_words(reference));
    if a.is_empty() || r.is_empty() {
        return 0.0;
    }
    // The longest common subsequence, one row of the table at a time.
    let mut row = vec![0usize; r.len() + 1];
    for x in &a {
        let mut diagonal = 0;
        for (j, y) in r.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    let lcs = row[r.len()] as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let (precision, recall) = (lcs / a.len() as f64, lcs / r.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from rouge-score 0.1.2 (`RougeScorer(["rougeL"])`) and SQuAD v1.1's
    /// evaluation script, in `tests/fixtures/answer_scores.json`.
    #[test]
    fn scores_match_rouge_score_and_the_squad_script() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/answer_scores.json")).unwrap();
        for case in fixture.as_array().unwrap() {
            let (a, r) = (
                case["answer"].as_str().unwrap(),
                case["reference"].as_str().unwrap(),
            );
            let s = AnswerScores::of(a, r);
            for (got, key) in [(s.rouge_l, "rouge_l"), (s.token_f1, "token_f1")] {
                let want = case[key].as_f64().unwrap();
                assert!(
                    (got - want).abs() < 1e-9,
                    "{key}({a:?}, {r:?}) = {got}, want {want}"
                );
            }
        }
    }

    #[test]
    fn containment_needs_whole_words() {
        let s = |a: &str, r: &str| AnswerScores::of(a, r).contains;
        assert_eq!(
            s(
                "Yes, the alternator charges the battery.",
                "the alternator charges the battery"
            ),
            1.0
        );
        assert_eq!(s("The alternators charge it.", "alternator"), 0.0);
        assert_eq!(s("anything", ""), 0.0);
        assert_eq!(AnswerScores::of("Paris!", "paris").exact_match, 1.0);
    }
}
