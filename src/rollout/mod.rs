//! Rollouts: where each route stands (status) and the controller through which every change to
//! the routing table goes.

pub mod analysis;
pub mod control;
pub mod engine;
pub mod events;
pub mod status;
pub mod store;
pub mod webhooks;

pub use control::{Controller, ReloadReport};
pub use status::{Phase, RouteStatus};
