//! From a recipe file to a typed [`Recipe`]: read, merge `extends`, apply `--set`, interpolate
//! `${vars}`, merge `defaults`, then deserialize each stage by its `kind`. Every failure becomes
//! a [`Diagnostic`] pointing at the file, line and column that caused it.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::source_map::{SourceMap, join};
use super::types::{RecipeFile, Resources};
use crate::diag::{Diagnostic, Diagnostics, Location, did_you_mean};
use crate::spec::settings::Input;
use crate::spec::{Registry, SpecError, StageSpec};
use crate::yaml::MAX_NESTING;

/// A loaded, typed recipe (not yet checked across stages: see `plan::validate`).
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe file as given on the command line.
    pub path: PathBuf,
    /// Header fields (`stages` is empty here: see [`Recipe::stages`]).
    pub header: RecipeFile,
    /// Stages in file order.
    pub stages: Vec<Stage>,
    /// The recipe after extends, overrides, vars and defaults: what actually runs.
    pub resolved: Value,
    pub sources: SourceMap,
    /// Stages that failed to parse, with their errors (one entry a problem, a stage's entries
    /// next to each other); `validate` reports them together with the checks across stages,
    /// so one pass shows every problem.
    pub broken: Vec<(String, crate::diag::Diagnostic)>,
    /// The `--set` overrides applied, as given (`stages.dpo.beta=0.3`): a recipe with any is an
    /// experiment, which leaves the lockfile and exports alone unless asked.
    pub overrides: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub spec: StageSpec,
    /// What its Slurm job asks for (`resources:`); not part of the action key.
    pub resources: Resources,
}

