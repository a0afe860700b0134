//! Prometheus metrics of the silo, served as text on `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub kind: String,
    /// `ok` or a `CallError` code.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// The series of a kind's successful calls, looked up once per kind rather than per call.
#[derive(Clone)]
struct KindSeries {
    ok: Counter,
    seconds: Histogram,
}

pub struct Metrics {
    registry: Registry,
    /// Keeps the hot path (a successful call) free of label allocations.
    ok_series: std::sync::RwLock<std::collections::HashMap<String, KindSeries>>,
    pub calls: Family<CallLabels, Counter>,
    pub call_seconds: Family<KindLabels, Histogram>,
    pub activations: Gauge,
    pub flush_seconds: Histogram,
    pub sends_delivered: Counter,
    pub sends_dropped: Counter,
    pub timer_ticks: Counter,
    pub guest_log_dropped: Counter,
    reminder_ticks: Family<OutcomeLabels, Counter>,
    reminder_lag_seconds: Histogram,
    pub reminders_stored: Gauge,
    drain_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    drains: Family<DrainLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DrainLabels {
    /// `ok`, or `incomplete` when a step failed or the grace period ran out.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `fired`, `retried` or `failed`.
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Metrics {
    /// Every series is labelled with the silo's name (the pod name under Kubernetes) and,
    /// when known, its namespace.
    pub fn new(silo: &str, namespace: Option<&str>) -> Self {
        let mut labels = vec![("silo".into(), silo.to_owned().into())];
        if let Some(ns) = namespace {
            labels.push(("namespace".into(), ns.to_owned().into()));
        }
        let mut root = Registry::with_prefix_and_labels("granary", labels.into_iter());
        let calls = Family::<CallLabels, Counter>::default();
        let call_seconds =
            Family::<KindLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let activations = Gauge::default();
        let flush_seconds = latency_histogram();
        let sends_delivered = Counter::default();
        let sends_dropped = Counter::default();
        root.register("calls", "Calls by kind and outcome", calls.clone());
        root.register(
            "call_duration_seconds",
            "Call latency by kind, queueing and commit included",
            call_seconds.clone(),
        );
        root.register("activations", "Live activations", activations.clone());
        root.register(
            "storage_flush_duration_seconds",
            "Duration of one group-commit flush",
            flush_seconds.clone(),
        );
        root.register(
            "sends_delivered",
            "One-way messages delivered from the outbox",
            sends_delivered.clone(),
        );
        root.register(
            "sends_dropped",
            "One-way messages dropped after a permanent delivery error",
            sends_dropped.clone(),
        );
        let timer_ticks = Counter::default();
        let reminder_ticks = Family::<OutcomeLabels, Counter>::default();
        let reminder_lag_seconds = latency_histogram();
        let reminders_stored = Gauge::default();
        root.register(
            "timer_ticks",
            "Timer ticks delivered to grains",
            timer_ticks.clone(),
        );
        root.register(
            "reminder_ticks",
            "Reminder ticks by outcome: fired, retried (transient failure), failed (gave up)",
            reminder_ticks.clone(),
        );
        root.register(
            "reminder_lag_seconds",
            "Fire time minus scheduled time of reminder ticks",
            reminder_lag_seconds.clone(),
        );
        root.register(
            "reminders_stored",
            "Durable reminders stored",
            reminders_stored.clone(),
        );
        let guest_log_dropped = Counter::default();
        root.register(
            "guest_log_lines_dropped",
            "Guest log lines dropped by the per-activation rate limit",
            guest_log_dropped.clone(),
        );
        let drain_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let drains = Family::<DrainLabels, Counter>::default();
        root.register(
            "drain_seconds",
            "Duration of the last drain",
            drain_seconds.clone(),
        );
        root.register("drains", "Drains by outcome", drains.clone());
        Self {
            ok_series: Default::default(),
            guest_log_dropped,
            drain_seconds,
            drains,
            timer_ticks,
            reminder_ticks,
            reminder_lag_seconds,
            reminders_stored,
            registry: root,
            calls,
            call_seconds,
            activations,
            flush_seconds,
            sends_delivered,
            sends_dropped,
        }
    }

    pub fn observe_call(&self, kind: &str, outcome: &str, seconds: f64) {
        if outcome == "ok" {
            // Recorded under the read lock: cloning the series would bump two shared
            // reference counts per call.
            let record = |series: &KindSeries| {
                series.ok.inc();
                series.seconds.observe(seconds);
            };
            {
                // Poisoning needs a panic under the lock; nothing here panics.
                let known = self.ok_series.read().unwrap_or_else(|e| e.into_inner());
                if let Some(series) = known.get(kind) {
                    record(series);
                    return;
                }
            }
            record(&self.new_ok_series(kind));
            return;
        }
        self.calls
            .get_or_create(&CallLabels {
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.call_seconds
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .observe(seconds);
    }

    fn new_ok_series(&self, kind: &str) -> KindSeries {
        let series = KindSeries {
            ok: self
                .calls
                .get_or_create(&CallLabels {
                    kind: kind.to_owned(),
                    outcome: "ok".to_owned(),
                })
                .clone(),
            seconds: self
                .call_seconds
                .get_or_create(&KindLabels {
                    kind: kind.to_owned(),
                })
                .clone(),
        };
        self.ok_series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(kind.to_owned(), series.clone());
        series
    }

    pub fn reminder_ticks(&self, outcome: &'static str) -> Counter {
        self.reminder_ticks
            .get_or_create(&OutcomeLabels { outcome })
            .clone()
    }

    pub fn observe_reminder_lag(&self, lag_ms: u64) {
        self.reminder_lag_seconds.observe(lag_ms as f64 / 1000.0);
    }

    pub fn observe_drain(&self, seconds: f64, ok: bool) {
        self.drain_seconds.set(seconds);
        let outcome = if ok { "ok" } else { "incomplete" };
        self.drains.get_or_create(&DrainLabels { outcome }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding metrics into a String");
        out
    }
}
