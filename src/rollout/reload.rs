//! Applying routes.yaml: read under the controller's lock (so racing reloads apply in the order
//! they read, and the last one applies the newest file), keep each route's status while its
//! revision holds, start changed revisions over, and replace recreate backends old-first.

use super::control::{lock, prune, Controller, RouteState};
use super::drain::release;
use super::revision::revision;
use super::status::RouteStatus;
use super::store::Saved;
use crate::config::{Config, ConfigErrors, ConfigIssue, Strategy};
use crate::telemetry::names;
use metrics::Label;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outcome of the last attempt to apply routes.yaml.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// The file.
    pub source: String,
    /// Whether the last attempt applied.
    pub ok: bool,
    /// When it was made (ms since the epoch).
    pub at_unix_ms: u64,
    /// Every error of a refused file; empty when it applied.
    pub errors: Vec<ConfigIssue>,
    /// Attempts that applied.
    pub applied: u64,
    /// Attempts that were refused.
    pub refused: u64,
}

impl Controller {
    pub(super) fn record_reload(&self, result: &Result<u64, ConfigErrors>) {
        let outcome = if result.is_ok() { "applied" } else { "refused" };
        self.telemetry.counter(names::RELOADS_TOTAL, vec![Label::new("outcome", outcome)]).increment(1);
        let mut r = lock(&self.report);
        r.at_unix_ms = self.clock.now_ms();
        match result {
            Ok(_) => {
                r.ok = true;
                r.errors.clear();
                r.applied += 1;
            }
            Err(e) => {
                r.ok = false;
                r.errors = e.issues.clone();
                r.refused += 1;
            }
        }
    }

    /// Reads the routes file again and applies it. A refused file changes nothing; its errors
    /// are logged and kept for `GET /admin/routes`.
    pub async fn reload_file(&self) -> Result<u64, ConfigErrors> {
        let _one_at_a_time = self.reloads.lock().await;
        let source = self.inner.lock().await.config.source.clone();
        let path = source.clone();
        // File work (and hashing the model files) goes to the blocking pool, without the
        // controller's lock: decisions and admin changes go on meanwhile.
        let result = match tokio::task::spawn_blocking(move || Config::load(&path)).await {
            Ok(Ok(config)) => {
                let mut inner = self.inner.lock().await;
                self.apply_locked(&mut inner, config).await
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ConfigErrors::one(&source, "file", format!("reading failed: {e}"))),
        };
        let now = self.clock.now_ms();
        match &result {
            Ok(generation) => {
                tracing::info!(file = %source.display(), generation, "routes reloaded");
                let details = serde_json::json!({ "generation": generation });
                self.emit(now, "", "reload_applied", format!("{} applied", source.display()), details);
            }
            Err(e) => {
                self.emit(now, "", "reload_refused", e.to_string(), serde_json::json!({ "errors": e.issues }));
                for issue in &e.issues {
                    tracing::error!(file = %source.display(), place = %issue.place, "{}", issue.message);
                }
                tracing::error!(file = %source.display(), errors = e.issues.len(), "routes file refused; the running table stays");
            }
        }
        self.record_reload(&result);
        result
    }

    /// Applies a new spec. Routes whose revision is unchanged keep their status (and take the
    /// new thresholds and limits); a new revision starts over. A recreate route whose backend
    /// changed unloads the old backend before loading the new one, answering 503 in between.
    /// Anything that fails leaves the running table as it was.
    pub async fn apply(&self, config: Config) -> Result<u64, ConfigErrors> {
        let mut inner = self.inner.lock().await;
        self.apply_locked(&mut inner, config).await
    }

