//! Webhook bodies: CloudEvents 1.0 in structured mode (`application/cloudevents+json`), and
//! operator templates, so that an event can start a run in an orchestrator's REST API (Airflow's
//! `dagRuns`, a GitHub `repository_dispatch`, Kubeflow Pipelines) without glue code.

use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};

/// The content type of a structured-mode CloudEvent.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// A gateway event (`{seq, at_ms, route, kind, message, details}`) as a CloudEvent 1.0 in
/// structured mode: `type` is `io.modelgate.<kind>`, `source` `/modelgate/routes/<route>` (or
/// `/modelgate` for gateway-wide events), `id` unique per source (`<at_ms>-<seq>`), `time` in
/// RFC 3339, and the event itself as `data`.
pub fn structured(event: &Value) -> Value {
    let text = |k: &str| event.get(k).and_then(Value::as_str).unwrap_or_default();
    let number = |k: &str| event.get(k).and_then(Value::as_u64).unwrap_or_default();
    let route = text("route");
    let source = if route.is_empty() { "/modelgate".to_string() } else { format!("/modelgate/routes/{route}") };
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(number("at_ms"))).to_string();
    let mut ce = json!({
        "specversion": "1.0",
        "id": format!("{}-{}", number("at_ms"), number("seq")),
        "source": source,
        "type": format!("io.modelgate.{}", text("kind")),
        "time": time,
        "datacontenttype": "application/json",
        "data": event,
    });
    if !route.is_empty() {
        ce["subject"] = Value::String(route.to_string());
    }
    ce
}

/// `template` with its placeholders replaced by JSON: `{{event}}` (the body the hook's format
/// would send), `{{kind}}`, `{{route}}`, `{{message}}` (JSON strings, quotes included) and
/// `{{details}}`.
pub fn render(template: &str, event: &Value, body: &Value) -> String {
    let field = |k: &str| event.get(k).cloned().unwrap_or(Value::Null).to_string();
    template
        .replace("{{event}}", &body.to_string())
        .replace("{{kind}}", &field("kind"))
        .replace("{{route}}", &field("route"))
        .replace("{{message}}", &field("message"))
        .replace("{{details}}", &field("details"))
}

/// An event with every field, for checking templates when the config is read.
pub fn sample() -> Value {
    json!({"seq": 1, "at_ms": 0, "route": "r\"1", "kind": "drift_detected", "message": "m\n\"", "details": {"a": [1]}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloudevent_carries_the_required_attributes() {
        let event = json!({"seq": 7, "at_ms": 1_700_000_000_123u64, "route": "bc", "kind": "drift_detected",
                           "message": "m", "details": {}});
        let ce = structured(&event);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], "1700000000123-7");
        assert_eq!(ce["source"], "/modelgate/routes/bc");
        assert_eq!(ce["type"], "io.modelgate.drift_detected");
        assert_eq!(ce["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(ce["subject"], "bc");
        assert_eq!(ce["data"], event);
    }

    #[test]
    fn templates_get_json_values_and_stay_json() {
        let body = render(
            r#"{"event_type": {{kind}}, "client_payload": {{event}}, "note": {{message}}}"#,
            &sample(),
            &sample(),
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["event_type"], "drift_detected");
        assert_eq!(v["client_payload"]["route"], "r\"1");
        assert_eq!(v["note"], "m\n\"");
    }
}
