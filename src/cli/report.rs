//! `hone report`: one self-contained HTML page for a recipe: the DAG with each stage's status,
//! a table of stages (cache state, wall time, headline metrics), each training stage's loss
//! curves (SVG, from the run that produced the artifact), the evaluate tables, and every
//! pitfall warning. No scripts, no external files: it opens anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use super::args::{Globals, RecipeArgs};
use crate::backend;
use crate::plan::dag::{Dag, EdgeKind};
use crate::plan::status::{Evaluator, StageStatus, State};
use crate::recipe::Recipe;
use crate::store::{Manifest, Store};

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Where to write it (default: <recipe>.report.html beside the recipe).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(g: &Globals, args: &ReportArgs) -> Result<ExitCode> {
    let (recipe, dag) = args.recipe.load(g.kinds)?;
    let root = Store::location(g.store, Some(&recipe.path));
    let store = Store::open_existing(&root)?;
    let backend = backend::resolve(recipe.header.backend);
    let mut eval = Evaluator::new(&recipe, &dag, &store, backend, false)?;
    let all: std::collections::BTreeSet<usize> = (0..recipe.stages.len()).collect();
    let statuses = eval.statuses(&all, &|_| false)?;
    let html = render(&recipe, &dag, &store, &statuses)?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| recipe.path.with_extension("report.html"));
    write(&html, &out)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A stage's answers (evaluate's held-out questions, sft's validation answers before and after
/// training): a row per question and model, with the scores and the judge's reply.
fn answers_table(html: &mut String, stage: &str, rows: &[Value]) {
    if rows.is_empty() {
        return;
    }
    // A judge whose replies held no grade still wrote them: those are what to read then.
    let judged = rows
        .iter()
        .any(|r| r.get("judge").is_some() || r.get("judge_reply").is_some());
    let _ = write!(
        html,
        "<h2>Answers: {}</h2><table class=\"answers\"><tr><th>question</th><th>reference</th><th>model</th><th>answer</th><th>exact</th><th>contains</th><th>token F1</th><th>ROUGE-L</th>{}</tr>",
        esc(stage),
        if judged {
            "<th>judge</th><th>judge's reply</th>"
        } else {
            ""
        }
    );
    let text = |r: &Value, k: &str| esc(r[k].as_str().unwrap_or_default());
    let num = |r: &Value, k: &str| r[k].as_f64().map_or("-".to_owned(), |x| format!("{x:.2}"));
    for r in rows {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            text(r, "prompt"),
            text(r, "reference"),
            text(r, "model"),
            text(r, "answer"),
            num(r, "exact_match"),
            num(r, "contains"),
            num(r, "token_f1"),
            num(r, "rouge_l"),
        );
        if judged {
            // Replace the row's end with the judge's cells.
            html.truncate(html.len() - "</tr>".len());
            let _ = write!(
                html,
                "<td>{}</td><td class=\"reply\">{}</td></tr>",
                num(r, "judge"),
                text(r, "judge_reply")
            );
        }
    }
    html.push_str("</table>");
}

/// (step, value) points of a curve.
pub(crate) type Curve = Vec<(f64, f64)>;

/// Training curves of `stage` at `action`: the step and eval records of the run in which that
/// action ran (the newest such run).
pub(crate) fn curves(store: &Store, stage: &str, action: &str) -> (Curve, Curve) {
    let Ok(entries) = std::fs::read_dir(store.root().join("runs")) else {
        return (vec![], vec![]);
    };
    let mut runs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    runs.sort();
    for run in runs.iter().rev() {
        let Ok(text) = std::fs::read_to_string(run.join("metrics.jsonl")) else {
            continue;
        };
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &Value| v["stage"] == stage)
            .collect();
        let ran_here = records
            .iter()
            .any(|r| r["event"] == "done" && r["action"] == action && r["outcome"] == "ran");
        if !ran_here {
            continue;
        }
        let pick = |event: &str, key: &str| -> Curve {
            records
                .iter()
                .filter(|r| r["event"] == event)
                .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
                .collect()
        };
        return (pick("step", "loss"), pick("eval", "val_loss"));
    }
    (vec![], vec![])
}

