//! Running, caching, status reasons, the lockfile and `--locked`, selection flags.

use crate::common::{Project, qa_jsonl, two_dataset_project};

#[test]
fn second_run_is_fully_cached_and_edits_rerun_only_what_they_affect() {
    let p = two_dataset_project();
    let first = p.hone(&["run", "r.yaml"]);
    first.ok();
    assert_eq!(first.ran(), ["qa", "reviews", "qa_clean"]);
    assert!(p.path("r.lock").is_file());
    let lock1 = std::fs::read_to_string(p.path("r.lock")).unwrap();

    let second = p.hone(&["run", "r.yaml"]);
    let out = second.ok();
    assert!(second.ran().is_empty(), "nothing should rerun:\n{out}");
    assert!(out.contains("0 ran, 3 cached"), "{out}");
    assert_eq!(
        std::fs::read_to_string(p.path("r.lock")).unwrap(),
        lock1,
        "an unchanged rerun keeps the lockfile byte for byte"
    );

    // Edit one source: status names the file and only its stage (and dependents) are stale.
    p.write(
        "data/b.csv",
        "text,label\nfine,1\nbad,0\nok,1\nmeh,0\nyes,1\nno,0\nsure,1\n",
    );
    let status = p.hone(&["status", "r.yaml"]).ok();
    assert!(status.contains("input data/b.csv changed"), "{status}");
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(line("qa").trim_start().starts_with("cached"), "{status}");
    assert!(
        line("reviews").trim_start().starts_with("stale"),
        "{status}"
    );

    // --locked refuses, before running anything, a run that would change the lockfile.
    let locked = p.hone(&["run", "r.yaml", "--locked"]);
    assert_eq!(locked.code(), 1, "{}", locked.stderr());
    assert!(
        locked.stderr().contains("--locked")
            && locked
                .stderr()
                .contains("reviews: input data/b.csv changed"),
        "{}",
        locked.stderr()
    );
    assert!(locked.ran().is_empty());

    let third = p.hone(&["run", "r.yaml"]);
    third.ok();
    assert_eq!(third.ran(), ["reviews"]);
    p.hone(&["run", "r.yaml", "--locked"]).ok();
}

#[test]
fn config_change_is_explained_and_identical_upstream_output_keeps_downstream_cached() {
    let p = two_dataset_project();
    p.hone(&["run", "r.yaml"]).ok();
    // qa_clean only keeps `question`; dedup off changes qa's config but (no duplicates in the
    // data) not its output, so qa reruns and qa_clean stays cached.
    let status = p
        .hone(&["status", "r.yaml", "--set", "stages.qa.dedup=false"])
        .ok();
    assert!(
        status.contains("config changed: dedup true -> false"),
        "{status}"
    );
    assert!(status.contains("qa reruns first"), "{status}");
    let run = p.hone(&["run", "r.yaml", "--set", "stages.qa.dedup=false"]);
    run.ok();
    assert_eq!(run.ran(), ["qa"], "qa_clean's input did not change");

    // A change of the split does change qa's output, so qa_clean reruns too.
    let run = p.hone(&["run", "r.yaml", "--set", "stages.qa.split.validation=0.3"]);
    run.ok();
    assert_eq!(run.ran(), ["qa", "qa_clean"]);
    // `--set` runs are experiments, not recorded in the lockfile: reasons compare with the
    // recipe as last recorded (0.2), whose action the store still holds, so going back to the
    // recipe's value is a cache hit.
    let status = p
        .hone(&[
            "status",
            "r.yaml",
            "--set",
            "stages.qa.split.validation=0.25",
        ])
        .ok();
    assert!(
        status.contains("config changed: split.validation 0.2 -> 0.25"),
        "{status}"
    );
    assert!(status.contains("upstream qa reruns first"), "{status}");
    let back = p.hone(&["run", "r.yaml"]);
    back.ok();
    assert!(
        back.ran().is_empty(),
        "the original configuration is still in the store"
    );
}

