//! Counters and latency histograms of what the onboarder did, refused and shed, for operators
//! (`/v1/stats` as JSON, `/metrics` in Prometheus's text format).
//!
//! The audit log records refusals only within a budget (see [`crate::core::audit_budget`]);
//! these counters count every one of them, and what never reached the service at all:
//! handshakes refused by TLS and connections refused by the limits.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::message::ErrorCode;
use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in seconds (the last bucket, `+Inf`, is implied).
pub const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the group-size buckets (changes per store commit).
pub const GROUP_SIZES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A histogram with fixed buckets: counts per bucket, their sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Adds one observation.
    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A histogram behind a lock, cheap enough to feed from any task.
#[derive(Debug)]
pub struct SharedHistogram(Mutex<Histogram>);

impl SharedHistogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> SharedHistogram {
        SharedHistogram(Mutex::new(Histogram::new(bounds)))
    }

    /// Adds one observation.
    pub fn observe(&self, value: f64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(value);
    }

    /// The histogram now.
    pub fn snapshot(&self) -> Histogram {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a store's commits look like: changes per group and seconds per group commit.
#[derive(Debug)]
pub struct Commits {
    /// Changes per group.
    pub sizes: SharedHistogram,
    /// Seconds from taking a group to its answers.
    pub seconds: SharedHistogram,
}

impl Default for Commits {
    fn default() -> Self {
        Commits {
            sizes: SharedHistogram::new(GROUP_SIZES),
            seconds: SharedHistogram::new(SECONDS),
        }
    }
}

/// Device requests: counts by operation, transport and refusal code (`None`: answered, which
/// allocates nothing on the common path), and latency by operation, under one lock.
#[derive(Debug, Clone, Default)]
struct Requests {
    counts: BTreeMap<(&'static str, &'static str, Option<String>), u64>,
    latency: BTreeMap<&'static str, Histogram>,
}

/// The counters. Cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    refusals: Mutex<BTreeMap<String, u64>>,
    requests: Mutex<Requests>,
    handshakes_refused: AtomicU64,
    connections_refused: AtomicU64,
    handshakes_retried: AtomicU64,
    audit_suppressed: AtomicU64,
}

/// The counters at one moment.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Requests refused, by wire error code.
    pub refusals: BTreeMap<String, u64>,
    /// TLS handshakes that failed (unknown issuer, revoked certificate, garbage).
    pub handshakes_refused: u64,
    /// Connections refused before the handshake (per-address or total limit).
    pub connections_refused: u64,
    /// QUIC connection attempts answered with a Retry (address validation, under a flood of
    /// handshakes) instead of a handshake.
    #[serde(default)]
    pub handshakes_retried: u64,
    /// Audit entries counted but not written (over the audit budget); each window ends with
    /// one summary entry.
    pub audit_suppressed: u64,
}

impl Metrics {
    /// One refusal with `code`.
    pub fn refused(&self, code: ErrorCode) {
        let mut map = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(format!("{code:?}")).or_default() += 1;
    }

    /// One device request: its operation, the transport it came by, how it ended (`None`: it
    /// was answered; else the error code it was refused with) and how long it took.
    pub fn request(
        &self,
        operation: &'static str,
        transport: &'static str,
        refused: Option<ErrorCode>,
        took: Duration,
    ) {
        let outcome = refused.map(|c| format!("{c:?}"));
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests
            .counts
            .entry((operation, transport, outcome))
            .or_default() += 1;
        requests
            .latency
            .entry(operation)
            .or_insert_with(|| Histogram::new(SECONDS))
            .observe(took.as_secs_f64());
    }

