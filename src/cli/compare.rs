//! `hone compare A B ...`: results side by side. Each item is a recipe (the results its
//! lockfile records) or a run of one (`RECIPE@RUN`: a run's `--name` or its id from `hone
//! runs`, e.g. an experiment with `--set`). Stages with the same result in every item are
//! named once; for each stage whose result differs, every metric is a row with a column per
//! item. `--html` writes the same table with each differing training stage's loss curves
//! overlaid.

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::args::Globals;
use super::report::{Curve, Series};
use crate::spec::Registry;
use crate::store::Store;
use crate::store::lockfile::Lockfile;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Recipes, or runs of one as RECIPE@RUN (a run's --name, or its id from `hone runs`).
    #[arg(num_args = 2.., required = true, value_name = "RECIPE[@RUN]")]
    pub items: Vec<String>,
    /// Also write an HTML page with the table and overlaid loss curves.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Globals, args: &CompareArgs) -> Result<ExitCode> {
    let c = compare(&args.items, g.store, g.kinds)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", render(&c));
    }
    if let Some(out) = &args.html {
        super::report::write(&html(&c), out)?;
        println!("wrote {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// One column of the comparison.
struct Item {
    label: String,
    /// Stage names in the recipe's order, each with the action that produced its result.
    stages: Vec<(String, String)>,
    store: Store,
}

/// The comparison, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Comparison {
    pub items: Vec<String>,
    /// Stages with one result in every item.
    pub same: Vec<String>,
    /// Stages whose results differ, with their metrics: `metric -> value per item`.
    pub differing: Vec<DifferingStage>,
}

#[derive(Debug, Serialize)]
pub struct DifferingStage {
    pub stage: String,
    pub kind: String,
    pub metrics: Vec<(String, Vec<Option<Value>>)>,
    /// Per item, the training loss curve and validation points (for `--html`).
    #[serde(skip)]
    curves: Vec<(Curve, Curve)>,
}

/// Resolves `args` (recipes or `RECIPE@RUN`) against `store` (the global `--store`).
pub fn compare(args: &[String], store: Option<&Path>, kinds: &Registry) -> Result<Comparison> {
    if args.len() < 2 {
        bail!("give at least two things to compare: recipes, or runs as RECIPE@RUN");
    }
    let items: Vec<Item> = args
        .iter()
        .map(|a| resolve(a, store, kinds))
        .collect::<Result<_>>()?;
    let mut order: Vec<String> = Vec::new();
    for it in &items {
        for (s, _) in &it.stages {
            if !order.contains(s) {
                order.push(s.clone());
            }
        }
    }
    let mut same = Vec::new();
    let mut differing = Vec::new();
    for stage in order {
        let actions: Vec<Option<&String>> = items
            .iter()
            .map(|it| it.stages.iter().find(|(s, _)| *s == stage).map(|(_, a)| a))
            .collect();
        if actions.iter().all(|a| a.is_some() && *a == actions[0]) {
            same.push(stage);
            continue;
        }
        let manifests: Vec<Option<crate::store::Manifest>> = items
            .iter()
            .zip(&actions)
            .map(|(it, a)| a.and_then(|a| it.store.manifest(a).ok().flatten()))
            .collect();
        let kind = manifests
            .iter()
            .flatten()
            .map(|m| m.kind.clone())
            .next()
            .unwrap_or_default();
        let mut names: Vec<String> = Vec::new();
        for m in manifests.iter().flatten() {
            for k in m.metrics.keys() {
                if !names.contains(k) {
                    names.push(k.clone());
                }
            }
        }
        let metrics = names
            .into_iter()
            .map(|k| {
                let values = manifests
                    .iter()
                    .map(|m| m.as_ref().and_then(|m| m.metrics.get(&k).cloned()))
                    .collect();
                (k, values)
            })
            .collect();
        let curves = items
            .iter()
            .zip(&actions)
            .map(|(it, a)| match a {
                Some(a) => super::report::curves(&it.store, &stage, a),
                None => (Vec::new(), Vec::new()),
            })
            .collect();
        differing.push(DifferingStage {
            stage,
            kind,
            metrics,
            curves,
        });
    }
    Ok(Comparison {
        items: items.into_iter().map(|i| i.label).collect(),
        same,
        differing,
    })
}

fn resolve(arg: &str, store: Option<&Path>, kinds: &Registry) -> Result<Item> {
    let (path, run) = match arg.rsplit_once('@') {
        Some((p, r)) if Path::new(p).is_file() => (PathBuf::from(p), Some(r)),
        _ => (PathBuf::from(arg), None),
    };
    if !path.is_file() {
        bail!(
            "{arg}: no such recipe; give a recipe file, or RECIPE@RUN for one of its runs (`hone runs RECIPE` lists them)"
        );
    }
    let recipe = crate::recipe::load(&path, &[], kinds)?;
    let root = Store::location(store, Some(&recipe.path));
    let st = Store::open_existing(&root)?;
    let order: Vec<&str> = recipe.stages.iter().map(|s| s.name.as_str()).collect();
    let in_order = |mut stages: Vec<(String, String)>| {
        stages.sort_by_key(|(s, _)| order.iter().position(|o| o == s).unwrap_or(usize::MAX));
        stages
    };
    match run {
        None => {
            let lock = Lockfile::read(&recipe.lockfile_path())?.with_context(|| {
                format!(
                    "{} has no lockfile yet: run it first (`hone run {}`)",
                    path.display(),
                    path.display()
                )
            })?;
            let stages = lock
                .stages
                .into_iter()
                .map(|(s, l)| (s, l.action))
                .collect();
            Ok(Item {
                label: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| arg.to_owned()),
                stages: in_order(stages),
                store: st,
            })
        }
        Some(sel) => {
            let rows = super::runs::list(&root, &recipe.header.name)?;
            // The newest run by that name, else the run with that id.
            let row = rows
                .iter()
                .rev()
                .find(|r| r.info.name.as_deref() == Some(sel))
                .or_else(|| rows.iter().find(|r| r.id == sel))
                .with_context(|| {
                    let names: Vec<&str> = rows
                        .iter()
                        .map(|r| r.info.name.as_deref().unwrap_or(r.id.as_str()))
                        .collect();
                    format!(
                        "{} has no run named `{sel}`{}",
                        path.display(),
                        crate::diag::did_you_mean(sel, names.iter().copied()).map_or_else(
                            || format!(" (runs: {})", names.join(", ")),
                            |d| format!(" ({d})")
                        )
                    )
                })?;
            Ok(Item {
                label: sel.to_owned(),
                stages: in_order(run_actions(&row.dir.join("metrics.jsonl"))),
                store: st,
            })
        }
    }
}

