//! Action keys: BLAKE3 over the canonical JSON of everything that determines a stage's output.
//! Inputs enter by content digest (files by their bytes, upstream stages by what they produced),
//! never by path or time, so moving a file or rerunning an upstream stage that produces the same
//! bytes does not invalidate anything.
//!
//! hone's version is not in the key: a release that computes every artifact as the last one did
//! keeps every team's cache (local and remote) valid. What a key does hold is the cache format
//! ([`CACHE_FORMAT`]), bumped by any change to what an action produces; the shipped recipes'
//! lockfiles, checked with `run --locked` on empty stores in the tests and by hand, catch an
//! output that changed without a bump.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::backend::BackendKind;
use crate::recipe::Stage;
use crate::store::CACHE_FORMAT;

/// The revision of what `train.precision` below f32 computes, in the keys of such stages
/// only (see [`material`]).
const REDUCED_PRECISION_REVISION: u32 = 2;

/// What the action key of `stage` hashes. `inputs` maps each input's path in the stage to its
/// digest; `checked_against` holds digests of datasets the stage is checked against for leakage.
pub fn material(
    stage: &Stage,
    seed: u64,
    backend: BackendKind,
    inputs: &BTreeMap<String, String>,
    checked_against: &[String],
) -> Value {
    let mut config = stage.spec.key_config();
    // Settings that change how a stage runs but not what it produces.
    if let Some(train) = config.get_mut("train").and_then(Value::as_object_mut) {
        train.remove("checkpoint_every");
        // Which devices does not change what is computed; how many does (the micro-batches
        // of a step), and one is the same as none.
        let count = match train.remove("devices") {
            Some(Value::Array(list)) => list.len() as u64,
            Some(v) => v.as_u64().unwrap_or(1),
            None => 1,
        };
        if count > 1 {
            train.insert("devices".into(), count.into());
        }
        // `precision: f32` computes what hone always computed: the key it always had.
        // Without `precision`, a GPU backend computes in the checkpoint's dtype (which the
        // model input's digest pins): a key of its own, apart from results computed in f32
        // before that default; the CPU backend's default is f32.
        let reduced = match train.get("precision").and_then(Value::as_str) {
            Some("f32") => {
                train.remove("precision");
                false
            }
            None if backend != BackendKind::Cpu && stage.spec.uses_backend() => {
                train.insert("precision".into(), "checkpoint".into());
                true
            }
            None => false,
            Some(_) => true,
        };
        // What a reduced precision stores low changed without a cache format of its own:
        // 2 stores frozen token embedding tables and LM heads low too (1, unmarked, stored
        // only projections low). f32 keys are untouched.
        if reduced {
            train.insert(
                "precision_revision".into(),
                REDUCED_PRECISION_REVISION.into(),
            );
        }
    }
    // Files named inside a setting's file (a benchmark's data) have no setting of their
    // own: they go beside the settings.
    let mut referenced = serde_json::Map::new();
    for (rel, digest) in inputs {
        match pointer_mut(&mut config, rel) {
            Some(slot) => *slot = json!({ "input": digest }),
            None => {
                referenced.insert(rel.clone(), json!({ "input": digest }));
            }
        }
    }
    if !referenced.is_empty()
        && let Some(obj) = config.as_object_mut()
    {
        obj.insert("referenced_files".into(), referenced.into());
    }
    let mut against = checked_against.to_vec();
    against.sort();
    json!({
        "format": CACHE_FORMAT,
        "config": config,
        "seed": seed,
        "backend": stage.spec.uses_backend().then(|| backend.name()),
        "checked_against": against,
    })
}

pub use crate::store::action_key;

fn pointer_mut<'a>(v: &'a mut Value, dotted: &str) -> Option<&'a mut Value> {
    let pointer: String = dotted.split('.').map(|s| format!("/{s}")).collect();
    v.pointer_mut(&pointer)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::spec::{DATA_INPUT, InputSlot, Kind, Registry, StageResult};
    use crate::store::ArtifactType;

    /// A data-preparation kind with one input and one setting: what a key is made of, without
    /// the planner naming a real kind.
    #[derive(Default)]
    struct Prepare;

    #[derive(serde::Serialize, serde::Deserialize)]
    struct PrepareSettings {
        source: crate::spec::settings::Input,
        dedup: bool,
    }

    impl Kind for Prepare {
        type Settings = PrepareSettings;
        const NAME: &'static str = "prepare";
        const VERSION: Option<&'static str> = Some("1");
        fn input_slots(&self) -> &'static [InputSlot] {
            const SOURCE: InputSlot = InputSlot::new("source", DATA_INPUT);
            &[SOURCE]
        }
        fn outputs(&self, _: &PrepareSettings) -> Vec<(&'static str, ArtifactType)> {
            vec![("train", ArtifactType::Table)]
        }
        fn run(
            &self,
            _: &PrepareSettings,
            _: &mut crate::spec::context::StageContext,
        ) -> anyhow::Result<StageResult> {
            unreachable!("keys are computed, nothing runs")
        }
    }

    fn stage_from(source: &str, dedup: bool) -> Stage {
        let settings =
            serde_yaml::to_value(json!({ "source": { "from": source }, "dedup": dedup })).unwrap();
        let mut kinds = Registry::new(&[]);
        kinds.register(Prepare).unwrap();
        Stage {
            name: "s".into(),
            spec: kinds.parse("prepare", settings).unwrap(),
            resources: Default::default(),
        }
    }

    fn stage(dedup: bool) -> Stage {
        stage_from("raw", dedup)
    }

    #[test]
    fn key_depends_on_config_and_input_digests_not_names() {
        let inputs = BTreeMap::from([("source".to_string(), "d1".to_string())]);
        let k = action_key(&material(&stage(true), 0, BackendKind::Cpu, &inputs, &[]));
        assert_eq!(
            k,
            action_key(&material(&stage(true), 0, BackendKind::Cpu, &inputs, &[]))
        );
        assert_ne!(
            k,
            action_key(&material(&stage(false), 0, BackendKind::Cpu, &inputs, &[]))
        );
        assert_ne!(
            k,
            action_key(&material(&stage(true), 1, BackendKind::Cpu, &inputs, &[]))
        );
        let other = BTreeMap::from([("source".to_string(), "d2".to_string())]);
        assert_ne!(
            k,
            action_key(&material(&stage(true), 0, BackendKind::Cpu, &other, &[]))
        );
        // A renamed upstream with the same output digest keeps the key.
        let renamed = stage_from("raw_renamed", true);
        assert_eq!(
            k,
            action_key(&material(&renamed, 0, BackendKind::Cpu, &inputs, &[]))
        );
        // Data preparation does not depend on the tensor backend.
        assert_eq!(
            k,
            action_key(&material(&stage(true), 0, BackendKind::Wgpu, &inputs, &[]))
        );
    }
}
