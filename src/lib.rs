//! modelgate: a model-serving traffic gateway.
//!
//! Rooms, each with one job (see `DESIGN.md`):
//! - [`config`] — `routes.yaml` → validated domain types, every error with its place;
//! - [`cluster`] — fleet mode: leader lease, status and windows shared through etcd;
//! - [`backend`] — ONNX models on dedicated worker threads, upstream servers through a pooled client;
//! - [`protocol`] — Open Inference Protocol v2 JSON ↔ tensors, error bodies;
//! - [`quality`] — reference profiles, input validation and drift of live inputs;
//! - [`routing`] — the immutable routing table, published with `ArcSwap`;
//! - [`server`] — the listener, request handling, graceful shutdown;
//! - [`telemetry`] — per-variant windows, Prometheus metrics, logs;
//! - [`tls`] — rustls listener configs with certificate reload, mTLS, upstream roots.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod protocol;
pub mod quality;
pub mod registry;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use backend::runtime::LIBRARY_FILE as ORT_LIBRARY_FILE;
