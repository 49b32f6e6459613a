//! Training: the loop every training stage shares, its schedule, clipping and optimizer
//! settings, and the losses.

pub mod checkpoint;
pub mod clip;
pub mod loss;
pub mod loss_scale;
pub mod objectives;
pub mod optim;
pub mod preference;
pub mod rl;
pub mod schedule;
pub mod trainer;
