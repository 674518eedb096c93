//! A fleet's numbers for the console: the other replicas' published windows, read the way the
//! leader reads them to judge (the assigned traffic of each replica's current analysis step).
//!
//! A replica publishes a variant's window every `cluster.publish_interval` (and only when it
//! changed, only for routes under analysis). Each publication's difference from the one before
//! is spread evenly over the time it covers, so the fleet's requests/s is smooth rather than a
//! spike once per publication, and every request is counted exactly once.

use super::{Baseline, Reading};
use crate::telemetry::window::Window;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Another replica's newest published window of a variant.
#[derive(Debug, Clone, Copy)]
pub struct PeerWindow<'a> {
    /// The replica that published it.
    pub replica: &'a str,
    /// Route name.
    pub route: &'a str,
    /// Variant name.
    pub variant: &'a str,
    /// The route's spec revision on that replica.
    pub revision: &'a str,
    /// The analysis step it counts (a new one starts from zero).
    pub epoch: u64,
    /// When it was published (ms since the epoch, the publisher's clock).
    pub published_ms: u64,
    /// Its assigned traffic in that step.
    pub window: &'a Window,
}

/// The other replicas' windows as this replica last saw them, for a console that shows the
/// fleet's numbers (implemented by the fleet's membership, `crate::cluster`).
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// Calls `f` with every other replica's newest published window.
    fn visit(&self, f: &mut dyn FnMut(PeerWindow<'_>));
    /// Replicas in the fleet now, this one included.
    fn replicas(&self) -> usize;
}

/// Peers' windows tracked at most (each keeps a latency baseline like a track's).
pub const MAX_PEER_WINDOWS: usize = super::MAX_SERIES;

/// The longest time one publication is spread over: a window that was not published for a
/// while (no traffic, so nothing changed) does not smear its next second over minutes.
const MAX_SPREAD: Duration = Duration::from_secs(10);

/// How long after its last change a peer still counts among a route's replicas.
const LIVE: Duration = Duration::from_secs(30);

/// One peer window as last read.
#[derive(Debug)]
pub(super) struct Remote {
    baseline: Baseline,
    step: (String, u64),
    published_ms: u64,
    /// The time between its last two publications, seconds.
    gap: f64,
    /// What is left to spread, and over how many more seconds.
    pending: Reading,
    pending_secs: f64,
    changed: Instant,
    /// The sample that last found it published (a window no longer published is dropped).
    visited: Instant,
}

/// Reads every peer window; returns, per (replica, route, variant), its share for a sample
/// of `secs` seconds and whether that peer is live (changed lately).
pub(super) fn gather(
    peers: &dyn Peers,
    remotes: &mut HashMap<(String, String, String), Remote>,
    secs: f64,
    now: Instant,
) -> Vec<(String, String, String, Reading, bool)> {
    peers.visit(&mut |p| {
        let key = (p.replica.to_string(), p.route.to_string(), p.variant.to_string());
        let room = remotes.len() < MAX_PEER_WINDOWS;
        match remotes.get_mut(&key) {
            None if room => {
                // The first sight is a baseline: what came before is not a second.
                let remote = Remote {
                    baseline: Baseline::new(p.window),
                    step: (p.revision.to_string(), p.epoch),
                    published_ms: p.published_ms,
                    gap: 1.0,
                    pending: Reading::default(),
                    pending_secs: 0.0,
                    changed: now,
                    visited: now,
                };
                remotes.insert(key, remote);
            }
            None => {}
            Some(r) if r.published_ms != p.published_ms => {
                r.visited = now;
                if r.step.0 != p.revision || r.step.1 != p.epoch {
                    r.baseline.restart();
                    r.step = (p.revision.to_string(), p.epoch);
                }
                let gap = p.published_ms.saturating_sub(r.published_ms) as f64 / 1000.0;
                // After a quiet spell the gap is long but the news is one interval's: spread
                // over the shorter of this gap and the one before.
                let spread = gap.min(r.gap).clamp(0.001, MAX_SPREAD.as_secs_f64());
                r.gap = gap.max(0.001);
                r.pending.add(r.baseline.read(p.window));
                r.pending_secs = spread;
                r.published_ms = p.published_ms;
                r.changed = now;
            }
            Some(r) => r.visited = now,
        }
    });
    remotes.retain(|_, r| r.visited == now);
    remotes
        .iter_mut()
        .map(|((replica, route, variant), r)| {
            let share = if r.pending_secs <= secs { 1.0 } else { secs / r.pending_secs };
            r.pending_secs = (r.pending_secs - secs).max(0.0);
            let reading = r.pending.take(share);
            let live = now.saturating_duration_since(r.changed) < LIVE;
            (replica.clone(), route.clone(), variant.clone(), reading, live)
        })
        .collect()
}
