//! What the recipe language, the planner and the stage kinds share, below all three: the stage
//! contract ([`kind`]: the `Kind` trait, `StageSpec`, input slots, problems, data roles), the
//! [`registry`] of kinds, what a running stage gets ([`context`]) and the settings types
//! several kinds read ([`settings`]). It names only the libraries under it (data, store,
//! model, train, ...), so `recipe` and `stages` can each use it without using each other.

pub mod context;
pub mod kind;
pub mod registry;
pub mod rewards;
pub mod settings;

pub use kind::{
    DATA_INPUT, DataRole, EncodedExample, InputSlot, Kind, Place, Problem, Publish, SpecError,
    StageResult, StageSpec, TemplateOf,
};
pub use registry::{Builtin, RegisterError, Registry};
pub use rewards::{Answer, Reward};
