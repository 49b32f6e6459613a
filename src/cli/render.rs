//! Text output of the CLI: run summaries, statuses, the DAG (ASCII, Mermaid, DOT), `show`.

use anyhow::{Result, bail};
use serde_json::Value;

use crate::backend;
use crate::diag::did_you_mean;
use crate::plan::dag::{Dag, EdgeKind};
use crate::plan::status::{Evaluator, Reason, StageStatus, State};
use crate::recipe::Recipe;
use crate::store::{Manifest, Store};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[u])
    }
}

/// `hone status` and `hone plan`. `drift` (status only): the stages whose action key differs
/// from the lockfile's, as `Evaluator::lockfile_drift` gives them, said after the stages so
/// that status and `run --locked` never disagree unseen.
pub fn statuses(
    recipe: &Recipe,
    statuses: &[StageStatus],
    is_plan: bool,
    drift: Option<&[(String, String)]>,
) {
    let count = |s: State| {
        statuses
            .iter()
            .filter(|x| x.selected && x.state == s)
            .count()
    };
    let selected = statuses.iter().filter(|s| s.selected).count();
    let (cached, stale, waiting) = (
        count(State::Cached),
        count(State::Stale),
        count(State::Waiting),
    );
    let mut head = format!(
        "{}: {selected} stages, {cached} cached, {stale} stale",
        recipe.path.display()
    );
    if waiting > 0 {
        head.push_str(&format!(", {waiting} waiting on upstream"));
    }
    let remote = statuses
        .iter()
        .filter(|s| s.selected && s.on_remote)
        .count();
    if remote > 0 {
        head.push_str(&format!(", {remote} on the remote cache"));
    }
    println!("{head}");
    let kw = super::output::kind_width(statuses.iter().map(|s| s.kind.as_str()));
    for s in statuses {
        let job_word = s.job.as_ref().map(|j| match j.state.as_str() {
            "PENDING" => "queued",
            "RUNNING" | "COMPLETING" | "CONFIGURING" => "running",
            "CANCELLED" => "cancel",
            "COMPLETED" => "done",
            "UNKNOWN" => "stale",
            _ => "failed",
        });
        let word = match (s.selected, s.state) {
            (false, _) => "skip",
            (true, _) if job_word.is_some() => job_word.unwrap_or_default(),
            (true, _) if s.on_remote && s.pull_bytes.is_some() => "pull",
            (true, _) if s.on_remote => "remote",
            (true, State::Cached) => "cached",
            (true, State::Stale) if is_plan => "run",
            (true, State::Stale) => "stale",
            (true, State::Waiting) => "maybe",
        };
        let mut why: Vec<String> = s
            .reasons
            .iter()
            // An upstream's rerun does not matter to a stage the remote has under this key.
            .filter(|r| !(s.on_remote && matches!(r, Reason::WaitsFor { .. })))
            .map(ToString::to_string)
            .collect();
        if s.on_remote {
            why.insert(
                0,
                match s.pull_bytes {
                    Some(n) => format!("on the remote cache: a run pulls it ({})", bytes(n)),
                    None => "on the remote cache: nothing that runs here reads it, so a run leaves it there".to_owned(),
                },
            );
        }
        if let Some(j) = &s.job {
            let mut line = format!("slurm job {}: {}", j.id, j.description);
            if !matches!(j.state.as_str(), "PENDING" | "RUNNING" | "CANCELLED") {
                line.push_str(&format!("; log: {}", j.log.display()));
            }
            why.insert(0, line);
        }
        let first = why.first().cloned().unwrap_or_default();
        println!("  {word:<7} {:<20} {:<kw$} {first}", s.stage, s.kind);
        for more in why.iter().skip(1) {
            println!("  {:<7} {:<20} {:<kw$} {more}", "", "", "");
        }
    }
    let lock = recipe.lockfile_path();
    match drift {
        None => {}
        Some(_) if !lock.is_file() => println!(
            "lockfile {}: none yet (`hone run --locked` fails; `hone run` writes it)",
            lock.display()
        ),
        Some([]) => println!(
            "lockfile {}: records every stage as the recipe is now (`hone run --locked` passes)",
            lock.display()
        ),
        Some(drift) => {
            println!(
                "lockfile {}: {} of {selected} stages differ (`hone run --locked` fails; `hone run` without --set records them):",
                lock.display(),
                drift.len()
            );
            for (stage, why) in drift {
                println!("  {stage}: {why}");
            }
        }
    }
}

fn edge_label(e: &EdgeKind) -> String {
    match e {
        EdgeKind::Reads { input, output } => match output {
            Some(o) => format!("{o} -> {input}"),
            None => input.clone(),
        },
        EdgeKind::LeakageCheck => "leakage check".into(),
    }
}

