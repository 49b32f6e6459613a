//! The recipe language: types, loading (extends, vars, defaults, overrides) and validation.

pub mod load;
pub mod source_map;
pub mod types;
pub mod validate;

pub use load::{Recipe, Stage, load};
pub use validate::validate;

/// The JSON Schema of a recipe file (`hone schema`, `schemas/recipe.schema.json`), with every
/// stage kind, those this program registered included (`stages::kind`).
///
/// Scalars (numbers, booleans) also accept a `${var}` string, since variables are
/// substituted before the recipe is typed.
pub fn json_schema() -> serde_json::Value {
    let mut schema =
        serde_json::to_value(schemars::schema_for!(types::RecipeFile)).expect("schema serializes");
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
