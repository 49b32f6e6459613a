//! A reward of your own, written in Rust: `hone` plus `reward: { custom: [short_answer] }` in
//! GRPO and PPO stages.
//!
//!     cargo run --release --example custom_reward -- run RECIPE
//!
//! Register it on a registry of the built-in kinds and hand that registry to hone's command
//! line. Recipes name it under `reward.custom`; it is scored and logged on its own
//! (`rewards/short_answer/mean`), weighted by `weights.short_answer`, and its `version` is part
//! of the action key of every stage that uses it: change the version when the scores change.

use hone::spec::{Answer, Reward};

/// 1 for an answer of at most `max_words` words that is not empty, less the longer it gets:
/// `max_words / words` beyond the limit.
pub struct ShortAnswer {
    pub max_words: usize,
}

impl Reward for ShortAnswer {
    fn name(&self) -> &'static str {
        "short_answer"
    }

    fn version(&self) -> &'static str {
        "1"
    }

    fn scores(&self, answers: &[Answer<'_>]) -> anyhow::Result<Vec<f64>> {
        Ok(answers
            .iter()
            .map(|a| match a.response.split_whitespace().count() {
                0 => 0.0,
                n if n <= self.max_words => 1.0,
                n => self.max_words as f64 / n as f64,
            })
            .collect())
    }
}

#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    let mut kinds = hone::stages::registry();
    if let Err(e) = kinds.register_reward(ShortAnswer { max_words: 6 }) {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    hone::cli::main_with(&kinds)
}
