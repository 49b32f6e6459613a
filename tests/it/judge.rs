//! LLM-as-judge in `evaluate`: a model of the recipe grades each answer to the held-out
//! questions through a rubric. The judge here is a tiny model taught to reply "5" to the
//! rubric, so every grade reads back as the top one; a reply without a grade on the scale
//! counts as unparsed.

use std::path::Path;

use crate::common::{Project, metric};

#[test]
fn a_judge_model_grades_every_answer() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/cars");
    let p = Project::new();
    // The rubric as the evaluate stage fills it, with assorted answers, each graded "5".
    let qa = std::fs::read_to_string(d.join("qa.jsonl")).unwrap();
    let mut rows = String::new();
    for (k, line) in qa.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (q, a) = (
            v["question"].as_str().unwrap(),
            v["answer"].as_str().unwrap(),
        );
        let answer = if k % 2 == 0 { a } else { "no idea" };
        let prompt = format!("Q: {q} R: {a} A: {answer} Grade 1-5:");
        rows.push_str(&serde_json::json!({ "prompt": prompt, "response": "5" }).to_string());
        rows.push('\n');
    }
    p.write("grades.jsonl", &rows);
    let recipe = |judge: &str| {
        format!(
            r#"version: 1
name: judge
seed: 2
stages:
  corpus:
    kind: dataset
    source: {{ path: {d}/corpus.jsonl }}
  qa:
    kind: dataset
    source: {{ path: {d}/qa.jsonl }}
    columns: {{ question: prompt, answer: response }}
    split: {{ validation: 0.15 }}
  grades:
    kind: dataset
    source: {{ path: grades.jsonl }}
    dedup: false
  tok:
    kind: tokenizer
    data: {{ from: corpus.train }}
    vocab_size: 400
  judge:
    kind: sft
    model: {{ init: {{ arch: gpt2, layers: 1, d_model: 32, heads: 2, context: 128 }} }}
    tokenizer: {{ from: tok }}
    data: {{ from: grades }}
    max_length: 128
    train: {{ epochs: 12, batch_size: 8, lr: 1.0e-2 }}
  eval:
    kind: evaluate
    models: {{ tuned: {{ from: {judge} }} }}
    qa:
      data: {{ from: qa }}
      max_new_tokens: 8
      judge: {{ model: {{ from: {judge} }}, template: plain, rubric: "Q: {{question}} R: {{reference}} A: {{answer}} Grade 1-{{scale}}:" }}
"#,
            d = d.display()
        )
    };
    p.write("r.yaml", &recipe("judge"));
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "eval"]).ok();
    assert_eq!(metric(&show, "tuned.judge_score"), 1.0, "{show}");
    assert_eq!(metric(&show, "tuned.judge_unparsed"), 0.0, "{show}");
    let manifest = crate::common::manifest(&p, "eval");
    let answers = manifest["summary"]["answers"].as_array().unwrap();
    assert!(!answers.is_empty());
    assert!(answers.iter().all(|a| a["judge"] == 1.0), "{answers:?}");
    // The judge's own words are kept with every grade, and shown per example.
    assert!(
        answers.iter().all(|a| a["judge_reply"]
            .as_str()
            .is_some_and(|r| r.trim_start().starts_with('5'))),
        "{answers:?}"
    );
    let examples = p.hone(&["show", "r.yaml", "eval", "--examples", "2"]).ok();
    assert!(
        examples.starts_with("2 of ")
            && examples.contains("--- 1. ")
            && examples.contains("reference  ")
            && examples.contains("judge 1.00")
            && examples.contains("judge said (graded): "),
        "{examples}"
    );

    // On a scale of 1 to 4 the judge's "5" is no grade: every answer is unparsed, and no
    // score is made up.
    p.write(
        "r.yaml",
        &recipe("judge").replace("template: plain,", "template: plain, scale: 4,"),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "eval"]).ok();
    assert_eq!(metric(&show, "tuned.judge_unparsed"), 1.0, "{show}");
    let examples = p.hone(&["show", "r.yaml", "eval", "--examples"]).ok();
    assert!(
        examples.contains("judge -") && examples.contains("judge said (no grade in it): "),
        "the unparsed reply is there to read: {examples}"
    );
}
