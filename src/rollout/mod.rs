//! Rollouts: where each route stands (status) and the controller through which every change to
//! the routing table goes. Rooms:
//! - `control` — the lock, building and publishing tables, status for readers, one mutate path;
//! - `reload` — applying routes.yaml (revisions, recreate gaps) and watching the file;
//! - `actions` — admin actions on a rollout;
//! - `drivers` — the periodic analysis of canaries, A/B tests and blue-green previews;
//! - `analysis`, `engine` — pure statistics and the canary step state machine;
//! - `checks` — Prometheus checks of canary analyses, queried off the lock;
//! - `revision` — what identifies a rollout; `status` — where it stands and its bucket layout;
//! - `persist`, `store` — status on disk, off the async threads; `drain` — letting go of backends;
//! - `drift` — live inputs judged against their profiles, drift events;
//! - `events`, `webhooks` — decisions, logged and sent;
//! - `fleet` — what the controller asks of a fleet (etcd, in `crate::cluster`), and applying its statuses.

mod actions;
pub mod analysis;
mod checks;
pub mod control;
mod drain;
mod drift;
mod drivers;
pub mod engine;
pub mod events;
pub mod fleet;
mod persist;
mod reload;
pub mod revision;
pub mod status;
pub mod store;
pub mod webhooks;

pub use actions::Action;
pub use control::{Controller, ReloadReport};
pub use status::{Phase, RouteStatus};
