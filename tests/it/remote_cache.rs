//! The remote cache: one team's results are another's cache hits, through a real S3 server on
//! loopback (moto) and `file://` remotes; everything pulled is checked, a push killed at any
//! step or raced by another leaves the remote consistent, and a remote that is down never
//! fails a run that can compute locally.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::common::{
    Project, Run, kill_at_with, lock_results, quickstart_recipe, run_with_env as with_env,
    two_dataset_project,
};
use crate::services::S3Server;

/// Stage names on lines that start with `word` (`pulled`, `ran`).
fn stages(out: &str, word: &str) -> Vec<String> {
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(&format!("{word} ")))
        .filter_map(|rest| rest.split_whitespace().next().map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The remote's file of a digest (`blobs/ab/<d>`) or an action (`actions/ab/<k>.json`).
fn remote_blob(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs").join(&digest[..2]).join(digest)
}

fn remote_manifest(root: &Path, action: &str) -> PathBuf {
    root.join("actions")
        .join(&action[..2])
        .join(format!("{action}.json"))
}

/// Rewrites every blob of the `file://` remote at `root` as `f` says (damage, for the tests).
fn rewrite_remote_blobs(root: &Path, f: impl Fn(&[u8]) -> Vec<u8>) {
    for shard in std::fs::read_dir(root.join("blobs")).unwrap() {
        for blob in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            let path = blob.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, f(&bytes)).unwrap();
        }
    }
}

/// Both lockfiles record the same action and output for every stage (a stage recomputed here
/// has its own wall time).
fn assert_same_results(a: &Project, b: &Project, lock: &str) {
    assert_eq!(lock_results(a, lock), lock_results(b, lock));
}

/// The manifest file of `stage`'s action in `p`'s local store.
fn local_manifest(p: &Project, stage: &str) -> PathBuf {
    let action = lock_entry(p, "r.lock", stage, "action");
    p.store()
        .join("actions")
        .join(&action[..2])
        .join(format!("{action}.json"))
}

/// A `file://` remote (its directory and URL) to which a project's results went
/// (write-through), and that project.
fn published_to_a_file_remote() -> (tempfile::TempDir, String, Project) {
    let remote = tempfile::tempdir().unwrap();
    let url = file_url(remote.path());
    let a = two_dataset_project();
    let write = [("HONE_REMOTE_WRITE", "1".to_owned())];
    with_env(&a, &["run", "r.yaml", "--remote", &url], &write).ok();
    (remote, url, a)
}

/// A project whose results went to the `file://` remote `url` (write-through), and a second
/// project of the same recipe that computed them locally, without the remote.
fn published_and_local(url: &str) -> (Project, Project) {
    let a = two_dataset_project();
    let write = [("HONE_REMOTE_WRITE", "1".to_owned())];
    with_env(&a, &["run", "r.yaml", "--remote", url], &write).ok();
    let b = two_dataset_project();
    b.hone(&["run", "r.yaml"]).ok();
    (a, b)
}

fn lock_entry(p: &Project, lock: &str, stage: &str, field: &str) -> String {
    let lock: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(p.path(lock)).unwrap()).unwrap();
    lock["stages"][stage][field].as_str().unwrap().to_owned()
}