pub fn dag_ascii(recipe: &Recipe, dag: &Dag) -> String {
    let mut out = String::new();
    for &i in &dag.order {
        let s = &recipe.stages[i];
        out.push_str(&format!("{} ({})\n", s.name, s.spec.kind_name()));
        let incoming = dag.incoming(i);
        for (k, (up, e)) in incoming.iter().enumerate() {
            let branch = if k + 1 == incoming.len() {
                "└──"
            } else {
                "├──"
            };
            out.push_str(&format!(
                "  {branch} {} [{}]\n",
                recipe.stages[*up].name,
                edge_label(e)
            ));
        }
    }
    out
}

pub fn dag_mermaid(recipe: &Recipe, dag: &Dag) -> String {
    let mut out = String::from("flowchart TD\n");
    for &i in &dag.order {
        let s = &recipe.stages[i];
        out.push_str(&format!(
            "  {}[\"{} ({})\"]\n",
            s.name.replace('-', "_"),
            s.name,
            s.spec.kind_name()
        ));
    }
    for &i in &dag.order {
        for (up, e) in dag.incoming(i) {
            let arrow = if *e == EdgeKind::LeakageCheck {
                "-.->"
            } else {
                "-->"
            };
            out.push_str(&format!(
                "  {} {arrow}|{}| {}\n",
                recipe.stages[up].name.replace('-', "_"),
                edge_label(e),
                recipe.stages[i].name.replace('-', "_")
            ));
        }
    }
    out
}

pub fn dag_dot(recipe: &Recipe, dag: &Dag) -> String {
    let mut out = String::from("digraph hone {\n  rankdir=LR;\n  node [shape=box];\n");
    for &i in &dag.order {
        let s = &recipe.stages[i];
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{}\"];\n",
            s.name,
            s.name,
            s.spec.kind_name()
        ));
    }
    for &i in &dag.order {
        for (up, e) in dag.incoming(i) {
            let style = if *e == EdgeKind::LeakageCheck {
                ", style=dashed"
            } else {
                ""
            };
            out.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"{style}];\n",
                recipe.stages[up].name,
                recipe.stages[i].name,
                edge_label(e)
            ));
        }
    }
    out.push_str("}\n");
    out
}

/// `hone show`: the stage's current artifact, or its last recorded one when stale.
/// The stage's result in the store: its current one, else its last recorded run (with a note
/// saying so).
pub fn stage_manifest(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    stage: &str,
) -> Result<(Manifest, Option<&'static str>)> {
    if recipe.stage(stage).is_none() {
        bail!(
            "no stage `{stage}` in {}; {}",
            recipe.path.display(),
            did_you_mean(stage, recipe.stage_names()).unwrap_or_else(|| format!(
                "stages: {}",
                recipe.stage_names().collect::<Vec<_>>().join(", ")
            ))
        );
    }
    let mut eval = Evaluator::new(
        recipe,
        dag,
        store,
        backend::resolve(recipe.header.backend),
        false,
    )?;
    let all = (0..recipe.stages.len()).collect();
    let statuses = eval.statuses(&all, &|_| false)?;
    let status = statuses
        .iter()
        .find(|s| s.stage == stage)
        .expect("every stage has a status");
    let (manifest, note) = match (status.state, &status.action) {
        (State::Cached, Some(a)) => (store.manifest(a)?, None),
        _ => match eval.locked(stage) {
            Some(l) => (
                store.manifest(&l.action)?,
                Some("stale: this is its last recorded run"),
            ),
            None => (None, None),
        },
    };
    let Some(m) = manifest else {
        bail!(
            "stage `{stage}` has not run yet: `hone run {} --until {stage}`",
            recipe.path.display()
        );
    };
    Ok((m, note))
}

