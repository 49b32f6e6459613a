//! Running, caching, status reasons, the lockfile and `--locked`, selection flags. What the
//! commands print is checked whole, as snapshots (`tests/it/snapshots/run_cache_*`); files
//! and exit codes are asserted directly.

use crate::common::{Project, qa_jsonl, snapshots, two_dataset_project};

#[test]
fn second_run_is_fully_cached_and_edits_rerun_only_what_they_affect() {
    let p = two_dataset_project();
    let first = p.hone(&["run", "r.yaml"]);
    first.ok();
    assert_eq!(first.ran(), ["qa", "reviews", "qa_clean"]);
    assert!(p.path("r.lock").is_file());
    let lock1 = std::fs::read_to_string(p.path("r.lock")).unwrap();

    let second = p.hone(&["run", "r.yaml"]);
    second.ok();
    assert!(second.ran().is_empty(), "nothing should rerun");
    let s = snapshots(&p);
    s.bind(|| insta::assert_snapshot!("run_cache_second_run", second.transcript()));
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
    let status = p.hone(&["status", "r.yaml"]);
    status.ok();
    s.bind(|| insta::assert_snapshot!("run_cache_status_input_changed", status.transcript()));

    // --locked refuses, before running anything, a run that would change the lockfile.
    let locked = p.hone(&["run", "r.yaml", "--locked"]);
    assert_eq!(locked.code(), 1, "{}", locked.stderr());
    assert!(locked.ran().is_empty());
    s.bind(|| insta::assert_snapshot!("run_cache_locked_refuses", locked.transcript()));

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
    let s = snapshots(&p);
    let status = p.hone(&["status", "r.yaml", "--set", "stages.qa.dedup=false"]);
    status.ok();
    s.bind(|| insta::assert_snapshot!("run_cache_status_config_changed", status.transcript()));
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
    let status = p.hone(&[
        "status",
        "r.yaml",
        "--set",
        "stages.qa.split.validation=0.25",
    ]);
    status.ok();
    s.bind(|| {
        insta::assert_snapshot!("run_cache_status_against_the_lockfile", status.transcript())
    });
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
    let s = snapshots(&p);
    let show = p.hone(&["show", "team.yaml", "qa"]);
    show.ok();
    s.bind(|| insta::assert_snapshot!("run_cache_show_from_extends_and_vars", show.transcript()));
    let status = p.hone(&["status", "team.yaml", "--set", "vars.frac=5"]);
    status.ok();
    s.bind(|| insta::assert_snapshot!("run_cache_status_set_var", status.transcript()));
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
    snapshots(&p).bind(|| insta::assert_snapshot!("run_cache_unknown_stage", bad.transcript()));
}

#[test]
fn only_refuses_when_an_input_is_not_cached() {
    let p = two_dataset_project();
    let run = p.hone(&["run", "r.yaml", "--only", "qa_clean"]);
    assert_eq!(run.code(), 1);
    snapshots(&p).bind(|| insta::assert_snapshot!("run_cache_only_needs_input", run.transcript()));
}

#[test]
fn dag_prints_ascii_mermaid_and_dot() {
    let p = two_dataset_project();
    let s = snapshots(&p);
    for format in ["ascii", "mermaid", "dot"] {
        let dag = p.hone(&["dag", "r.yaml", "--format", format]);
        dag.ok();
        s.bind(|| insta::assert_snapshot!(format!("run_cache_dag_{format}"), dag.transcript()));
    }
}

#[test]
fn dataset_stage_dedups_splits_and_reports() {
    let p = Project::new();
    let mut rows = qa_jsonl(20, 0);
    rows.push_str(&qa_jsonl(3, 0)); // three exact duplicates
    p.write("d.jsonl", &rows);
    p.write("r.yaml", "version: 1\nname: t\nstages:\n  qa:\n    kind: dataset\n    source: { path: d.jsonl }\n    columns: { question: prompt }\n    split: { validation: 0.25 }\n");
    p.hone(&["run", "r.yaml"]).ok();
    let show = p.hone(&["show", "r.yaml", "qa"]);
    show.ok();
    snapshots(&p)
        .bind(|| insta::assert_snapshot!("run_cache_show_dataset_dedup", show.transcript()));
    // `hone show STAGE` finds the one recipe with a lockfile in the directory.
    let short = p.hone(&["show", "qa"]).ok();
    assert_eq!(short, show.stdout());
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
    let s = snapshots(&p);
    s.bind(|| insta::assert_snapshot!("run_cache_leakage_fails", run.transcript()));
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
    run.ok();
    s.bind(|| insta::assert_snapshot!("run_cache_leakage_warns", run.transcript()));
}

#[test]
fn fresh_store_reproduces_the_lockfile_without_changing_it() {
    let p = two_dataset_project();
    p.hone(&["run", "r.yaml"]).ok();
    let lock = std::fs::read_to_string(p.path("r.lock")).unwrap();
    std::fs::remove_dir_all(p.store()).unwrap();
    let status = p.hone(&["status", "r.yaml"]);
    status.ok();
    snapshots(&p)
        .bind(|| insta::assert_snapshot!("run_cache_status_fresh_store", status.transcript()));
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
    let status = p.hone(&["status", "team/team.yaml"]);
    status.ok();
    snapshots(&p)
        .bind(|| insta::assert_snapshot!("run_cache_status_shared_store", status.transcript()));

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
