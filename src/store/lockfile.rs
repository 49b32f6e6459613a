//! `<recipe>.lock`: what each stage of a recipe last produced, written beside the recipe.
//! Its content is a function of the committed manifests only (no clocks), so an unchanged
//! rerun leaves it byte-for-byte the same.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Manifest;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockfile {
    pub version: u32,
    pub recipe: String,
    /// Stages by name.
    pub stages: BTreeMap<String, LockedStage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedStage {
    pub kind: String,
    pub action: String,
    /// Digest of all outputs together.
    pub artifact: String,
    pub outputs: BTreeMap<String, String>,
    pub hone_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub wall_time_s: f64,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// Inputs named by Hugging Face Hub id, each as `org/name@commit`: the commit the recipe's
    /// revision named when the stage ran (the action key holds the files' content).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hub: BTreeMap<String, String>,
}

impl LockedStage {
    /// Why `m`, a manifest of this entry's action from elsewhere (a remote cache), is not the
    /// result this entry records: other outputs, or other metrics (a manifest's metrics are
    /// its writer's word; the lockfile committed with the recipe is the reader's). `None` when
    /// it is, or when `m` is of another action (then the lockfile says nothing of it).
    pub fn contradicts(&self, m: &Manifest) -> Option<String> {
        if m.action != self.action {
            return None;
        }
        let artifact = m.artifact_digest();
        if artifact != self.artifact {
            return Some(format!(
                "its result ({}) is not the one the lockfile records ({})",
                &artifact[..16],
                &self.artifact[..16]
            ));
        }
        if m.metrics != self.metrics {
            let differ: Vec<&str> = m
                .metrics
                .keys()
                .chain(self.metrics.keys())
                .filter(|k| m.metrics.get(*k) != self.metrics.get(*k))
                .map(String::as_str)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .take(5)
                .collect();
            return Some(format!(
                "its metrics ({}) are not those the lockfile records (forged or damaged)",
                differ.join(", ")
            ));
        }
        None
    }

    pub fn from_manifest(m: &Manifest) -> LockedStage {
        LockedStage {
            kind: m.kind.clone(),
            action: m.action.clone(),
            artifact: m.artifact_digest(),
            outputs: m
                .outputs
                .iter()
                .map(|(k, o)| (k.clone(), o.digest.clone()))
                .collect(),
            hone_version: m.hone_version.clone(),
            backend: m
                .material
                .get("backend")
                .and_then(|b| b.as_str())
                .map(str::to_owned),
            wall_time_s: (m.wall_time_s * 1000.0).round() / 1000.0,
            metrics: m.metrics.clone(),
            hub: BTreeMap::new(),
        }
    }
}

const HEADER: &str = "# Written by hone: what each stage last produced. Commit it with the recipe;\n# `hone run --locked` fails where a run would change it.\n";

impl Lockfile {
    pub fn read(path: &Path) -> Result<Option<Lockfile>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                if let Some((line, _)) = crate::yaml::too_deep(&text, crate::yaml::MAX_NESTING) {
                    bail!(
                        "cannot parse lockfile {}: nested deeper than {} levels at line {line} (delete it to start afresh)",
                        path.display(),
                        crate::yaml::MAX_NESTING
                    );
                }
                let lock: Lockfile = serde_yaml::from_str(&text).with_context(|| {
                    format!(
                        "cannot parse lockfile {} (delete it to start afresh)",
                        path.display()
                    )
                })?;
                // Its keys name files in the store: a damaged or hand-edited one must not
                // reach a path.
                for (stage, s) in &lock.stages {
                    let digests = [("action", &s.action), ("artifact", &s.artifact)]
                        .into_iter()
                        .chain(s.outputs.values().map(|d| ("output", d)));
                    for (what, d) in digests {
                        if !super::is_digest(d) {
                            bail!(
                                "lockfile {}: stage `{stage}` has an invalid {what} digest `{}`; restore the lockfile from version control, or delete it to start afresh",
                                path.display(),
                                d.escape_debug()
                            );
                        }
                    }
                }
                Ok(Some(lock))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn render(&self) -> Result<String> {
        Ok(format!("{HEADER}{}", serde_yaml::to_string(self)?))
    }

    /// Writes the lockfile if its content changed. Returns whether it did.
    pub fn write(&self, path: &Path) -> Result<bool> {
        let text = self.render()?;
        if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
            return Ok(false);
        }
        super::write_atomic(path, text.as_bytes())?;
        Ok(true)
    }
}
