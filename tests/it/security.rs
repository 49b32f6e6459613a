//! What hone does with a destination it must not replace and with a store it cannot trust:
//! export replaces only what hone wrote, every manifest path and digest is checked before any
//! use, and a damaged blob never reaches a user or a model.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::{Project, Run};

/// A recipe with one export stage of a small model that ships with the tests (no training).
fn export_project(to: &str) -> Project {
    let p = Project::new();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/gpt2");
    p.write(
        "r.yaml",
        &format!(
            "version: 1\nname: exp\nstages:\n  exp:\n    kind: export\n    model: {{ path: {} }}\n    to: {to}\n",
            model.display()
        ),
    );
    p
}

fn set_to(p: &Project, to: &str) {
    let text = std::fs::read_to_string(p.path("r.yaml")).unwrap();
    let (head, _) = text.rsplit_once("    to: ").unwrap();
    p.write("r.yaml", &format!("{head}    to: {to}\n"));
}

fn failed(run: &Run) -> String {
    assert_ne!(run.code(), 0, "expected a failure:\n{}", run.stdout());
    let err = run.stderr();
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Runs `hone args` in `p`, which must fail (no panic), and checks what it printed, whole,
/// against snapshot `security_<name>`.
fn refused(p: &Project, args: &[&str], name: &str) {
    let run = p.hone(args);
    failed(&run);
    crate::common::snapshots(p).bind(|| {
        insta::assert_snapshot!(format!("security_{name}"), run.transcript());
    });
}

/// Checks what `run` printed, whole, against snapshot `security_<name>`.
fn printed(p: &Project, run: &Run, name: &str) {
    crate::common::snapshots(p).bind(|| {
        insta::assert_snapshot!(format!("security_{name}"), run.transcript());
    });
}

/// The manifest file of `stage` (recipe `r.yaml`, default store).
fn manifest_path(p: &Project, stage: &str) -> PathBuf {
    let m = crate::common::manifest(p, stage);
    let action = m["action"].as_str().unwrap().to_owned();
    p.store()
        .join("actions")
        .join(&action[..2])
        .join(format!("{action}.json"))
}

fn edit_manifest(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

fn writable(path: &Path) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    perms.set_mode(0o644);
    std::fs::set_permissions(path, perms).unwrap();
}

fn blob_of(p: &Project, stage: &str, file: &str) -> PathBuf {
    let m = crate::common::manifest(p, stage);
    let digest = m["outputs"]["model"]["files"][file]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    p.store().join("blobs").join(&digest[..2]).join(&digest)
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".hone-tmp") || n.contains(".hone-old"))
        .collect()
}

#[test]
fn export_never_replaces_a_directory_hone_did_not_write() {
    let p = export_project("data");
    p.write("data/keep.jsonl", "{\"text\": \"mine\"}\n");
    refused(&p, &["run", "r.yaml"], "export_to_a_users_directory");
    assert_eq!(
        std::fs::read_to_string(p.path("data/keep.jsonl")).unwrap(),
        "{\"text\": \"mine\"}\n"
    );

    // The recipe's own directory, its data's, the store's, and a file.
    for (to, name) in [
        ("\".\"", "export_to_the_recipes_directory"),
        ("..", "export_to_its_parent"),
        (".hone", "export_into_the_store"),
        ("r.yaml", "export_over_the_recipe"),
    ] {
        set_to(&p, to);
        refused(&p, &["run", "r.yaml"], name);
        assert!(p.path("r.yaml").is_file() && p.path("data/keep.jsonl").is_file());
    }
    let model_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    set_to(&p, &model_dir.display().to_string());
    refused(&p, &["run", "r.yaml"], "export_over_the_data");
    assert!(model_dir.join("gpt2/config.json").is_file());

    // An export of an earlier hone (its model card, no marker) is replaced; the same card in a
    // directory that also holds other files is not taken for one.
    std::fs::create_dir_all(p.path("old")).unwrap();
    p.write(
        "old/README.md",
        "# m\n\nExported by hone 0.1.0 from `x` of recipe `r` (stage `e`).\n",
    );
    p.write("old/config.json", "{}");
    set_to(&p, "old");
    p.hone(&["run", "r.yaml"]).ok();
    assert!(p.path("old/.hone-export.json").is_file());
    p.write(
        "data/README.md",
        "# m\n\nExported by hone 0.1.0 from `x` of recipe `r` (stage `e`).\n",
    );
    set_to(&p, "data");
    refused(&p, &["run", "r.yaml"], "export_over_a_lookalike");
    assert!(p.path("data/keep.jsonl").is_file());

    // An empty directory is the user's way of saying "put it here".
    std::fs::create_dir(p.path("empty")).unwrap();
    set_to(&p, "empty");
    p.hone(&["run", "r.yaml"]).ok();
    assert!(p.path("empty/config.json").is_file());
}

