//! `concat`: a built-in kind added as one file and one registry line. Two sources become one
//! table that a dataset stage splits and checks; parts that do not match are a clear error.

use crate::common::{Project, metric};

fn rows(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"prompt\": \"{prefix} question {i}?\", \"response\": \"{prefix} answer {i}.\"}}\n"))
        .collect()
}

#[test]
fn parts_become_one_table_that_a_dataset_stage_splits() {
    let p = Project::new();
    p.write("faq.jsonl", &rows("faq", 6));
    p.write(
        "tickets.csv",
        &format!(
            "prompt,response\n{}",
            (0..4)
                .map(|i| format!("ticket question {i}?,ticket answer {i}.\n"))
                .collect::<String>()
        ),
    );
    p.write(
        "r.yaml",
        "version: 1
name: mix
stages:
  tickets:
    kind: dataset
    source: { path: tickets.csv }
  mixed:
    kind: concat
    parts: { faq: { path: faq.jsonl }, tickets: { from: tickets.train } }
  all:
    kind: dataset
    source: { from: mixed }
    split: { validation: 2 }
",
    );
    let out = p.hone(&["run", "r.yaml"]).ok();
    assert!(out.contains("rows=10 rows_faq=6 rows_tickets=4"), "{out}");
    let show = p.hone(&["show", "r.yaml", "all"]).ok();
    assert_eq!(metric(&show, "rows_train"), 8.0, "{show}");
    assert_eq!(metric(&show, "rows_validation"), 2.0, "{show}");
    // Cached as a whole; a changed part reruns the concat and what reads it.
    assert!(p.hone(&["run", "r.yaml"]).ran().is_empty());
    p.write("faq.jsonl", &rows("faq", 7));
    assert_eq!(p.hone(&["run", "r.yaml"]).ran(), ["mixed", "all"]);
}

#[test]
fn mismatched_parts_and_a_single_part_are_errors() {
    let p = Project::new();
    p.write("a.jsonl", &rows("a", 3));
    p.write("b.jsonl", "{\"text\": \"something else\"}\n");
    p.write(
        "r.yaml",
        "version: 1
name: bad
stages:
  mixed:
    kind: concat
    parts: { a: { path: a.jsonl }, b: { path: b.jsonl } }
",
    );
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(
        run.stderr().contains(
            "parts `a` (prompt: text, response: text) and `b` (text: text) have different columns"
        ),
        "{}",
        run.stderr()
    );
    assert_eq!(p.actions(), 0, "nothing committed");
    p.write(
        "one.yaml",
        "version: 1
name: one
stages:
  mixed:
    kind: concat
    parts: { a: { path: a.jsonl } }
",
    );
    let v = p.hone(&["validate", "one.yaml"]);
    assert_eq!(v.code(), 2);
    assert!(
        v.stderr().contains("`parts` names fewer than two tables"),
        "{}",
        v.stderr()
    );
    assert!(v.stderr().contains("one.yaml:6:"), "{}", v.stderr());
}

#[test]
fn integer_and_fractional_columns_mix_like_in_one_file() {
    let p = Project::new();
    p.write(
        "a.jsonl",
        "{\"text\": \"first\", \"score\": 1}\n{\"text\": \"second\", \"score\": 2}\n",
    );
    p.write("b.jsonl", "{\"text\": \"third\", \"score\": 0.5}\n");
    p.write(
        "r.yaml",
        "version: 1
name: mix
stages:
  mixed:
    kind: concat
    parts: { a: { path: a.jsonl }, b: { path: b.jsonl } }
  all:
    kind: dataset
    source: { from: mixed }
",
    );
    let out = p.hone(&["run", "r.yaml"]).ok();
    assert!(out.contains("rows=3"), "{out}");
    let show = p.hone(&["show", "r.yaml", "all"]).ok();
    assert!(show.contains("score (float)"), "{show}");
}
