//! What the server keeps of a device's security events besides the audit entries they become
//! (see [`crate::core::security`]).

use serde::{Deserialize, Serialize};

/// What the server knows of a device's security events.
#[derive(utoipa::ToSchema, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityTally {
    /// The sequence number the next new event must have at least (one past the highest
    /// received).
    pub next: u64,
    /// Events written to the audit log.
    pub recorded: u64,
    /// Events over the rate limit: counted, not written.
    pub dropped: u64,
    /// Events the device numbered but never sent (gaps in the sequence).
    pub lost: u64,
    /// When the current rate-limit window began.
    pub window_start: u64,
    /// Entries written in it.
    pub window_count: u32,
}
