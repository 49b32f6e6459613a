//! Whether each stage is cached, and if not, why: the diff between what its action key hashes
//! now and what it hashed when it last ran (found through the lockfile).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::dag::{Dag, EdgeKind};
use super::key::{action_key, material};
use crate::backend::BackendKind;
use crate::recipe::Recipe;
use crate::spec::settings::Input;
use crate::store::hash::HashCache;
use crate::store::lockfile::{LockedStage, Lockfile};
use crate::store::{Manifest, Store};

/// Why a stage will run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    NeverRun,
    Forced,
    ConfigChanged {
        key: String,
        old: String,
        new: String,
    },
    InputChanged {
        input: String,
    },
    UpstreamChanged {
        stage: String,
    },
    /// An upstream stage will rerun; this one reruns only if that changes its output.
    WaitsFor {
        stage: String,
    },
    SeedChanged {
        old: String,
        new: String,
    },
    BackendChanged {
        old: String,
        new: String,
    },
    /// The cache format changed: this hone computes some artifact differently.
    FormatChanged {
        old: String,
        new: String,
    },
    /// The lockfile names an action the store no longer has.
    NotInStore,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverRun => write!(f, "never run"),
            Reason::Forced => write!(f, "forced (--force)"),
            Reason::ConfigChanged { key, old, new } => {
                write!(f, "config changed: {key} {old} -> {new}")
            }
            Reason::InputChanged { input } => write!(f, "input {input} changed"),
            Reason::UpstreamChanged { stage } => write!(f, "upstream {stage} produced new output"),
            Reason::WaitsFor { stage } => write!(
                f,
                "upstream {stage} reruns first (this stage reruns only if that changes its output)"
            ),
            Reason::SeedChanged { old, new } => write!(f, "seed changed: {old} -> {new}"),
            Reason::BackendChanged { old, new } => write!(f, "backend changed: {old} -> {new}"),
            Reason::FormatChanged { old, new } => {
                write!(f, "cache format changed: {old} -> {new}")
            }
            Reason::NotInStore => write!(
                f,
                "in the lockfile but not in the store (was the store cleared?)"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Cached,
    Stale,
    /// Depends on a stage that will rerun: stale or cached once that one's output is known.
    Waiting,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    pub stage: String,
    pub kind: String,
    pub state: State,
    /// The action key (predicted from the lockfile while `Waiting`).
    pub action: Option<String>,
    pub reasons: Vec<Reason>,
    pub selected: bool,
    /// `hone status`: why the lockfile's entry for this stage differs from what a run would
    /// record (what makes `run --locked` fail); absent when it matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockfile_drift: Option<String>,
    /// Not cached here, but the remote cache has this action.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_remote: bool,
    /// The bytes a run downloads for it from the remote cache; absent for a stage a run leaves
    /// there (nothing that runs here reads its files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_bytes: Option<u64>,
    /// The Slurm job of the last `run --executor slurm`, while the stage is not cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
}

/// A stage's Slurm job as `hone status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    /// Slurm's state (PENDING, RUNNING, FAILED, CANCELLED, ...).
    pub state: String,
    pub reason: String,
    /// In words: `queued (waits for the jobs it reads from)`, `cancelled (a job it depends on
    /// failed)`, ...
    pub description: String,
    pub log: std::path::PathBuf,
}

/// What is known of an upstream stage's output while evaluating downstream.
#[derive(Debug, Clone)]
pub enum Known {
    /// Cached or just produced: its manifest.
    Done(Box<Manifest>),
    /// Will rerun; the lockfile says what it produced last time.
    Predicted(LockedStage),
    /// Will rerun, nothing recorded.
    Unknown,
}

impl Known {
    fn digest(&self, output: Option<&str>) -> Option<String> {
        match (self, output) {
            (Known::Done(m), None) => Some(m.artifact_digest()),
            (Known::Done(m), Some(o)) => m.outputs.get(o).map(|e| e.digest.clone()),
            (Known::Predicted(l), None) => Some(l.artifact.clone()),
            (Known::Predicted(l), Some(o)) => l.outputs.get(o).cloned(),
            (Known::Unknown, _) => None,
        }
    }
}