impl Recipe {
    /// The directory of the recipe file: relative paths in it (exports, TensorBoard logs, a
    /// verifier's files) start there.
    pub fn dir(&self) -> &std::path::Path {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."))
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
    /// Names of all stages, including those that failed to parse (once each).
    pub fn stage_names(&self) -> impl Iterator<Item = &str> {
        let broken = self.broken.iter().enumerate();
        self.stages.iter().map(|s| s.name.as_str()).chain(
            // A broken stage's problems follow each other: name it at its first.
            broken
                .filter(|(i, (n, _))| *i == 0 || self.broken[i - 1].0 != *n)
                .map(|(_, (n, _))| n.as_str()),
        )
    }
    /// The lockfile beside the recipe: `quickstart.yaml` -> `quickstart.lock`.
    /// `r.yaml` -> `r.lock`. A recipe already named `*.lock` gets `*.lock.lock`, never itself.
    pub fn lockfile_path(&self) -> PathBuf {
        if self.path.extension().is_some_and(|e| e == "lock") {
            let mut name = self.path.as_os_str().to_owned();
            name.push(".lock");
            return PathBuf::from(name);
        }
        self.path.with_extension("lock")
    }
    /// Where the key at `path` (dotted) was written.
    pub fn key_location(&self, path: &str) -> Option<Location> {
        self.sources.key(path)
    }
    pub fn value_location(&self, path: &str) -> Option<Location> {
        self.sources.value(path)
    }
}

/// Loads `path`, applying `overrides` (`a.b.c=value`, YAML-typed) on top.
/// The largest recipe file hone reads. Recipes are short; this bounds what a mistaken path
/// (`/dev/zero`, a dataset) costs.
pub const MAX_RECIPE_BYTES: u64 = 1 << 20;
/// How deep `extends` may chain, and how many files one recipe may read through it.
pub const MAX_EXTENDS_DEPTH: usize = 16;
pub const MAX_RECIPE_FILES: usize = 64;
/// How much text and structure `${var}` substitution may produce in all, so variables that
/// repeat each other cannot grow a small recipe exponentially.
pub const MAX_EXPANSION: usize = 1 << 20;

/// Each stage is typed by the kind `kinds` has under its `kind:` (`stages::registry()` for the
/// built-ins).
pub fn load(path: &Path, overrides: &[String], kinds: &Registry) -> Result<Recipe, Diagnostics> {
    let (mut root, mut sources) = load_merged(path, &mut Vec::new(), &mut 0)?;
    apply_overrides(&mut root, &mut sources, overrides)?;
    interpolate_vars(&mut root, &sources)?;
    apply_defaults(&mut root, &mut sources, kinds)?;
    let (header, stages, broken) = parse_typed(&root, &sources, kinds)?;
    let mut recipe = Recipe {
        path: path.to_path_buf(),
        header,
        stages,
        resolved: root,
        sources,
        broken,
        overrides: overrides.to_vec(),
    };
    resolve_source_paths(&mut recipe);
    Ok(recipe)
}

/// The text of a recipe file: a regular file of at most [`MAX_RECIPE_BYTES`].
fn read_recipe_text(path: &Path) -> Result<String, Diagnostic> {
    use std::io::Read;
    let cannot = |e: std::io::Error| {
        Diagnostic::new(format!("cannot read recipe {}: {e}", path.display()))
            .help("check the path; recipe paths are relative to the working directory")
    };
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err(
            Diagnostic::new(format!("recipe {} is not a regular file", path.display()))
                .help("a recipe is a YAML file"),
        );
    }
    let too_big = || {
        Diagnostic::new(format!(
            "recipe {} is larger than {} KiB, the most hone reads",
            path.display(),
            MAX_RECIPE_BYTES / 1024
        ))
        .help("a recipe names its data by path (`source: { path: ... }`) instead of holding it")
    };
    if meta.len() > MAX_RECIPE_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_RECIPE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_RECIPE_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        Diagnostic::new(format!(
            "recipe {} is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

fn read_yaml(path: &Path) -> Result<(Value, SourceMap), Diagnostics> {
    let text = read_recipe_text(path)?;
    // The YAML parser's time grows with the square of flow nesting (`[[[[...]]]]`), and it
    // refuses more than 128 levels anyway: found first, in one pass, nothing is parsed.
    if let Some((line, col)) = crate::yaml::too_deep(&text, MAX_NESTING) {
        return Err(Diagnostic::new(format!(
            "the recipe nests `[` and `{{` deeper than {MAX_NESTING} levels"
        ))
        .at(Some(Location::file(path, line, col)))
        .help("a recipe is a few levels deep: stages, their settings, lists of inputs")
        .into());
    }
    let value: Value = serde_yaml::from_str(&text).map_err(|e| {
        let loc = e
            .location()
            .map(|l| Location::file(path, l.line(), l.column()));
        let message = strip_position(&e.to_string());
        let d = Diagnostic::new(format!("invalid YAML: {message}")).at(loc);
        match yaml_help(&message, &text, e.location().map(|l| l.line())) {
            Some(help) => d.help(help),
            None => d,
        }
    })?;
    match value {
        Value::Mapping(_) => Ok((value, SourceMap::build(&text, path))),
        Value::Null => Err(
            Diagnostic::new(format!("recipe {} is empty", path.display()))
                .at(Some(Location::file(path, 1, 1)))
                .help("a recipe needs at least `version: 1`, `name:` and `stages:`")
                .into(),
        ),
        _ => Err(Diagnostic::new(
            "a recipe must be a mapping of keys (version, name, stages, ...)",
        )
        .at(Some(Location::file(path, 1, 1)))
        .into()),
    }
}

/// What to do about a YAML error whose own message does not say: a number too large for 64
/// bits ("invalid type: integer ... as u128"), or a key longer than YAML's 1024 characters
/// (which the parser reports as "mapping values are not allowed in this context").
fn yaml_help(message: &str, text: &str, line: Option<usize>) -> Option<String> {
    if message.contains(" as u128") || message.contains(" as i128") {
        return Some(
            "that number does not fit in 64 bits: integers in a recipe are at most 18446744073709551615 (counts are far smaller)"
                .into(),
        );
    }
    if message.contains("mapping values are not allowed") {
        let line = text.lines().nth(line?.checked_sub(1)?)?;
        let key = line.trim().split(':').next().unwrap_or_default();
        if key.chars().count() > 1024 {
            return Some(format!(
                "the key on this line is {} characters long; YAML allows at most 1024 in a key (stage names are short: letters, digits, `_` and `-`)",
                key.chars().count()
            ));
        }
    }
    None
}

/// serde_yaml appends " at line X column Y" to its messages; the location is shown separately.
fn strip_position(msg: &str) -> String {
    msg.find(" at line ").map_or(msg, |i| &msg[..i]).to_owned()
}

/// Reads `path` and everything it `extends`, deep-merged (this file wins). `chain` is the
/// path of `extends` that led here, `files` how many files were read so far.
fn load_merged(
    path: &Path,
    chain: &mut Vec<PathBuf>,
    files: &mut usize,
) -> Result<(Value, SourceMap), Diagnostics> {
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Some(i) = chain.iter().position(|p| *p == canonical) {
        let cycle: Vec<String> = chain[i..]
            .iter()
            .chain([&canonical])
            .map(|p| p.display().to_string())
            .collect();
        return Err(
            Diagnostic::new(format!("`extends` forms a cycle: {}", cycle.join(" -> ")))
                .help("a recipe cannot extend itself, directly or through its bases")
                .into(),
        );
    }
    *files += 1;
    if chain.len() > MAX_EXTENDS_DEPTH || *files > MAX_RECIPE_FILES {
        return Err(Diagnostic::new(format!(
            "`extends` reaches too far at {}: at most {MAX_EXTENDS_DEPTH} levels and {MAX_RECIPE_FILES} files in all",
            path.display()
        ))
        .help("extend a shared base once instead of through long chains or repeated lists")
        .into());
    }
    let (mut value, mut sources) = read_yaml(path)?;
    let Some(extends) = value.as_mapping_mut().and_then(|m| m.remove("extends")) else {
        return Ok((value, sources));
    };
    let bases: Vec<(String, String)> = match &extends {
        Value::String(s) => vec![("extends".into(), s.clone())],
        Value::Sequence(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok((format!("extends.{i}"), s.clone())),
                _ => Err(Diagnostic::new("`extends` entries must be paths")
                    .at(sources.value(&format!("extends.{i}")))),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(
                Diagnostic::new("`extends` must be a path or a list of paths")
                    .at(sources.value("extends"))
                    .into(),
            );
        }
    };
    chain.push(canonical);
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut merged = Value::Mapping(Mapping::new());
    let mut merged_sources = SourceMap::default();
    for (key, base) in bases {
        let base_path = dir.join(&base);
        if !base_path.exists() {
            return Err(Diagnostic::new(format!(
                "extended recipe {} not found",
                base_path.display()
            ))
            .at(sources.value(&key))
            .help("`extends` paths are relative to the recipe that names them")
            .into());
        }
        let (base_value, base_sources) =
            load_merged(&base_path, chain, files).map_err(|mut d| {
                // A base that cannot be read is located at the `extends` entry naming it.
                for diag in &mut d.0 {
                    if diag.location.is_none() {
                        diag.location = sources.value(&key);
                    }
                }
                d
            })?;
        merged = deep_merge(merged, base_value);
        merged_sources.overlay(base_sources);
    }
    chain.pop();
    value = deep_merge(merged, value);
    merged_sources.overlay(std::mem::take(&mut sources));
    Ok((value, merged_sources))
}

/// Mappings merge key by key; anything else is replaced. `null` in `over` removes the key.
pub fn deep_merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                    continue;
                }
                let merged = match b.remove(&k) {
                    Some(old) => deep_merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (_, o) => o,
    }
}

fn apply_overrides(
    root: &mut Value,
    sources: &mut SourceMap,
    overrides: &[String],
) -> Result<(), Diagnostics> {
    for (i, text) in overrides.iter().enumerate() {
        let loc = Location::Override {
            index: i + 1,
            text: text.clone(),
        };
        let Some((path, raw)) = text.split_once('=') else {
            return Err(
                Diagnostic::new(format!("`--set {text}` needs the form path=value"))
                    .at(Some(loc))
                    .help("for example --set stages.sft.train.lr=1e-4 or --set vars.lr=1e-4")
                    .into(),
            );
        };
        let path = path.trim();
        if path.is_empty() || path.split('.').any(str::is_empty) {
            return Err(Diagnostic::new(format!(
                "`--set {text}`: `{path}` is not a dotted key path"
            ))
            .at(Some(loc))
            .into());
        }
        if crate::yaml::too_deep(raw, MAX_NESTING).is_some() {
            return Err(Diagnostic::new(format!(
                "`--set {path}=...`: the value nests `[` and `{{` deeper than {MAX_NESTING} levels"
            ))
            .at(Some(loc))
            .into());
        }
        let value: Value =
            serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
        let mut node = &mut *root;
        let segments: Vec<&str> = path.split('.').collect();
        for (depth, seg) in segments.iter().enumerate() {
            if !node.is_mapping() {
                let parent = segments[..depth].join(".");
                return Err(Diagnostic::new(format!(
                    "`--set {text}`: `{parent}` is not a mapping, so it has no key `{seg}`"
                ))
                .at(Some(loc))
                .into());
            }
            let map = node.as_mapping_mut().expect("checked above");
            if depth + 1 == segments.len() {
                map.insert(Value::String((*seg).to_owned()), value.clone());
                break;
            }
            node = map
                .entry(Value::String((*seg).to_owned()))
                .or_insert_with(|| Value::Mapping(Mapping::new()));
        }
        sources.set_override(path, loc);
    }
    Ok(())
}

/// Replaces `${name}` with `vars.name`. A string that is exactly `${name}` takes the variable's
/// value with its type (number, bool, list...); inside longer text it is spliced in as text.
/// `$${` writes a literal `${`.
fn interpolate_vars(root: &mut Value, sources: &SourceMap) -> Result<(), Diagnostics> {
    let Some(map) = root.as_mapping_mut() else {
        return Ok(());
    };
    let mut vars = match map.get("vars") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => {
            return Err(
                Diagnostic::new("`vars` must be a mapping of names to values")
                    .at(sources.value("vars"))
                    .into(),
            );
        }
    };
    // Variables may use other variables; resolve them first, refusing cycles.
    let names: Vec<String> = vars
        .keys()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    let mut diags = Diagnostics::default();
    let mut budget = MAX_EXPANSION;
    for name in &names {
        let mut resolving = vec![name.clone()];
        let mut v = vars[name.as_str()].clone();
        if let Err(d) = substitute(
            &mut v,
            &vars,
            &format!("vars.{name}"),
            sources,
            &mut resolving,
            &mut budget,
        ) {
            diags.push(d);
        }
        vars.insert(Value::String(name.clone()), v);
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    map.insert(Value::String("vars".into()), Value::Mapping(vars.clone()));
    for (k, v) in map.iter_mut() {
        let Some(key) = k.as_str() else { continue };
        if key == "vars" {
            continue;
        }
        if let Err(d) = substitute(v, &vars, key, sources, &mut Vec::new(), &mut budget) {
            diags.push(d);
        }
    }
    diags.into_result(())
}

/// Replaces `${name}` in `v` with the variable's value. `budget` is what substitution may
/// still produce ([`MAX_EXPANSION`], shared by the whole recipe).
fn substitute(
    v: &mut Value,
    vars: &Mapping,
    path: &str,
    sources: &SourceMap,
    resolving: &mut Vec<String>,
    budget: &mut usize,
) -> Result<(), Diagnostic> {
    match v {
        Value::String(s) if s.contains("${") => {
            *v = expand(s, vars, path, sources, resolving, budget)?;
            Ok(())
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let at = join(path, &i.to_string());
                substitute(item, vars, &at, sources, resolving, budget)?;
            }
            Ok(())
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_owned();
                substitute(item, vars, &join(path, &key), sources, resolving, budget)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Text bytes plus one per node: what a value costs against the expansion budget.
fn value_size(v: &Value) -> usize {
    1 + match v {
        Value::String(s) => s.len(),
        Value::Sequence(items) => items.iter().map(value_size).sum(),
        Value::Mapping(m) => m.iter().map(|(k, v)| value_size(k) + value_size(v)).sum(),
        Value::Tagged(t) => value_size(&t.value),
        _ => 0,
    }
}

fn expand(
    s: &str,
    vars: &Mapping,
    path: &str,
    sources: &SourceMap,
    resolving: &mut Vec<String>,
    budget: &mut usize,
) -> Result<Value, Diagnostic> {
    let mut out = String::new();
    let mut rest = s;
    let mut whole: Option<Value> = None;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            return Err(Diagnostic::new(format!("unclosed `${{` in `{s}`"))
                .at(sources.value(path))
                .help("write `${name}`, or `$${` for a literal `${`"));
        };
        let name = rest[i + 2..i + end].trim();
        let Some(value) = vars.get(name) else {
            let known = vars.keys().filter_map(Value::as_str);
            return Err(Diagnostic::new(format!("unknown variable `{name}`"))
                .at(sources.value(path))
                .help(did_you_mean(name, known).unwrap_or_else(|| {
                    "define it under `vars:` or with --set vars.NAME=VALUE".into()
                })));
        };
        let mut value = value.clone();
        if resolving.iter().any(|r| r == name) {
            resolving.push(name.to_owned());
            return Err(Diagnostic::new(format!(
                "variables refer to each other in a cycle: {}",
                resolving.join(" -> ")
            ))
            .at(sources.value(path)));
        }
        resolving.push(name.to_owned());
        substitute(
            &mut value,
            vars,
            &format!("vars.{name}"),
            sources,
            resolving,
            budget,
        )?;
        resolving.pop();
        match budget.checked_sub(value_size(&value)) {
            Some(left) => *budget = left,
            None => {
                return Err(Diagnostic::new(format!(
                    "variables expand to more than {} KiB (at `${{{name}}}`)",
                    MAX_EXPANSION / 1024
                ))
                .at(sources.value(path))
                .help("variables that each use another several times grow exponentially; use each variable once"));
            }
        }
        let is_whole = i == 0 && end + 1 == rest.len() && out.is_empty();
        if is_whole {
            whole = Some(value);
        } else {
            match &value {
                Value::String(t) => out.push_str(t),
                Value::Number(n) => out.push_str(&n.to_string()),
                Value::Bool(b) => out.push_str(&b.to_string()),
                _ => {
                    return Err(Diagnostic::new(format!(
                        "variable `{name}` is a list or mapping and cannot be spliced into text"
                    ))
                    .at(sources.value(path))
                    .help(format!("use it as the whole value: `\"${{{name}}}\"`")));
                }
            }
        }
        rest = &rest[i + end + 1..];
    }
    if let Some(v) = whole.filter(|_| rest.is_empty()) {
        return Ok(v);
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// Merges `defaults.<kind>` under every stage of that kind.
fn apply_defaults(
    root: &mut Value,
    sources: &mut SourceMap,
    kinds: &Registry,
) -> Result<(), Diagnostics> {
    let Some(map) = root.as_mapping_mut() else {
        return Ok(());
    };
    let defaults = match map.get("defaults") {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Mapping(d)) => d.clone(),
        Some(_) => {
            return Err(
                Diagnostic::new("`defaults` must map stage kinds to settings")
                    .at(sources.value("defaults"))
                    .into(),
            );
        }
    };
    let mut diags = Diagnostics::default();
    for (k, v) in &defaults {
        let kind = k.as_str().unwrap_or("?");
        let path = join("defaults", kind);
        if !kinds.knows(kind) {
            diags.push(
                Diagnostic::new(format!("`defaults` names unknown stage kind `{kind}`"))
                    .at(sources.key(&path))
                    .help(
                        did_you_mean(kind, kinds.names())
                            .unwrap_or_else(|| format!("stage kinds: {}", kind_list(kinds))),
                    ),
            );
        } else if !v.is_mapping() {
            diags.push(
                Diagnostic::new(format!(
                    "`defaults.{kind}` must be a mapping of stage settings"
                ))
                .at(sources.value(&path)),
            );
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let Some(Value::Mapping(stages)) = map.get_mut("stages") else {
        return Ok(());
    };
    for (name, stage) in stages.iter_mut() {
        let (Some(name), Some(kind)) = (
            name.as_str(),
            stage.get("kind").and_then(Value::as_str).map(str::to_owned),
        ) else {
            continue;
        };
        if let Some(d) = defaults.get(kind.as_str()) {
            *stage = deep_merge(d.clone(), stage.clone());
            sources.copy_missing(&join("defaults", &kind), &join("stages", name));
        }
    }
    Ok(())
}

fn kind_list(kinds: &Registry) -> String {
    kinds.names().join(", ")
}

/// The typed header and stages. Errors in the header or the shape of `stages` are fatal here;
/// an error inside one stage leaves that stage out and is returned with its name.
#[allow(clippy::type_complexity)]
fn parse_typed(
    root: &Value,
    sources: &SourceMap,
    kinds: &Registry,
) -> Result<(RecipeFile, Vec<super::Stage>, Vec<(String, Diagnostic)>), Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut header_value = root.clone();
    let stages_value = header_value
        .as_mapping_mut()
        .and_then(|m| m.remove("stages"));
    let header = match serde_path_to_error::deserialize::<_, RecipeFile>(header_value.clone()) {
        Ok(h) => Some(h),
        Err(first) => {
            // Every problem of the header at once, as for a stage's settings.
            diags
                .0
                .extend(every_problem(first, header_value, "", sources, |v| {
                    serde_path_to_error::deserialize::<_, RecipeFile>(v).err()
                }));
            None
        }
    };
    let mut stages = Vec::new();
    let mut broken = Vec::new();
    match stages_value {
        None | Some(Value::Null) => diags.push(
            Diagnostic::new("the recipe has no `stages`")
                .at(sources.value(""))
                .help("add `stages:` with at least one stage, e.g. `corpus: { kind: dataset, source: { path: data.jsonl } }`"),
        ),
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let Some(name) = k.as_str() else {
                    diags.push(Diagnostic::new("stage names must be text").at(sources.value("stages")));
                    continue;
                };
                match parse_stage(name, v, sources, kinds) {
                    Ok((spec, resources)) => stages.push(super::Stage {
                        name: name.to_owned(),
                        spec,
                        resources,
                    }),
                    Err(ds) => broken.extend(ds.into_iter().map(|d| (name.to_owned(), d))),
                }
            }
        }
        Some(_) => diags.push(
            Diagnostic::new("`stages` must be a mapping from stage names to stages").at(sources.value("stages")),
        ),
    }
    match header {
        Some(h) if diags.is_empty() => Ok((h, stages, broken)),
        _ => {
            diags.0.extend(broken.into_iter().map(|(_, d)| d));
            Err(diags)
        }
    }
}

/// The most problems reported for one stage's settings (or the header).
const MAX_STAGE_PROBLEMS: usize = 32;

/// Parses one stage, reporting every problem of its settings at once: serde stops at the first
/// (an unknown key, a value of the wrong type), so the key at fault is taken out and the parse
/// retried, until it parses or a problem has no key to take out.
fn parse_stage(
    name: &str,
    mut v: Value,
    sources: &SourceMap,
    kinds: &Registry,
) -> Result<(StageSpec, Resources), Vec<Diagnostic>> {
    let path = join("stages", name);
    let kind = stage_kind(name, &mut v, sources, kinds).map_err(|d| vec![d])?;
    // `resources` (what a Slurm job asks for) is the runner's, beside every kind's settings,
    // and never part of the action key.
    let resources = match v.as_mapping_mut().and_then(|m| m.remove("resources")) {
        None => Resources::default(),
        Some(r) => serde_path_to_error::deserialize::<_, Resources>(r)
            .map_err(|e| vec![located(e, &join(&path, "resources"), sources)])?,
    };
    let first = match kinds.parse(&kind, v.clone()) {
        Err(SpecError::Settings(e)) => e,
        other => {
            return spec_result(other, &kind, name, sources, kinds)
                .map(|spec| (spec, resources))
                .map_err(|d| vec![d]);
        }
    };
    Err(every_problem(first, v, &path, sources, |settings| {
        match kinds.parse(&kind, settings) {
            Err(SpecError::Settings(next)) => Some(next),
            // Parsed without them, or failed otherwise: the problems found are the report.
            _ => None,
        }
    }))
}

/// Every problem of `value` (at `path`), starting from serde's `first`: serde stops at the
/// first (an unknown key, a value of the wrong type), so the key at fault is taken out and
/// `reparse` tried again, until it finds no more or a problem has no key to take out. In the
/// order they are written.
fn every_problem(
    first: ParseError,
    mut value: Value,
    path: &str,
    sources: &SourceMap,
    reparse: impl Fn(Value) -> Option<ParseError>,
) -> Vec<Diagnostic> {
    let mut error = first;
    let mut problems = Vec::new();
    // Keys taken out to look past their problem: a later "missing" one of them is no news.
    let mut removed: Vec<Vec<String>> = Vec::new();
    loop {
        let message = error.inner().to_string();
        let keys: Option<Vec<String>> = error
            .path()
            .iter()
            .map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                _ => None,
            })
            .collect();
        if let (Some(rest), Some(keys)) = (message.strip_prefix("missing field `"), &keys) {
            let field = rest.split('`').next().unwrap_or_default();
            let mut full = keys.clone();
            full.push(field.to_owned());
            if removed.contains(&full) {
                break;
            }
        }
        problems.push(located(error, path, sources));
        let Some(keys) = keys.filter(|k| remove_key(&mut value, k)) else {
            break;
        };
        removed.push(keys);
        if problems.len() >= MAX_STAGE_PROBLEMS {
            break;
        }
        match reparse(value.clone()) {
            Some(next) => error = next,
            None => break,
        }
    }
    problems.sort_by_key(|d| match &d.location {
        Some(crate::diag::Location::File { line, col, .. }) => (0, *line, *col),
        Some(crate::diag::Location::Override { index, .. }) => (1, *index, 0),
        None => (2, 0, 0),
    });
    problems
}

