//! The security events a device forwards (failed verifications, refused rollbacks and
//! commands, tamper, clock jumps): each new one becomes an audit entry of the device, so its
//! history holds them in the same tamper-evident chain as everything else.
//!
//! Bounded three ways: a batch holds at most [`MAX_SECURITY_EVENTS`], an event's detail at most
//! [`MAX_SECURITY_DETAIL`] bytes, and a device gets at most [`EVENTS_PER_WINDOW`] entries per
//! [`WINDOW`]: beyond that events are counted, not written, and the count says so. The device's
//! sequence numbers make a resent batch change nothing and show what was lost in between.

use protocol::message::{MAX_SECURITY_DETAIL, MAX_SECURITY_EVENTS, Response, SecurityEvent};

use super::access::{ldevid, usable};
use super::decision::Decision;
use super::error::LifecycleError;
use super::peer::{CredentialKind, DevicePeer};
use super::record::DeviceRecord;
pub use super::record::SecurityTally;
use crate::audit::AuditEvent;

/// Length of the rate-limit window, in seconds.
pub const WINDOW: u64 = 3_600;
/// Audit entries a device's events may write per window.
pub const EVENTS_PER_WINDOW: u32 = 60;

/// A device reports security events.
pub fn report(
    peer: &DevicePeer,
    record: Option<DeviceRecord>,
    events: &[SecurityEvent],
    now: u64,
    grace: u64,
) -> Result<Decision, LifecycleError> {
    peer.require(CredentialKind::Ldevid, "security events")?;
    if events.len() > MAX_SECURITY_EVENTS {
        return Err(LifecycleError::BadRequest(format!(
            "{} security events in one batch; at most {MAX_SECURITY_EVENTS}",
            events.len()
        )));
    }
    if let Some(e) = events.iter().find(|e| e.detail.len() > MAX_SECURITY_DETAIL) {
        return Err(LifecycleError::BadRequest(format!(
            "security event {}: a detail of {} bytes; at most {MAX_SECURITY_DETAIL}",
            e.sequence,
            e.detail.len()
        )));
    }
    let mut record = usable(peer, record)?;
    ldevid(peer, &record, now, grace)?;
    let mut fresh: Vec<&SecurityEvent> = events
        .iter()
        .filter(|e| e.sequence >= record.security.next)
        .collect();
    fresh.sort_by_key(|e| e.sequence);
    fresh.dedup_by_key(|e| e.sequence);
    if fresh.is_empty() {
        // Sent again after a lost answer: nothing new.
        return Ok(Decision::reply(Response::Ack));
    }
    let tally = &mut record.security;
    if now >= tally.window_start.saturating_add(WINDOW) {
        tally.window_start = now;
        tally.window_count = 0;
    }
    let mut entries = Vec::new();
    let mut expected = tally.next;
    let mut dropped = 0u64;
    for e in fresh {
        tally.lost += e.sequence - expected;
        expected = e.sequence + 1;
        if tally.window_count >= EVENTS_PER_WINDOW {
            dropped += 1;
            continue;
        }
        tally.window_count += 1;
        tally.recorded += 1;
        let kind = serde_json::to_value(e.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "other".into());
        entries.push(AuditEvent::device(
            &peer.id,
            "security-event",
            format!(
                "#{} {kind} at {} (device clock): {}",
                e.sequence,
                certs::rfc3339(e.at),
                e.detail
                    .chars()
                    .filter(|c| !c.is_control())
                    .collect::<String>()
            ),
            now,
        ));
    }
    tally.next = expected;
    if dropped > 0 {
        tally.dropped += dropped;
        entries.push(AuditEvent::device(
            &peer.id,
            "security-events-dropped",
            format!(
                "{dropped} security events over the limit of {EVENTS_PER_WINDOW} an hour were counted, not written ({} in all)",
                tally.dropped
            ),
            now,
        ));
    }
    record.updated_at = now;
    Ok(Decision::ack(record, entries))
}

#[cfg(test)]
mod tests {
    use protocol::message::SecurityEventKind;

    use super::*;
    use crate::core::testkit::{Kit, NOW};

    fn event(sequence: u64) -> SecurityEvent {
        SecurityEvent {
            sequence,
            at: 5,
            kind: SecurityEventKind::VerificationFailed,
            detail: "manifest signature".into(),
        }
    }

    #[test]
    fn events_are_written_once_gaps_counted_and_floods_cut() {
        let kit = Kit::new();
        let (record, _, peer) = kit.onboarded("SN-1");
        let d = report(&peer, Some(record), &[event(0), event(1)], NOW, 0).unwrap();
        assert_eq!(d.events.len(), 2);
        let record = d.write.unwrap();
        assert_eq!(record.security.next, 2);
        // The same batch again: nothing new, nothing written.
        let again = report(
            &peer,
            Some(record.clone()),
            &[event(0), event(1)],
            NOW + 1,
            0,
        )
        .unwrap();
        assert!(again.write.is_none() && again.events.is_empty());
        // A gap: 2..=4 never came.
        let d = report(&peer, Some(record), &[event(5)], NOW + 2, 0).unwrap();
        let record = d.write.unwrap();
        assert_eq!((record.security.lost, record.security.next), (3, 6));
        // A flood: only the window's allowance is written, the rest counted.
        let flood: Vec<_> = (6..6 + MAX_SECURITY_EVENTS as u64).map(event).collect();
        let d = report(&peer, Some(record), &flood, NOW + 3, 0).unwrap();
        let record = d.write.unwrap();
        assert_eq!(record.security.recorded, u64::from(EVENTS_PER_WINDOW));
        assert_eq!(
            record.security.dropped,
            MAX_SECURITY_EVENTS as u64 + 3 - u64::from(EVENTS_PER_WINDOW)
        );
        assert_eq!(d.events.last().unwrap().action, "security-events-dropped");
    }

    #[test]
    fn oversized_batches_and_details_are_refused() {
        let kit = Kit::new();
        let (record, _, peer) = kit.onboarded("SN-1");
        let many: Vec<_> = (0..=MAX_SECURITY_EVENTS as u64).map(event).collect();
        assert!(matches!(
            report(&peer, Some(record.clone()), &many, NOW, 0),
            Err(LifecycleError::BadRequest(_))
        ));
        let mut long = event(0);
        long.detail = "x".repeat(MAX_SECURITY_DETAIL + 1);
        assert!(matches!(
            report(&peer, Some(record), &[long], NOW, 0),
            Err(LifecycleError::BadRequest(_))
        ));
    }
}