/// The action of one stage, ready to look up or run.
#[derive(Debug, Clone)]
pub struct Action {
    pub key: String,
    pub material: Value,
    pub input_labels: BTreeMap<String, String>,
    /// Whether some input digest is a prediction (an upstream has not rerun yet).
    pub predicted: bool,
}

/// Computes action keys and statuses; shared by `plan`/`status` and `run`.
pub struct Evaluator<'a> {
    pub recipe: &'a Recipe,
    pub dag: &'a Dag,
    pub store: &'a Store,
    pub lockfile: Option<Lockfile>,
    pub hashes: HashCache,
    pub backend: BackendKind,
}

impl<'a> Evaluator<'a> {
    pub fn new(
        recipe: &'a Recipe,
        dag: &'a Dag,
        store: &'a Store,
        backend: BackendKind,
        rehash: bool,
    ) -> Result<Self> {
        let lockfile = Lockfile::read(&recipe.lockfile_path())?;
        Ok(Evaluator {
            recipe,
            dag,
            store,
            lockfile,
            hashes: store.hash_cache(rehash),
            backend,
        })
    }

    pub fn locked(&self, stage: &str) -> Option<&LockedStage> {
        self.lockfile.as_ref().and_then(|l| l.stages.get(stage))
    }

    /// The action of stage `i`, or `None` if an upstream digest is unknown.
    pub fn action(&mut self, i: usize, known: &BTreeMap<usize, Known>) -> Result<Option<Action>> {
        let stage = &self.recipe.stages[i];
        let mut digests = BTreeMap::new();
        let mut labels = BTreeMap::new();
        let mut predicted = false;
        for (rel, input) in stage.spec.inputs() {
            match input {
                Input::Source(src) => {
                    let d = self.hashes.digest(&src.resolved).with_context(|| {
                        format!("cannot read input {} of stage {}", src.label(), stage.name)
                    })?;
                    digests.insert(rel.clone(), d);
                    labels.insert(rel, src.label());
                }
                Input::Stage(r) => {
                    let up = self
                        .recipe
                        .stages
                        .iter()
                        .position(|s| s.name == r.stage())
                        .expect("validated reference");
                    let k = known.get(&up).unwrap_or(&Known::Unknown);
                    predicted |= matches!(k, Known::Predicted(_));
                    let Some(d) = k.digest(r.output()) else {
                        return Ok(None);
                    };
                    digests.insert(rel.clone(), d);
                    labels.insert(rel, format!("stage {}", r.from));
                }
            }
        }
        // Settings that name a file (a verifier's script) key it by content.
        for (rel, text) in stage.spec.argument_files() {
            let path = self.recipe.dir().join(&text);
            if path.is_file() {
                let d = self.hashes.digest(&path).with_context(|| {
                    format!("cannot read {text} (`{rel}` of stage {})", stage.name)
                })?;
                digests.insert(rel.clone(), d);
                labels.insert(rel, format!("file {text}"));
            }
        }
        // Files a setting's file names (a benchmark's data) key the stage by content too.
        let referenced = stage
            .spec
            .referenced_files(self.recipe.dir())
            .map_err(|p| anyhow::anyhow!("stage {}: `{}`: {}", stage.name, p.key, p.message))?;
        for (rel, path) in referenced {
            let d = self.hashes.digest(&path).with_context(|| {
                format!(
                    "cannot read {} (`{rel}` of stage {})",
                    path.display(),
                    stage.name
                )
            })?;
            let shown = path.strip_prefix(self.recipe.dir()).unwrap_or(&path);
            digests.insert(rel.clone(), d);
            labels.insert(rel, format!("file {}", shown.display()));
        }
        let mut against = Vec::new();
        for (up, edge) in self.dag.incoming(i) {
            if *edge == EdgeKind::LeakageCheck {
                let k = known.get(&up).unwrap_or(&Known::Unknown);
                predicted |= matches!(k, Known::Predicted(_));
                let Some(d) = k.digest(None) else {
                    return Ok(None);
                };
                against.push(d);
                labels.insert(
                    format!("checked_against.{}", self.recipe.stages[up].name),
                    format!("eval dataset {}", self.recipe.stages[up].name),
                );
            }
        }
        let material = material(
            stage,
            self.recipe.header.seed,
            self.backend,
            &digests,
            &against,
        );
        Ok(Some(Action {
            key: action_key(&material),
            material,
            input_labels: labels,
            predicted,
        }))
    }