/// What serde reports about a recipe value, with the path of keys to it.
type ParseError = serde_path_to_error::Error<serde_yaml::Error>;

/// Removes the key at `keys` (a path of mapping keys) from `v`; false if there is none.
fn remove_key(v: &mut Value, keys: &[String]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut at = v;
    for k in parents {
        match at.as_mapping_mut().and_then(|m| m.get_mut(k.as_str())) {
            Some(next) => at = next,
            None => return false,
        }
    }
    at.as_mapping_mut()
        .is_some_and(|m| m.remove(last.as_str()).is_some())
}

/// Checks the stage's name and takes its `kind` out of `v`.
fn stage_kind(
    name: &str,
    v: &mut Value,
    sources: &SourceMap,
    kinds: &Registry,
) -> Result<String, Diagnostic> {
    let path = join("stages", name);
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        || name.is_empty()
    {
        return Err(Diagnostic::new(format!(
            "stage name `{name}` may use only letters, digits, `_` and `-`"
        ))
        .at(sources.key(&path))
        .help("`.` separates a stage from its output in `{ from: stage.output }`"));
    }
    let Some(map) = v.as_mapping_mut() else {
        return Err(
            Diagnostic::new(format!("stage `{name}` must be a mapping with a `kind`"))
                .at(sources.value(&path)),
        );
    };
    match map.remove("kind") {
        Some(Value::String(k)) => Ok(k),
        Some(_) => Err(Diagnostic::new("`kind` must be a stage kind name")
            .at(sources.value(&join(&path, "kind")))),
        None => Err(Diagnostic::new(format!("stage `{name}` has no `kind`"))
            .at(sources.key(&path))
            .help(format!("stage kinds: {}", kind_list(kinds)))),
    }
}

