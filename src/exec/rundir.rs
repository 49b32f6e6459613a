//! A directory per run under `<store>/runs/`: the resolved recipe, a metrics JSONL stream and a
//! summary, so what ran and with which settings can be read back later.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::Result;

use super::{Outcome, RunReport};
use crate::recipe::Recipe;
use crate::store::{Manifest, Store};

/// What a run was (`run.json` in its directory): which recipe, under which name, with which
/// overrides; `hone runs` lists runs from it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    /// The recipe's `name:`.
    pub recipe: String,
    /// The recipe file as given on the command line.
    pub recipe_path: PathBuf,
    pub name: Option<String>,
    /// `--set` overrides, as given.
    pub overrides: Vec<String>,
    pub started_unix_s: u64,
    /// Whether the run recorded itself in the recipe's lockfile (and published exports).
    pub lockfile_updated: bool,
}

/// The file of [`RunInfo`] in a run directory.
pub const RUN_INFO: &str = "run.json";

pub struct RunDir {
    path: PathBuf,
    metrics: File,
}

impl RunDir {
    pub fn create(store: &Store, recipe: &Recipe, opts: &super::RunOptions) -> Result<RunDir> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}-{}-{}",
            utc_stamp(now.as_secs()),
            // A file name: plain characters, and short whatever the recipe says.
            recipe
                .header
                .name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                })
                .take(64)
                .collect::<String>(),
            std::process::id()
        );
        let path = store.root().join("runs").join(name);
        std::fs::create_dir_all(&path)?;
        std::fs::write(
            path.join("recipe.resolved.yaml"),
            serde_yaml::to_string(&recipe.resolved)?,
        )?;
        let info = RunInfo {
            recipe: recipe.header.name.clone(),
            recipe_path: recipe.path.clone(),
            name: opts.name.clone(),
            overrides: recipe.overrides.clone(),
            started_unix_s: now.as_secs(),
            lockfile_updated: !opts.no_lockfile && !opts.locked,
        };
        std::fs::write(path.join(RUN_INFO), serde_json::to_vec_pretty(&info)?)?;
        let metrics = File::create(path.join("metrics.jsonl"))?;
        if let Ok(log) = File::create(path.join("log.txt")) {
            log_to_file(log);
        }
        Ok(RunDir { path, metrics })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run's name: its directory's (`<UTC time>-<recipe>-<pid>`).
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    }

    /// Appends one metrics record for `stage`.
    pub fn log_metrics(
        &mut self,
        stage: &str,
        metrics: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        let mut rec = serde_json::Map::new();
        rec.insert("stage".into(), stage.into());
        rec.extend(metrics.clone());
        writeln!(self.metrics, "{}", serde_json::Value::Object(rec))?;
        Ok(())
    }

    pub fn stage_done(&mut self, stage: &str, outcome: Outcome, m: &Manifest) -> Result<()> {
        let rec = serde_json::json!({ "stage": stage, "event": "done", "outcome": outcome, "action": m.action, "artifact": m.artifact_digest() });
        writeln!(self.metrics, "{rec}")?;
        Ok(())
    }

    pub fn finish(&mut self, report: &RunReport) -> Result<()> {
        self.metrics.flush()?;
        std::fs::write(
            self.path.join("summary.json"),
            serde_json::to_vec_pretty(report)?,
        )?;
        Ok(())
    }
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC), without a date library.
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

static RUN_LOG: OnceLock<Mutex<Option<File>>> = OnceLock::new();

/// Sends the info-level log to `file` from now on.
pub fn log_to_file(file: File) {
    if let Ok(mut slot) = RUN_LOG.get_or_init(|| Mutex::new(None)).lock() {
        *slot = Some(file);
    }
}

pub struct RunLogWriter;

impl Write for RunLogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match RUN_LOG.get().and_then(|m| m.lock().ok()) {
            Some(mut slot) => match slot.as_mut() {
                Some(f) => f.write(buf),
                None => Ok(buf.len()),
            },
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the CLI's tracing subscriber sends its info-level copy: the current run's `log.txt`.
pub struct RunLog;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RunLog {
    type Writer = RunLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RunLogWriter
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_stamp_matches_known_dates() {
        assert_eq!(super::utc_stamp(0), "19700101T000000Z");
        assert_eq!(super::utc_stamp(1_795_690_097), "20261126T104817Z");
    }
}