#[test]
fn vars_extends_and_set_resolve_before_keys() {
    let p = Project::new();
    p.write("data/a.jsonl", &qa_jsonl(30, 0));
    p.write(
        "base/base.yaml",
        "version: 1\nname: base\nvars: { frac: 0.2 }\nstages:\n  qa:\n    kind: dataset\n    source: { path: ../data/a.jsonl }\n    split: { validation: \"${frac}\" }\n",
    );
    p.write(
        "team.yaml",
        "extends: base/base.yaml\nname: team\nvars: { frac: 0.1 }\n",
    );
    let out = p.hone(&["plan", "team.yaml", "--json"]).ok();
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan[0]["stage"], "qa");
    p.hone(&["run", "team.yaml"]).ok();
    let show = p.hone(&["show", "team.yaml", "qa"]).ok();
    assert!(
        show.contains("rows_train=27") && show.contains("rows_validation=3"),
        "{show}"
    );
    let status = p
        .hone(&["status", "team.yaml", "--set", "vars.frac=5"])
        .ok();
    assert!(
        status.contains("config changed: split.validation 0.1 -> 5.0"),
        "{status}"
    );
}

#[test]
fn selection_flags_pick_stages() {
    let p = two_dataset_project();
    let run = p.hone(&["run", "r.yaml", "--until", "qa"]);
    run.ok();
    assert_eq!(run.ran(), ["qa"]);
    let run = p.hone(&["run", "r.yaml", "--from", "qa"]);
    run.ok();
    assert_eq!(run.ran(), ["qa_clean"]);
    let run = p.hone(&["run", "r.yaml", "--only", "qa", "--force", "qa"]);
    run.ok();
    assert_eq!(run.ran(), ["qa"]);
    p.hone(&["run", "r.yaml"]).ok();
    // Forced reruns of every stage reproduce the same outputs, byte for byte.
    let lock = std::fs::read_to_string(p.path("r.lock")).unwrap();
    assert_eq!(lock.lines().filter(|l| l.contains("artifact:")).count(), 3);
    let forced = p.hone(&[
        "run", "r.yaml", "--force", "qa", "--force", "reviews", "--force", "qa_clean",
    ]);
    forced.ok();
    assert_eq!(forced.ran(), ["qa", "reviews", "qa_clean"]);
    let again = std::fs::read_to_string(p.path("r.lock")).unwrap();
    assert_eq!(
        lock.lines()
            .filter(|l| l.contains("artifact:"))
            .collect::<Vec<_>>(),
        again
            .lines()
            .filter(|l| l.contains("artifact:"))
            .collect::<Vec<_>>(),
        "identical reruns produce identical artifacts"
    );
    let bad = p.hone(&["run", "r.yaml", "--only", "qa_clen"]);
    assert_eq!(bad.code(), 2);
    assert!(
        bad.stderr().contains("did you mean `qa_clean`"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn only_refuses_when_an_input_is_not_cached() {
    let p = two_dataset_project();
    let run = p.hone(&["run", "r.yaml", "--only", "qa_clean"]);
    assert_eq!(run.code(), 1);
    assert!(run.stderr().contains("needs `qa`"), "{}", run.stderr());
}

#[test]
fn dag_prints_ascii_mermaid_and_dot() {
    let p = two_dataset_project();
    let ascii = p.hone(&["dag", "r.yaml"]).ok();
    assert!(
        ascii.contains("qa_clean (dataset)") && ascii.contains("└── qa [train -> source]"),
        "{ascii}"
    );
    let mermaid = p.hone(&["dag", "r.yaml", "--format", "mermaid"]).ok();
    assert!(
        mermaid.starts_with("flowchart TD") && mermaid.contains("qa -->|train -> source| qa_clean"),
        "{mermaid}"
    );
    let dot = p.hone(&["dag", "r.yaml", "--format", "dot"]).ok();
    assert!(dot.contains("\"qa\" -> \"qa_clean\""), "{dot}");
}

#[test]
fn dataset_stage_dedups_splits_and_reports() {
    let p = Project::new();
    let mut rows = qa_jsonl(20, 0);
    rows.push_str(&qa_jsonl(3, 0)); // three exact duplicates
    p.write("d.jsonl", &rows);
    p.write("r.yaml", "version: 1\nname: t\nstages:\n  qa:\n    kind: dataset\n    source: { path: d.jsonl }\n    columns: { question: prompt }\n    split: { validation: 0.25 }\n");
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "qa"]).ok();
    assert!(show.contains("duplicates_dropped=3"), "{show}");
    assert!(
        show.contains("rows_train=15") && show.contains("rows_validation=5"),
        "{show}"
    );
    assert!(
        show.contains("prompt (text)") && show.contains("answer (text)"),
        "{show}"
    );
    assert!(show.contains("\"prompt\":\"What is part number"), "{show}");
    // `hone show STAGE` finds the one recipe with a lockfile in the directory.
    let short = p.hone(&["show", "qa"]).ok();
    assert_eq!(short, show);
}

#[test]
fn leakage_against_an_eval_dataset_fails_by_default_and_warns_on_request() {
    let p = Project::new();
    p.write("train.jsonl", &qa_jsonl(20, 0));
    // Row 3 of the eval set repeats train row 3 with other case and punctuation.
    p.write("eval.jsonl", "{\"question\": \"what is part number 3\", \"answer\": \"IT IS PART 3 OF THE ENGINE\"}\n{\"question\": \"Brand new?\", \"answer\": \"Yes.\"}\n");
    let recipe = "version: 1\nname: t\nstages:\n  train:\n    kind: dataset\n    source: { path: train.jsonl }\n  heldout:\n    kind: dataset\n    role: eval\n    source: { path: eval.jsonl }\n";
    p.write("r.yaml", recipe);
    let run = p.hone(&["run", "r.yaml"]);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert!(err.contains("data leakage in stage `train`"), "{err}");
    assert!(
        err.contains(
            "1 rows of train also in eval dataset `heldout` (0 exact, 1 after normalising)"
        ),
        "{err}"
    );
    assert!(err.contains("train.jsonl:4 = heldout.test row 1"), "{err}");
    assert_eq!(
        p.hone(&["cache", "ls"]).ok().lines().count(),
        1,
        "only the eval dataset committed"
    );

    p.write(
        "r.yaml",
        &recipe.replace(
            "source: { path: train.jsonl }\n",
            "source: { path: train.jsonl }\n    on_leak: warn\n",
        ),
    );
    let run = p.hone(&["run", "r.yaml"]);
    let out = run.ok();
    assert!(
        out.contains("warning train") && out.contains("leakage:"),
        "{out}"
    );
    assert!(out.contains("leaked_rows=1"), "{out}");
}

#[test]
fn fresh_store_reproduces_the_lockfile_without_changing_it() {
    let p = two_dataset_project();
    p.hone(&["run", "r.yaml"]).ok();
    let lock = std::fs::read_to_string(p.path("r.lock")).unwrap();
    std::fs::remove_dir_all(p.store()).unwrap();
    let status = p.hone(&["status", "r.yaml"]).ok();
    assert!(
        status.contains("in the lockfile but not in the store"),
        "{status}"
    );
    let run = p.hone(&["run", "r.yaml", "--locked"]);
    run.ok();
    assert_eq!(run.ran(), ["qa", "reviews", "qa_clean"]);
    assert_eq!(std::fs::read_to_string(p.path("r.lock")).unwrap(), lock);
}

/// One store per project: a team's recipe in a subdirectory, extending the project's, finds
/// the project's store (the nearest `.hone/` or `hone.toml` above it, up to the repository
/// root) and its cache, instead of starting an empty `.hone/` of its own.
#[test]
fn recipes_in_subdirectories_share_the_project_store() {
    let p = two_dataset_project();
    p.hone(&["run", "r.yaml"]).ok();
    p.write(
        "team/team.yaml",
        "extends: ../r.yaml\nname: team\nstages:\n  qa_clean:\n    select: [answer]\n",
    );
    let run = p.hone(&["run", "team/team.yaml"]);
    run.ok();
    assert_eq!(
        run.ran(),
        ["qa_clean"],
        "qa and reviews come from the cache"
    );
    assert!(!p.path("team/.hone").exists());
    assert!(
        p.path("team/team.lock").is_file(),
        "the lockfile stays beside its recipe"
    );
    let status = p.hone(&["status", "team/team.yaml"]).ok();
    assert!(status.contains("3 cached, 0 stale"), "{status}");

    // In a repository without a marker, the repository root holds the store: from a
    // subdirectory's recipe, and from a recipe at the root alike.
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join(".git")).unwrap();
    std::fs::create_dir_all(repo.path().join("recipes/data")).unwrap();
    std::fs::copy(
        p.path("data/a.jsonl"),
        repo.path().join("recipes/data/a.jsonl"),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("recipes/one.yaml"),
        "version: 1\nname: one\nstages:\n  qa:\n    kind: dataset\n    source: { path: data/a.jsonl }\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["run", "recipes/one.yaml"])
        .current_dir(repo.path())
        .env_remove("HONE_STORE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(repo.path().join(".hone/FORMAT").is_file());
    assert!(!repo.path().join("recipes/.hone").exists());
}
