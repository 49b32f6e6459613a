//! `hone run --executor slurm`: the recipe is planned here, then every stale stage becomes a
//! Slurm job (`sbatch`) that runs `hone run RECIPE --only STAGE` against the same store, each
//! job waiting for the jobs of the stages it reads (`--dependency=afterok:...`,
//! `--kill-on-invalid-dep=yes`, so a failure cancels what depends on it). A final job, after
//! all of them, runs the whole recipe once more: everything is cached by then, so it only
//! writes the lockfile, the exports and the report, in one process (the stage jobs leave the
//! lockfile alone, so concurrent jobs never race on it).
//!
//! Job names carry the action key and the store (`hone-<key>-<store>`), so submitting again
//! while this user's jobs are queued or running finds them (`squeue --me`) instead of
//! duplicating them; a stage whose key waited on an upstream job is found through the last
//! submission. Cached stages are never submitted. What was submitted is kept in the store
//! (`slurm/<recipe>.json`) for `hone status` and `--wait`, which ask `squeue` and `scontrol`
//! how each job stands.
//!
//! hone grows no scheduler: Slurm decides where and when; the store (a shared directory, or a
//! local one behind the remote cache) is how jobs on different nodes see each other's results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::plan::dag::Dag;
use crate::plan::status::{StageStatus, State};
use crate::recipe::Recipe;
use crate::recipe::types::Resources;
use crate::store::{Store, hash::hash_bytes, write_atomic};

/// How the jobs are made.
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// The hone binary every job runs (the same build must be at this path on every node).
    pub hone: PathBuf,
    /// Arguments every job's `hone run` gets besides the recipe and the store (`--set`,
    /// `--backend`, `--remote`).
    pub forward: Vec<String>,
    /// Arguments only the final job's `hone run` gets: the run's selection (`--only`,
    /// `--from`, `--until`) and what it does with the lockfile (`--locked`, `--update-lock`,
    /// `--name`), so the final job finishes exactly the run that was asked for.
    pub final_args: Vec<String>,
    /// Whether a GPU backend runs the tensor stages (they then ask for a GPU by default).
    pub gpu_backend: bool,
}

/// One submitted (or found) job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// The stage it runs; empty for the final job.
    pub stage: String,
    pub id: String,
    pub name: String,
    /// Where Slurm writes its output.
    pub log: PathBuf,
    /// Found queued or running under its name, not submitted by this call.
    pub found: bool,
}

/// What one `hone run --executor slurm` submitted, kept in the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Submission {
    pub recipe: PathBuf,
    pub submitted_unix: u64,
    pub jobs: Vec<Job>,
    #[serde(rename = "final")]
    pub final_job: Job,
}

/// How a job stands, from `squeue` or `scontrol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...; UNKNOWN when Slurm has
    /// forgotten the job.
    pub state: String,
    /// Slurm's reason (`Dependency`, `DependencyNeverSatisfied`, `NonZeroExitCode`, `None`).
    pub reason: String,
}

impl JobState {
    pub fn is_done(&self) -> bool {
        !matches!(
            self.state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "SUSPENDED" | "REQUEUED"
        )
    }

    /// A person's words for it: `queued (waits for its inputs)`, `failed`, `cancelled (an
    /// upstream job failed)`, `cancelled (scancel)`.
    pub fn describe(&self) -> String {
        match (self.state.as_str(), self.reason.as_str()) {
            ("PENDING", "Dependency") => "queued (waits for the jobs it reads from)".into(),
            ("PENDING", r) if r != "None" => format!("queued ({r})"),
            ("PENDING", _) => "queued".into(),
            ("RUNNING", _) => "running".into(),
            ("COMPLETED", _) => "completed".into(),
            ("CANCELLED", "DependencyNeverSatisfied") => {
                "cancelled (a job it depends on failed)".into()
            }
            ("CANCELLED", _) => "cancelled (scancel)".into(),
            ("FAILED", _) => "failed".into(),
            ("TIMEOUT", _) => "failed (time limit)".into(),
            ("OUT_OF_MEMORY", _) => "failed (out of memory)".into(),
            ("UNKNOWN", _) => "no longer known to Slurm".into(),
            (s, _) => s.to_lowercase(),
        }
    }
}