#[test]
fn two_teams_share_the_quickstart_through_s3() {
    let server = S3Server::start();
    let mut env = server.env();
    env.push(("HONE_REMOTE", server.url("hone")));
    let recipe = quickstart_recipe();

    // Team A computes everything and publishes it (write-through).
    let a = Project::new();
    a.write("quickstart.yaml", &recipe);
    let mut write = env.clone();
    write.push(("HONE_REMOTE_WRITE", "1".into()));
    let run_a = with_env(&a, &["run", "quickstart.yaml"], &write);
    let out = run_a.ok();
    assert_eq!(run_a.ran().len(), 13, "{out}");
    assert_eq!(stages(&out, "pushed").len(), 13, "{out}");
    let lock_a = std::fs::read(a.path("quickstart.lock")).unwrap();

    // Team B, in a fresh project with an empty store: every stage is pulled, nothing trains,
    // and its lockfile is team A's byte for byte.
    let b = Project::new();
    b.write("quickstart.yaml", &recipe);
    let status = with_env(&b, &["status", "quickstart.yaml"], &env).ok();
    assert!(status.contains("13 on the remote cache"), "{status}");
    let run_b = with_env(&b, &["run", "quickstart.yaml"], &env);
    let out = run_b.ok();
    assert!(run_b.ran().is_empty(), "{out}");
    assert_eq!(stages(&out, "pulled").len(), 13, "{out}");
    assert!(out.contains("0 ran, 13 pulled, 0 cached"), "{out}");
    // `hone runs` tallies the run as its last line did, not as "0 ran, 0 cached".
    let runs = b.hone(&["runs", "quickstart.yaml"]).ok();
    assert!(runs.contains("0 ran, 13 pulled, 0 cached"), "{runs}");
    assert_eq!(std::fs::read(b.path("quickstart.lock")).unwrap(), lock_a);
    assert!(b.path("dist/car-assistant/model.safetensors").is_file());
    // What was pulled is whole: the local store verifies, and --locked without the remote
    // computes nothing.
    b.hone(&["cache", "verify"]).ok();
    let again = b.hone(&["run", "quickstart.yaml", "--locked"]);
    assert!(
        again.ok().contains("0 ran, 13 cached"),
        "{}",
        again.stdout()
    );

    // `hone cache pull` takes exactly the lockfile's actions.
    let c = Project::new();
    c.write("quickstart.yaml", &recipe);
    std::fs::write(c.path("quickstart.lock"), &lock_a).unwrap();
    let pulled = with_env(&c, &["cache", "pull", "quickstart.yaml"], &env).ok();
    assert!(pulled.contains("pulled 13 actions"), "{pulled}");
    let locked = c.hone(&["run", "quickstart.yaml", "--locked", "--no-remote"]);
    assert!(
        locked.ok().contains("0 ran, 13 cached"),
        "{}",
        locked.stdout()
    );

    // Team B's own recipe extends the quickstart with another DPO beta: everything up to DPO
    // comes from team A, and only DPO and the evaluation that reads it train.
    let d = Project::new();
    d.write("quickstart.yaml", &recipe);
    d.write(
        "team_b.yaml",
        "version: 1\nname: team-b\nextends: quickstart.yaml\nstages:\n  dpo:\n    beta: 0.2\n",
    );
    let run_d = with_env(&d, &["run", "team_b.yaml"], &env);
    let out = run_d.ok();
    assert_eq!(stages(&out, "ran"), ["dpo", "evaluate"], "{out}");
    assert_eq!(stages(&out, "pulled").len(), 11, "{out}");
}

#[test]
fn a_corrupt_blob_or_a_forged_manifest_is_recomputed() {
    let remote = tempfile::tempdir().unwrap();
    let url = file_url(remote.path());
    let a = two_dataset_project();
    let write = [("HONE_REMOTE_WRITE", "1".to_owned())];
    let pushed = with_env(&a, &["run", "r.yaml", "--remote", &url], &write).ok();
    assert_eq!(stages(&pushed, "pushed").len(), 3, "{pushed}");

    // One blob of `qa` altered on the remote (same size), and the manifest of `reviews`
    // rewritten to claim another action's record (a forger's result under a wanted key).
    let qa_action = lock_entry(&a, "r.lock", "qa", "action");
    let qa: serde_json::Value =
        serde_json::from_slice(&std::fs::read(remote_manifest(remote.path(), &qa_action)).unwrap())
            .unwrap();
    let digest = qa["outputs"]["train"]["files"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let blob = remote_blob(remote.path(), &digest);
    let len = std::fs::metadata(&blob).unwrap().len() as usize;
    std::fs::write(&blob, vec![b'x'; len]).unwrap();
    let reviews_action = lock_entry(&a, "r.lock", "reviews", "action");
    let reviews_path = remote_manifest(remote.path(), &reviews_action);
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&reviews_path).unwrap()).unwrap();
    forged["material"] = qa["material"].clone();
    std::fs::write(&reviews_path, serde_json::to_vec(&forged).unwrap()).unwrap();

    let verify = a.hone(&["cache", "remote", "verify", "--deep", "--remote", &url]);
    assert_eq!(verify.code(), 1, "{}", verify.stdout());
    crate::common::snapshots(&a).bind(|| {
        insta::assert_snapshot!("remote_verify_deep_finds_both", verify.transcript());
    });

    // A second team gets both recomputed, with a warning each, and the same results.
    let b = two_dataset_project();
    let run = b.hone(&["run", "r.yaml", "--remote", &url]);
    let out = run.ok();
    assert_eq!(stages(&out, "ran"), ["qa", "reviews"], "{out}");
    assert_eq!(stages(&out, "pulled"), ["qa_clean"], "{out}");
    crate::common::snapshots(&b).bind(|| {
        insta::assert_snapshot!("remote_run_recomputes_both", run.transcript());
    });
    assert_same_results(&a, &b, "r.lock");
    // Nothing of the bad blob reached the store.
    b.hone(&["cache", "verify"]).ok();
}

