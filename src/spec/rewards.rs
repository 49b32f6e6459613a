//! Rewards written in Rust: what a library user implements to score RL answers in-process
//! ([`Reward`]), registered on a [`super::Registry`] as stage kinds are and named in recipes
//! under `reward: { custom: [name] }` (GRPO and PPO). The stage calls it once per batch of
//! answers; its [`Reward::version`] is part of the action key of every stage that uses it.

/// One answer to score: the prompt as the model saw it (before the chat template), the
/// answer, and every column of the prompt's row (reference answers, test cases, ...).
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub prompt: &'a str,
    pub response: &'a str,
    pub row: &'a serde_json::Map<String, serde_json::Value>,
}

/// A reward of your own (see examples/custom_reward.rs). Scores are any finite numbers; each
/// is logged as `rewards/<name>/mean`, weighted by `weights.<name>` (1 by default) and summed
/// with the stage's other rewards.
pub trait Reward: Send + Sync {
    /// The name recipes use: lowercase letters, digits and `_`, not a built-in reward's.
    fn name(&self) -> &'static str;
    /// Change it whenever the scores change: cached results scored by an older version are
    /// then not reused.
    fn version(&self) -> &'static str;
    /// One score per answer, in order. An error stops the stage; nothing is committed.
    fn scores(&self, answers: &[Answer<'_>]) -> anyhow::Result<Vec<f64>>;
}

/// The rewards hone itself offers, which a registered reward may not be named.
pub const BUILTIN_REWARDS: [&str; 7] = [
    "model",
    "exact_match",
    "length",
    "regex",
    "math",
    "think",
    "command",
];