#[test]
fn export_writes_ordinary_files_and_replaces_only_its_own() {
    let p = export_project("dist/m");
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    printed(&p, &run, "export_first");
    let config = p.path("dist/m/config.json");
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert!(
        mode & 0o200 != 0 && mode & 0o022 == 0,
        "exported files are the owner's to change and nobody else's: {mode:o}"
    );
    assert!(p.path("dist/m").join(".hone-export.json").is_file());

    // Its own export, changed by hand, is written again whole.
    std::fs::write(&config, "{}").unwrap();
    std::fs::write(p.path("dist/m/extra.txt"), "x").unwrap();
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    printed(&p, &run, "export_again_after_a_hand_edit");
    assert_ne!(std::fs::read_to_string(&config).unwrap(), "{}");
    assert!(!p.path("dist/m/extra.txt").exists());
    // Unchanged: nothing is written.
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    printed(&p, &run, "export_unchanged");
    assert!(leftovers(&p.path("dist")).is_empty());
}

#[test]
fn a_damaged_blob_is_never_exported_or_loaded() {
    let p = export_project("dist/m");
    p.hone(&["run", "r.yaml"]).ok();
    std::fs::remove_dir_all(p.path("dist/m")).unwrap();
    let blob = blob_of(&p, "exp", "model.safetensors");
    writable(&blob);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();

    refused(&p, &["run", "r.yaml"], "export_of_a_damaged_blob");
    assert!(!p.path("dist/m").exists());
    assert!(
        leftovers(&p.path("dist")).is_empty(),
        "{:?}",
        leftovers(&p.path("dist"))
    );

    refused(
        &p,
        &["generate", "--model", "r.yaml:exp", "--prompt", "hi"],
        "generate_from_a_damaged_blob",
    );

    // Repair forgets the action; the next run recomputes and exports it.
    p.hone(&["cache", "verify", "--repair"]).ok();
    p.hone(&["run", "r.yaml"]).ok();
    assert!(p.path("dist/m/model.safetensors").is_file());
}

#[test]
fn generate_reads_recipe_stages_from_the_given_store() {
    let p = export_project("dist/m");
    p.hone(&["run", "r.yaml", "--store", "elsewhere"]).ok();
    // No store beside the recipe: only `--store` has the artifact. (The fixture has no
    // tokenizer, so getting as far as that error means the model was found and laid out.)
    refused(
        &p,
        &[
            "generate",
            "--store",
            "elsewhere",
            "--model",
            "r.yaml:exp",
            "--prompt",
            "hi",
        ],
        "generate_from_the_given_store",
    );
    refused(
        &p,
        &["generate", "--model", "r.yaml:exp", "--prompt", "hi"],
        "generate_without_a_store",
    );
}

