//! Read-only: the other replicas' published windows, for the console's series (so that in a
//! fleet it charts the fleet's numbers). Nothing here writes to etcd or to the fleet's state.

use super::{Cluster, Shared};
use crate::telemetry::series::{PeerWindow, Peers};
use std::sync::Arc;

impl Peers for Shared {
    fn visit(&self, f: &mut dyn FnMut(PeerWindow<'_>)) {
        let st = self.lock();
        for ((replica, route, variant), w) in &st.windows {
            if *replica == self.replica {
                continue;
            }
            f(PeerWindow {
                replica,
                route,
                variant,
                revision: &w.revision,
                epoch: w.epoch,
                published_ms: w.published_ms,
                window: &w.step,
            });
        }
    }

    fn replicas(&self) -> usize {
        1 + self.lock().replicas.keys().filter(|r| **r != self.replica).count()
    }
}

impl Cluster {
    /// The other replicas' published windows, read-only (see [`Peers`]).
    pub fn peers(&self) -> Arc<dyn Peers> {
        self.shared.clone()
    }
}
