//! How much a device may write into the audit log without changing anything.
//!
//! Every state change is audited, always. What a device can make the server write without a
//! state change (a refusal, a repeated voucher request, its own reports of a rejected voucher)
//! would otherwise be a channel to fill the server's disk: one device sending malformed
//! frames wrote 4,000 entries in 2.6 s. So those entries are admitted per (actor, kind) up to
//! [`AuditBudget::burst`] per window; the rest are counted and summed up in one entry when the
//! window ends. Memory is bounded too: at most `max_keys` (actor, kind) pairs are tracked, and
//! beyond that everything shares one overflow slot.

use std::collections::HashMap;

use crate::audit::AuditEvent;

/// Whom the overflow slot's summaries name.
const OVERFLOW_ACTOR: &str = "system";

#[derive(Debug, Clone)]
struct Slot {
    device: Option<super::DeviceId>,
    window_start: u64,
    admitted: u32,
    suppressed: u64,
}

/// The budget of audit entries that change nothing.
#[derive(Debug, Clone)]
pub struct AuditBudget {
    /// Entries admitted per (actor, kind) and window.
    pub burst: u32,
    /// Length of a window, in seconds.
    pub window: u64,
    /// Most (actor, kind) pairs tracked at once.
    pub max_keys: usize,
    slots: HashMap<(String, String), Slot>,
    /// When the slots were last swept for ended windows (at most once a second when full,
    /// so a flood of new actors does not make every admission scan them all).
    swept_at: Option<u64>,
}

impl Default for AuditBudget {
    fn default() -> Self {
        AuditBudget::new(5, 60, 50_000)
    }
}

impl AuditBudget {
    /// A budget of `burst` entries per `window` seconds per (actor, kind), tracking at most
    /// `max_keys` pairs.
    pub fn new(burst: u32, window: u64, max_keys: usize) -> Self {
        AuditBudget {
            burst,
            window: window.max(1),
            max_keys: max_keys.max(1),
            slots: HashMap::new(),
            swept_at: None,
        }
    }

    /// Decides on `event` (of kind `kind`, such as `refused:BadRequest`) at `now`. Returns the
    /// entries to write: the event itself if it is within budget, preceded by the summary of
    /// the previous window of its slot if that one suppressed some. Returns nothing when the
    /// event is over budget (it is counted).
    pub fn admit(&mut self, event: AuditEvent, kind: &str, now: u64) -> Vec<AuditEvent> {
        let mut key = (event.actor.clone(), kind.to_string());
        if !self.slots.contains_key(&key) && self.slots.len() >= self.max_keys {
            let mut out = Vec::new();
            if self.swept_at != Some(now) {
                self.swept_at = Some(now);
                out = self.flush(now);
            }
            if self.slots.len() >= self.max_keys {
                key = (OVERFLOW_ACTOR.to_string(), "overflow".to_string());
                let slot = self.slots.entry(key).or_insert(Slot {
                    device: None,
                    window_start: now,
                    admitted: 0,
                    suppressed: 0,
                });
                slot.suppressed += 1;
                return out;
            }
            out.extend(self.admit(event, kind, now));
            return out;
        }
        let (window, burst) = (self.window, self.burst);
        let slot = self.slots.entry(key.clone()).or_insert(Slot {
            device: event.device.clone(),
            window_start: now,
            admitted: 0,
            suppressed: 0,
        });
        let mut out = Vec::new();
        if now >= slot.window_start.saturating_add(window) {
            out.extend(summary(&key, slot, now));
            slot.window_start = now;
            slot.admitted = 0;
            slot.suppressed = 0;
        }
        if slot.admitted < burst {
            slot.admitted += 1;
            out.push(event);
        } else {
            slot.suppressed += 1;
        }
        out
    }

    /// The summaries of every window that has ended by `now`; forgets the slots that are done.
    pub fn flush(&mut self, now: u64) -> Vec<AuditEvent> {
        let window = self.window;
        let mut out = Vec::new();
        self.slots.retain(|key, slot| {
            if now < slot.window_start.saturating_add(window) {
                return true;
            }
            out.extend(summary(key, slot, now));
            false
        });
        out
    }

    /// Entries counted but not written so far in the open windows.
    pub fn pending(&self) -> u64 {
        self.slots.values().map(|s| s.suppressed).sum()
    }
}

fn summary(key: &(String, String), slot: &Slot, now: u64) -> Option<AuditEvent> {
    (slot.suppressed > 0).then(|| AuditEvent {
        at: now,
        actor: key.0.clone(),
        device: slot.device.clone(),
        action: "audit-suppressed".to_string(),
        detail: format!(
            "{} more `{}` entries from {} since {} were counted, not written",
            slot.suppressed, key.1, key.0, slot.window_start
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{DeviceId, MakerId};

    fn event(serial: &str) -> AuditEvent {
        let id = DeviceId::new(MakerId::of_spki(b"m"), serial).unwrap();
        AuditEvent::device(&id, "refused", "BadRequest: junk", 0)
    }

    #[test]
    fn a_flood_is_summed_up_per_window() {
        let mut budget = AuditBudget::new(3, 60, 100);
        let written: usize = (0..1000)
            .map(|_| budget.admit(event("SN-1"), "refused:BadRequest", 10).len())
            .sum();
        assert_eq!(written, 3);
        assert_eq!(budget.pending(), 997);
        // Another device and another kind have their own budget.
        assert_eq!(
            budget.admit(event("SN-2"), "refused:BadRequest", 10).len(),
            1
        );
        assert_eq!(
            budget.admit(event("SN-1"), "refused:WrongState", 10).len(),
            1
        );
        // The next window starts with the summary of the last one.
        let next = budget.admit(event("SN-1"), "refused:BadRequest", 70);
        assert_eq!(next.len(), 2);
        assert_eq!(next[0].action, "audit-suppressed");
        assert!(next[0].detail.starts_with("997 more"), "{}", next[0].detail);
        assert_eq!(next[0].device, event("SN-1").device);
        // A flush at the end of the window writes what is left and forgets idle slots.
        budget.admit(event("SN-3"), "refused:BadRequest", 200);
        for _ in 0..5 {
            budget.admit(event("SN-3"), "refused:BadRequest", 200);
        }
        let flushed = budget.flush(300);
        assert_eq!(flushed.len(), 1);
        assert!(flushed[0].detail.starts_with("3 more"));
        assert_eq!(budget.pending(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let mut budget = AuditBudget::new(1, 60, 10);
        let written: usize = (0..1000)
            .map(|i| {
                budget
                    .admit(event(&format!("SN-{i}")), "refused:BadRequest", 0)
                    .len()
            })
            .sum();
        assert_eq!(written, 10);
        assert!(budget.slots.len() <= 11);
        assert_eq!(budget.pending(), 990);
    }
}
