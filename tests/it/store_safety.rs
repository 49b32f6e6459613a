//! The store survives a SIGKILL at any point of a commit, and two concurrent runs; the cache
//! commands see every state of a store, damaged ones included.

use std::process::Stdio;

use crate::common::two_dataset_project;

const POINTS: &[&str] = &[
    "before-commit",
    "mid-blobs",
    "before-manifest",
    "manifest-tmp-written",
    "after-manifest",
];

#[test]
fn sigkill_at_every_commit_point_leaves_a_consistent_store() {
    for point in POINTS {
        let p = two_dataset_project();
        crate::common::kill_at(&p, &["run", "r.yaml"], point);

        let verify = p.hone(&["cache", "verify"]);
        let out = verify.ok();
        assert!(out.contains("0 problems"), "after a kill at {point}: {out}");
        if *point == "after-manifest" {
            assert_eq!(p.actions(), 1, "the first stage was committed whole");
        } else {
            assert_eq!(
                p.actions(),
                0,
                "no half-committed action after a kill at {point}"
            );
        }

        let rerun = p.hone(&["run", "r.yaml"]);
        rerun.ok();
        let expected: &[&str] = if *point == "after-manifest" {
            &["reviews", "qa_clean"]
        } else {
            &["qa", "reviews", "qa_clean"]
        };
        assert_eq!(rerun.ran(), expected, "rerun after a kill at {point}");
        p.hone(&["cache", "gc"]).ok();
        let verify = p.hone(&["cache", "verify"]).ok();
        assert!(
            verify.contains("verified 3 actions") && verify.contains("0 problems, 0 reclaimable"),
            "{verify}"
        );
    }
}

#[test]
fn two_concurrent_runs_run_each_stage_once() {
    let p = two_dataset_project();
    // Each commit pauses, so the two processes overlap on every stage.
    let spawn = || {
        p.cmd(&["run", "r.yaml"])
            .env("HONE_TEST_PAUSE", "before-commit=400")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn();
    let b = spawn();
    let (a, b) = (
        crate::common::Run(a.wait_with_output().unwrap()),
        crate::common::Run(b.wait_with_output().unwrap()),
    );
    a.ok();
    b.ok();
    let mut ran: Vec<String> = a.ran().into_iter().chain(b.ran()).collect();
    ran.sort();
    assert_eq!(
        ran,
        ["qa", "qa_clean", "reviews"],
        "each stage ran exactly once\nA:\n{}\nB:\n{}",
        a.stdout(),
        b.stdout()
    );
    assert_eq!(p.actions(), 3);
    let verify = p.hone(&["cache", "verify"]).ok();
    assert!(verify.contains("0 problems, 0 reclaimable"), "{verify}");
    assert!(p.hone(&["run", "r.yaml", "--locked"]).ran().is_empty());
}

#[test]
fn corrupt_blob_is_detected_and_repaired_by_recomputing() {
    let p = two_dataset_project();
    p.hone(&["run", "r.yaml"]).ok();
    // Damage the qa stage's train table in the store.
    let manifest = crate::common::manifest(&p, "qa");
    let digest = manifest["outputs"]["train"]["files"]["data.parquet"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = p.store().join("blobs").join(&digest[..2]).join(&digest);
    let mut perms = std::fs::metadata(&blob).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&blob, perms).unwrap();
    std::fs::write(&blob, b"garbage").unwrap();

    let verify = p.hone(&["cache", "verify"]);
    assert_eq!(verify.code(), 1);
    assert!(
        verify
            .stdout()
            .contains("corrupt: stage `qa` output `train`"),
        "{}",
        verify.stdout()
    );
    // Reading the damaged artifact is refused, not silently used.
    let run = p.hone(&["run", "r.yaml", "--force", "qa_clean"]);
    assert_eq!(run.code(), 1);
    assert!(
        run.stderr().contains("the store is damaged"),
        "{}",
        run.stderr()
    );
    p.hone(&["cache", "verify", "--repair"]).ok();
    let rerun = p.hone(&["run", "r.yaml"]);
    rerun.ok();
    assert_eq!(rerun.ran(), ["qa"]);
    assert!(p.hone(&["cache", "verify"]).ok().contains("0 problems"));
}

#[test]
fn ctrl_c_stops_cleanly_and_the_next_run_continues() {
    let p = two_dataset_project();
    let rest = crate::common::ctrl_c_at(&p, &["run", "r.yaml"], "before-stage");
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
    assert_eq!(p.actions(), 0, "the interrupted stage committed nothing");
    let verify = p.hone(&["cache", "verify"]).ok();
    assert!(
        verify.contains("0 problems, 0 reclaimable"),
        "the scratch dir was cleaned up: {verify}"
    );
    let rerun = p.hone(&["run", "r.yaml"]);
    rerun.ok();
    assert_eq!(rerun.ran(), ["qa", "reviews", "qa_clean"]);
}

#[test]
fn cache_commands_see_every_state_of_a_store() {
    let p = two_dataset_project();
    p.hone(&["run", "r.yaml"]).ok();
    // An uninterrupted run leaves no checkpoints/ area: du counts it as empty.
    assert!(!p.store().join("checkpoints").exists());
    let du = p.hone(&["cache", "du"]).ok();
    assert!(du.contains("checkpoints") && du.contains("total"), "{du}");

    // A truncated manifest is named by ls, not silently left out.
    let m = crate::common::manifest(&p, "qa");
    let path = p
        .store()
        .join("actions")
        .join(&m["action"].as_str().unwrap()[..2])
        .join(format!("{}.json", m["action"].as_str().unwrap()));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let ls = p.hone(&["cache", "ls"]).ok();
    assert!(
        ls.contains("unusable") && ls.contains("1 manifests cannot be used"),
        "{ls}"
    );
}

#[test]
fn a_recipe_named_like_a_lockfile_keeps_its_own_lockfile() {
    let p = two_dataset_project();
    let text = std::fs::read_to_string(p.path("r.yaml")).unwrap();
    p.write("r.lock", &text);
    p.hone(&["run", "r.lock"]).ok();
    assert_eq!(
        std::fs::read_to_string(p.path("r.lock")).unwrap(),
        text,
        "the recipe was overwritten by its lockfile"
    );
    assert!(p.path("r.lock.lock").is_file());
    assert!(p.hone(&["run", "r.lock", "--locked"]).ran().is_empty());
}