#[test]
fn hostile_remote_manifests_are_refused_and_the_stages_computed_here() {
    let (remote, url, a) = published_to_a_file_remote();
    let manifest_of =
        |stage: &str| remote_manifest(remote.path(), &lock_entry(&a, "r.lock", stage, "action"));
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    // `qa`: an output file that climbs out of the store. The manifest still proves its key
    // (outputs are not part of it): only the path check stands in the way.
    let qa = manifest_of("qa");
    let mut m = read(&qa);
    let files = m["outputs"]["train"]["files"].as_object_mut().unwrap();
    let (name, entry) = files
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    files.remove(&name);
    files.insert("../../../../escaped.parquet".into(), entry);
    std::fs::write(&qa, serde_json::to_vec(&m).unwrap()).unwrap();
    // `reviews`: a manifest padded past any real one (80 MB), then one whose files claim a
    // petabyte (a download that would never end).
    let reviews = manifest_of("reviews");
    let original = read(&reviews);
    let mut padded = original.clone();
    padded["summary"] = serde_json::json!({ "padding": "x".repeat(80 << 20) });
    let mut huge = original;
    for out in huge["outputs"].as_object_mut().unwrap().values_mut() {
        for f in out["files"].as_object_mut().unwrap().values_mut() {
            f["size"] = serde_json::json!(1u64 << 50);
        }
    }
    for (m, name) in [(padded, "padded"), (huge, "petabyte")] {
        std::fs::write(&reviews, serde_json::to_vec(&m).unwrap()).unwrap();
        let b = two_dataset_project();
        let run = b.hone(&["run", "r.yaml", "--remote", &url]);
        let out = run.ok();
        assert_eq!(stages(&out, "ran"), ["qa", "reviews"], "{out}");
        // `qa` computed here gives the outputs team A had: what reads it is a true hit.
        assert_eq!(stages(&out, "pulled"), ["qa_clean"], "{out}");
        crate::common::snapshots(&b).bind(|| {
            insta::assert_snapshot!(format!("remote_hostile_manifest_{name}"), run.transcript());
        });
        assert_same_results(&a, &b, "r.lock");
        let outside = b.path("").parent().unwrap().join("escaped.parquet");
        assert!(!outside.exists() && !b.path("escaped.parquet").exists());
        b.hone(&["cache", "verify"]).ok();
    }
    let verify = a.hone(&["cache", "remote", "verify", "--remote", &url]);
    assert_eq!(verify.code(), 1, "{}", verify.stdout());
}

#[test]
fn a_push_killed_at_any_step_leaves_no_manifest_and_the_next_push_completes() {
    let server = S3Server::start();
    let env = server.env();
    for point in ["remote-mid-blobs", "remote-before-manifest"] {
        let url = server.url(point);
        let p = two_dataset_project();
        p.hone(&["run", "r.yaml"]).ok();
        kill_at_with(
            &p,
            &["cache", "push", "r.yaml", "--remote", &url],
            point,
            &env,
        );
        // Blobs may be there; no manifest is, so no one can pull a half-pushed action.
        let ls = with_env(&p, &["cache", "remote", "ls", "--remote", &url], &env).ok();
        assert_eq!(ls.trim(), "", "{point}: {ls}");
        with_env(&p, &["cache", "remote", "verify", "--remote", &url], &env).ok();
        // The rest goes up in multipart uploads (every blob above 1 KB), as large ones do.
        let mut multipart = env.clone();
        multipart.push(("HONE_REMOTE_MULTIPART_BYTES", "1000".into()));
        let again = with_env(
            &p,
            &["cache", "push", "r.yaml", "--remote", &url],
            &multipart,
        )
        .ok();
        assert!(again.contains("pushed 3 actions"), "{point}: {again}");
        let verify = with_env(
            &p,
            &["cache", "remote", "verify", "--deep", "--remote", &url],
            &env,
        )
        .ok();
        assert!(verify.contains("verified 3 actions"), "{verify}");
    }
}