/// A stage kind's parse result as a diagnostic (settings errors without the retries).
fn spec_result(
    parsed: Result<StageSpec, SpecError>,
    kind: &str,
    name: &str,
    sources: &SourceMap,
    kinds: &Registry,
) -> Result<StageSpec, Diagnostic> {
    let path = join("stages", name);
    match parsed {
        Ok(spec) => Ok(spec),
        Err(SpecError::UnknownKind) => {
            Err(
                Diagnostic::new(format!("unknown stage kind `{kind}` in stage `{name}`"))
                    .at(sources.value(&join(&path, "kind")))
                    .help(did_you_mean(kind, kinds.names()).unwrap_or_else(|| {
                        format!(
                            "stage kinds: {}; a kind of your own exists only in a program that registers it (see examples/custom_stage)",
                            kind_list(kinds)
                        )
                    })),
            )
        }
        Err(SpecError::Settings(e)) => Err(located(e, &path, sources)),
        Err(SpecError::Serialize(e)) => Err(Diagnostic::new(format!(
            "stage kind `{kind}`: its settings do not serialize: {e}"
        ))
        .at(sources.value(&path))),
        Err(SpecError::NotAMapping) => Err(Diagnostic::new(format!(
            "stage kind `{kind}`: its Settings must serialize as a mapping of keys (a struct)"
        ))
        .at(sources.value(&path))),
        Err(SpecError::UnknownReward { key, name, known }) => {
            let at = join(&path, &key);
            Err(
                Diagnostic::new(format!("`{at}`: no reward named `{name}` is registered"))
                    .at(sources.value(&at))
                    .help(if known.is_empty() {
                        "a reward written in Rust exists only in a program that registers it (`Registry::register_reward`, see examples/custom_reward.rs); the built-in ones are `model`, `exact_match`, `length`, `regex`, `math`, `think` and `command`".to_owned()
                    } else {
                        format!("registered rewards: {}", known.join(", "))
                    }),
            )
        }
        Err(SpecError::Input { key, message }) => {
            let at = join(&path, &key);
            Err(Diagnostic::new(format!("`{at}`: {message}"))
                .at(sources.value(&at))
                .help(
                    "an input is `{ from: stage }`, `{ from: stage.output }` or `{ path: file }`",
                ))
        }
    }
}

