//! `hone runs RECIPE`: the runs of a recipe recorded in the store (`<store>/runs/*/run.json`),
//! oldest first, with their names, overrides, what ran, and the metrics of the stages they ran:
//! where experiments (`--set`, which leave the lockfile alone) are found again.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::args::Globals;
use crate::exec::rundir::{RUN_INFO, RunInfo};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// The recipe file.
    pub recipe: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Globals, args: &RunsArgs) -> Result<ExitCode> {
    // Any run of the recipe counts, whatever it overrode: no overrides here.
    let recipe = crate::recipe::load(&args.recipe, &[], g.kinds)?;
    let root = Store::location(g.store, Some(&recipe.path));
    let rows = list(&root, &recipe.header.name)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render(&recipe.path, &root, &rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// One run as `hone runs` shows it.
#[derive(Debug, Serialize)]
pub struct RunRow {
    /// The run directory's name (`<UTC time>-<recipe>-<pid>`).
    pub id: String,
    pub dir: PathBuf,
    #[serde(flatten)]
    pub info: RunInfo,
    /// Stages that ran, were pulled from the remote cache, and were found cached (here, by
    /// another process, or left on the remote), tallied as the run's last line tallies them;
    /// `None` while running, or when it failed.
    pub ran: Option<usize>,
    pub pulled: Option<usize>,
    pub cached: Option<usize>,
    /// The stage-level metrics of each stage the run computed, in run order.
    pub metrics: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
}

/// The runs of the recipe named `recipe_name` under `store_root`, oldest first. Directories
/// that are not runs, or runs of other recipes, are passed over; a `run.json` that does not
/// parse is skipped too (it was written by another hone, or by hand).
pub fn list(store_root: &Path, recipe_name: &str) -> Result<Vec<RunRow>> {
    let runs = store_root.join("runs");
    let mut rows = Vec::new();
    let entries = match std::fs::read_dir(&runs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rows),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let dir = entry?.path();
        let Ok(text) = std::fs::read(dir.join(RUN_INFO)) else {
            continue;
        };
        let Ok(info) = serde_json::from_slice::<RunInfo>(&text) else {
            continue;
        };
        if info.recipe != recipe_name {
            continue;
        }
        let summary: Option<serde_json::Value> = std::fs::read(dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok());
        let count = |outcomes: &[&str]| {
            summary.as_ref().and_then(|s| {
                Some(
                    s["stages"]
                        .as_array()?
                        .iter()
                        .filter(|st| outcomes.iter().any(|o| st["outcome"] == *o))
                        .count(),
                )
            })
        };
        let (ran, pulled) = (count(&["ran"]), count(&["pulled"]));
        let cached = count(&["cached", "ran_elsewhere", "on_remote"]);
        rows.push(RunRow {
            id: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            metrics: stage_metrics(&dir.join("metrics.jsonl")),
            dir,
            info,
            ran,
            pulled,
            cached,
        });
    }
    rows.sort_by(|a, b| (a.info.started_unix_s, &a.id).cmp(&(b.info.started_unix_s, &b.id)));
    Ok(rows)
}

/// The stage-level records of a run's metrics stream (those without an `event`: per-step and
/// per-evaluation records have one), keyed by stage.
fn stage_metrics(path: &Path) -> Vec<(String, serde_json::Map<String, serde_json::Value>)> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(serde_json::Value::Object(mut rec)) = serde_json::from_str(&line) else {
            continue;
        };
        if rec.contains_key("event") {
            continue;
        }
        let Some(serde_json::Value::String(stage)) = rec.remove("stage") else {
            continue;
        };
        if !rec.is_empty() {
            out.push((stage, rec));
        }
    }
    out
}

/// The table `hone runs` prints.
pub fn render(recipe_path: &Path, store_root: &Path, rows: &[RunRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "no runs of {} in {} yet (`hone run` records each run there)",
            recipe_path.display(),
            store_root.display()
        );
        return out;
    }
    let _ = writeln!(
        out,
        "{} runs of {} in {}, oldest first:",
        rows.len(),
        recipe_path.display(),
        store_root.display()
    );
    for row in rows {
        let outcome = match (row.ran, row.pulled, row.cached) {
            (Some(r), Some(p), Some(c)) if p > 0 => format!("{r} ran, {p} pulled, {c} cached"),
            (Some(r), _, Some(c)) => format!("{r} ran, {c} cached"),
            _ => "unfinished".to_owned(),
        };
        let kind = if row.info.overrides.is_empty() {
            "recipe as written".to_owned()
        } else if row.info.lockfile_updated {
            "--update-lock".to_owned()
        } else {
            "experiment".to_owned()
        };
        let _ = writeln!(
            out,
            "  {}  {}  {outcome}  {kind}",
            row.id,
            row.info.name.as_deref().unwrap_or("-"),
        );
        for set in &row.info.overrides {
            let _ = writeln!(out, "      --set {set}");
        }
        for (stage, metrics) in &row.metrics {
            let values: Vec<String> = metrics
                .iter()
                .map(|(k, v)| match v.as_f64() {
                    Some(x) if v.is_f64() => format!("{k}={x:.4}"),
                    _ => format!("{k}={v}"),
                })
                .collect();
            let _ = writeln!(out, "      {stage}: {}", values.join(" "));
        }
    }
    out
}
