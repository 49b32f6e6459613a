//! Layers look down only, ranked: `cli > exec > plan > {recipe, stages} > spec > the
//! libraries (kernels, model, train, data, store, backend, diag, rng, yaml)`. A module names
//! only modules of a lower rank; recipe and stages, of one rank, never name each other; the
//! planner sees kinds only through spec; the libraries may use one another but never the
//! runner, so each can be used and tested alone. This reads the sources, so a new upward
//! import fails here before review.

use std::path::{Path, PathBuf};

/// Every top-level module of `src/` with its rank.
const RANKS: &[(&str, u8)] = &[
    ("cli", 5),
    ("exec", 4),
    ("plan", 3),
    ("recipe", 2),
    ("stages", 2),
    ("spec", 1),
    ("kernels", 0),
    ("model", 0),
    ("train", 0),
    ("data", 0),
    ("store", 0),
    ("backend", 0),
    ("diag", 0),
    ("rng", 0),
    ("yaml", 0),
];

fn rank(module: &str) -> Option<u8> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

/// Pairs the ranks would allow that stay apart: the planner sees stage kinds only through
/// `spec` (a `StageSpec`), never a kind's module.
const APART: &[(&str, &str)] = &[("plan", "stages")];

/// Whether `from` may name `to`: a lower rank, or both libraries (rank 0), and not a pair kept
/// [`APART`].
fn may_name(from: &str, to: &str) -> bool {
    if APART.contains(&(from, to)) {
        return false;
    }
    match (rank(from), rank(to)) {
        (Some(f), Some(t)) => from == to || t < f || (f == 0 && t == 0),
        _ => true,
    }
}

/// Every `crate::<module>` path in `source`, also inside a grouped `use crate::{...}`, as
/// (`line: text`, module). Comments are not code.
fn named_modules(source: &str) -> Vec<(String, &'static str)> {
    let mut found = Vec::new();
    let mut in_group = false;
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut hits: Vec<&'static str> = RANKS
            .iter()
            .map(|(m, _)| *m)
            .filter(|m| {
                code.contains(&format!("crate::{m}::")) || code.contains(&format!("crate::{m};"))
            })
            .collect();
        if code.contains("crate::{") {
            in_group = true;
        }
        if in_group {
            let words: Vec<&str> = code
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            for (m, _) in RANKS {
                if words.contains(m) && !hits.contains(m) {
                    hits.push(m);
                }
            }
            if code.contains("};") {
                in_group = false;
            }
        }
        for m in hits {
            found.push((format!("{}: {}", n + 1, line.trim()), m));
        }
    }
    found
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for e in entries {
            rust_files(&e, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

#[test]
fn every_module_names_only_modules_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if name == "lib" || name == "main" {
            continue;
        }
        assert!(
            rank(&name).is_some(),
            "src/{name} has no rank: add it to RANKS (and to the ranks in DESIGN.md and lib.rs)"
        );
        let mut files = Vec::new();
        rust_files(&path, &mut files);
        for f in &files {
            checked += 1;
            let text = std::fs::read_to_string(f).unwrap();
            for (hit, to) in named_modules(&text) {
                if !may_name(&name, to) {
                    problems.push(format!(
                        "{} ({name} names {to}):{hit}",
                        f.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "expected hone's sources, read {checked} files"
    );
    assert!(
        problems.is_empty(),
        "modules name modules at or above their rank (move the item down to the layer both use, or take it as a parameter):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_ranks_allow_down_and_refuse_up_and_across() {
    assert!(may_name("cli", "exec"));
    assert!(may_name("plan", "recipe"));
    assert!(may_name("stages", "spec"));
    assert!(may_name("model", "data"));
    assert!(!may_name("spec", "stages"));
    assert!(!may_name("recipe", "stages"));
    assert!(!may_name("stages", "recipe"));
    assert!(!may_name("recipe", "plan"));
    assert!(!may_name("model", "spec"));
    assert!(!may_name("exec", "cli"));
    assert!(!may_name("plan", "stages"));
}

#[test]
fn the_check_sees_plain_and_grouped_imports_but_not_comments() {
    let modules = |s: &str| -> Vec<&str> { named_modules(s).into_iter().map(|(_, m)| m).collect() };
    assert_eq!(modules("use crate::recipe::types::X;"), ["recipe"]);
    assert_eq!(modules("let x = crate::stages::run(a);"), ["stages"]);
    assert_eq!(
        modules("use crate::{\n    model::Model,\n    exec::Thing,\n};"),
        ["model", "exec"]
    );
    assert_eq!(
        modules("use crate::{data::table, store};"),
        ["data", "store"]
    );
    assert!(modules("// see crate::cli::main").is_empty());
    assert!(modules("use crate::model::recipe_like;") == ["model"]);
}

/// The modules of the built-in kinds, read from the registry in `src/stages/mod.rs`.
fn kind_modules(src: &Path) -> Vec<String> {
    let registry = std::fs::read_to_string(src.join("stages/mod.rs")).unwrap();
    registry
        .split("Builtin::of::<")
        .skip(1)
        .filter_map(|rest| rest.split("::").next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_file_imports_a_stage_kind_but_the_registry() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let kinds = kind_modules(&src);
    assert!(kinds.len() >= 11, "registry not found: {kinds:?}");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().display().to_string();
        if rel == "stages/mod.rs" {
            continue;
        }
        let own = f.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for kind in kinds.iter().filter(|k| **k != own) {
                let named = [
                    format!("super::{kind}::"),
                    format!("stages::{kind}::"),
                    format!("super::{kind};"),
                    format!("super::{{{kind}"),
                ]
                .iter()
                .any(|p| code.contains(p.as_str()));
                if named {
                    problems.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "a stage kind's module is used outside it (move the shared code to a module named for what it holds):\n{}",
        problems.join("\n")
    );
}