pub fn show(recipe: &Recipe, dag: &Dag, store: &Store, stage: &str, json: bool) -> Result<()> {
    let (m, note) = stage_manifest(recipe, dag, store, stage)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    println!("stage    {} ({})", m.stage, m.kind);
    if let Some(n) = note {
        println!("note     {n}");
    }
    println!("action   {}", m.action);
    println!(
        "ran in   {:.2}s with hone {}",
        m.wall_time_s, m.hone_version
    );
    for (name, o) in &m.outputs {
        let size: u64 = o.files.values().map(|f| f.size).sum();
        println!(
            "output   {name:<12} {:<12} {}  {}",
            serde_json::to_value(o.artifact_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            &o.digest[..16],
            bytes(size)
        );
    }
    if !m.metrics.is_empty() {
        let kv: Vec<String> = m.metrics.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("metrics  {}", kv.join(" "));
    }
    for w in &m.warnings {
        println!("warning  {w}");
    }
    // A kind that tabulates its summary (evaluate) shows the table, not its JSON.
    let table = recipe
        .stage(stage)
        .and_then(|s| s.spec.summary_table(&m.summary));
    if let Some(t) = &table {
        print!("table\n{t}");
    }
    print_summary(&m.summary, table.is_some());
    Ok(())
}

/// How many held-out questions `hone show` prints with every model's answer.
const ANSWERS_SHOWN: usize = 5;

/// The scores `hone show` prints beside each answer: ROUGE-L and token F1 (and `math` where it
/// was scored) for an evaluate or sft stage's answers; an RL stage's answers carry their rewards
/// instead (`math`, `regex`, ...), in the order the row has them.
fn shown_scores(row: &Value) -> Vec<&str> {
    let Some(fields) = row.as_object() else {
        return Vec::new();
    };
    if fields.contains_key("rouge_l") {
        return ["rouge_l", "token_f1", "math"]
            .into_iter()
            .filter(|k| fields.contains_key(*k))
            .collect();
    }
    fields
        .iter()
        .filter(|(_, v)| v.is_number())
        .map(|(k, _)| k.as_str())
        .collect()
}

/// A stage's answers to held-out questions: each question with its reference and every
/// model's answer, with its scores ([`shown_scores`]).
fn print_answers(rows: &[Value]) {
    let text = |r: &Value, k: &str| r[k].as_str().unwrap_or_default().replace('\n', " ");
    let mut questions: Vec<(String, String)> = Vec::new();
    for r in rows {
        let q = (text(r, "prompt"), text(r, "reference"));
        if !questions.contains(&q) {
            questions.push(q);
        }
    }
    if questions.is_empty() {
        return;
    }
    let width = rows
        .iter()
        .filter_map(|r| r["model"].as_str().map(str::len))
        .max()
        .unwrap_or(5)
        .max("reference".len());
    let scores = rows.first().map(shown_scores).unwrap_or_default();
    println!("answers  ({} of each answer)", scores.join(" / "));
    for (prompt, reference) in questions.iter().take(ANSWERS_SHOWN) {
        println!("  {prompt}");
        // Each score takes 4 characters, " / " between them, then two spaces.
        let scored = (7 * scores.len()).saturating_sub(3);
        println!("    {:<width$}  {:scored$}  {reference}", "reference", "");
        for r in rows
            .iter()
            .filter(|r| text(r, "prompt") == *prompt && text(r, "reference") == *reference)
        {
            let values: Vec<String> = scores
                .iter()
                .map(|k| {
                    r[*k]
                        .as_f64()
                        .map_or(format!("{:>4}", "-"), |v| format!("{v:.2}"))
                })
                .collect();
            println!(
                "    {:<width$}  {}  {}",
                r["model"].as_str().unwrap_or("?"),
                values.join(" / "),
                text(r, "answer")
            );
        }
    }
    if questions.len() > ANSWERS_SHOWN {
        println!(
            "  ... and {} more questions (the stage's `answers` output has every one)",
            questions.len() - ANSWERS_SHOWN
        );
    }
}

fn print_summary(summary: &Value, table_shown: bool) {
    let Some(obj) = summary.as_object() else {
        return;
    };
    if let Some(cols) = obj.get("columns").and_then(Value::as_array) {
        let c: Vec<String> = cols
            .iter()
            .map(|c| {
                format!(
                    "{} ({}{})",
                    c["name"].as_str().unwrap_or("?"),
                    c["type"].as_str().unwrap_or("?"),
                    match c["nulls"].as_u64() {
                        Some(0) | None => String::new(),
                        Some(n) => format!(", {n} null"),
                    }
                )
            })
            .collect();
        println!("columns  {}", c.join(", "));
    }
    if let Some(rows) = obj.get("first_rows").and_then(Value::as_array) {
        println!("first rows:");
        for r in rows {
            let mut line = r.to_string();
            if line.chars().count() > 160 {
                line = line.chars().take(157).collect::<String>() + "...";
            }
            println!("  {line}");
        }
    }
    if let Some(rows) = obj.get("rows").and_then(Value::as_object) {
        let r: Vec<String> = rows.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("rows     {}", r.join(", "));
    }
    for o in obj
        .get("leakage")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "leakage  {} vs {}: {} exact, {} after normalising, {} near-duplicate{}",
            o["a"].as_str().unwrap_or("?"),
            o["b"].as_str().unwrap_or("?"),
            o["exact"],
            // Summaries written before near-duplicates were looked for call it `near`.
            o.get("normalized")
                .or_else(|| o.get("near"))
                .unwrap_or(&Value::Null),
            o.get("similar").and_then(Value::as_u64).unwrap_or(0),
            o["examples"]
                .as_array()
                .filter(|e| !e.is_empty())
                .map_or(String::new(), |e| format!("; e.g. {}", e[0]))
        );
    }
    if let Some(rows) = obj.get("answers").and_then(Value::as_array) {
        print_answers(rows);
    }
    for (k, v) in obj {
        if matches!(
            k.as_str(),
            "columns" | "first_rows" | "rows" | "leakage" | "answers"
        ) || (table_shown && k == "table")
        {
            continue;
        }
        println!(
            "{k:<8} {}",
            if v.is_string() {
                v.as_str().unwrap_or_default().to_owned()
            } else {
                v.to_string()
            }
        );
    }
}

