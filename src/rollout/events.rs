//! Rollout events: every decision with the numbers behind it, as a JSON log line and in a
//! bounded in-memory log served by `GET /admin/events`.

use serde::Serialize;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Mutex;

/// One decision or change.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Sequence number, increasing.
    pub seq: u64,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The route it concerns (empty for gateway-wide events).
    pub route: String,
    /// What happened: `step_advanced`, `promoted`, `rolled_back`, `analysis_failed`, `paused`, ...
    pub kind: &'static str,
    /// In words.
    pub message: String,
    /// The numbers behind it.
    pub details: Value,
}

/// The last events, oldest first, at most `capacity` of them.
#[derive(Debug)]
pub struct EventLog {
    events: Mutex<(u64, VecDeque<Event>)>,
    capacity: usize,
}

impl EventLog {
    /// An empty log keeping the last `capacity` events.
    pub fn new(capacity: usize) -> Self {
        EventLog { events: Mutex::new((0, VecDeque::new())), capacity }
    }

    /// Records an event and logs it as one JSON line.
    pub fn emit(&self, at_ms: u64, route: &str, kind: &'static str, message: String, details: Value) -> Event {
        let mut guard = self.events.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 += 1;
        let event = Event { seq: guard.0, at_ms, route: route.to_string(), kind, message, details };
        tracing::info!(target: "modelgate::events", event = %serde_json::to_string(&event).unwrap_or_default(), "{kind}");
        if guard.1.len() == self.capacity {
            guard.1.pop_front();
        }
        guard.1.push_back(event.clone());
        event
    }

    /// Events after `since` (a sequence number), for `route` if given, oldest first.
    pub fn since(&self, since: u64, route: Option<&str>) -> Vec<Event> {
        let guard = self.events.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.iter().filter(|e| e.seq > since && route.is_none_or(|r| e.route == r)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_filtered() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.emit(i, if i % 2 == 0 { "a" } else { "b" }, "x", format!("{i}"), Value::Null);
        }
        let all = log.since(0, None);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(log.since(3, Some("a")).len(), 1);
    }
}