/// Deserializes `v` (found at `path`), turning serde's error into a located diagnostic.
pub fn from_value<T: DeserializeOwned>(
    v: Value,
    path: &str,
    sources: &SourceMap,
) -> Result<T, Diagnostic> {
    serde_path_to_error::deserialize(v).map_err(|e| located(e, path, sources))
}

/// serde's error at the path of keys it names under `path`, as a located diagnostic.
fn located(
    e: serde_path_to_error::Error<serde_yaml::Error>,
    path: &str,
    sources: &SourceMap,
) -> Diagnostic {
    let mut at = path.to_owned();
    for seg in e.path().iter() {
        use serde_path_to_error::Segment;
        match seg {
            Segment::Seq { index } => at = join(&at, &index.to_string()),
            Segment::Map { key } => at = join(&at, key),
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    serde_diagnostic(&e.into_inner().to_string(), &at, sources)
}

/// Rewrites serde's wording ("unknown field", "missing field") in the recipe's terms.
fn serde_diagnostic(msg: &str, at: &str, sources: &SourceMap) -> Diagnostic {
    let msg = strip_position(msg);
    let place = if at.is_empty() {
        "the recipe".to_owned()
    } else {
        format!("`{at}`")
    };
    let ticked =
        |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(str::to_owned).collect() };
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        let names = ticked(rest);
        let field = names.first().cloned().unwrap_or_default();
        let expected: Vec<&str> = names.iter().skip(1).map(String::as_str).collect();
        // serde_path_to_error's path ends at the unknown key itself.
        let parent = if at == field {
            ""
        } else {
            at.strip_suffix(&format!(".{field}")).unwrap_or(at)
        };
        let parent_place = if parent.is_empty() {
            "the recipe".to_owned()
        } else {
            format!("`{parent}`")
        };
        let help = did_you_mean(&field, expected.iter().copied())
            .unwrap_or_else(|| format!("valid keys here: {}", expected.join(", ")));
        return Diagnostic::new(format!("unknown key `{field}` in {parent_place}"))
            .at(sources.key(at))
            .help(help);
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let field = ticked(rest).into_iter().next().unwrap_or_default();
        return Diagnostic::new(format!("missing key `{field}` in {place}")).at(sources.key(at));
    }
    if let Some(rest) = msg.strip_prefix("unknown variant ") {
        let names = ticked(rest);
        let given = names.first().cloned().unwrap_or_default();
        let expected: Vec<&str> = names.iter().skip(1).map(String::as_str).collect();
        let help = did_you_mean(&given, expected.iter().copied())
            .unwrap_or_else(|| format!("expected one of: {}", expected.join(", ")));
        return Diagnostic::new(format!("`{given}` is not a valid value for {place}"))
            .at(sources.value(at))
            .help(help);
    }
    Diagnostic::new(format!("{place}: {msg}")).at(sources.value(at))
}

