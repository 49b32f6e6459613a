//! Which stages a run takes from the remote cache, decided before anything runs: every stage
//! missing from the local store whose action the remote has (its manifest checked, see
//! `store::remote`). Keys downstream of such a stage come from the remote manifest's output
//! digests, so finding them needs no download.
//!
//! A hit is pulled (its files downloaded) when this run needs them: a selected stage whose
//! result the run ends with (nothing selected reads it) or that a stage not cached here reads.
//! A hit that only feeds stages already cached here stays on the remote ("a downstream cache
//! hit does not pull upstream checkpoints"), unless a stage that runs turns out to need it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::observer::{Event, Observer};
use crate::plan::dag::Dag;
use crate::plan::status::{Evaluator, Known};
use crate::recipe::Recipe;
use crate::store::remote::Remote;
use crate::store::{Manifest, Store};

#[derive(Debug, Default)]
pub struct RemoteHits {
    /// Stage index -> the remote's checked manifest of its action.
    pub hits: BTreeMap<usize, Manifest>,
    /// The hits whose files this run downloads up front.
    pub pull: BTreeSet<usize>,
    /// Every action key looked up, found or not: a stage whose key turns out different when
    /// the run reaches it (an upstream computed here produced other bytes) is looked up again.
    pub looked_up: BTreeSet<String>,
}

/// Looks up, in run order, each stage the local store lacks. `forced` stages are never taken
/// from anywhere.
#[allow(clippy::too_many_arguments)]
pub fn find(
    recipe: &Recipe,
    dag: &Dag,
    store: &Store,
    eval: &mut Evaluator,
    selected: &BTreeSet<usize>,
    forced: &dyn Fn(&str) -> bool,
    remote: &Remote,
    observer: &mut dyn Observer,
) -> Result<RemoteHits> {
    let mut known: BTreeMap<usize, Known> = BTreeMap::new();
    let mut local = BTreeSet::new();
    let mut found = RemoteHits::default();
    for &i in &dag.order {
        let name = &recipe.stages[i].name;
        let Some(action) = eval.action(i, &known)? else {
            continue;
        };
        if forced(name) {
            continue;
        }
        if let Some(m) = store.manifest(&action.key)? {
            local.insert(i);
            known.insert(i, Known::Done(Box::new(m)));
            continue;
        }
        if remote.is_down() {
            continue;
        }
        found.looked_up.insert(action.key.clone());
        match remote.manifest(&action.key) {
            Ok(Some(m)) => {
                if let Some(why) = eval.locked(name).and_then(|l| l.contradicts(&m)) {
                    observer.event(&Event::RemoteWarning {
                        stage: Some(name),
                        message: &format!("not taken from {}: {why}; it runs here", remote.label),
                    });
                    continue;
                }
                known.insert(i, Known::Done(Box::new(m.clone())));
                found.hits.insert(i, m);
            }
            Ok(None) => {}
            Err(e) => observer.event(&Event::RemoteWarning {
                stage: Some(name),
                message: &format!("not taken from {}: {e}; it runs here", remote.label),
            }),
        }
    }
    let consumers = |i: usize| -> Vec<usize> {
        (0..recipe.stages.len())
            .filter(|&c| selected.contains(&c) && dag.incoming(c).iter().any(|(u, _)| *u == i))
            .collect()
    };
    for &i in found.hits.keys() {
        let readers = consumers(i);
        let pull = if selected.contains(&i) {
            readers.is_empty() || readers.iter().any(|c| !local.contains(c))
        } else {
            readers
                .iter()
                .any(|c| !local.contains(c) && !found.hits.contains_key(c))
        };
        if pull {
            found.pull.insert(i);
        }
    }
    Ok(found)
}
