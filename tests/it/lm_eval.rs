//! `evaluate`'s `benchmarks:` against lm-evaluation-harness itself: the task files in
//! tests/fixtures/lm_eval/ (multiple choice with two sampled few-shot examples and a
//! description, greedy generation with two regex filters, log-likelihood) run by hone on
//! SmolLM2-135M-Instruct give lm-eval 0.4.13's numbers (its HF backend on the same model,
//! exported by hone; `scripts/make_lm_eval_fixture.py`): every metric, every document's
//! context, every log-likelihood, every generated answer and what each filter made of it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::common::{Project, manifest, tiny_sft_dpo_recipe};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `benchmarks` output's rows: (benchmark, doc) -> the row, its JSON columns parsed.
fn documents(p: &Project) -> BTreeMap<(String, usize), BTreeMap<String, Value>> {
    let m = manifest(p, "eval");
    let digest = m["outputs"]["benchmarks"]["files"]["data.parquet"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let store = hone::store::Store::open(&p.store()).unwrap();
    let t = hone::data::table::read_parquet(
        &store.blob_path(&digest),
        "benchmarks",
        hone::spec::settings::MissingPolicy::Null,
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for r in &t.rows {
        let mut row: BTreeMap<String, Value> = t
            .columns
            .iter()
            .zip(&r.values)
            .map(|(c, v)| (c.clone(), v.clone()))
            .collect();
        for k in ["filtered", "loglikelihoods", "scores"] {
            let parsed = row[k]
                .as_str()
                .map_or(Value::Null, |s| serde_json::from_str(s).unwrap());
            row.insert(k.to_owned(), parsed);
        }
        let key = (
            row["benchmark"].as_str().unwrap().to_owned(),
            row["doc"].as_u64().unwrap() as usize,
        );
        out.insert(key, row);
    }
    out
}

#[test]
fn benchmarks_give_lm_evals_numbers_document_by_document() {
    let gguf = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(gguf.is_file(), "run scripts/fetch_models.sh");
    let fixtures = root().join("tests/fixtures/lm_eval");
    let reference: Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("reference.json")).unwrap()).unwrap();
    let p = Project::new();
    p.write(
        "r.yaml",
        &format!(
            "version: 1\nname: lm-eval-parity\nstages:\n  eval:\n    kind: evaluate\n    models: {{ smol: {{ path: {gguf} }} }}\n    benchmarks:\n      mc_2shot: {{ task: {f}/mc_2shot.yaml }}\n      gen_arith: {{ task: {f}/gen_arith.yaml }}\n      ll_qa: {{ task: {f}/ll_qa.yaml }}\n",
            gguf = gguf.display(),
            f = fixtures.display()
        ),
    );
    p.hone(&["run", "r.yaml"]).ok();
    let metrics = manifest(&p, "eval")["metrics"].clone();
    let docs = documents(&p);

    for (task, want) in reference["tasks"].as_object().unwrap() {
        // Accuracies are means of 0/1 over the documents: equal. Perplexity to 0.5%.
        for (metric, value) in want["metrics"].as_object().unwrap() {
            let got = metrics[format!("smol.{task}.{metric}")]
                .as_f64()
                .unwrap_or_else(|| panic!("no smol.{task}.{metric} in {metrics}"));
            let value = value.as_f64().unwrap();
            let close = if metric == "perplexity" {
                (got / value - 1.0).abs() < 5e-3
            } else {
                (got - value).abs() < 1e-4
            };
            assert!(close, "{task} {metric}: hone {got}, lm-eval {value}");
        }
        for d in want["docs"].as_array().unwrap() {
            let i: usize = d["doc"].as_str().map_or_else(
                || d["doc"].as_u64().unwrap() as usize,
                |s| s.parse().unwrap(),
            );
            let got = &docs[&(task.clone(), i)];
            assert_eq!(got["context"], d["context"], "{task} doc {i}: the context");
            if let Some(lls) = d["loglikelihoods"].as_array() {
                let mine = got["loglikelihoods"].as_array().unwrap();
                assert_eq!(mine.len(), lls.len(), "{task} doc {i}");
                for (a, b) in mine.iter().zip(lls) {
                    let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                    assert!(
                        (a - b).abs() < 2e-3 * b.abs().max(1.0),
                        "{task} doc {i}: log-likelihood {a} vs lm-eval's {b}"
                    );
                }
            }
            if let Some(response) = d["response"].as_str() {
                assert_eq!(got["response"], response, "{task} doc {i}: the answer");
                for (filter, value) in d["filtered"].as_object().unwrap() {
                    assert_eq!(got["filtered"][filter], *value, "{task} doc {i}: {filter}");
                }
            }
        }
    }
    // The runs say something: some answers right, some wrong.
    assert!(metrics["smol.mc_2shot.acc"].as_f64().unwrap() > 0.25);
    assert!(
        metrics["smol.gen_arith.exact_match_answer-is"]
            .as_f64()
            .unwrap()
            < 1.0
    );

    // The task file and its data are in the key: a changed document reruns the stage.
    let before = manifest(&p, "eval")["action"].clone();
    let data = p.path("arith.jsonl");
    std::fs::copy(fixtures.join("arith.jsonl"), &data).unwrap();
    let task = std::fs::read_to_string(fixtures.join("gen_arith.yaml")).unwrap();
    p.write("gen_arith.yaml", &task);
    let recipe = std::fs::read_to_string(p.path("r.yaml")).unwrap().replace(
        &format!("{}/gen_arith.yaml", fixtures.display()),
        "gen_arith.yaml",
    );
    p.write("r.yaml", &recipe);
    // Same content elsewhere: the same action.
    let again = p.hone(&["run", "r.yaml"]);
    again.ok();
    assert!(again.ran().is_empty(), "{}", again.stdout());
    let text = std::fs::read_to_string(&data).unwrap();
    std::fs::write(&data, text.replacen("Ava", "Eve", 1)).unwrap();
    let changed = p.hone(&["run", "r.yaml"]);
    changed.ok();
    assert_eq!(changed.ran(), ["eval"]);
    assert_ne!(manifest(&p, "eval")["action"], before);
}

