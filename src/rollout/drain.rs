//! Letting go of a backend that no route uses any more: its in-flight requests finish, then its
//! sessions are released. Awaited by notification (the last worker thread says so), never by
//! polling, and never under the controller's lock for longer than the drain limit.

use crate::backend::Backend;
use std::sync::Arc;
use std::time::Duration;

/// Drops this holder of `backend` and waits, up to `limit`, until every other holder (tables,
/// in-flight requests) is gone and, for a model, its sessions are released.
pub async fn release(backend: Arc<Backend>, limit: Duration) {
    let unloading = match backend.as_ref() {
        Backend::Onnx(model) => model.unloading(),
        Backend::Upstream(_) => return,
    };
    drop(backend);
    if !unloading.wait(limit).await {
        tracing::warn!(
            ?limit,
            "recreate: old backend still in use after the drain limit; it unloads when its last request ends"
        );
    }
}
