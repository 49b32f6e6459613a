//! Headline metrics: each kind declares a `#[derive(Serialize)]` struct of what it measured,
//! and [`record`] turns it into the manifest's `metrics` map, which the lockfile, `hone show`,
//! `hone status` and the report read by the same names. Measured numbers are [`Rounded`], so
//! every metric is rounded in one place; counts stay integers. The parts every trainer shares
//! ([`Training`], [`Forgetting`]) are flattened into a kind's struct.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::train::trainer::Summary;

/// A measured number as manifests, lockfiles, `hone show` and the report record it: 4
/// decimals (a non-finite number is recorded as `null`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rounded(pub f64);

impl Rounded {
    pub fn get(self) -> f64 {
        round4(self.0)
    }
}

impl Serialize for Rounded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.get())
    }
}

impl From<f64> for Rounded {
    fn from(x: f64) -> Rounded {
        Rounded(x)
    }
}

/// 4 decimals: enough to compare runs, few enough that a rerun on another machine's libm
/// records the same figure.
pub fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// What every training stage records: its optimizer steps and, when it had validation data,
/// the final gap between validation and training loss (the overfitting figure).
#[derive(Debug, Serialize)]
pub struct Training {
    pub steps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_val_gap: Option<Rounded>,
}

impl Training {
    pub fn of(summary: &Summary) -> Training {
        Training {
            steps: summary.steps,
            train_val_gap: summary
                .final_eval
                .map(|val| Rounded(val - summary.last_loss)),
        }
    }

    /// The steps alone, for objectives whose validation loss is not comparable to the
    /// training loss (classification reports accuracy instead).
    pub fn steps(summary: &Summary) -> Training {
        Training {
            steps: summary.steps,
            train_val_gap: None,
        }
    }
}

/// The training loss at the first and the last step, for objectives where it reads directly
/// (next-token and masked-token prediction).
#[derive(Debug, Serialize)]
pub struct TrainLoss {
    pub train_loss_first: Rounded,
    pub train_loss_last: Rounded,
}

impl TrainLoss {
    pub fn of(summary: &Summary) -> TrainLoss {
        TrainLoss {
            train_loss_first: Rounded(summary.first_loss),
            train_loss_last: Rounded(summary.last_loss),
        }
    }
}

/// Perplexity on the forgetting probe before and after training.
#[derive(Debug, Serialize)]
pub struct Forgetting {
    pub probe_ppl_before: Rounded,
    pub probe_ppl_after: Rounded,
}

/// Serialises a kind's metrics struct into the manifest's map. Metrics structs serialise to
/// objects with string keys; anything else (a bug in a kind) records no metrics rather than
/// failing a stage that trained.
pub fn record<M: Serialize>(metrics: &M) -> Map<String, Value> {
    match serde_json::to_value(metrics) {
        Ok(Value::Object(map)) => map,
        other => {
            debug_assert!(false, "metrics must serialise to an object: {other:?}");
            Map::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Serialize)]
    struct Example {
        #[serde(flatten)]
        training: Training,
        accuracy_after: Option<Rounded>,
        #[serde(skip_serializing_if = "Option::is_none")]
        forgetting: Option<Forgetting>,
        #[serde(flatten)]
        forgetting_flat: Option<Forgetting>,
    }

    #[test]
    fn records_rounded_numbers_under_flat_names() {
        let m = record(&Example {
            training: Training {
                steps: 3,
                train_val_gap: Some(Rounded(0.123_456)),
            },
            accuracy_after: Some(Rounded(f64::NAN)),
            forgetting: None,
            forgetting_flat: Some(Forgetting {
                probe_ppl_before: Rounded(10.000_04),
                probe_ppl_after: Rounded(12.345_67),
            }),
        });
        assert_eq!(
            Value::Object(m),
            json!({
                "steps": 3,
                "train_val_gap": 0.1235,
                "accuracy_after": null,
                "probe_ppl_before": 10.0,
                "probe_ppl_after": 12.3457,
            })
        );
    }

    #[test]
    fn a_gap_only_with_validation() {
        let s = Summary {
            steps: 5,
            first_loss: 2.0,
            last_loss: 1.0,
            ..Default::default()
        };
        assert_eq!(record(&Training::of(&s)), record(&json!({ "steps": 5 })));
        let s = Summary {
            final_eval: Some(1.5),
            ..s
        };
        assert_eq!(Training::of(&s).train_val_gap, Some(Rounded(0.5)));
        assert_eq!(Training::steps(&s).train_val_gap, None);
    }
}