/// An SVG line chart of the training loss (line) and validation loss (dots).
fn chart(train: &[(f64, f64)], val: &[(f64, f64)]) -> String {
    chart_series(&[Series {
        name: "",
        train,
        val,
    }])
}

/// One run's curves in a chart: training loss and validation points, under a name.
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub train: &'a [(f64, f64)],
    pub val: &'a [(f64, f64)],
}

/// Colours of overlaid series, in order (the first is the report's own).
const SERIES_COLOURS: [&str; 6] = [
    "#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
];

/// An SVG chart of several runs' training loss (a line each) and validation loss (dots in the
/// line's colour; a single series keeps red dots), on shared axes, with a legend when the
/// series are named.
pub(crate) fn chart_series(series: &[Series<'_>]) -> String {
    let (w, h, pad) = (520.0, 180.0, 36.0);
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for Series { train, val, .. } in series {
        for &(x, y) in train.iter().chain(val.iter()) {
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !y0.is_finite() || y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| pad + (x / x1) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\"><rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>"
    );
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#999\"/>",
        h - pad,
        w - pad,
        h - pad,
        h - pad
    );
    let _ = write!(
        svg,
        "<text x=\"4\" y=\"{pad}\" font-size=\"10\">{y1:.2}</text><text x=\"4\" y=\"{}\" font-size=\"10\">{y0:.2}</text><text x=\"{}\" y=\"{}\" font-size=\"10\">step {x1:.0}</text>",
        h - pad,
        w - pad - 40.0,
        h - 8.0
    );
    for (k, Series { name, train, val }) in series.iter().enumerate() {
        let colour = SERIES_COLOURS[k % SERIES_COLOURS.len()];
        let dots = if series.len() == 1 { "#dc2626" } else { colour };
        let points: Vec<String> = train
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if !points.is_empty() {
            let _ = write!(
                svg,
                "<polyline class=\"train\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"/>",
                points.join(" ")
            );
        }
        for &(x, y) in val.iter() {
            let _ = write!(
                svg,
                "<circle class=\"val\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{dots}\"/>",
                sx(x),
                sy(y)
            );
        }
        if !name.is_empty() {
            let y = pad + 12.0 * k as f64;
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{colour}\"/><text x=\"{}\" y=\"{y}\" font-size=\"10\">{}</text>",
                w - pad - 120.0,
                y - 4.0,
                w - pad - 106.0,
                esc(name)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// The stage graph as an SVG: stages in columns by depth, coloured by status.
fn dag_svg(recipe: &Recipe, dag: &Dag, statuses: &BTreeMap<String, &StageStatus>) -> String {
    let n = recipe.stages.len();
    let mut depth = vec![0usize; n];
    for &i in &dag.order {
        for (up, _) in dag.incoming(i) {
            depth[i] = depth[i].max(depth[up] + 1);
        }
    }
    // Rows within each column: the first column in run order, each later one by the mean row
    // of its stages' inputs (one barycentre pass), which keeps most edges from crossing.
    let columns = depth.iter().max().copied().unwrap_or(0) + 1;
    let mut row = vec![0usize; n];
    let mut rows_in = vec![0usize; columns];
    for (d, count) in rows_in.iter_mut().enumerate() {
        let mut members: Vec<(f64, usize, usize)> = dag
            .order
            .iter()
            .enumerate()
            .filter(|(_, i)| depth[**i] == d)
            .map(|(k, &i)| {
                let ups: Vec<f64> = dag
                    .incoming(i)
                    .into_iter()
                    .map(|(u, _)| row[u] as f64)
                    .collect();
                let centre = if ups.is_empty() {
                    k as f64
                } else {
                    ups.iter().sum::<f64>() / ups.len() as f64
                };
                (centre, k, i)
            })
            .collect();
        members.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (r, (_, _, i)) in members.iter().enumerate() {
            row[*i] = r;
        }
        *count = members.len();
    }
    let pos: Vec<(f64, f64)> = (0..n)
        .map(|i| (20.0 + depth[i] as f64 * 170.0, 20.0 + row[i] as f64 * 60.0))
        .collect();
    let width = 20.0 + columns as f64 * 170.0;
    let height = 20.0 + rows_in.iter().max().copied().unwrap_or(1).max(1) as f64 * 60.0;
    let mut svg = format!(
        "<svg class=\"dag\" viewBox=\"0 0 {width} {height}\" style=\"width:100%;max-width:{width}px\" xmlns=\"http://www.w3.org/2000/svg\"><defs><marker id=\"arrow\" viewBox=\"0 0 8 8\" refX=\"8\" refY=\"4\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\" fill=\"#888\"/></marker></defs>"
    );
    // Edges from an output's right edge to an input's left edge, with an arrowhead.
    for &i in &dag.order {
        for (up, edge) in dag.incoming(i) {
            let (a, b) = (pos[up], pos[i]);
            let dash = if *edge == EdgeKind::LeakageCheck {
                " stroke-dasharray=\"4 3\""
            } else {
                ""
            };
            let (x1, y1, x2, y2) = (a.0 + 140.0, a.1 + 20.0, b.0 - 2.0, b.1 + 20.0);
            let _ = write!(
                svg,
                "<path class=\"edge\" d=\"M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}\" fill=\"none\" stroke=\"#888\"{dash} marker-end=\"url(#arrow)\"/>",
                x1 + 20.0,
                x2 - 20.0
            );
        }
    }
    for (i, stage) in recipe.stages.iter().enumerate() {
        let (x, y) = pos[i];
        let (fill, state) = match statuses.get(&stage.name).map(|s| s.state) {
            Some(State::Cached) => ("#dcfce7", "cached"),
            Some(State::Stale) => ("#ffedd5", "stale"),
            _ => ("#f3f4f6", "waiting"),
        };
        let _ = write!(
            svg,
            "<g class=\"stage {state}\"><rect x=\"{x}\" y=\"{y}\" width=\"140\" height=\"40\" rx=\"6\" fill=\"{fill}\" stroke=\"#555\"/><text x=\"{}\" y=\"{}\" font-size=\"12\" font-weight=\"bold\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\">{} · {state}</text></g>",
            x + 8.0,
            y + 17.0,
            esc(&stage.name),
            x + 8.0,
            y + 32.0,
            stage.spec.kind_name()
        );
    }
    svg.push_str("</svg>");
    svg
}

pub fn render(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    statuses: &[StageStatus],
) -> Result<String> {
    let by_name: BTreeMap<String, &StageStatus> =
        statuses.iter().map(|s| (s.stage.clone(), s)).collect();
    let manifests: BTreeMap<String, Manifest> = statuses
        .iter()
        .filter(|s| s.state == State::Cached)
        .filter_map(|s| {
            let m = store.manifest(s.action.as_deref()?).ok()??;
            Some((s.stage.clone(), m))
        })
        .collect();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>hone report: {name}</title><style>body{{font-family:system-ui,sans-serif;margin:2em;color:#111}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;font-size:13px}}td:not(:last-child),th{{white-space:nowrap}}th{{background:#f3f4f6}}.warn{{color:#b45309}}h2{{margin-top:1.6em}}section.curves{{display:flex;flex-wrap:wrap;gap:1em}}figure{{margin:0}}figcaption{{font-size:12px}}</style></head><body><h1>{name}</h1><p>{desc}</p>",
        name = esc(&recipe.header.name),
        desc = esc(recipe.header.description.as_deref().unwrap_or("")),
    );
    html.push_str("<h2>Stages</h2>");
    html.push_str(&dag_svg(recipe, dag, &by_name));
    html.push_str("<table id=\"stages\"><tr><th>stage</th><th>kind</th><th>status</th><th>wall time</th><th>metrics</th></tr>");
    for &i in &dag.order {
        let stage = &recipe.stages[i];
        let s = by_name.get(&stage.name);
        let state = match s.map(|s| s.state) {
            Some(State::Cached) => "cached".to_owned(),
            Some(State::Stale) => format!(
                "stale: {}",
                s.map(|s| s
                    .reasons
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "))
                    .unwrap_or_default()
            ),
            _ => "waiting for upstream".to_owned(),
        };
        let m = manifests.get(&stage.name);
        let metrics = m
            .map(|m| {
                m.metrics
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&stage.name),
            stage.spec.kind_name(),
            esc(&state),
            m.map(|m| format!("{:.2} s", m.wall_time_s))
                .unwrap_or_default(),
            esc(&metrics)
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Training curves</h2><section class=\"curves\">");
    for &i in &dag.order {
        let stage = &recipe.stages[i];
        let Some(m) = manifests.get(&stage.name) else {
            continue;
        };
        let (train, val) = curves(store, &stage.name, &m.action);
        if train.is_empty() {
            continue;
        }
        let _ = write!(
            html,
            "<figure>{}<figcaption>{} ({}): training loss (line), validation loss (dots)</figcaption></figure>",
            chart(&train, &val),
            esc(&stage.name),
            stage.spec.kind_name()
        );
    }
    html.push_str("</section>");

    for (name, m) in &manifests {
        if let Some(table) = m.summary.get("table") {
            let columns: Vec<&str> = table["columns"]
                .as_array()
                .map(|c| c.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let _ = write!(
                html,
                "<h2>Evaluation: {}</h2><table class=\"evaluation\"><tr><th>model</th>",
                esc(name)
            );
            for c in &columns {
                let _ = write!(html, "<th>{}</th>", esc(c));
            }
            html.push_str("</tr>");
            for row in table["rows"].as_array().into_iter().flatten() {
                let _ = write!(
                    html,
                    "<tr><td>{}</td>",
                    esc(row["model"].as_str().unwrap_or(""))
                );
                for v in row["values"].as_array().into_iter().flatten() {
                    let _ = write!(
                        html,
                        "<td>{}</td>",
                        v.as_f64().map_or("-".to_owned(), |x| format!("{x:.4}"))
                    );
                }
                html.push_str("</tr>");
            }
            html.push_str("</table>");
        }
        if let Some(rows) = m.summary.get("answers").and_then(Value::as_array) {
            answers_table(&mut html, name, rows);
        }
    }

    html.push_str("<h2>Pitfall warnings</h2><ul id=\"warnings\">");
    let mut any = false;
    for &i in &dag.order {
        let stage = &recipe.stages[i];
        for w in manifests
            .get(&stage.name)
            .map(|m| m.warnings.as_slice())
            .unwrap_or(&[])
        {
            any = true;
            let _ = write!(
                html,
                "<li class=\"warn\"><b>{}</b>: {}</li>",
                esc(&stage.name),
                esc(w)
            );
        }
    }
    if !any {
        html.push_str("<li>none</li>");
    }
    html.push_str("</ul></body></html>\n");
    Ok(html)
}

/// Writes the report to `out` (atomically).
pub fn write(html: &str, out: &Path) -> Result<()> {
    crate::store::write_atomic(out, html.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_replies_show_when_no_reply_held_a_grade() {
        let rows = [
            serde_json::json!({"prompt": "What does the clutch do?", "reference": "r",
            "model": "sft", "answer": "a", "exact_match": 0.0, "contains": 0.0, "token_f1": 0.0,
            "rouge_l": 0.0, "judge_reply": "the clutch <is>"}),
        ];
        let mut html = String::new();
        answers_table(&mut html, "eval", &rows);
        assert!(html.contains("judge's reply"), "{html}");
        assert!(html.contains("the clutch &lt;is&gt;"), "{html}");
    }
}
