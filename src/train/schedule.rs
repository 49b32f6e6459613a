//! Learning-rate schedules, computed as transformers' `get_*_schedule_with_warmup` compute
//! them: `step` counts optimizer steps already taken (the first step uses `factor(0)`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warmup, then constant.
    Constant,
    /// Linear warmup, then linear decay to zero at the last step.
    Linear,
    /// Linear warmup, then half a cosine down to zero.
    #[default]
    Cosine,
}

/// The multiplier of the peak learning rate at optimizer step `step` of `total`.
pub fn factor(schedule: Schedule, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_transformers_schedules() {
        // warmup 2 of 10 steps: 0, 0.5, then decay over 8 steps.
        assert_eq!(factor(Schedule::Linear, 0, 10, 2), 0.0);
        assert_eq!(factor(Schedule::Linear, 1, 10, 2), 0.5);
        assert_eq!(factor(Schedule::Linear, 2, 10, 2), 1.0);
        assert!((factor(Schedule::Linear, 6, 10, 2) - 0.5).abs() < 1e-12);
        assert_eq!(factor(Schedule::Linear, 10, 10, 2), 0.0);
        assert!((factor(Schedule::Cosine, 6, 10, 2) - 0.5).abs() < 1e-12);
        assert!((factor(Schedule::Cosine, 4, 10, 2) - 0.8535533906).abs() < 1e-9);
        assert_eq!(factor(Schedule::Constant, 9, 10, 2), 1.0);
        // No warmup: the first step runs at the peak.
        assert_eq!(factor(Schedule::Cosine, 0, 10, 0), 1.0);
    }
}