/// Runs a Slurm command; its stdout, or an error that says what to check.
fn slurm(cmd: &str, args: &[String]) -> Result<String> {
    let out = Command::new(cmd).args(args).output().with_context(|| {
        format!("cannot run `{cmd}`: is Slurm's client installed here (slurm-client) and on PATH?")
    })?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A word for the shell: quoted unless it is plain.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Where a recipe's submission is recorded: one file per recipe path.
fn state_file(store: &Store, recipe: &Path) -> PathBuf {
    let abs = std::path::absolute(recipe).unwrap_or_else(|_| recipe.to_path_buf());
    let id = hash_bytes(abs.to_string_lossy().as_bytes());
    store
        .root()
        .join("slurm")
        .join(format!("{}.json", &id[..16]))
}

/// The last submission of `recipe` recorded in `store`.
pub fn last_submission(store: &Store, recipe: &Path) -> Option<Submission> {
    let bytes = std::fs::read(state_file(store, recipe)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// This user's jobs queued or running now, by name.
fn queued_by_name() -> Result<BTreeMap<String, String>> {
    let out = slurm(
        "squeue",
        &["--me".into(), "-h".into(), "-o".into(), "%i|%j|%T".into()],
    )?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut parts = l.trim().split('|');
            let (id, name, state) = (parts.next()?, parts.next()?, parts.next()?);
            let live = !JobState {
                state: state.to_owned(),
                reason: String::new(),
            }
            .is_done();
            (live && name.starts_with("hone-")).then(|| (name.to_owned(), id.to_owned()))
        })
        .collect())
}

/// How many devices `stage` trains on (`train.devices`), 1 for every other stage: a GPU
/// stage's default `--gpus`.
fn device_count(stage: &crate::recipe::Stage) -> u32 {
    let config = stage.spec.key_config();
    match config.get("train").and_then(|t| t.get("devices")) {
        Some(serde_json::Value::Array(list)) => list.len() as u32,
        Some(v) => v.as_u64().map_or(1, |n| n as u32),
        None => 1,
    }
    .max(1)
}

/// The `sbatch` options for a stage's resources.
fn resource_args(r: &Resources) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(g) = r.gpus.filter(|g| *g > 0) {
        args.push(format!("--gpus={g}"));
    }
    if let Some(c) = r.cpus {
        args.push(format!("--cpus-per-task={c}"));
    }
    if let Some(m) = &r.mem {
        args.push(format!("--mem={m}"));
    }
    if let Some(t) = &r.time {
        args.push(format!("--time={t}"));
    }
    if let Some(p) = &r.partition {
        args.push(format!("--partition={p}"));
    }
    args
}

/// Submits a job (or finds it queued under its name); returns its id and whether it was found.
#[allow(clippy::too_many_arguments)]
fn submit_one(
    name: &str,
    log: &Path,
    after: &[String],
    resources: &[String],
    extra: &[String],
    command: &str,
    queued: &BTreeMap<String, String>,
) -> Result<(String, bool)> {
    if let Some(id) = queued.get(name) {
        return Ok((id.clone(), true));
    }
    let mut args = vec![
        "--parsable".to_owned(),
        format!("--job-name={name}"),
        format!("--output={}", log.display()),
    ];
    if !after.is_empty() {
        args.push(format!("--dependency=afterok:{}", after.join(":")));
        args.push("--kill-on-invalid-dep=yes".into());
    }
    args.extend(resources.iter().cloned());
    args.extend(extra.iter().cloned());
    args.push(format!("--wrap={command}"));
    let out = slurm("sbatch", &args)?;
    // `--parsable` prints `id` or `id;cluster`.
    let id = out.trim().split(';').next().unwrap_or_default().to_owned();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit() || c == '_') {
        bail!("sbatch answered `{}`, not a job id", out.trim());
    }
    Ok((id, false))
}