/// Each stage of a run with the action that gave its result (ran or found cached), from the
/// run's `done` records.
fn run_actions(metrics: &Path) -> Vec<(String, String)> {
    let Ok(file) = std::fs::File::open(metrics) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v["event"] != "done" {
            continue;
        }
        if let (Some(s), Some(a)) = (v["stage"].as_str(), v["action"].as_str()) {
            out.retain(|(x, _)| x != s);
            out.push((s.to_owned(), a.to_owned()));
        }
    }
    out
}

fn cell(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(v) if v.is_f64() => format!("{:.4}", v.as_f64().unwrap_or(f64::NAN)),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The comparison as aligned text.
pub fn render(c: &Comparison) -> String {
    let mut out = String::new();
    if c.differing.is_empty() {
        let _ = writeln!(
            out,
            "every stage has the same result in {}",
            c.items.join(", ")
        );
        return out;
    }
    let name_w = c
        .differing
        .iter()
        .flat_map(|d| d.metrics.iter().map(|(k, _)| k.len() + 2))
        .chain(c.differing.iter().map(|d| d.stage.len() + d.kind.len() + 3))
        .max()
        .unwrap_or(8);
    let widths: Vec<usize> = c.items.iter().map(|i| i.len().max(9)).collect();
    let _ = write!(out, "{:name_w$}", "");
    for (i, w) in c.items.iter().zip(&widths) {
        let _ = write!(out, "  {i:>w$}");
    }
    out.push('\n');
    for d in &c.differing {
        let _ = writeln!(out, "{} ({})", d.stage, d.kind);
        for (k, values) in &d.metrics {
            let _ = write!(out, "{:name_w$}", format!("  {k}"));
            for (v, w) in values.iter().zip(&widths) {
                let _ = write!(out, "  {:>w$}", cell(v));
            }
            out.push('\n');
        }
    }
    if !c.same.is_empty() {
        let _ = writeln!(out, "same result in all: {}", c.same.join(", "));
    }
    out
}

/// The comparison as a self-contained HTML page: the table, and each differing training
/// stage's loss curves overlaid (a colour per item).
pub fn html(c: &Comparison) -> String {
    use super::report::esc;
    let mut h = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>hone compare</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>",
    );
    let _ = write!(
        h,
        "<h1>{}</h1><table id=\"comparison\"><tr><th></th>",
        esc(&c.items.join(" vs "))
    );
    for i in &c.items {
        let _ = write!(h, "<th>{}</th>", esc(i));
    }
    h.push_str("</tr>");
    for d in &c.differing {
        let _ = write!(
            h,
            "<tr><th colspan=\"{}\">{} ({})</th></tr>",
            c.items.len() + 1,
            esc(&d.stage),
            esc(&d.kind)
        );
        for (k, values) in &d.metrics {
            let _ = write!(h, "<tr><td>{}</td>", esc(k));
            for v in values {
                let _ = write!(h, "<td>{}</td>", esc(&cell(v)));
            }
            h.push_str("</tr>");
        }
    }
    h.push_str("</table>");
    if !c.same.is_empty() {
        let _ = write!(h, "<p>Same result in all: {}</p>", esc(&c.same.join(", ")));
    }
    for d in &c.differing {
        if d.curves.iter().all(|(t, v)| t.is_empty() && v.is_empty()) {
            continue;
        }
        let series: Vec<Series> = c
            .items
            .iter()
            .zip(&d.curves)
            .map(|(i, (t, v))| Series {
                name: i,
                train: t,
                val: v,
            })
            .collect();
        let _ = write!(
            h,
            "<figure>{}<figcaption>{} ({}): training loss (lines), validation loss (dots)</figcaption></figure>",
            super::report::chart_series(&series),
            esc(&d.stage),
            esc(&d.kind)
        );
    }
    h.push_str("</body></html>");
    h
}