#[test]
fn a_task_file_hone_cannot_run_is_a_recipe_error_at_its_setting() {
    let p = Project::new();
    p.write(
        "task.yaml",
        "task: t\ndataset_path: json\ndataset_kwargs: { data_files: { test: docs.jsonl } }\ntest_split: test\nprocess_docs: !function utils.process\n",
    );
    p.write(
        "r.yaml",
        &format!(
            "version: 1\nname: bad-task\nstages:\n  eval:\n    kind: evaluate\n    models: {{ m: {{ path: {} }} }}\n    benchmarks:\n      t: {{ task: task.yaml }}\n",
            root().join("tests/fixtures/models/gpt2").display()
        ),
    );
    let run = p.hone(&["validate", "r.yaml"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    let err = run.stderr();
    assert!(err.contains("!function"), "{err}");
    assert!(err.contains("r.yaml:8"), "located at the setting: {err}");

    p.write(
        "task.yaml",
        "task: t\ndataset_path: json\ndataset_kwargs: { data_files: { test: missing.jsonl } }\ntest_split: test\n",
    );
    let run = p.hone(&["validate", "r.yaml"]);
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(run.stderr().contains("missing.jsonl"), "{}", run.stderr());
}

#[test]
fn a_benchmark_question_in_a_models_training_data_is_warned_about() {
    // The fixture's multiple-choice questions are the car QA's training questions.
    let p = Project::new();
    let task = root().join("tests/fixtures/lm_eval/mc_2shot.yaml");
    let recipe = tiny_sft_dpo_recipe("contaminated", 3, "")
        + &format!(
            "  eval:\n    kind: evaluate\n    models: {{ sft: {{ from: sft }} }}\n    benchmarks: {{ mc: {{ task: {} }} }}\n",
            task.display()
        );
    p.write("r.yaml", &recipe);
    let run = p.hone(&["run", "r.yaml"]);
    let out = run.ok();
    let warning = out
        .lines()
        .find(|l| l.contains("benchmark `mc`"))
        .unwrap_or_else(|| panic!("no warning: {out}"));
    assert!(
        warning.contains("training data of `sft`") && warning.contains(": \"What does the"),
        "{warning}"
    );
    assert!(
        manifest(&p, "eval")["summary"]["leaked_examples"]["sft.mc"]
            .as_u64()
            .unwrap()
            > 0
    );
}
