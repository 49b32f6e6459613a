//! A stage kind defined outside hone (the `ngram_filter` of examples/custom_stage): checked
//! before anything runs with errors that point at the recipe, typed at its edges in the DAG,
//! cached by content, recorded in the lockfile, and read by built-in stages downstream. The
//! kind lives in a registry value, so the other tests of this binary never see it.

#[path = "../../examples/custom_stage/ngram_filter.rs"]
mod ngram_filter;

use std::path::Path;

use crate::common::Project;
use hone::exec::{Outcome, RunReport};
use hone::spec::{InputSlot, Kind, RegisterError, Registry};
use hone::store::Store;

/// The built-in kinds and `ngram_filter`, as `examples/custom_stage` registers them.
fn kinds() -> Registry {
    let mut kinds = hone::stages::registry();
    kinds
        .register(ngram_filter::NgramFilter)
        .expect("registers");
    kinds
}

/// Eight documents; three hold an evaluation answer word for word (any case), one only
/// paraphrases one.
fn project() -> Project {
    let p = Project::new();
    let docs = [
        "Check the tyre pressure once a month when the tyres are cold.",
        "THE ALTERNATOR CHARGES THE BATTERY WHILE THE ENGINE RUNS, which is why a dead one drains it.",
        "Brake fluid absorbs water over time, so change it every two years.",
        "A timing belt keeps the crankshaft and camshaft in step.",
        "Mechanics say the radiator cools the engine coolant before it goes back to the engine.",
        "Wiper blades smear when their rubber hardens in the sun.",
        "While the engine runs, the battery is charged by the alternator.",
        "Experts agree: the spark plug ignites the air and fuel mixture in a petrol engine.",
    ];
    let corpus: String = docs
        .iter()
        .map(|d| format!("{}\n", serde_json::json!({ "text": d })))
        .collect();
    p.write("data/corpus.jsonl", &corpus);
    let answers = [
        "The alternator charges the battery while the engine runs.",
        "The radiator cools the engine coolant.",
        "The spark plug ignites the air and fuel mixture in a petrol engine.",
    ];
    let heldout: String = answers
        .iter()
        .map(|a| format!("{}\n", serde_json::json!({ "question": "?", "answer": a })))
        .collect();
    p.write("data/heldout.jsonl", &heldout);
    p
}

const RECIPE: &str = "version: 1
name: r
seed: 1
stages:
  corpus:
    kind: dataset
    source: { path: data/corpus.jsonl }
  heldout:
    kind: dataset
    role: eval
    source: { path: data/heldout.jsonl }
  clean:
    kind: ngram_filter
    data: { from: corpus }
    against: { from: heldout }
    columns: [text]
    against_columns: [answer]
    n: 5
  tokenizer:
    kind: tokenizer
    data: { from: clean }
    vocab_size: 300
";

fn run(p: &Project, overrides: &[&str]) -> Result<RunReport, String> {
    crate::common::run_with(p, overrides, &kinds())
}

fn outcome(report: &RunReport, stage: &str) -> Outcome {
    report
        .stages
        .iter()
        .find(|s| s.stage == stage)
        .map(|s| s.outcome)
        .unwrap_or_else(|| panic!("no stage {stage}"))
}

fn metrics(
    p: &Project,
    report: &RunReport,
    stage: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let action = report
        .stages
        .iter()
        .find(|s| s.stage == stage)
        .and_then(|s| s.action.clone())
        .expect("action");
    let store = Store::open(&p.store()).unwrap();
    store.manifest(&action).unwrap().expect("committed").metrics
}