    /// The selected stages whose action key now differs from the one the lockfile records,
    /// each with why: what `run --locked` refuses, and what `status` reports under the stages.
    pub fn lockfile_drift(&self, statuses: &[StageStatus]) -> Vec<(String, String)> {
        let mut drift = Vec::new();
        for s in statuses.iter().filter(|s| s.selected) {
            let locked = self.locked(&s.stage);
            if matches!((locked, &s.action), (Some(l), Some(a)) if &l.action == a) {
                continue;
            }
            // "waits for upstream" is not a change; without an earlier run in this store the
            // diff is unknown, but the key still differs from the lockfile's.
            let why: Vec<String> = s
                .reasons
                .iter()
                .filter(|r| !matches!(r, Reason::WaitsFor { .. }))
                .map(ToString::to_string)
                .collect();
            // A stage that is cached under its new key (an experiment that ran before) has no
            // reasons of its own: the two recorded runs, where this store has both, say what
            // changed.
            let why = match why.is_empty() {
                true => self.recorded_difference(locked, s.action.as_deref()),
                false => why,
            };
            let why = match (locked, why.is_empty()) {
                (None, _) => "not in the lockfile".to_owned(),
                (Some(_), true) => "its action key differs from the lockfile's (config, inputs or cache format changed; `hone status` against the store that wrote the lockfile shows which)".to_owned(),
                (Some(_), false) => why.join("; "),
            };
            drift.push((s.stage.clone(), why));
        }
        drift
    }

