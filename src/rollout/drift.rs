//! The drift driver: every analysis tick, each variant's drift window slides to the clock and
//! is judged against its profile; `modelgate_feature_drift` is set for the features a route
//! lists, and a `drift_detected` event (or `drift_cleared`) goes out when the set of drifted
//! features of a variant changes. Too few rows in the window changes nothing.

use super::control::{lock, Controller};
use crate::telemetry::names;
use metrics::Label;
use serde_json::json;

impl Controller {
    /// One round of drift detection over the published table's variants.
    pub fn check_drift(&self) {
        let now = self.clock.now_ms();
        let table = self.table.load();
        for route in table.routes() {
            for variant in &route.variants {
                let Some(window) = variant.quality.as_ref().and_then(|q| q.drift.as_ref()) else { continue };
                window.rotate(now);
                let report = window.judge();
                let spec = &window.made_for.1;
                for f in report.features.iter().filter(|f| spec.features.contains(&f.feature)) {
                    let labels = vec![
                        Label::new("route", route.name.clone()),
                        Label::new("variant", variant.name.clone()),
                        Label::new("feature", f.feature.clone()),
                    ];
                    self.telemetry.gauge(names::FEATURE_DRIFT, labels).set(f.psi);
                }
                if !report.verdict {
                    continue;
                }
                let drifted = report.drifted();
                let mut reported = lock(&window.reported);
                if drifted == *reported {
                    continue;
                }
                let details = json!({
                    "variant": variant.name,
                    "features": drifted,
                    "window_ms": spec.window.as_millis() as u64,
                    "samples": report.samples,
                    "thresholds": { "psi": spec.psi, "p_value": spec.p_value, "min_samples": spec.min_samples },
                    "test": "chi-square homogeneity on the profile's bins",
                    "statistics": report.features,
                });
                if drifted.is_empty() {
                    let message = format!("inputs of {} match its profile again", variant.name);
                    self.emit(now, &route.name, "drift_cleared", message, details);
                } else {
                    let message =
                        format!("inputs of {} drifted from its profile: {}", variant.name, drifted.join(", "));
                    self.emit(now, &route.name, "drift_detected", message, details);
                }
                *reported = drifted;
            }
        }
    }
}