#[test]
fn two_pushers_at_once_leave_one_valid_manifest_per_action() {
    let server = S3Server::start();
    let url = server.url("race");
    let (a, b) = (two_dataset_project(), two_dataset_project());
    a.hone(&["run", "r.yaml"]).ok();
    b.hone(&["run", "r.yaml"]).ok();
    // Both upload their blobs, then wait, so their manifests are created at the same moment.
    let mut env = server.env();
    env.push(("HONE_TEST_PAUSE", "remote-before-manifest=1500".into()));
    let spawn = |p: &Project| {
        p.cmd(&["cache", "push", "r.yaml", "--remote", &url])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn(&a), spawn(&b));
    let outs = [
        Run(ca.wait_with_output().unwrap()),
        Run(cb.wait_with_output().unwrap()),
    ];
    let created: usize = outs
        .iter()
        .map(|r| {
            let out = r.ok();
            assert!(!out.contains("warning"), "{out}");
            out.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum();
    assert_eq!(created, 3, "each action is created by exactly one pusher");
    let verify = with_env(
        &a,
        &["cache", "remote", "verify", "--deep", "--remote", &url],
        &server.env(),
    )
    .ok();
    assert!(verify.contains("verified 3 actions"), "{verify}");
}

#[test]
fn a_remote_that_is_down_never_fails_a_run_that_can_compute() {
    // Nothing listens on this port: the run warns once and computes everything.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("HONE_REMOTE", "s3://nowhere/hone".into()),
        ("HONE_REMOTE_WRITE", "1".into()),
    ];
    let p = two_dataset_project();
    let run = with_env(&p, &["run", "r.yaml"], &dead);
    let out = run.ok();
    assert_eq!(run.ran().len(), 3, "{out}");
    assert_eq!(
        out.matches("remote unavailable").count(),
        1,
        "one warning, then the run does without the remote: {out}"
    );
    // Everything local: neither status nor run contacts the remote at all.
    let status = with_env(&p, &["status", "r.yaml"], &dead);
    assert!(!status.stderr().contains("warning"), "{}", status.stderr());
    let cached = with_env(&p, &["run", "r.yaml"], &dead).ok();
    assert!(!cached.contains("warning"), "{cached}");

    // The remote goes down in the middle of a run that was pulling from it.
    let mut server = S3Server::start();
    let mut env = server.env();
    env.push(("HONE_REMOTE", server.url("hone")));
    let a = two_dataset_project();
    env.push(("HONE_REMOTE_WRITE", "1".into()));
    with_env(&a, &["run", "r.yaml"], &env).ok();
    env.pop();
    let b = two_dataset_project();
    env.push(("HONE_TEST_PAUSE", "before-pull=2000".into()));
    let mut child = b
        .cmd(&["run", "r.yaml"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stderr is drained to the end (a closed pipe would end hone with SIGPIPE).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let paused = rx.iter().any(|l| l == "hone-pause-point: before-pull");
    assert!(paused, "the run never reached its first pull");
    server.stop();
    let run = Run(child.wait_with_output().unwrap());
    let out = run.ok();
    assert_eq!(run.ran().len(), 3, "{out}");
    assert!(out.contains("remote unavailable"), "{out}");
    assert_same_results(&a, &b, "r.lock");
}

#[test]
fn remote_settings_are_checked_and_keep_credentials_out_of_recipes() {
    let p = two_dataset_project();
    let recipe = std::fs::read_to_string(p.path("r.yaml")).unwrap();
    let with_cache = |cache: &str| recipe.replacen("stages:\n", &format!("{cache}stages:\n"), 1);
    let s = crate::common::snapshots(&p);
    for (name, cache) in [
        ("unsupported_scheme", "cache:\n  remote: ftp://host/x\n"),
        (
            "credential_option",
            "cache:\n  remote: s3://b/p\n  options:\n    region: eu-west-1\n    aws_secret_access_key: hunter2\n",
        ),
        (
            "credentials_in_the_recipes_url",
            "cache:\n  remote: s3://me:hunter2@bucket/p\n",
        ),
        (
            "unknown_key",
            "cache:\n  remote: file:///tmp/x\n  writ: true\n",
        ),
        (
            "unknown_option",
            "cache:\n  remote: s3://b/p\n  options:\n    regoin: eu-west-1\n",
        ),
    ] {
        p.write(&format!("{name}.yaml"), &with_cache(cache));
        let run = p.hone(&["validate", &format!("{name}.yaml")]);
        assert_eq!(run.code(), 2, "{name}: {}", run.stderr());
        assert!(!run.stderr().contains("hunter2"), "{}", run.stderr());
        s.bind(|| insta::assert_snapshot!(format!("remote_settings_{name}"), run.transcript()));
    }
    // A URL with credentials in it is refused on the command line too, without echoing them.
    let url = p.hone(&["status", "r.yaml", "--remote", "https://me:hunter2@host/x"]);
    assert_eq!(url.code(), 1, "{}", url.stderr());
    assert!(!url.stderr().contains("hunter2"), "{}", url.stderr());
    s.bind(|| insta::assert_snapshot!("remote_settings_credentials_in_the_url", url.transcript()));
}

#[test]
fn a_stage_whose_readers_are_cached_here_stays_on_the_remote_until_one_runs() {
    let remote = tempfile::tempdir().unwrap();
    let url = file_url(remote.path());
    // Here everything ran once, then `qa`'s result was dropped while `qa_clean`, which reads
    // it, stayed: a run needs nothing of `qa`, so nothing of it is downloaded.
    let (_a, b) = published_and_local(&url);
    std::fs::remove_file(local_manifest(&b, "qa")).unwrap();
    b.hone(&["cache", "gc"]).ok();
    let blobs = b.blobs();
    let lock = std::fs::read(b.path("r.lock")).unwrap();
    let status_run = b.hone(&["status", "r.yaml", "--remote", &url]);
    let status = status_run.ok();
    assert_eq!(stages(&status, "remote"), ["qa"], "{status}");
    let s = crate::common::snapshots(&b);
    s.bind(|| insta::assert_snapshot!("remote_status_leaves_it_there", status_run.transcript()));
    let run = b.hone(&["run", "r.yaml", "--remote", &url]);
    let out = run.ok();
    assert!(run.ran().is_empty(), "{out}");
    assert_eq!(stages(&out, "remote"), ["qa"], "{out}");
    assert_eq!(b.blobs(), blobs, "nothing was downloaded: {out}");
    assert_eq!(std::fs::read(b.path("r.lock")).unwrap(), lock);

    // Once a stage that reads it runs, it is pulled first.
    let forced = b.hone(&["run", "r.yaml", "--remote", &url, "--force", "qa_clean"]);
    let out = forced.ok();
    assert_eq!(stages(&out, "pulled"), ["qa"], "{out}");
    assert_eq!(forced.ran(), ["qa_clean"], "{out}");
    b.hone(&["cache", "verify"]).ok();
}

#[test]
fn a_stage_left_on_the_remote_is_computed_here_when_its_reader_runs_and_the_pull_fails() {
    let remote = tempfile::tempdir().unwrap();
    let url = file_url(remote.path());
    let (_a, b) = published_and_local(&url);
    std::fs::remove_file(local_manifest(&b, "qa")).unwrap();
    b.hone(&["cache", "gc"]).ok();
    let lock = std::fs::read(b.path("r.lock")).unwrap();
    // Every blob on the remote is damaged (same size, other bytes): `qa`'s manifest still
    // names them, so the run records `qa` from the remote, and its pull fails only when
    // `qa_clean` runs and needs its files.
    rewrite_remote_blobs(remote.path(), |bytes| bytes.iter().map(|b| !b).collect());
    // `qa` is not selected: the run takes it as it finds it, recorded from the remote.
    let run = b.hone(&[
        "run", "r.yaml", "--remote", &url, "--only", "qa_clean", "--force", "qa_clean",
    ]);
    let out = run.ok();
    crate::common::snapshots(&b).bind(|| {
        insta::assert_snapshot!("remote_left_there_then_computed_here", run.transcript());
    });
    assert_eq!(run.ran(), ["qa", "qa_clean"], "{out}");
    assert!(stages(&out, "pulled").is_empty(), "{out}");
    assert_eq!(std::fs::read(b.path("r.lock")).unwrap(), lock, "{out}");
    b.hone(&["cache", "verify"]).ok();
}

#[test]
fn a_push_replaces_a_remote_blob_of_the_wrong_size() {
    let remote = tempfile::tempdir().unwrap();
    let url = file_url(remote.path());
    let (_a, b) = published_and_local(&url);
    // Cut short on the remote (an upload that died half-way through a store without atomic
    // writes): `verify --deep` sees it, and the next push writes it anew.
    rewrite_remote_blobs(remote.path(), |bytes| bytes[..bytes.len() / 2].to_vec());
    let damaged = b.hone(&["cache", "remote", "verify", "--remote", &url]);
    assert_eq!(damaged.code(), 1, "{}", damaged.stdout());
    let s = crate::common::snapshots(&b);
    s.bind(|| insta::assert_snapshot!("remote_verify_wrong_sizes", damaged.transcript()));
    let push = b.hone(&["cache", "push", "r.yaml", "--remote", &url]);
    push.ok();
    s.bind(|| insta::assert_snapshot!("remote_push_rewrites_wrong_sizes", push.transcript()));
    b.hone(&["cache", "remote", "verify", "--deep", "--remote", &url])
        .ok();
    // `--all` offers the whole store; the remote has it all already.
    let all = b.hone(&["cache", "push", "r.yaml", "--all", "--remote", &url]);
    all.ok();
    s.bind(|| insta::assert_snapshot!("remote_push_all_already_there", all.transcript()));
    let ls = b.hone(&["cache", "remote", "ls", "--remote", &url]);
    ls.ok();
    s.bind(|| insta::assert_snapshot!("remote_ls", ls.transcript()));
}

/// `two_dataset_project` with `cache:` settings in its recipe.
fn project_with_cache(settings: &str) -> Project {
    let p = two_dataset_project();
    let recipe = std::fs::read_to_string(p.path("r.yaml")).unwrap();
    p.write("r.yaml", &format!("{recipe}\ncache: {settings}\n"));
    p
}

#[test]
fn the_recipe_names_its_remote_and_read_false_or_no_remote_keep_a_run_here() {
    let remote = tempfile::tempdir().unwrap();
    let url = file_url(remote.path());
    // The recipe's own `cache:` block, with write-through: no flag, no environment.
    let a = project_with_cache(&format!("{{ remote: '{url}', write: true }}"));
    let out = a.hone(&["run", "r.yaml"]).ok();
    assert_eq!(a.hone(&["run", "r.yaml"]).ran(), Vec::<String>::new());
    assert!(
        std::fs::read_dir(remote.path().join("actions")).is_ok(),
        "nothing was published: {out}"
    );

    // A team that reads it pulls everything; `status` says so first, with the bytes.
    let b = project_with_cache(&format!("{{ remote: '{url}' }}"));
    let status = b.hone(&["status", "r.yaml"]).ok();
    assert_eq!(
        stages(&status, "pull"),
        ["qa", "qa_clean", "reviews"],
        "{status}"
    );
    assert_eq!(status.matches("a run pulls it (").count(), 3, "{status}");
    let run = b.hone(&["run", "r.yaml"]);
    let out = run.ok();
    assert!(run.ran().is_empty(), "{out}");
    assert_eq!(
        stages(&out, "pulled"),
        ["qa", "qa_clean", "reviews"],
        "{out}"
    );

    // `read: false` in the recipe, and `--no-remote` over HONE_REMOTE: computed here.
    let c = project_with_cache(&format!("{{ remote: '{url}', read: false }}"));
    let run = c.hone(&["run", "r.yaml"]);
    let out = run.ok();
    assert_eq!(run.ran(), ["qa", "reviews", "qa_clean"], "{out}");
    assert!(stages(&out, "pulled").is_empty(), "{out}");
    let d = two_dataset_project();
    let run = with_env(
        &d,
        &["run", "r.yaml", "--no-remote"],
        &[("HONE_REMOTE", url)],
    );
    let out = run.ok();
    assert_eq!(run.ran(), ["qa", "reviews", "qa_clean"], "{out}");
    assert_same_results(&a, &d, "r.lock");
}

#[test]
fn a_remote_that_never_answers_costs_a_bounded_wait_then_the_run_computes() {
    // A server that takes connections and never answers them, and one that answers every
    // request with a server error.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn);
        }
    });
    let failing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let failing_port = failing.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in failing.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    for port in [silent_port, failing_port] {
        let env = [
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ];
        // The recipe's options set the request time-out (60 s unless they do).
        let p = project_with_cache(
            "{ remote: s3://silent/hone, write: true, options: { timeout: 1s } }",
        );
        let started = std::time::Instant::now();
        let run = with_env(&p, &["run", "r.yaml"], &env);
        let out = run.ok();
        let waited = started.elapsed();
        assert_eq!(run.ran().len(), 3, "{out}");
        assert_eq!(out.matches("remote unavailable").count(), 1, "{out}");
        // Three tries of at most a second each, with back-off between them, then no more
        // requests.
        assert!(
            waited < std::time::Duration::from_secs(30),
            "{waited:?}: {out}"
        );
    }
}

