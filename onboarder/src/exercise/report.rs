//! What a phase reports: counts, time, throughput and latency percentiles.

use std::time::Duration;

use serde::Serialize;

/// Results of one phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseReport {
    /// Devices that completed the phase.
    pub ok: usize,
    /// Devices that did not.
    pub failed: usize,
    /// Wall-clock duration of the phase.
    pub seconds: f64,
    /// Completed devices per second.
    pub per_second: f64,
    /// Median latency of one device's phase, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency, milliseconds.
    pub max_ms: f64,
    /// Bytes transferred, for phases that move data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl PhaseReport {
    /// A report from the latencies of the devices that succeeded.
    pub fn new(latencies: &mut [Duration], failed: usize, elapsed: Duration) -> Self {
        latencies.sort();
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            round(latencies[i].as_secs_f64() * 1000.0)
        };
        let seconds = elapsed.as_secs_f64();
        PhaseReport {
            ok: latencies.len(),
            failed,
            seconds: round(seconds),
            per_second: round(latencies.len() as f64 / seconds.max(1e-9)),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
            bytes: None,
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
