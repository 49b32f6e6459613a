//! Training: losses now; the shared training loop arrives with the training stages.

pub mod loss;
pub mod optim;
