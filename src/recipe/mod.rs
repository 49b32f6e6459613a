//! The recipe language: types, loading (extends, vars, defaults, overrides) and the checks a
//! recipe needs on its own (`plan::validate` adds those across stages).

pub mod load;
pub mod source_map;
pub mod types;
pub mod validate;

pub use load::{Recipe, Stage, load};
pub use validate::check;

/// The JSON Schema of a recipe file (`hone schema`, `schemas/recipe.schema.json`), with every
/// stage kind of `kinds`, those a program registered included.
///
/// Scalars (numbers, booleans) also accept a `${var}` string, since variables are
/// substituted before the recipe is typed.
pub fn json_schema(kinds: &crate::spec::Registry) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut generator = schemars::SchemaGenerator::default();
    let root = generator.root_schema_for::<types::RecipeFile>();
    let variants = kinds.schema_variants(&mut generator);
    let mut schema = serde_json::to_value(root).expect("schema serializes");
    if let Some(Value::Object(defs)) = schema.get_mut("$defs") {
        // The kinds' nested types join the header's.
        for (name, def) in generator.definitions() {
            defs.entry(name.clone()).or_insert_with(|| def.clone());
        }
        defs.insert(
            "StageSpec".into(),
            json!({
                "description": "A stage's configuration, tagged by `kind`.",
                "oneOf": variants,
            }),
        );
    }
    // `defaults` keys: the kinds, for editors to complete; other names stay allowed in the
    // schema (the loader names the unknown ones).
    if let Some(Value::Object(defaults)) = schema.pointer_mut("/properties/defaults") {
        let names: serde_json::Map<String, Value> = kinds
            .names()
            .into_iter()
            .map(|k| (k.to_owned(), json!({ "type": "object" })))
            .collect();
        defaults.insert("properties".into(), Value::Object(names));
    }
    allow_interpolation(&mut schema);
    schema
}

fn allow_interpolation(v: &mut serde_json::Value) {
    use serde_json::{Value, json};
    match v {
        Value::Object(map) => {
            for child in map.values_mut() {
                allow_interpolation(child);
            }
            let scalar = |t: &Value| matches!(t.as_str(), Some("number" | "integer" | "boolean"));
            let is_scalar = match map.get("type") {
                Some(t @ Value::String(_)) => scalar(t),
                Some(Value::Array(ts)) => ts.iter().any(scalar),
                _ => false,
            };
            if is_scalar {
                let mut original = std::mem::take(map);
                // What the field means stays on the field, where editors and the reference
                // (`hone schema --markdown`) read it, not on one branch of its `anyOf`.
                for key in ["title", "description", "default", "examples", "deprecated"] {
                    if let Some(annotation) = original.remove(key) {
                        map.insert(key.into(), annotation);
                    }
                }
                map.insert(
                    "anyOf".into(),
                    json!([original, { "type": "string", "pattern": "\\$\\{[^}]+\\}" }]),
                );
            }
        }
        Value::Array(items) => items.iter_mut().for_each(allow_interpolation),
        _ => {}
    }
}