    /// Requests answered (not refused) per operation, over every transport.
    pub fn answered(&self) -> BTreeMap<&'static str, u64> {
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = BTreeMap::new();
        for ((operation, _, refused), n) in &requests.counts {
            if refused.is_none() {
                *out.entry(*operation).or_insert(0) += n;
            }
        }
        out
    }

    /// One failed handshake.
    pub fn handshake_refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// One connection refused by a limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// One connection attempt answered with a Retry.
    pub fn handshake_retried(&self) {
        self.handshakes_retried.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` audit entries suppressed.
    pub fn audit_suppressed(&self, n: u64) {
        self.audit_suppressed.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            refusals: self
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            handshakes_refused: self.handshakes_refused.load(Ordering::Relaxed),
            connections_refused: self.connections_refused.load(Ordering::Relaxed),
            handshakes_retried: self.handshakes_retried.load(Ordering::Relaxed),
            audit_suppressed: self.audit_suppressed.load(Ordering::Relaxed),
        }
    }

    /// Writes the request counters, latencies and refusals in Prometheus's text format.
    pub fn render(&self, out: &mut Exposition) {
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        out.family(
            "onboarder_requests_total",
            "counter",
            "Device requests, by operation, transport and outcome (ok or the refusal's code).",
        );
        for ((operation, transport, outcome), n) in &requests.counts {
            out.sample(
                "onboarder_requests_total",
                &[
                    ("operation", operation),
                    ("transport", transport),
                    ("outcome", outcome.as_deref().unwrap_or("ok")),
                ],
                *n as f64,
            );
        }
        out.family(
            "onboarder_request_duration_seconds",
            "histogram",
            "Time to answer a device request, by operation.",
        );
        for (operation, h) in &requests.latency {
            out.histogram(
                "onboarder_request_duration_seconds",
                &[("operation", operation)],
                h,
            );
        }
        let snapshot = self.snapshot();
        out.family(
            "onboarder_refusals_total",
            "counter",
            "Requests refused, by wire error code (every one, also those over the audit budget).",
        );
        for (code, n) in &snapshot.refusals {
            out.sample("onboarder_refusals_total", &[("code", code)], *n as f64);
        }
        for (name, help, n) in [
            (
                "onboarder_handshakes_refused_total",
                "TLS and DTLS handshakes that failed.",
                snapshot.handshakes_refused,
            ),
            (
                "onboarder_connections_refused_total",
                "Connections refused by the limits before any handshake.",
                snapshot.connections_refused,
            ),
            (
                "onboarder_handshakes_retried_total",
                "QUIC connection attempts answered with a Retry (address validation under load).",
                snapshot.handshakes_retried,
            ),
            (
                "onboarder_audit_suppressed_total",
                "Audit entries counted but not written (over the audit budget).",
                snapshot.audit_suppressed,
            ),
        ] {
            out.family(name, "counter", help);
            out.sample(name, &[], n as f64);
        }
    }
}

/// Text in Prometheus's exposition format (version 0.0.4), which `promtool check metrics`
/// checks and every scraper reads. (OpenMetrics, as prometheus-client writes it, names a
/// counter's family without its `_total`, which promtool's linter reads as a metric without
/// help; this format is the one both agree on.)
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// The content type of the text.
    pub const CONTENT_TYPE: &'static str = "text/plain; version=0.0.4; charset=utf-8";

    /// Starts a family: its help and type (`counter`, `gauge` or `histogram`).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape(help, false));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample of the family started last.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v, true));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    /// One histogram of the family started last: cumulative buckets, sum and count.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        let bounds: Vec<String> = h
            .bounds
            .iter()
            .map(|b| number(*b))
            .chain(std::iter::once("+Inf".to_string()))
            .collect();
        for (bound, count) in bounds.iter().zip(&h.counts) {
            cumulative += count;
            let mut with_le = labels.to_vec();
            with_le.push(("le", bound));
            self.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count() as f64);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.0
    }
}

/// Escapes help text (backslash, newline) or a label value (also the double quote).
fn escape(text: &str, quote: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labels_escaped() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(7.0);
        let mut out = Exposition::default();
        out.family("x_seconds", "histogram", "Help with a \\ and\na newline.");
        out.histogram("x_seconds", &[("op", "a\"b")], &h);
        let text = out.finish();
        assert!(text.contains("# HELP x_seconds Help with a \\\\ and\\na newline.\n"));
        assert!(text.contains("x_seconds_bucket{op=\"a\\\"b\",le=\"1\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{op=\"a\\\"b\",le=\"2\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{op=\"a\\\"b\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("x_seconds_sum{op=\"a\\\"b\"} 9\n"));
        assert!(text.contains("x_seconds_count{op=\"a\\\"b\"} 3\n"));
    }
}