#[test]
fn a_crafted_manifest_reaches_nothing_outside_the_store() {
    let p = export_project("dist/m");
    p.hone(&["run", "r.yaml"]).ok();
    let victim = p.path("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("canary.txt"), "alive").unwrap();
    let path = manifest_path(&p, "exp");
    let pristine = std::fs::read(&path).unwrap();
    let restore = || std::fs::write(&path, &pristine).unwrap();

    // A digest that is a path: verify calls the manifest unusable and repair deletes nothing
    // but the manifest.
    edit_manifest(&path, |m| {
        m["outputs"]["model"]["files"]["config.json"]["digest"] = "../../victim/canary.txt".into();
    });
    refused(&p, &["cache", "verify"], "verify_a_digest_that_is_a_path");
    p.hone(&["cache", "verify", "--repair"]).ok();
    assert_eq!(
        std::fs::read_to_string(victim.join("canary.txt")).unwrap(),
        "alive"
    );
    restore();

    // A digest too short to index: refused, no panic, in verify and run.
    edit_manifest(&path, |m| {
        m["outputs"]["model"]["files"]["config.json"]["digest"] = "a".into();
    });
    assert_eq!(p.hone(&["cache", "verify"]).code(), 1);
    refused(&p, &["run", "r.yaml"], "run_with_a_short_digest");
    restore();

    // A file name that climbs out: nothing is written outside the export or the temp dir.
    std::fs::remove_dir_all(p.path("dist/m")).unwrap();
    edit_manifest(&path, |m| {
        let files = m["outputs"]["model"]["files"].as_object_mut().unwrap();
        let entry = files.remove("config.json").unwrap();
        files.insert("../../../victim/x".into(), entry);
    });
    refused(&p, &["run", "r.yaml"], "run_with_a_climbing_file_name");
    refused(
        &p,
        &["generate", "--model", "r.yaml:exp", "--prompt", "hi"],
        "generate_with_a_climbing_file_name",
    );
    assert!(!victim.join("x").exists() && !p.path("x").exists());
    refused(&p, &["cache", "verify"], "verify_a_climbing_file_name");
    restore();

    // A manifest copied under another action's key, or whose output digest was edited to
    // point downstream stages elsewhere, is refused too.
    edit_manifest(&path, |m| {
        m["outputs"]["model"]["digest"] = "0".repeat(64).into();
    });
    refused(&p, &["cache", "verify"], "verify_an_output_digest_edited");
    restore();
    edit_manifest(&path, |m| m["action"] = "f".repeat(64).into());
    refused(
        &p,
        &["cache", "verify"],
        "verify_a_manifest_under_another_key",
    );
    restore();
    let verify = p.hone(&["cache", "verify"]);
    verify.ok();
    printed(&p, &verify, "verify_restored");
}

#[test]
fn a_damaged_lockfile_names_no_path() {
    let p = export_project("dist/m");
    p.hone(&["run", "r.yaml"]).ok();
    let lock = std::fs::read_to_string(p.path("r.lock")).unwrap();
    let action = crate::common::manifest(&p, "exp")["action"]
        .as_str()
        .unwrap()
        .to_owned();
    p.write("r.lock", &lock.replace(&action, "../../x"));
    for (args, name) in [
        (&["status", "r.yaml"][..], "status_with_a_damaged_lockfile"),
        (
            &["generate", "--model", "r.yaml:exp", "--prompt", "hi"],
            "generate_with_a_damaged_lockfile",
        ),
    ] {
        refused(&p, args, name);
    }
}

/// A GGUF file's header: magic, version 3, the tensor and metadata counts, then `rest`.
fn gguf(n_tensors: u64, n_meta: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_meta.to_le_bytes());
    b.extend(rest);
    b
}

#[test]
fn a_crafted_gguf_is_refused_with_a_message_never_a_panic() {
    let p = Project::new();
    let key = |k: &str| {
        [
            (k.len() as u64).to_le_bytes().to_vec(),
            k.as_bytes().to_vec(),
        ]
        .concat()
    };
    // Arrays of arrays, 200 deep, each holding one array: recursion a file may not ask for.
    let mut nested = key("k");
    nested.extend(9u32.to_le_bytes());
    for _ in 0..200 {
        nested.extend(9u32.to_le_bytes());
        nested.extend(1u64.to_le_bytes());
    }
    // An alignment of 2^62 before one small f32 tensor: its data would start past any file.
    let mut aligned = key("general.alignment");
    aligned.extend(10u32.to_le_bytes());
    aligned.extend((1u64 << 62).to_le_bytes());
    aligned.extend(key("t"));
    aligned.extend(1u32.to_le_bytes());
    aligned.extend(32u64.to_le_bytes());
    aligned.extend(0u32.to_le_bytes());
    aligned.extend(0u64.to_le_bytes());
    let cases: [(&str, Vec<u8>); 5] = [
        // A metadata key, then a tensor name, whose length is 2^64-1: the offset would wrap.
        (
            "key",
            gguf(0, 1, &[u64::MAX.to_le_bytes().as_slice(), b"abc"].concat()),
        ),
        (
            "tensor",
            gguf(1, 0, &[u64::MAX.to_le_bytes().as_slice(), b"abc"].concat()),
        ),
        (
            "string value",
            gguf(
                0,
                1,
                &[
                    key("a"),
                    8u32.to_le_bytes().to_vec(),
                    u64::MAX.to_le_bytes().to_vec(),
                ]
                .concat(),
            ),
        ),
        ("nested", gguf(0, 1, &nested)),
        ("aligned", gguf(1, 1, &aligned)),
    ];
    // Each is an error naming the file and what is wrong with it (exit 1), never a panic.
    for (name, bytes) in cases {
        let path = p.path(&format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        refused(
            &p,
            &[
                "generate",
                "--raw",
                "--model",
                path.to_str().unwrap(),
                "--prompt",
                "Hi",
            ],
            &format!("crafted_gguf_{}", name.replace(' ', "_")),
        );
    }
}
