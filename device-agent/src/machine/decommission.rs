//! End of life on the device: what the attestation says, and the state before and after the
//! server acknowledged it.

use certs::Identity;
use protocol::attestation::{WipeAttestation, WipeMethod, WipedTarget};

use super::AgentState;

/// What the device attests after wiping `targets` with `method` for the order `nonce`.
pub struct Wiped<'a> {
    /// The device's birth identity (serial, maker, model).
    pub identity: &'a Identity,
    /// The agent's version.
    pub agent_version: &'a str,
    /// The server's nonce.
    pub nonce: Vec<u8>,
    /// The method asked for.
    pub method: WipeMethod,
    /// What was wiped, and how it checked.
    pub targets: Vec<WipedTarget>,
    /// When the wipe started and ended.
    pub started_on: u64,
    /// End.
    pub finished_on: u64,
    /// The data handed back before the wipe, if the order asked.
    pub exported: Option<protocol::attestation::ExportedData>,
}

/// The attestation of a wipe, unsigned.
pub fn attestation(state: &AgentState, wiped: Wiped<'_>) -> WipeAttestation {
    WipeAttestation {
        serial: wiped.identity.serial.clone(),
        manufacturer: wiped.identity.product.vendor_id.clone(),
        model: wiped.identity.product.class_id.clone(),
        firmware_version: state.firmware_version.clone(),
        agent_version: wiped.agent_version.into(),
        nonce: wiped.nonce,
        method: wiped.method,
        targets: wiped.targets,
        started_on: wiped.started_on,
        finished_on: wiped.finished_on,
        exported: wiped.exported,
    }
}

/// The state once wiped: the signed attestation kept until the server has it, the network
/// credentials gone.
pub fn wiped(state: &AgentState, signed: Vec<u8>) -> AgentState {
    let mut next = state.clone();
    next.pending_attestation = Some(signed);
    next.network = None;
    next
}

/// The factory state the device returns to once the server acknowledged its attestation. The
/// firmware is the device's, not the owner's: its version and anti-rollback counter survive.
pub fn factory_after(state: &AgentState) -> AgentState {
    let mut factory = AgentState::factory(&state.firmware_version);
    factory.firmware_sequence = state.firmware_sequence;
    factory.firmware_digest = state.firmware_digest.clone();
    factory
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_firmware_survives_the_return_to_the_factory_state() {
        let mut state = AgentState::factory("1.0.0");
        state.firmware_version = "2.0.0".into();
        state.firmware_sequence = 7;
        state.firmware_digest = Some(vec![1]);
        state.ldevid = Some(vec![2]);
        let w = wiped(&state, vec![3]);
        assert_eq!(w.pending_attestation, Some(vec![3]));
        assert!(w.network.is_none());
        let f = factory_after(&w);
        assert_eq!(f.firmware_sequence, 7);
        assert_eq!(f.firmware_version, "2.0.0");
        assert!(f.ldevid.is_none() && f.pending_attestation.is_none());
    }
}
