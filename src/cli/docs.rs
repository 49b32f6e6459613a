//! The recipe reference in Markdown, generated from the JSON Schema (`hone schema --markdown`),
//! so the docs say exactly what the loader accepts: every type with its fields, their types,
//! defaults and descriptions.

use std::fmt::Write as _;

use serde_json::Value;

/// A field's type as a short text, with links to the types it refers to.
fn type_of(v: &Value) -> String {
    if let Some(r) = v["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(c) = v.get("const") {
        return format!("`{c}`");
    }
    if let Some(e) = v["enum"].as_array() {
        return values_list(e, " \\| ");
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = v[key].as_array() {
            let parts: Vec<String> = alts
                .iter()
                .filter(|a| a["type"] != "null")
                .map(type_of)
                .filter(|t| !t.is_empty())
                .collect();
            return parts.join(" or ");
        }
    }
    match &v["type"] {
        Value::String(t) if t == "array" => format!("list of {}", type_of(&v["items"])),
        Value::String(t) if t == "object" && v.get("additionalProperties").is_some() => {
            match type_of(&v["additionalProperties"]) {
                inner if inner.is_empty() => "map".to_owned(),
                inner => format!("map of {inner}"),
            }
        }
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => String::new(),
    }
}

/// Enum values as code spans joined by `separator`: `` `a`, `b` ``.
fn values_list(values: &[Value], separator: &str) -> String {
    values
        .iter()
        .map(|x| {
            format!(
                "`{}`",
                x.as_str().map_or_else(|| x.to_string(), str::to_owned)
            )
        })
        .collect::<Vec<_>>()
        .join(separator)
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn fields(out: &mut String, def: &Value) {
    let Some(props) = def["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = def["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| field | type | default | description |\n|---|---|---|---|\n");
    for (name, p) in props {
        let default = match p.get("default") {
            Some(d) => format!("`{d}`"),
            None if required.contains(&name.as_str()) => "required".to_owned(),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| `{name}` | {} | {default} | {} |",
            type_of(p),
            one_line(p["description"].as_str().unwrap_or(""))
        );
    }
    out.push('\n');
}

pub fn markdown(schema: &Value) -> String {
    let mut out = String::from(
        "# Recipe reference\n\nGenerated from the recipe types by `hone schema --markdown` (the same types the loader reads, so this page and `schemas/recipe.schema.json` cannot drift from hone). A recipe is a YAML file; `stages` maps names to stages, each with a `kind`.\n\n## Recipe\n\n",
    );
    fields(&mut out, schema);
    if let Some(defs) = schema["$defs"].as_object() {
        for (name, def) in defs {
            let _ = writeln!(out, "## {name}\n");
            if let Some(d) = def["description"].as_str() {
                let _ = writeln!(out, "{}\n", one_line(d));
            }
            if def["properties"].is_object() {
                fields(&mut out, def);
            }
            // A plain enum (`Precision`, `OnLeak`...): the values the loader accepts.
            if let Some(values) = def["enum"].as_array() {
                let _ = writeln!(out, "One of: {}.\n", values_list(values, ", "));
            }
            for key in ["oneOf", "anyOf"] {
                if let Some(alts) = def[key].as_array() {
                    for alt in alts {
                        let label = alt["properties"]["kind"]["const"]
                            .as_str()
                            .map(|k| format!("`kind: {k}`"))
                            .or_else(|| alt.get("const").map(|c| format!("`{c}`")))
                            .or_else(|| alt["enum"].as_array().map(|e| values_list(e, ", ")))
                            .unwrap_or_else(|| type_of(alt));
                        let _ = writeln!(
                            out,
                            "- {label}{}{}",
                            alt["$ref"]
                                .as_str()
                                .map(|_| String::new())
                                .unwrap_or_default(),
                            alt["description"]
                                .as_str()
                                .map(|d| format!(": {}", one_line(d)))
                                .unwrap_or_default()
                        );
                        if alt["properties"].as_object().is_some_and(|p| p.len() > 1) {
                            out.push('\n');
                            fields(&mut out, alt);
                        }
                    }
                    out.push('\n');
                }
            }
        }
    }
    out
}