/// Training examples as a stage encodes them (`hone show --examples`): each example's text with
/// the stretches the loss covers in `[[ ]]`, and its token counts.
pub fn examples(stage: &str, shown: &[crate::spec::kind::EncodedExample]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "{} training examples of `{stage}` as it encodes them; the loss covers the text in [[ ]]\n",
        shown.len()
    );
    for e in shown {
        let cut = if e.cut > 0 {
            format!(", {} cut by max_length", e.cut)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "\n--- {}: {} tokens, {} in the loss{cut}",
            e.label, e.tokens, e.target_tokens
        );
        for (text, target) in &e.pieces {
            if *target {
                let _ = write!(out, "[[{text}]]");
            } else {
                out.push_str(text);
            }
        }
        out.push('\n');
    }
    out
}

/// Per-example answers (an evaluate stage's held-out questions, or an sft stage's validation
/// answers before and after training): the first `n` questions, each with its reference, and
/// every model's answer with all its scores and, where a judge graded it, the judge's reply.
pub fn answer_examples(stage: &str, rows: &[Value], n: usize) -> String {
    use std::fmt::Write;
    let text = |r: &Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
    let mut questions: Vec<(String, String)> = Vec::new();
    for r in rows {
        let q = (text(r, "prompt"), text(r, "reference"));
        if !questions.contains(&q) {
            questions.push(q);
        }
    }
    let width = rows
        .iter()
        .filter_map(|r| r["model"].as_str().map(str::len))
        .max()
        .unwrap_or(0)
        .max("reference".len());
    let mut out = format!(
        "{} of {} questions `{stage}` answered, with each answer's scores\n",
        questions.len().min(n),
        questions.len()
    );
    let indent = " ".repeat(width + 2);
    for (i, (prompt, reference)) in questions.iter().take(n).enumerate() {
        let _ = writeln!(out, "\n--- {}. {prompt}", i + 1);
        let _ = writeln!(out, "{:<width$}  {reference}", "reference");
        for r in rows
            .iter()
            .filter(|r| text(r, "prompt") == *prompt && text(r, "reference") == *reference)
        {
            let _ = writeln!(out, "{:<width$}  {}", text(r, "model"), text(r, "answer"));
            // The answer scores in their usual order, then any other (an RL stage's rewards).
            let known = ["exact_match", "contains", "token_f1", "rouge_l", "judge"];
            let text_fields = ["model", "prompt", "reference", "answer", "judge_reply"];
            let others = r
                .as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .map(String::as_str)
                .filter(|k| !known.contains(k) && !text_fields.contains(k));
            let scores: Vec<String> = known
                .into_iter()
                .chain(others)
                .filter_map(|k| match r.get(k) {
                    Some(Value::Null) => Some(format!("{k} -")),
                    // A judged answer without a grade has no `judge` score.
                    None if k == "judge" && r.get("judge_reply").is_some() => {
                        Some(format!("{k} -"))
                    }
                    v => Some(format!("{k} {:.2}", v?.as_f64()?)),
                })
                .collect();
            let _ = writeln!(out, "{indent}{}", scores.join(" · "));
            if let Some(reply) = r.get("judge_reply").and_then(Value::as_str) {
                let parsed = if r["judge"].is_null() {
                    "no grade in it"
                } else {
                    "graded"
                };
                let _ = writeln!(out, "{indent}judge said ({parsed}): {reply:?}");
            }
        }
    }
    if questions.len() > n {
        let _ = writeln!(
            out,
            "\n... and {} more (`--examples {}` shows them; the stage's summary in `hone show --json` has every one)",
            questions.len() - n,
            questions.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_show_text_scores_or_an_rl_stage_rewards() {
        let evaluated = serde_json::json!({"model": "sft", "prompt": "p", "answer": "a",
            "exact_match": 0.0, "contains": 1.0, "token_f1": 0.5, "rouge_l": 0.4, "math": 1.0});
        assert_eq!(shown_scores(&evaluated), ["rouge_l", "token_f1", "math"]);
        let rl = serde_json::json!({"model": "after", "prompt": "p", "reference": "8",
            "answer": "a", "math": 1.0, "regex": 0.0});
        assert_eq!(shown_scores(&rl), ["math", "regex"]);
    }
}
