//! Where a stage run's metrics go besides the run directory's `metrics.jsonl` (the recipe's
//! `logging:`): TensorBoard event files ([`super::tensorboard`]) and an MLflow tracking server
//! ([`super::mlflow`]). Both get the same scalars under the same names, read here from the
//! records a stage reports as it trains.

use std::sync::Arc;

use serde_json::Value;

use super::mlflow::{RunStatus, StageRun};
use super::tensorboard::StageLog;

/// The scalars of one record of `metrics.jsonl`'s shape, at its step: a training step's values
/// as `train/<name>` (objective metrics keep the names TRL gives them, `rewards/margins`), an
/// evaluation's as `eval/loss` and `eval/ppl`. `None` for other records; values that are not
/// finite numbers are left out.
pub fn step_scalars(r: &Value) -> Option<(i64, Vec<(String, f64)>)> {
    let step = r["step"].as_i64().unwrap_or(0);
    let mut values = Vec::new();
    let mut put = |tag: String, v: &Value| {
        if let Some(x) = v.as_f64().filter(|x| x.is_finite()) {
            values.push((tag, x));
        }
    };
    match r["event"].as_str() {
        Some("step") => {
            for (k, v) in r.as_object().into_iter().flatten() {
                match k.as_str() {
                    "event" | "step" | "epoch" => {}
                    k if k.contains('/') => put(k.to_owned(), v),
                    k => put(format!("train/{k}"), v),
                }
            }
        }
        Some("eval") => {
            put("eval/loss".into(), &r["val_loss"]);
            put("eval/ppl".into(), &r["val_ppl"]);
        }
        _ => return None,
    }
    Some((step, values))
}

/// The trackers one stage run writes to.
#[derive(Default)]
pub struct StageTrackers {
    pub tensorboard: Option<Arc<StageLog>>,
    pub mlflow: Option<Arc<StageRun>>,
}

impl StageTrackers {
    /// One record as the stage reports it while it runs.
    pub fn record(&self, r: &Value) {
        let Some((step, values)) = step_scalars(r) else {
            return;
        };
        if let Some(log) = &self.tensorboard {
            log.scalars(step, &values);
        }
        if let Some(run) = &self.mlflow {
            run.scalars(step, &values);
        }
    }

    /// The stage's final metrics.
    pub fn finish(&self, metrics: &serde_json::Map<String, Value>) {
        if let Some(log) = &self.tensorboard {
            log.finish(metrics);
        }
        if let Some(run) = &self.mlflow {
            run.finish(metrics);
        }
    }

    /// The stage is committed, or stopped.
    pub fn end(&self, status: RunStatus) {
        if let Some(run) = &self.mlflow {
            run.end(status);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tensorboard.is_none() && self.mlflow.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_and_evaluations_name_their_scalars_as_tensorboard_shows_them() {
        let (step, values) = step_scalars(&json!({"event": "step", "step": 3, "epoch": 1,
            "loss": 2.5, "rewards/margins": 0.25, "grad_norm": null}))
        .unwrap();
        assert_eq!(step, 3);
        assert_eq!(
            values,
            [
                ("train/loss".to_owned(), 2.5),
                ("rewards/margins".to_owned(), 0.25)
            ]
        );
        let (_, eval) = step_scalars(&json!({"event": "eval", "step": 4, "val_loss": 1.5,
            "val_ppl": 4.48}))
        .unwrap();
        assert_eq!(eval[0], ("eval/loss".to_owned(), 1.5));
        assert!(step_scalars(&json!({"event": "sample"})).is_none());
    }
}
