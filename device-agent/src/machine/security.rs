//! The device's security events, kept in its state until the server acknowledges them: numbered
//! by a counter that never goes back (it survives restarts with the state), and bounded (the
//! oldest go first when the server is out of reach for long; their numbers tell the server
//! they were lost).

use protocol::message::{
    MAX_SECURITY_DETAIL, MAX_SECURITY_EVENTS, SecurityEvent, SecurityEventKind,
};

use super::AgentState;

/// Events kept while the server is out of reach.
pub const MAX_PENDING: usize = MAX_SECURITY_EVENTS;

/// `state` with the event recorded.
pub fn recorded(state: &AgentState, kind: SecurityEventKind, detail: &str, at: u64) -> AgentState {
    let mut next = state.clone();
    let mut detail = detail.to_string();
    if detail.len() > MAX_SECURITY_DETAIL {
        let mut cut = MAX_SECURITY_DETAIL;
        while !detail.is_char_boundary(cut) {
            cut -= 1;
        }
        detail.truncate(cut);
    }
    next.security_events.push(SecurityEvent {
        sequence: next.security_sequence,
        at,
        kind,
        detail,
    });
    next.security_sequence += 1;
    if next.security_events.len() > MAX_PENDING {
        let excess = next.security_events.len() - MAX_PENDING;
        next.security_events.drain(..excess);
    }
    next
}

/// `state` once the server acknowledged the events up to `last` (their sequence numbers).
pub fn delivered(state: &AgentState, last: u64) -> AgentState {
    let mut next = state.clone();
    next.security_events.retain(|e| e.sequence > last);
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_bounded_and_cleared_once_delivered() {
        let mut state = AgentState::factory("1.0.0");
        for i in 0..(MAX_PENDING + 3) {
            state = recorded(&state, SecurityEventKind::ClockJump, &format!("{i}"), 1);
        }
        assert_eq!(state.security_events.len(), MAX_PENDING);
        assert_eq!(state.security_events[0].sequence, 3);
        assert_eq!(state.security_sequence, MAX_PENDING as u64 + 3);
        let state = delivered(&state, 10);
        assert_eq!(state.security_events[0].sequence, 11);
        let long = recorded(&state, SecurityEventKind::Tamper, &"é".repeat(400), 1);
        assert!(long.security_events.last().unwrap().detail.len() <= MAX_SECURITY_DETAIL);
    }
}
