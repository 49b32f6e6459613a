//! Deterministic train / validation / test splits. Rows are grouped (see `leakage::groups`:
//! the same normalised text, or a shared prompt or answer) and whole groups are assigned, so
//! no leak straddles two splits. The assignment depends only on the rows and the seed.

use anyhow::{Result, bail};

use crate::rng::SplitMix64;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }
}

/// Rows wanted for a split size: a fraction of `n` (at least one row), or a count.
pub fn rows_for(size: Option<f64>, n: usize) -> usize {
    match size {
        None => 0,
        Some(x) if x <= 0.0 => 0,
        Some(x) if x < 1.0 => ((x * n as f64).round() as usize).max(1),
        Some(x) => x as usize,
    }
}

/// Assigns each row to a split. `groups[i]` is row i's group key (rows with an empty key are
/// groups of their own).
pub fn assign(
    groups: &[String],
    validation: Option<f64>,
    test: Option<f64>,
    seed: u64,
) -> Result<Vec<Split>> {
    let n = groups.len();
    let (want_val, want_test) = (rows_for(validation, n), rows_for(test, n));
    if want_val + want_test >= n && want_val + want_test > 0 {
        bail!(
            "the split holds out {} rows (validation {want_val}, test {want_test}) but the dataset has only {n} rows after deduplication, leaving none to train on",
            want_val + want_test
        );
    }
    let mut group_of: HashMap<&str, usize> = HashMap::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if g.is_empty() {
            members.push(vec![i]);
            continue;
        }
        let id = *group_of.entry(g.as_str()).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[id].push(i);
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..order.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let mut out = vec![Split::Train; n];
    let (mut got_test, mut got_val) = (0, 0);
    for g in order {
        let split = if got_test < want_test {
            got_test += members[g].len();
            Split::Test
        } else if got_val < want_val {
            got_val += members[g].len();
            Split::Validation
        } else {
            break;
        };
        for &row in &members[g] {
            out[row] = split;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_are_deterministic_sized_and_seeded() {
        let keys: Vec<String> = (0..100).map(|i| format!("row {i}")).collect();
        let a = assign(&keys, Some(0.1), Some(5.0), 7).unwrap();
        assert_eq!(a, assign(&keys, Some(0.1), Some(5.0), 7).unwrap());
        assert_ne!(a, assign(&keys, Some(0.1), Some(5.0), 8).unwrap());
        assert_eq!(a.iter().filter(|s| **s == Split::Validation).count(), 10);
        assert_eq!(a.iter().filter(|s| **s == Split::Test).count(), 5);
    }

    #[test]
    fn groups_stay_together() {
        let keys: Vec<String> = (0..50).map(|i| format!("q{}", i / 2)).collect();
        for seed in 0..20 {
            let a = assign(&keys, Some(0.2), None, seed).unwrap();
            for pair in a.chunks(2) {
                assert_eq!(pair[0], pair[1]);
            }
        }
    }

    #[test]
    fn refuses_to_hold_out_everything() {
        let keys: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        assert!(assign(&keys, Some(2.0), Some(1.0), 0).is_err());
    }
}
