//! `schemas/recipe.schema.json` is generated from the recipe types and must stay current; every
//! recipe shipped in `recipes/` must load, validate and match the schema.

use std::path::Path;

const SCHEMA: &str = "schemas/recipe.schema.json";

#[test]
fn committed_schema_is_up_to_date() {
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&hone::recipe::json_schema(&hone::stages::registry()))
            .unwrap()
    );
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCHEMA))
        .unwrap_or_default();
    assert!(
        generated == committed,
        "{SCHEMA} is out of date with the recipe types: regenerate it with `cargo run --release -- schema -o {SCHEMA}`"
    );
}

#[test]
fn every_shipped_recipe_validates_against_the_schema() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = hone::recipe::json_schema(&hone::stages::registry());
    let validator = jsonschema::validator_for(&schema).expect("the schema is a valid JSON Schema");
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            continue;
        }
        let recipe = hone::recipe::load(&path, &[], &hone::stages::registry())
            .unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        hone::plan::validate(&recipe).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        let instance = serde_json::to_value(&recipe.resolved).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not match the schema:\n{}",
            path.display(),
            errors.join("\n")
        );
        checked += 1;
    }
    assert!(checked > 0, "no recipes found in recipes/");
}

#[test]
fn schema_rejects_what_the_loader_rejects() {
    let schema = hone::recipe::json_schema(&hone::stages::registry());
    let validator = jsonschema::validator_for(&schema).unwrap();
    let bad = serde_json::json!({ "version": 1, "name": "x", "stages": { "a": { "kind": "dataset", "source": { "path": "d.jsonl" }, "splt": {} } } });
    assert!(
        !validator.is_valid(&bad),
        "unknown keys are schema errors too"
    );
    let good = serde_json::json!({ "version": 1, "name": "x", "stages": { "a": { "kind": "dataset", "source": { "path": "d.jsonl" }, "split": { "validation": "${frac}" } } } });
    assert!(
        validator.is_valid(&good),
        "interpolated scalars are allowed"
    );
}

#[test]
fn committed_recipe_reference_is_up_to_date() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["schema", "--markdown"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/recipe-reference.md"),
    )
    .unwrap_or_default();
    assert!(
        generated == committed,
        "docs/recipe-reference.md is out of date: regenerate it with `cargo run --release -- schema --markdown -o docs/recipe-reference.md`"
    );
    // Every enum type's section lists the values the loader takes.
    let schema: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new(env!("CARGO_BIN_EXE_hone"))
            .arg("schema")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let enums: Vec<(&String, &Vec<serde_json::Value>)> = schema["$defs"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(name, def)| def["enum"].as_array().map(|values| (name, values)))
        .collect();
    assert!(enums.len() >= 8, "the schema's plain enums: {enums:?}");
    for (name, values) in enums {
        let section = generated
            .split(&format!("## {name}\n"))
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap_or_else(|| panic!("no section for {name}"));
        for value in values {
            let value = value.as_str().unwrap();
            assert!(
                section.contains(&format!("`{value}`")),
                "the reference's {name} does not list `{value}`:\n{section}"
            );
        }
    }
    for kind in [
        "dataset", "pretrain", "sft", "reward", "dpo", "ppo", "grpo", "evaluate", "export",
    ] {
        assert!(
            generated.contains(&format!("`kind: {kind}`")),
            "the reference lacks {kind}"
        );
    }
}
