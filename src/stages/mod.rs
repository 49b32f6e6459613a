//! The built-in stage kinds, one file each ([`BUILTIN`] lists them), and [`registry`], the
//! registry a program starts from. What several kinds share sits beside them in modules named
//! for what they hold: [`training`] (the loop, checks, saving a policy), [`tables`] (reading
//! table inputs), [`conversation`], [`scoring`], [`guards`], [`metrics`] and the rest. The stage
//! contract itself (`Kind`, `StageSpec`, the context a stage runs in) is `spec`'s.

pub mod answer_scores;
pub mod batches;
pub mod benchmarks;
pub mod classify;
pub mod concat;
pub mod conversation;
pub mod dataset;
pub mod dpo;
pub mod evaluate;
pub mod export;
pub mod generate;
pub mod grpo;
pub mod guards;
pub mod metrics;
pub mod model_input;
pub mod ppo;
pub mod pretrain;
pub mod reward;
pub mod rollout;
pub mod scoring;
pub mod sft;
pub mod tables;
pub mod tokenizer;
pub mod training;
pub mod verifiers;

use crate::spec::{Builtin, Registry};

/// The built-in stage kinds. A new kind is a file in this directory and one line here.
pub const BUILTIN: &[Builtin] = &[
    Builtin::of::<dataset::DatasetKind>(),
    Builtin::of::<concat::ConcatKind>(),
    Builtin::of::<tokenizer::TokenizerKind>(),
    Builtin::of::<pretrain::PretrainKind>(),
    Builtin::of::<sft::SftKind>(),
    Builtin::of::<generate::GenerateKind>(),
    Builtin::of::<evaluate::EvaluateKind>(),
    Builtin::of::<reward::RewardKind>(),
    Builtin::of::<dpo::DpoKind>(),
    Builtin::of::<grpo::GrpoKind>(),
    Builtin::of::<ppo::PpoKind>(),
    Builtin::of::<export::ExportKind>(),
];

/// A registry of the built-in kinds, to which a program may add its own
/// ([`Registry::register`]) before loading recipes with it.
pub fn registry() -> Registry {
    Registry::new(BUILTIN)
}

#[cfg(test)]
mod tests {
    use super::BUILTIN;

    #[test]
    fn every_builtin_kind_has_a_plain_unique_name() {
        let names: Vec<&str> = BUILTIN.iter().map(|k| k.name()).collect();
        let plain = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        for n in &names {
            assert!(plain(n), "{n}");
        }
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{names:?}");
    }
}