/// Submits the stale stages of `recipe` (those of `statuses` not cached) and the final job;
/// records the submission in the store. `None` when every stage is cached (nothing to submit).
pub fn submit(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    statuses: &[StageStatus],
    opts: &SlurmOptions,
    report: &mut dyn FnMut(&str),
) -> Result<Option<Submission>> {
    let stale: BTreeMap<&str, &StageStatus> = statuses
        .iter()
        .filter(|s| s.selected && s.state != State::Cached)
        .map(|s| (s.stage.as_str(), s))
        .collect();
    if stale.is_empty() {
        return Ok(None);
    }
    let recipe_path = std::path::absolute(&recipe.path)?;
    let store_path = std::path::absolute(store.root())?;
    let logs = store_path.join("slurm").join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let queued = queued_by_name()?;
    let live: std::collections::BTreeSet<&String> = queued.values().collect();
    // The last submission's jobs still queued or running, by stage: a stage that waited on an
    // upstream job was named by that wait, and is found here once its own key is known.
    let previous = last_submission(store, &recipe.path);
    let still_live = |stage: &str| -> Option<Job> {
        let p = previous.as_ref()?;
        let job = if stage.is_empty() {
            &p.final_job
        } else {
            p.jobs.iter().find(|j| j.stage == stage)?
        };
        live.contains(&job.id).then(|| job.clone())
    };
    // Job names also carry the store: the same action for another store is another job.
    let store_tag = hash_bytes(store_path.to_string_lossy().as_bytes());
    let store_tag = &store_tag[..6];
    let executor = &recipe.header.executor;
    let hone = |extra: &[String]| -> String {
        let mut words = vec![
            opts.hone.display().to_string(),
            "run".into(),
            recipe_path.display().to_string(),
            "--store".into(),
            store_path.display().to_string(),
            // A job computes where Slurm put it, whatever the recipe's executor says.
            "--executor".into(),
            "local".into(),
        ];
        words.extend(extra.iter().cloned());
        words.extend(opts.forward.iter().cloned());
        words
            .iter()
            .map(|w| shell_word(w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut jobs: Vec<Job> = Vec::new();
    let mut ids: BTreeMap<usize, String> = BTreeMap::new();
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for &i in &dag.order {
        let stage = &recipe.stages[i];
        let Some(status) = stale.get(stage.name.as_str()) else {
            continue;
        };
        let upstream: Vec<usize> = dag
            .incoming(i)
            .into_iter()
            .map(|(u, _)| u)
            .filter(|u| ids.contains_key(u))
            .collect();
        // The action key names the job; a stage whose key waits on an upstream job is named by
        // what it will compute: its stage, its recipe, and the jobs it waits for.
        let key = match &status.action {
            Some(k) => k.clone(),
            None => hash_bytes(
                format!(
                    "{}\n{}\n{}",
                    recipe_path.display(),
                    stage.name,
                    upstream
                        .iter()
                        .map(|u| names[u].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                )
                .as_bytes(),
            ),
        };
        let name = format!("hone-{}-{store_tag}", &key[..16]);
        let log = logs.join(format!("{}-{}.out", stage.name, &key[..16]));
        let mut resources = stage.resources.over(&executor.resources);
        if resources.gpus.is_none() && opts.gpu_backend && stage.spec.uses_backend() {
            resources.gpus = Some(device_count(stage));
        }
        let after: Vec<String> = upstream.iter().map(|u| ids[u].clone()).collect();
        let command = hone(&[
            "--only".into(),
            stage.name.clone(),
            "--stage-job".into(),
            "--quiet".into(),
        ]);
        let (id, found, name, log) =
            match still_live(&stage.name).filter(|_| !queued.contains_key(&name)) {
                Some(job) => (job.id, true, job.name, job.log),
                None => {
                    let (id, found) = submit_one(
                        &name,
                        &log,
                        &after,
                        &resource_args(&resources),
                        &executor.sbatch_args,
                        &command,
                        &queued,
                    )?;
                    (id, found, name, log)
                }
            };
        report(&format!(
            "  {:<9} {:<20} job {id}{}",
            if found { "queued" } else { "submitted" },
            stage.name,
            if found {
                " (already queued or running)".to_owned()
            } else if after.is_empty() {
                String::new()
            } else {
                format!(" after {}", after.join(", "))
            }
        ));
        ids.insert(i, id.clone());
        names.insert(i, name.clone());
        jobs.push(Job {
            stage: stage.name.clone(),
            id,
            name,
            log,
            found,
        });
    }
    // The final job: the lockfile, the exports and the report, once every stage is done.
    let all: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let final_name = format!(
        "hone-final-{}",
        &hash_bytes(
            jobs.iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(",")
                .as_bytes()
        )[..10]
    );
    let final_log = logs.join(format!("{final_name}.out"));
    let report_cmd = [
        opts.hone.display().to_string(),
        "report".into(),
        recipe_path.display().to_string(),
        "--store".into(),
        store_path.display().to_string(),
    ]
    .iter()
    .map(|w| shell_word(w))
    .collect::<Vec<_>>()
    .join(" ");
    let final_command = format!("{} && {report_cmd}", hone(&opts.final_args));
    let final_resources = resource_args(&Resources {
        partition: executor.resources.partition.clone(),
        ..Resources::default()
    });
    // Every stage job was already there: so is the final job that waits on them.
    let reused = still_live("")
        .filter(|_| jobs.iter().all(|j| j.found) && !queued.contains_key(&final_name));
    let (id, found, final_name, final_log) = match reused {
        Some(job) => (job.id, true, job.name, job.log),
        None => {
            let (id, found) = submit_one(
                &final_name,
                &final_log,
                &all,
                &final_resources,
                &executor.sbatch_args,
                &final_command,
                &queued,
            )?;
            (id, found, final_name, final_log)
        }
    };
    report(&format!(
        "  {:<9} {:<20} job {id} (lockfile and report, after every stage)",
        if found { "queued" } else { "submitted" },
        "(final)"
    ));
    let submission = Submission {
        recipe: recipe_path,
        submitted_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        jobs,
        final_job: Job {
            stage: String::new(),
            id,
            name: final_name,
            log: final_log,
            found,
        },
    };
    let path = state_file(store, &recipe.path);
    write_atomic(&path, &serde_json::to_vec_pretty(&submission)?)?;
    Ok(Some(submission))
}

/// How each job stands now: `squeue` for the live ones, `scontrol` for those that ended
/// (Slurm keeps them a few minutes, `MinJobAge`), else UNKNOWN.
pub fn states(jobs: &[&Job]) -> Result<BTreeMap<String, JobState>> {
    let mut out = BTreeMap::new();
    if jobs.is_empty() {
        return Ok(out);
    }
    let listed = slurm("squeue", &["-h".into(), "-o".into(), "%i|%T|%r".into()])?;
    for line in listed.lines() {
        let mut parts = line.trim().split('|');
        if let (Some(id), Some(state), Some(reason)) = (parts.next(), parts.next(), parts.next())
            && jobs.iter().any(|j| j.id == id)
        {
            out.insert(
                id.to_owned(),
                JobState {
                    state: state.to_owned(),
                    reason: reason.to_owned(),
                },
            );
        }
    }
    for job in jobs {
        if out.contains_key(&job.id) {
            continue;
        }
        let shown = slurm(
            "scontrol",
            &["show".into(), "job".into(), "-o".into(), job.id.clone()],
        )
        .unwrap_or_default();
        let field = |name: &str| {
            shown
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        let state = field("JobState");
        out.insert(
            job.id.clone(),
            JobState {
                state: if state.is_empty() {
                    "UNKNOWN".into()
                } else {
                    state
                },
                reason: field("Reason"),
            },
        );
    }
    Ok(out)
}

/// Follows a submission until every job ended, printing each change; returns whether the
/// final job completed (the pipeline's result).
pub fn wait(submission: &Submission, poll: Duration, report: &mut dyn FnMut(&str)) -> Result<bool> {
    let all: Vec<&Job> = submission
        .jobs
        .iter()
        .chain(std::iter::once(&submission.final_job))
        .collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let now = states(&all)?;
        for job in &all {
            let Some(s) = now.get(&job.id) else { continue };
            let words = s.describe();
            if last.get(&job.id) != Some(&words) {
                let stage = if job.stage.is_empty() {
                    "(final)"
                } else {
                    &job.stage
                };
                let mut line = format!(
                    "  [{:>5.0}s] {stage:<20} job {}: {words}",
                    started.elapsed().as_secs_f64(),
                    job.id
                );
                if matches!(s.state.as_str(), "FAILED" | "TIMEOUT" | "OUT_OF_MEMORY") {
                    line.push_str(&format!("; log: {}", job.log.display()));
                }
                report(&line);
                last.insert(job.id.clone(), words);
            }
        }
        if all
            .iter()
            .all(|j| now.get(&j.id).is_some_and(JobState::is_done))
        {
            return Ok(now
                .get(&submission.final_job.id)
                .is_some_and(|s| s.state == "COMPLETED"));
        }
        std::thread::sleep(poll);
    }
}
