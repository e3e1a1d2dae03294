//! Prometheus metrics: request count and latency by route template,
//! method and status, and how cached reads were answered. Served on their
//! own listener, never the public one.

use actix_web::{HttpResponse, web};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

const LABELS: &[&str] = &["route", "method", "status"];

/// The metrics registry and the request metrics in it. Cheap to clone;
/// clones share the same counters.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    bodies: IntCounterVec,
}

impl Metrics {
    /// Creates the registry (metric names prefixed `confab_`).
    ///
    /// # Errors
    /// When a metric can't be registered (a programming error).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("confab".to_owned()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests served, by route template, method and status.",
            ),
            LABELS,
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to produce the response head.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            LABELS,
        )?;
        let bodies = IntCounterVec::new(
            Opts::new(
                "cached_read_bodies_total",
                "Bodies of cached reads (lists, histories) by shape: `kept` when a worker's \
                 rendered body answered, `rendered` when the value was fetched and rendered.",
            ),
            &["shape", "outcome"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(bodies.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            bodies,
        })
    }

    pub(crate) fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.requests.with_label_values(&labels).inc();
        self.duration.with_label_values(&labels).observe(seconds);
    }

    /// Counts one cached read of `shape`, answered by a kept body or not.
    pub(crate) fn cached_read(&self, shape: &str, kept: bool) {
        let outcome = if kept { "kept" } else { "rendered" };
        self.bodies.with_label_values(&[shape, outcome]).inc();
    }

    /// The registry in Prometheus text format.
    #[must_use]
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Routes of the metrics listener: `GET /metrics`.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(serve));
}

async fn serve(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}