    /// What differs between the lockfile's run of a stage and the run recorded under
    /// `action`, where the store holds both manifests; nothing otherwise.
    fn recorded_difference(
        &self,
        locked: Option<&LockedStage>,
        action: Option<&str>,
    ) -> Vec<String> {
        let manifest = |key: &str| self.store.manifest(key).ok().flatten();
        let (Some(old), Some(new)) = (
            locked.and_then(|l| manifest(&l.action)),
            action.and_then(manifest),
        ) else {
            return Vec::new();
        };
        diff_materials(&old.material, (&new.material, &new.input_labels))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Status of every stage, in run order, without running anything.
    pub fn statuses(
        &mut self,
        selected: &std::collections::BTreeSet<usize>,
        force: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<StageStatus>> {
        let mut known: BTreeMap<usize, Known> = BTreeMap::new();
        let mut out = Vec::new();
        for &i in &self.dag.order.clone() {
            let stage = &self.recipe.stages[i];
            let action = self.action(i, &known)?;
            let forced = selected.contains(&i) && force(&stage.name);
            let waiting: Vec<String> = self
                .dag
                .upstream(i)
                .into_iter()
                .filter(|u| !matches!(known.get(u), Some(Known::Done(_))))
                .map(|u| self.recipe.stages[u].name.clone())
                .collect();
            let cached_manifest = match &action {
                Some(a) if !a.predicted && !forced => self.store.manifest(&a.key)?,
                _ => None,
            };
            let (state, reasons) = if let Some(m) = cached_manifest {
                known.insert(i, Known::Done(Box::new(m)));
                (State::Cached, Vec::new())
            } else {
                let mut reasons = self.reasons(&stage.name, action.as_ref())?;
                if forced {
                    reasons.insert(0, Reason::Forced);
                }
                // A stage with no recorded run will run whatever its upstream produces: "never
                // run" says more than "maybe, once upstream reruns".
                let state = if waiting.is_empty() || reasons == [Reason::NeverRun] {
                    State::Stale
                } else {
                    State::Waiting
                };
                if state == State::Waiting {
                    // Only changes of this stage's own settings and files are reasons of its own.
                    reasons.retain(|r| !matches!(r, Reason::UpstreamChanged { .. }));
                    if reasons == [Reason::NeverRun] || reasons == [Reason::NotInStore] {
                        reasons.clear();
                    }
                    reasons.extend(
                        waiting
                            .iter()
                            .map(|s| Reason::WaitsFor { stage: s.clone() }),
                    );
                }
                let prediction = self
                    .locked(&stage.name)
                    .cloned()
                    .map_or(Known::Unknown, Known::Predicted);
                known.insert(i, prediction);
                (state, reasons)
            };
            out.push(StageStatus {
                stage: stage.name.clone(),
                kind: stage.spec.kind_name().to_string(),
                state,
                action: action.map(|a| a.key),
                reasons,
                selected: selected.contains(&i),
                lockfile_drift: None,
                on_remote: false,
                pull_bytes: None,
                job: None,
            });
        }
        Ok(out)
    }

    /// Why `stage` is not cached under `action`: the diff against its last recorded run.
    pub fn reasons(&self, stage: &str, action: Option<&Action>) -> Result<Vec<Reason>> {
        let Some(locked) = self.locked(stage) else {
            return Ok(vec![Reason::NeverRun]);
        };
        let Some(old) = self.store.manifest(&locked.action)? else {
            return Ok(vec![Reason::NotInStore]);
        };
        let Some(action) = action else {
            return Ok(Vec::new());
        };
        if action.key == locked.action {
            // Same key, yet not cached (e.g. removed by gc after the lockfile was written).
            return Ok(vec![Reason::NotInStore]);
        }
        Ok(diff(&old, action))
    }
}

fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(unset)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// Reasons from the difference between an old manifest's material and a new action's.
fn diff(old: &Manifest, new: &Action) -> Vec<Reason> {
    diff_materials(&old.material, (&new.material, &new.input_labels))
}

/// Reasons from the difference between two actions' materials, `new` with its input labels.
fn diff_materials(o: &Value, (n, new_labels): (&Value, &BTreeMap<String, String>)) -> Vec<Reason> {
    let mut reasons = Vec::new();
    for (field, make) in [
        (
            "seed",
            (|old, new| Reason::SeedChanged { old, new }) as fn(String, String) -> Reason,
        ),
        ("backend", |old, new| Reason::BackendChanged { old, new }),
        ("format", |old, new| Reason::FormatChanged { old, new }),
    ] {
        if o.get(field) != n.get(field) {
            reasons.push(make(show(o.get(field)), show(n.get(field))));
        }
    }
    let mut changes = Vec::new();
    diff_config(o.get("config"), n.get("config"), "", &mut changes);
    for (key, old_v, new_v) in changes {
        let input_label = |labels: &BTreeMap<String, String>| labels.get(&key).cloned();
        match (old_v.and_then(input_digest), new_v.and_then(input_digest)) {
            (Some(_), Some(_)) => {
                let label = input_label(new_labels).unwrap_or(key.clone());
                reasons.push(match label.strip_prefix("stage ") {
                    Some(up) => Reason::UpstreamChanged {
                        stage: up.to_owned(),
                    },
                    None => Reason::InputChanged { input: label },
                });
            }
            _ => reasons.push(Reason::ConfigChanged {
                key,
                old: show(old_v),
                new: show(new_v),
            }),
        }
    }
    if o.get("checked_against") != n.get("checked_against") {
        reasons.push(Reason::UpstreamChanged {
            stage: "eval datasets (leakage check)".into(),
        });
    }
    reasons
}

fn input_digest(v: &Value) -> Option<&str> {
    let obj = v.as_object()?;
    if obj.len() == 1 {
        obj.get("input")?.as_str()
    } else {
        None
    }
}

fn diff_config<'v>(
    o: Option<&'v Value>,
    n: Option<&'v Value>,
    path: &str,
    out: &mut Vec<(String, Option<&'v Value>, Option<&'v Value>)>,
) {
    if o == n {
        return;
    }
    let is_input = |v: Option<&Value>| v.and_then(input_digest).is_some();
    match (o, n) {
        (Some(Value::Object(a)), Some(Value::Object(b))) if !is_input(o) && !is_input(n) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                diff_config(a.get(k), b.get(k), &p, out);
            }
        }
        _ => out.push((path.to_owned(), o, n)),
    }
}
