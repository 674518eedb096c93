//! The data-quality driver: every analysis tick, each variant's drift and label windows slide to
//! the clock and are judged. `modelgate_feature_drift` is set for the features a route lists; a
//! `drift_detected` event (or `drift_cleared`) goes out when the set of drifted features of a
//! variant changes, a `performance_degraded` (or `performance_recovered`) when its verdict on
//! label feedback changes, and `labelled_data_ready` after `capture.ready_after` newly captured
//! label rows, and `retrain_due` at every instant of a route's `schedule`. Too few rows in a
//! window changes nothing.

use super::control::{lock, Controller};
use crate::quality::capture::Capture;
use crate::quality::drift::DriftWindow;
use crate::quality::performance::LabelWindow;
use crate::quality::Schedule;
use crate::routing::{Route, Variant};
use crate::telemetry::names;
use metrics::Label;
use serde_json::json;
use std::sync::atomic::Ordering;

impl Controller {
    /// One round of drift and degradation detection over the published table's variants.
    pub fn check_drift(&self) {
        let now = self.clock.now_ms();
        let table = self.table.load();
        for route in table.routes() {
            if let Some((instant, schedule)) = self.telemetry.quality.due(&route.name, now) {
                let (details, when) = match schedule {
                    Schedule::Every(every) => {
                        let every = every.as_millis() as u64;
                        (
                            json!({ "due_ms": instant, "every_ms": every, "next_ms": instant + every }),
                            format!("every {every} ms"),
                        )
                    }
                    Schedule::Cron(_, text) => {
                        (json!({ "due_ms": instant, "cron": text }), format!("cron {text:?}, UTC"))
                    }
                };
                let message = format!("route {} is due for retraining (schedule {when})", route.name);
                self.emit(now, &route.name, "retrain_due", message, details);
            }
            let capture = route.variants.iter().find_map(|v| v.quality.as_ref()?.capture.as_ref());
            if let Some(c) = capture {
                self.labelled_ready(now, route, c);
            }
            for variant in &route.variants {
                let Some(q) = &variant.quality else { continue };
                if let Some(w) = &q.drift {
                    self.judge_drift(now, route, variant, w, "inputs");
                }
                if let Some((w, _)) = &q.output_drift {
                    self.judge_drift(now, route, variant, w, "outputs");
                }
                if let Some(w) = &q.performance {
                    self.judge_performance(now, route, variant, w);
                }
            }
        }
    }

    /// `labelled_data_ready` once `capture.ready_after` new label rows were captured.
    fn labelled_ready(&self, now: u64, route: &Route, capture: &Capture) {
        let Some(every) = capture.spec.ready_after else { return };
        let (total, announced) = (&capture.labelled.0, &capture.labelled.1);
        let (rows, last) = (total.load(Ordering::Relaxed), announced.load(Ordering::Relaxed));
        if rows.saturating_sub(last) < every {
            return;
        }
        announced.store(rows, Ordering::Relaxed);
        let details = json!({
            "new_rows": rows - last,
            "total_rows": rows,
            "dir": capture.spec.dir.display().to_string(),
            "join": "answer and feedback lines share `key`",
        });
        let message = format!("{} newly labelled rows captured in {}", rows - last, capture.spec.dir.display());
        self.emit(now, &route.name, "labelled_data_ready", message, details);
    }

    fn judge_drift(&self, now: u64, route: &Route, variant: &Variant, window: &DriftWindow, on: &str) {
        window.rotate(now);
        let report = window.judge();
        let spec = &window.made_for.1;
        for f in report.features.iter().filter(|f| on == "inputs" && spec.features.contains(&f.feature)) {
            let labels = vec![
                Label::new("route", route.name.clone()),
                Label::new("variant", variant.name.clone()),
                Label::new("feature", f.feature.clone()),
            ];
            self.telemetry.gauge(names::FEATURE_DRIFT, labels).set(f.psi);
        }
        if !report.verdict {
            return;
        }
        let drifted = report.drifted();
        let mut reported = lock(&window.reported);
        if drifted == *reported {
            return;
        }
        let details = json!({
            "variant": variant.name,
            "on": on,
            "features": drifted,
            "window_ms": spec.window.as_millis() as u64,
            "samples": report.samples,
            "thresholds": { "psi": spec.psi, "p_value": spec.p_value, "min_samples": spec.min_samples },
            "test": "chi-square homogeneity on the profile's bins",
            "statistics": report.features,
        });
        if drifted.is_empty() {
            let message = format!("{on} of {} match its profile again", variant.name);
            self.emit(now, &route.name, "drift_cleared", message, details);
        } else {
            let message = format!("{on} of {} drifted from its profile: {}", variant.name, drifted.join(", "));
            self.emit(now, &route.name, "drift_detected", message, details);
        }
        *reported = drifted;
    }

    fn judge_performance(&self, now: u64, route: &Route, variant: &Variant, window: &LabelWindow) {
        window.rotate(now);
        let report = window.judge();
        let Some(degraded) = report.degraded else { return };
        let mut reported = lock(&window.reported);
        if degraded == *reported {
            return;
        }
        let spec = &window.spec;
        let details = json!({
            "variant": variant.name,
            "metric": "accuracy",
            "window_ms": spec.window.as_millis() as u64,
            "confidence": spec.confidence,
            "bound": "one-sided Wilson score upper bound",
            "report": report,
        });
        let (kind, message) = if degraded {
            let m = format!(
                "accuracy of {} is {:.4} over {} labelled rows; even its upper bound {:.4} is below the floor {}",
                variant.name, report.accuracy, report.rows, report.upper_bound, spec.floor
            );
            ("performance_degraded", m)
        } else {
            ("performance_recovered", format!("accuracy of {} is no longer shown below its floor", variant.name))
        };
        self.emit(now, &route.name, kind, message, details);
        *reported = degraded;
    }
}