#[test]
fn a_push_that_finds_other_outputs_for_its_action_warns_and_the_first_writer_stays() {
    let remote = tempfile::tempdir().unwrap();
    let url = file_url(remote.path());
    // Another store records other outputs for `qa`'s action, as a stage that is not
    // deterministic across machines would (here: `qa_clean`'s files under `qa`'s key).
    let (a, b) = published_and_local(&url);
    let read = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut qa = read(local_manifest(&b, "qa"));
    qa["outputs"] = read(local_manifest(&b, "qa_clean"))["outputs"].clone();
    std::fs::write(local_manifest(&b, "qa"), serde_json::to_vec(&qa).unwrap()).unwrap();
    let push = b.hone(&["cache", "push", "r.yaml", "--remote", &url]);
    push.ok();
    crate::common::snapshots(&b).bind(|| {
        insta::assert_snapshot!("remote_push_finds_other_outputs", push.transcript());
    });
    // The remote still serves team A's result.
    let c = two_dataset_project();
    c.hone(&["run", "r.yaml", "--remote", &url]).ok();
    assert_same_results(&a, &c, "r.lock");
}

#[test]
fn forged_metrics_or_an_oversized_summary_on_a_remote_are_not_believed() {
    let (remote, url, a) = published_to_a_file_remote();
    let manifest_of =
        |stage: &str| remote_manifest(remote.path(), &lock_entry(&a, "r.lock", stage, "action"));
    let edit = |stage: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let path = manifest_of(stage);
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut m);
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    };
    // `reviews`: every metric made 0.999 (its key and outputs still true). `qa`: a summary of
    // 5 MB, under the manifest limit, over what a summary may be.
    edit("reviews", &|m| {
        for v in m["metrics"].as_object_mut().unwrap().values_mut() {
            *v = serde_json::json!(0.999);
        }
    });
    edit("qa", &|m| {
        m["summary"] = serde_json::json!({ "padding": "x".repeat(5 << 20) });
    });
    // A reader with the recipe's committed lockfile.
    let b = two_dataset_project();
    std::fs::copy(a.path("r.lock"), b.path("r.lock")).unwrap();
    let run = b.hone(&["run", "r.yaml", "--remote", &url, "--locked"]);
    let out = run.ok();
    assert_eq!(stages(&out, "ran"), ["qa", "reviews"], "{out}");
    let s = crate::common::snapshots(&b);
    s.bind(|| insta::assert_snapshot!("remote_forged_metrics_refused", run.transcript()));
    assert_same_results(&a, &b, "r.lock");
    let show = b.hone(&["show", "r.yaml", "reviews"]);
    show.ok();
    s.bind(|| insta::assert_snapshot!("remote_forged_metrics_show", show.transcript()));
    assert_eq!(
        crate::common::manifest(&b, "reviews")["metrics"],
        crate::common::manifest(&a, "reviews")["metrics"],
        "the reader keeps what was computed, not what was claimed"
    );
    // `cache pull` refuses the forged manifest by the same rule.
    let c = two_dataset_project();
    std::fs::copy(a.path("r.lock"), c.path("r.lock")).unwrap();
    let pull = c.hone(&["cache", "pull", "r.yaml", "--remote", &url]);
    assert_eq!(pull.code(), 1, "{}", pull.stdout());
    crate::common::snapshots(&c).bind(|| {
        insta::assert_snapshot!("remote_pull_refuses_forged_metrics", pull.transcript());
    });
}
