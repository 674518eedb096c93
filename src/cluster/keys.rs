//! Where a fleet keeps things in etcd, under its prefix, and what the values are:
//! - `{prefix}/leader/…` — the election (etcd's election API: one key per candidate, under its lease);
//! - `{prefix}/status/{route}/{revision}` — a route's status for one spec revision (JSON);
//! - `{prefix}/replicas/{replica}` — who is there, on which revisions (JSON, the replica's lease);
//! - `{prefix}/windows/{replica}/{route}/{variant}` — a replica's windows (protobuf, its lease);
//! - `{prefix}/feedback/{nonce}~{issued}/{kind}` — feedback counted (one claim per answer and
//!   kind of outcome, under a lease outliving `server.feedback_max_age`).
//!
//! Route and variant names are escaped (`%` and `/` percent-encoded) so a path-prefix route
//! stays one key segment.

use crate::rollout::status::RouteStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The key layout of one fleet.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn unescape(segment: &str) -> String {
    segment.replace("%2F", "/").replace("%25", "%")
}

impl Keys {
    /// The layout under `prefix` (validated: starts with `/`, no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    /// The election's name (candidates' keys are under it).
    pub fn election(&self) -> String {
        format!("{}/leader", self.prefix)
    }

    /// Every route's status.
    pub fn statuses(&self) -> String {
        format!("{}/status/", self.prefix)
    }

    /// A route's status at a spec revision.
    pub fn status(&self, route: &str, revision: &str) -> String {
        format!("{}{}/{}", self.statuses(), escape(route), escape(revision))
    }

    /// The route and revision of a status key.
    pub fn parse_status(&self, key: &[u8]) -> Option<(String, String)> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.statuses())?;
        let (route, revision) = rest.split_once('/')?;
        Some((unescape(route), unescape(revision)))
    }

    /// Every replica's record.
    pub fn replicas(&self) -> String {
        format!("{}/replicas/", self.prefix)
    }

    /// A replica's record.
    pub fn replica(&self, replica: &str) -> String {
        format!("{}{}", self.replicas(), escape(replica))
    }

    /// Every published window.
    pub fn windows(&self) -> String {
        format!("{}/windows/", self.prefix)
    }

    /// A replica's windows of a route's variant.
    pub fn window(&self, replica: &str, route: &str, variant: &str) -> String {
        format!("{}{}/{}/{}", self.windows(), escape(replica), escape(route), escape(variant))
    }

    /// The claim of one kind of feedback (`conversion`, `reward`, `label`) on an answer.
    pub fn feedback(&self, nonce: u64, issued: u64, kind: &str) -> String {
        format!("{}/feedback/{nonce:016x}~{issued}/{kind}", self.prefix)
    }

    /// The keys a replica follows for the leader's merge and the cluster view: `replicas/` up to
    /// and with `windows/` (`status/` lies between; feedback claims and the election do not), as
    /// the range `[start, end)`.
    pub fn gathered(&self) -> (String, String) {
        (self.replicas(), format!("{}/windows0", self.prefix))
    }

    /// The replica, route and variant of a window key.
    pub fn parse_window(&self, key: &[u8]) -> Option<(String, String, String)> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(&self.windows())?;
        let mut parts = rest.split('/');
        let (replica, route, variant) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some((unescape(replica), unescape(route), unescape(variant)))
    }
}

/// A route's status as the fleet keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredStatus {
    /// The status (steps keep their start time, so a new leader continues a step's clock).
    pub status: RouteStatus,
    /// The replica that wrote it.
    pub written_by: String,
    /// When (ms since the epoch, the writer's clock).
    pub written_ms: u64,
    /// Whether the leader's analysis wrote it (else an admin change).
    pub decision: bool,
    /// The etcd revision at which the status last changed more than the analysis' bookkeeping
    /// (its fleet-wide ETag); `None`: at this write.
    #[serde(default)]
    pub changed_at: Option<i64>,
}

/// A replica's record: what it runs and when it last published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Its id.
    pub replica: String,
    /// Spec revision of each of its routes.
    pub revisions: BTreeMap<String, String>,
    /// When it last published its windows (ms since the epoch).
    pub published_ms: u64,
}

/// One replica's windows of a variant, as published.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PublishedWindows {
    /// The route's spec revision on that replica.
    #[prost(string, tag = "1")]
    pub revision: String,
    /// The analysis step they belong to (see `rollout::fleet::epoch`).
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
    /// When they were published (ms since the epoch).
    #[prost(uint64, tag = "3")]
    pub published_ms: u64,
    /// The step window of assigned traffic (`Window::to_bytes`).
    #[prost(bytes = "vec", tag = "4")]
    pub step: Vec<u8>,
    /// The step's pinned window.
    #[prost(bytes = "vec", tag = "5")]
    pub pinned: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_names_with_slashes() {
        let k = Keys::new("/mg/prod");
        let key = k.status("/remote/", "r1-00ff");
        assert_eq!(key, "/mg/prod/status/%2Fremote%2F/r1-00ff");
        assert_eq!(k.parse_status(key.as_bytes()), Some(("/remote/".into(), "r1-00ff".into())));
        let w = k.window("gw-1", "/a%b/", "v1");
        assert_eq!(k.parse_window(w.as_bytes()), Some(("gw-1".into(), "/a%b/".into(), "v1".into())));
        assert_eq!(k.parse_window(b"/mg/prod/windows/a/b"), None);
        assert_eq!(k.parse_status(b"/other/status/a/b"), None);
        let (start, end) = k.gathered();
        let inside = |key: &str| start.as_str() <= key && key < end.as_str();
        assert!(inside(&k.replica("gw-1")) && inside(&w) && inside(&key));
        assert!(!inside(&k.feedback(7, 1_700_000_000, "conversion")) && !inside(&k.election()));
    }
}