/// The text column of output `output` of `stage`, read back from the store.
fn texts(p: &Project, report: &RunReport, stage: &str, output: &str) -> Vec<String> {
    let action = report
        .stages
        .iter()
        .find(|s| s.stage == stage)
        .and_then(|s| s.action.clone())
        .unwrap();
    let store = Store::open(&p.store()).unwrap();
    let m = store.manifest(&action).unwrap().unwrap();
    let file = &m.outputs[output].files["data.parquet"];
    let table = hone::data::table::read_parquet(
        &store.blob_path(&file.digest),
        output,
        hone::spec::settings::MissingPolicy::Null,
    )
    .unwrap();
    let i = table.column("text").unwrap();
    table
        .rows
        .iter()
        .map(|r| r.values[i].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_registered_kind_runs_caches_and_feeds_builtin_stages() {
    let p = project();
    p.write("r.yaml", RECIPE);

    let first = run(&p, &[]).unwrap();
    for s in ["corpus", "heldout", "clean", "tokenizer"] {
        assert_eq!(outcome(&first, s), Outcome::Ran, "{s}");
    }
    let m = metrics(&p, &first, "clean");
    assert_eq!(m["removed"], 3, "{m:?}");
    assert_eq!(m["kept"], 5, "{m:?}");
    let removed = texts(&p, &first, "clean", "removed");
    assert!(
        removed.iter().any(|t| t.starts_with("THE ALTERNATOR")),
        "{removed:?}"
    );
    assert!(
        removed.iter().any(|t| t.starts_with("Mechanics")),
        "{removed:?}"
    );
    assert!(
        removed.iter().any(|t| t.starts_with("Experts")),
        "{removed:?}"
    );
    // The paraphrase shares no five-word run with the answers: it stays.
    let kept = texts(&p, &first, "clean", "train");
    assert!(
        kept.iter().any(|t| t.starts_with("While the engine runs")),
        "{kept:?}"
    );
    let warnings = &first
        .stages
        .iter()
        .find(|s| s.stage == "clean")
        .unwrap()
        .warnings;
    assert!(warnings[0].contains("removed 3 of 8 rows"), "{warnings:?}");
    let lock = std::fs::read_to_string(p.path("r.lock")).unwrap();
    assert!(
        lock.contains("clean:") && lock.contains("kind: ngram_filter"),
        "{lock}"
    );

    // Nothing changed: everything is cached, the custom stage included.
    let second = run(&p, &[]).unwrap();
    for s in ["corpus", "heldout", "clean", "tokenizer"] {
        assert_eq!(outcome(&second, s), Outcome::Cached, "{s}");
    }

    // A new setting reruns the custom stage; its new output reruns the tokenizer after it.
    let third = run(&p, &["stages.clean.n=3"]).unwrap();
    assert_eq!(outcome(&third, "corpus"), Outcome::Cached);
    assert_eq!(outcome(&third, "clean"), Outcome::Ran);
    assert_eq!(outcome(&third, "tokenizer"), Outcome::Ran);
    // Three-word runs also catch the paraphrase ("the engine runs").
    assert_eq!(metrics(&p, &third, "clean")["removed"], 4);
}

fn errors(p: &Project, recipe: &str) -> String {
    p.write("r.yaml", recipe);
    run(p, &[]).expect_err("the recipe is invalid")
}

/// The line of `needle` in the recipe, for checking where an error points.
fn line_of(recipe: &str, needle: &str) -> usize {
    recipe.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn mistakes_in_a_registered_kind_point_at_the_recipe_before_anything_runs() {
    let p = project();
    let at = |recipe: &str, needle: &str| format!("r.yaml:{}:", line_of(recipe, needle));

    // A misspelt key: the typed settings refuse it, with a suggestion.
    let bad = RECIPE.replace("    columns: [text]", "    colums: [text]");
    let e = errors(&p, &bad);
    assert!(
        e.contains("unknown key `colums`") && e.contains("did you mean `columns`?"),
        "{e}"
    );
    assert!(e.contains(&at(&bad, "colums")), "{e}");

    // The stage's own check, located at the key it names.
    let bad = RECIPE.replace("    n: 5", "    n: 0");
    let e = errors(&p, &bad);
    assert!(e.contains("`n` must be at least 1"), "{e}");
    assert!(e.contains(&at(&bad, "n: 0")), "{e}");

    // `defaults` reach registered kinds too.
    let bad = RECIPE.replace("    n: 5\n", "").replace(
        "stages:\n",
        "defaults:\n  ngram_filter: { n: 0 }\nstages:\n",
    );
    let e = errors(&p, &bad);
    assert!(e.contains("`n` must be at least 1"), "{e}");

    // An input of the wrong type: the DAG checks the edge from the declared slot.
    let bad = RECIPE.replace(
        "    against: { from: heldout }",
        "    against: { from: tokenizer }",
    );
    let e = errors(&p, &bad);
    assert!(
        e.contains("`against` of stage `clean` needs a dataset or a dataset split, but `tokenizer` is a tokenizer"),
        "{e}"
    );

    // A misspelt kind: the registered kinds are among the suggestions.
    let bad = RECIPE.replace("kind: ngram_filter", "kind: ngram_filtr");
    let e = errors(&p, &bad);
    assert!(e.contains("did you mean `ngram_filter`?"), "{e}");

    // A file that does not exist is refused like any source.
    let bad = RECIPE.replace(
        "    against: { from: heldout }",
        "    against: { path: data/nope.jsonl }",
    );
    let e = errors(&p, &bad);
    assert!(
        e.contains("nope.jsonl") && e.contains(&at(&bad, "nope.jsonl")),
        "{e}"
    );
    assert!(!p.store().join("actions").exists(), "nothing ran");
}

#[test]
fn a_failing_custom_stage_commits_nothing() {
    let p = project();
    // Every row shares a run with itself: the stage refuses to produce an empty dataset.
    let recipe = RECIPE
        .replace(
            "    against: { from: heldout }",
            "    against: { from: corpus }",
        )
        .replace("    against_columns: [answer]\n", "");
    let e = errors(&p, &recipe);
    assert!(
        e.contains("stage `clean` failed; nothing was committed"),
        "{e}"
    );
    assert!(
        e.contains("every row of the data shares a 5-word run"),
        "{e}"
    );
    let lock = std::fs::read_to_string(p.path("r.lock")).unwrap();
    assert!(
        lock.contains("corpus:") && !lock.contains("clean:"),
        "{lock}"
    );
}

struct Impostor;
impl Kind for Impostor {
    type Settings = serde_json::Value;
    const NAME: &'static str = "sft";
    const VERSION: Option<&'static str> = Some("1");
    fn input_slots(&self) -> &'static [InputSlot] {
        &[]
    }
    fn outputs(&self, _: &serde_json::Value) -> Vec<(&'static str, hone::store::ArtifactType)> {
        Vec::new()
    }
    fn run(
        &self,
        _: &serde_json::Value,
        _: &mut hone::spec::context::StageContext,
    ) -> anyhow::Result<hone::spec::StageResult> {
        unreachable!("never registered")
    }
}

/// A kind without a version: its code could change without its cached results noticing.
struct Unversioned;
impl Kind for Unversioned {
    type Settings = serde_json::Value;
    const NAME: &'static str = "unversioned";
    const VERSION: Option<&'static str> = None;
    fn input_slots(&self) -> &'static [InputSlot] {
        &[]
    }
    fn outputs(&self, _: &serde_json::Value) -> Vec<(&'static str, hone::store::ArtifactType)> {
        Vec::new()
    }
    fn run(
        &self,
        _: &serde_json::Value,
        _: &mut hone::spec::context::StageContext,
    ) -> anyhow::Result<hone::spec::StageResult> {
        unreachable!("never registered")
    }
}

#[test]
fn registering_refuses_builtin_taken_and_unversioned_kinds() {
    let mut kinds = kinds();
    assert!(matches!(
        kinds.register(Impostor),
        Err(RegisterError::Builtin("sft"))
    ));
    assert!(matches!(
        kinds.register(ngram_filter::NgramFilter),
        Err(RegisterError::Taken("ngram_filter"))
    ));
    assert!(matches!(
        kinds.register(Unversioned),
        Err(RegisterError::NoVersion("unversioned"))
    ));
    assert_eq!(kinds.registered(), ["ngram_filter"]);
}

#[test]
fn a_registry_without_the_kind_does_not_know_it_in_the_same_process() {
    // No process-wide state: the kind registered in `kinds()` is not in a fresh registry.
    let p = project();
    p.write("r.yaml", RECIPE);
    let check = |kinds: &Registry| {
        let recipe =
            hone::recipe::load(&p.path("r.yaml"), &[], kinds).map_err(|d| d.to_string())?;
        hone::plan::validate(&recipe).map_err(|d| d.to_string())
    };
    let plain = check(&hone::stages::registry()).expect_err("ngram_filter is unknown here");
    assert!(
        plain.contains("unknown stage kind `ngram_filter`"),
        "{plain}"
    );
    assert!(check(&kinds()).is_ok());
    let schema = hone::recipe::json_schema(&hone::stages::registry()).to_string();
    assert!(!schema.contains("ngram_filter"));
}

#[test]
fn the_plain_binary_does_not_know_the_kind_and_says_where_kinds_come_from() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["validate", "examples/decontaminate.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an invalid recipe exits 2: {err}"
    );
    assert!(err.contains("unknown stage kind `ngram_filter`"), "{err}");
    assert!(err.contains("examples/custom_stage"), "{err}");
}

#[test]
fn the_schema_of_a_program_that_registered_a_kind_describes_it() {
    let schema = hone::recipe::json_schema(&kinds());
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let p = project();
    let instance = |recipe: &str| {
        p.write("r.yaml", recipe);
        let loaded = hone::recipe::load(&p.path("r.yaml"), &[], &kinds()).unwrap();
        serde_json::to_value(&loaded.resolved).unwrap()
    };
    let good = instance(RECIPE);
    let errors: Vec<String> = validator
        .iter_errors(&good)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The settings' own schema: a misspelt key is an editor error too.
    let bad = instance(&RECIPE.replace("    columns: [text]", "    colums: [text]"));
    assert!(
        !validator.is_valid(&bad),
        "an unknown key must not validate"
    );
}
