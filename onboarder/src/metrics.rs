//! Counters of what the onboarder refused and shed, for operators (`/v1/stats`).
//!
//! The audit log records refusals only within a budget (see [`crate::core::audit_budget`]);
//! these counters count every one of them, and what never reached the service at all:
//! handshakes refused by TLS and connections refused by the limits.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use protocol::message::ErrorCode;
use serde::{Deserialize, Serialize};

/// The counters. Cheap to bump from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    refusals: Mutex<BTreeMap<String, u64>>,
    handshakes_refused: AtomicU64,
    connections_refused: AtomicU64,
    audit_suppressed: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// Requests refused, by wire error code.
    pub refusals: BTreeMap<String, u64>,
    /// TLS handshakes that failed (unknown issuer, revoked certificate, garbage).
    pub handshakes_refused: u64,
    /// Connections refused before the handshake (per-address or total limit).
    pub connections_refused: u64,
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

    /// One failed handshake.
    pub fn handshake_refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// One connection refused by a limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
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
            audit_suppressed: self.audit_suppressed.load(Ordering::Relaxed),
        }
    }
}
