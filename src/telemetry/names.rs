//! Every Prometheus metric the gateway exports: names, kinds and help, in one place.
//! Labels stay low-cardinality: `route`, `variant`, `code`, `kind`, `outcome`.

/// Answered requests, by route, variant and status code.
pub const REQUESTS_TOTAL: &str = "modelgate_requests_total";
/// Request latency seen by the gateway, by route and variant.
pub const REQUEST_DURATION: &str = "modelgate_request_duration_seconds";
/// In-process inference time (queue and run), by route and variant.
pub const INFERENCE_DURATION: &str = "modelgate_inference_duration_seconds";
/// Requests that shared each in-process model run (dynamic batching), by route and variant.
pub const BATCH_SIZE: &str = "modelgate_batch_requests";
/// Time to an upstream's response head, by route and variant.
pub const UPSTREAM_DURATION: &str = "modelgate_upstream_duration_seconds";
/// Requests being answered now.
pub const IN_FLIGHT: &str = "modelgate_requests_in_flight";
/// Shadow copies by route and outcome (`sent`, `failed`).
pub const SHADOW_TOTAL: &str = "modelgate_shadow_requests_total";
/// Share of classifier rows on which the shadow agreed with the primary, by route.
pub const SHADOW_AGREEMENT: &str = "modelgate_shadow_agreement_ratio";
/// Mean absolute difference between shadow and primary outputs, by route.
pub const SHADOW_DIFFERENCE: &str = "modelgate_shadow_mean_abs_difference";
/// Feedback samples by route, variant and kind (`conversion`, `reward`, `label`).
pub const FEEDBACK_TOTAL: &str = "modelgate_feedback_total";
/// Conversions reported, by route and variant.
pub const FEEDBACK_CONVERSIONS: &str = "modelgate_feedback_conversions_total";
/// Label rows predicted correctly, by route and variant.
pub const FEEDBACK_CORRECT: &str = "modelgate_feedback_correct_total";
/// Sum of rewards reported (may fall: rewards can be negative), by route and variant.
pub const FEEDBACK_REWARD_SUM: &str = "modelgate_feedback_reward";
/// Requests shed at a route's concurrency limit, by route.
pub const SHED_TOTAL: &str = "modelgate_shed_requests_total";
/// Connections closed on accept for being beyond `server.max_connections`, by listener.
pub const CONNECTIONS_REFUSED: &str = "modelgate_connections_refused_total";
/// Idle kept-alive connections closed to make room for new ones at `server.max_connections`, by
/// listener.
pub const CONNECTIONS_IDLE_CLOSED: &str = "modelgate_connections_idle_closed_total";
/// routes.yaml reloads by outcome (`applied`, `refused`).
pub const RELOADS_TOTAL: &str = "modelgate_reloads_total";
/// Share of unpinned traffic each variant gets, 0 to 1, by route and variant.
pub const VARIANT_WEIGHT: &str = "modelgate_variant_weight_ratio";
/// Generation of the published routing table.
pub const TABLE_GENERATION: &str = "modelgate_table_generation";

/// Input rows outside the reference profile, by route and feature (a configured list, or the
/// profile's first features, then `other`).
pub const INVALID_INPUTS: &str = "modelgate_invalid_inputs_total";
/// Population stability index of live inputs against the profile, by route, variant and
/// feature (only the features listed in the route's `drift.features`).
pub const FEATURE_DRIFT: &str = "modelgate_feature_drift";
/// Capture lines by route and outcome (`written`, `dropped` when the writer fell behind).
pub const CAPTURE_TOTAL: &str = "modelgate_capture_lines_total";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets of observations, in seconds.
    Histogram,
    /// Buckets of counts (no unit).
    Sizes,
}

/// Every metric with its kind and help text.
pub const ALL: [(&str, Kind, &str); 22] = [
    (REQUESTS_TOTAL, Kind::Counter, "Answered requests by route, variant and status code."),
    (REQUEST_DURATION, Kind::Histogram, "Request latency through the gateway, by route and variant."),
    (INFERENCE_DURATION, Kind::Histogram, "In-process inference time (queue and run), by route and variant."),
    (BATCH_SIZE, Kind::Sizes, "Requests that shared each in-process model run (dynamic batching)."),
    (UPSTREAM_DURATION, Kind::Histogram, "Time to the upstream's response head, by route and variant."),
    (IN_FLIGHT, Kind::Gauge, "Requests being answered now."),
    (SHADOW_TOTAL, Kind::Counter, "Shadow copies by route and outcome."),
    (SHADOW_AGREEMENT, Kind::Gauge, "Share of classifier rows where the shadow picked the primary's class."),
    (SHADOW_DIFFERENCE, Kind::Gauge, "Mean absolute difference between shadow and primary outputs."),
    (FEEDBACK_TOTAL, Kind::Counter, "Feedback samples by route, variant and kind."),
    (FEEDBACK_CONVERSIONS, Kind::Counter, "Conversions reported by route and variant."),
    (FEEDBACK_CORRECT, Kind::Counter, "Label rows the variant predicted correctly."),
    (FEEDBACK_REWARD_SUM, Kind::Gauge, "Sum of rewards reported by route and variant."),
    (SHED_TOTAL, Kind::Counter, "Requests shed at a route's concurrency limit."),
    (CONNECTIONS_REFUSED, Kind::Counter, "Connections closed on accept beyond server.max_connections, by listener."),
    (
        CONNECTIONS_IDLE_CLOSED,
        Kind::Counter,
        "Idle kept-alive connections closed to make room for new ones at server.max_connections, by listener.",
    ),
    (RELOADS_TOTAL, Kind::Counter, "routes.yaml reloads by outcome."),
    (VARIANT_WEIGHT, Kind::Gauge, "Share of unpinned traffic per variant, 0 to 1."),
    (TABLE_GENERATION, Kind::Gauge, "Generation of the published routing table."),
    (INVALID_INPUTS, Kind::Counter, "Input rows outside the reference profile, by route and feature."),
    (FEATURE_DRIFT, Kind::Gauge, "Population stability index of live inputs against the reference profile."),
    (CAPTURE_TOTAL, Kind::Counter, "Labelled-data capture lines by route and outcome (written, dropped)."),
];

/// Histogram buckets of batch sizes.
pub const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Histogram buckets for every duration, in seconds.
pub const DURATION_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
