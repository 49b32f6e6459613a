//! Layers look down only: the libraries under the runner (kernels, model, train, data, store,
//! the backend choice and diagnostics) never name the runner's modules, so each can be used
//! and tested alone. This reads the sources, so a new upward import fails here before review.

use std::path::{Path, PathBuf};

/// Modules of the runner that the lower layers must not name.
const UPPER: &[&str] = &["recipe", "stages", "exec", "plan", "cli"];

/// The lower layers, as paths under `src/`.
const LOWER: &[&str] = &[
    "kernels",
    "model",
    "train",
    "data",
    "store",
    "backend.rs",
    "diag.rs",
];

/// Every `crate::<upper>` path in `source`, also inside a grouped `use crate::{...}`, as
/// `line: text`.
fn upward_imports(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_group = false;
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut hit = UPPER.iter().any(|m| {
            code.contains(&format!("crate::{m}::")) || code.contains(&format!("crate::{m};"))
        });
        if code.contains("crate::{") {
            in_group = true;
        }
        if in_group {
            let words = code
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty());
            hit |= words.clone().any(|w| UPPER.contains(&w));
            if code.contains("};") {
                in_group = false;
            }
        }
        if hit {
            found.push(format!("{}: {}", n + 1, line.trim()));
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
fn lower_layers_never_name_the_runner() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for lower in LOWER {
        rust_files(&src.join(lower), &mut files);
    }
    assert!(
        files.len() > 20,
        "expected the lower layers' files, found {files:?}"
    );
    let mut problems = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for hit in upward_imports(&text) {
            problems.push(format!("{}:{hit}", f.strip_prefix(&src).unwrap().display()));
        }
    }
    assert!(
        problems.is_empty(),
        "lower layers name the runner (move the item down, or take it as a parameter):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_plain_and_grouped_imports_but_not_comments() {
    assert_eq!(upward_imports("use crate::recipe::types::X;").len(), 1);
    assert_eq!(upward_imports("let x = crate::stages::run(a);").len(), 1);
    assert_eq!(
        upward_imports("use crate::{\n    model::Model,\n    exec::Thing,\n};").len(),
        1
    );
    assert_eq!(upward_imports("use crate::{data::table, store};").len(), 0);
    assert_eq!(upward_imports("// see crate::cli::main").len(), 0);
    assert_eq!(upward_imports("use crate::model::recipe_like;").len(), 0);
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