/// Makes every source path absolute against the directory of the file that wrote it, so a base
/// recipe's `data/x.jsonl` means the same file whoever extends it. `--set` paths are relative
/// to the working directory.
fn resolve_source_paths(recipe: &mut Recipe) {
    let cwd = std::env::current_dir().unwrap_or_default();
    for stage in &mut recipe.stages {
        let prefix = join("stages", &stage.name);
        for (rel, input) in stage.spec.inputs_mut() {
            if let Input::Source(src) = input {
                if let Some(repo) = &src.hub {
                    // A missing model is reported by validation, located at the `hub:` key.
                    match crate::model::hub::resolve(repo, src.revision()) {
                        Ok(found) => {
                            src.resolved = found.dir;
                            src.hub_commit = Some(Ok(found.commit));
                        }
                        Err(e) => {
                            src.hub_commit =
                                Some(Err(format!("{e}\n{}", e.help(repo, src.revision()))));
                        }
                    }
                    continue;
                }
                let base = match recipe.sources.value(&join(&join(&prefix, &rel), "path")) {
                    Some(Location::File { file, .. }) => {
                        file.parent().map(Path::to_path_buf).unwrap_or_default()
                    }
                    _ => cwd.clone(),
                };
                let p = Path::new(&src.path);
                src.resolved = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    base.join(p)
                };
            }
        }
    }
}