    async fn apply_locked(&self, inner: &mut super::control::Inner, config: Config) -> Result<u64, ConfigErrors> {
        if inner.config == config {
            return Ok(inner.generation);
        }
        if inner.config.server != config.server {
            tracing::warn!("server: settings changed in routes.yaml; they apply at the next restart");
        }
        if inner.config.cluster != config.cluster {
            tracing::warn!("cluster: settings changed in routes.yaml; they apply at the next restart");
        }
        let next_version = inner.generation + 1;
        let mut new_revisions = Vec::new();
        let mut archive = Vec::new();
        let new_routes: HashMap<String, RouteState> = config
            .routes
            .iter()
            .map(|r| {
                let name = r.name().to_string();
                let rev = revision(r, &config.backends);
                let old_spec = inner.config.routes.iter().find(|o| o.name() == name);
                let state = match inner.routes.get(&name) {
                    Some(s) if s.revision == rev => {
                        let version = if old_spec == Some(r) { s.version } else { next_version };
                        RouteState { version, ..s.clone() }
                    }
                    old => {
                        if let Some(old) = old {
                            archive.push((
                                name.clone(),
                                Saved { revision: old.revision.clone(), status: old.status.clone() },
                            ));
                        }
                        new_revisions.push(r.clone());
                        RouteState {
                            revision: rev,
                            status: RouteStatus::default(),
                            version: next_version,
                            fleet_rev: 0,
                        }
                    }
                };
                (name, state)
            })
            .collect();
        // Recreate routes whose backend changes: the old one goes before the new one comes.
        let gaps: Vec<(String, String)> = config
            .routes
            .iter()
            .filter_map(|r| {
                let Strategy::Recreate { backend: new } = &r.strategy else { return None };
                let old_spec = inner.config.routes.iter().find(|o| o.name() == r.name())?;
                let Strategy::Recreate { backend: old } = &old_spec.strategy else { return None };
                let changed = old != new
                    || inner.config.backends.iter().find(|b| &b.name == old)
                        != config.backends.iter().find(|b| &b.name == new);
                changed.then(|| (r.name().to_string(), old.clone()))
            })
            .collect();
        let gap_started = Instant::now();
        if !gaps.is_empty() {
            // Publish the running spec with those routes unavailable, then release their backends
            // unless another route still answers with them (the gap table holds those).
            let gap_names: Vec<&str> = gaps.iter().map(|(r, _)| r.as_str()).collect();
            let gap_table = self.build(inner, inner.generation + 1, &gap_names)?;
            inner.generation += 1;
            self.table.store(gap_table);
            let limit = config.server.request_timeout + Duration::from_secs(1);
            for (route, old) in &gaps {
                let shared =
                    inner.config.routes.iter().any(|r| r.name() != route && r.backends().contains(&old.as_str()));
                if let (false, Some(loaded)) = (shared, inner.loaded.remove(old)) {
                    release(loaded.backend, limit).await;
                }
            }
        }
        let old_routes = std::mem::replace(&mut inner.routes, new_routes);
        let old_config = std::mem::replace(&mut inner.config, config);
        match self.publish(inner, &[]).await {
            Ok(generation) => {
                // A new revision's windows are emptied once its table is published, not before:
                // a refused spec changes nothing.
                for r in &new_revisions {
                    for variant in r.strategy.backends() {
                        self.telemetry.variant(r.name(), variant).reset_step();
                    }
                }
                let gap = gap_started.elapsed();
                for (name, _) in &gaps {
                    if let Some(state) = inner.routes.get_mut(name) {
                        state.status.last_gap = Some(gap.as_secs_f64() * 1000.0);
                    }
                    tracing::info!(route = %name, gap_ms = gap.as_secs_f64() * 1000.0, "recreate: new backend serving");
                }
                *lock(&self.webhooks) = inner.config.webhooks.clone();
                self.commit(inner, archive);
                Ok(generation)
            }
            Err(e) => {
                inner.config = old_config;
                inner.routes = old_routes;
                if !gaps.is_empty() {
                    // The old backends were released: bring them back.
                    if let Err(again) = self.publish(inner, &[]).await {
                        tracing::error!(error = %again, "recreate: could not restore the previous backend");
                    }
                } else {
                    prune(inner);
                }
                Err(e)
            }
        }
    }

    /// Reloads the routes file whenever it settles after a change, until the returned watch is
    /// dropped. Also returns the sender that SIGHUP (or anything else) can use to ask for a reload.
    pub fn watch_file(
        self: &Arc<Self>,
    ) -> Result<(crate::config::watch::FileWatch, tokio::sync::mpsc::Sender<()>), notify::Error> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(8);
        let source = self.report().source;
        let watch = crate::config::watch::watch(std::path::Path::new(&source), tx.clone())?;
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                let Some(controller) = me.upgrade() else { return };
                let _ = controller.reload_file().await;
            }
        });
        Ok((watch, tx))
    }
}
