//! Several onboarders on one database (replicas) acting as one.
//!
//! - A command for a device goes to the replica that holds the device's session: pushed here
//!   if the session is here, else relayed (the store's [`Relay`], PostgreSQL's NOTIFY) and
//!   pushed by whichever replica holds it; the same for ending a session. A device connected
//!   nowhere finds its orders in its next welcome, as always. Delay: one NOTIFY round trip.
//! - Revocations committed by one replica reach the others' TLS verifiers and CRLs: the
//!   service relays the entries. Manufacturer anchors: it relays that they changed, and every
//!   replica reloads them from the store.
//! - A replica whose channel to the others was lost listens again, and reads everything it
//!   keeps in memory again from the store (it may have missed messages meanwhile).
//! - The PKI the leader changes in the shared data directory (CA and root rollovers, the
//!   registrar's renewal) is loaded by the others when it tells them.
//! - Work that must run once (the campaign engine, CRL signing, the registrar's renewal, the
//!   rollovers) runs on the replica holding the store's `leader` lease, renewed every
//!   [`LEASE_RENEW`]; when that replica dies, another takes the lease once it expired
//!   ([`LEASE_TTL`]). With the embedded store there is one process, always the leader.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use protocol::message::Command;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Control;
use crate::core::DeviceId;
use crate::service::Shared;
use crate::store::Relay;

/// How long the leader's lease lasts without renewal, in seconds.
pub const LEASE_TTL: u64 = 6;
/// How often the leader renews it (and the others try to take it).
pub const LEASE_RENEW: Duration = Duration::from_secs(2);
/// The lease of the work that runs once.
const LEADER: &str = "leader";

/// What one replica tells the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Message {
    /// Push `command` to `device`, if its session is yours.
    Push { device: DeviceId, command: Command },
    /// End `device`'s session, if it is yours.
    Close { device: DeviceId, reason: String },
    /// What every replica keeps in memory changed: reload it.
    Reload(Shared),
    /// The leader published new CRLs: serve them.
    Crls,
    /// The leader changed the PKI in the shared data directory (a rollover, a renewal of the
    /// registrar's certificate): load it.
    Pki,
}

/// A message with its sender.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    message: Message,
}

/// This replica's part among replicas.
pub(super) struct Replicas {
    /// Who this replica is (random, per process).
    pub(super) id: String,
    relay: Option<Arc<dyn Relay>>,
    leader: watch::Sender<bool>,
}

impl Replicas {
    pub(super) fn new(relay: Option<Arc<dyn Relay>>) -> Replicas {
        let mut id = [0u8; 8];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        Replicas {
            id: certs::inspect::hex(&id),
            // Alone, a process leads from the start; among replicas, once it holds the lease.
            leader: watch::Sender::new(relay.is_none()),
            relay,
        }
    }

    /// What the service calls after a commit that changed what replicas keep in memory.
    pub(super) fn teller(&self) -> impl Fn(Shared) + Send + Sync + 'static {
        let (id, relay) = (self.id.clone(), self.relay.clone());
        move |what| send(&id, relay.as_deref(), Message::Reload(what))
    }

    fn send(&self, message: Message) {
        send(&self.id, self.relay.as_deref(), message);
    }
}

/// Relays `message` from replica `from` (nothing to do alone).
fn send(from: &str, relay: Option<&dyn Relay>, message: Message) {
    let Some(relay) = relay else { return };
    for payload in payloads(from, message) {
        if let Err(e) = relay.publish(payload) {
            tracing::warn!("telling the other replicas: {e}");
        }
    }
}

/// `message` as relayed payloads: one, or several when a list of revocations is too long for
/// one (halved until each part fits).
fn payloads(from: &str, message: Message) -> Vec<String> {
    let envelope = Envelope {
        from: from.to_string(),
        message,
    };
    let payload =
        base64::engine::general_purpose::STANDARD.encode(protocol::cbor::to_vec(&envelope));
    match envelope.message {
        Message::Reload(Shared::Revoked(mut entries))
            if payload.len() > crate::store::MAX_RELAYED && entries.len() > 1 =>
        {
            let rest = entries.split_off(entries.len() / 2);
            let mut out = payloads(from, Message::Reload(Shared::Revoked(entries)));
            out.extend(payloads(from, Message::Reload(Shared::Revoked(rest))));
            out
        }
        // Too long and not divisible: the relay refuses it with a warning.
        _ => vec![payload],
    }
}

impl Control {
    /// Whether this replica runs the work that runs once.
    pub fn is_leader(&self) -> bool {
        *self.replicas.leader.borrow()
    }

    /// Resolves once this replica leads (at once if it does).
    pub async fn leading(&self) {
        let mut leader = self.replicas.leader.subscribe();
        let _ = leader.wait_for(|l| *l).await;
    }

    /// Pushes `command` to `device` where its session is: here, or through the other
    /// replicas. Whether this replica's session accepted it (`false` when relayed).
    pub(super) async fn deliver(&self, device: &DeviceId, command: &Command) -> bool {
        if self.sessions.is_connected(device) {
            match self.sessions.push(device, command).await {
                Ok(protocol::message::CommandReply::Accepted) => return true,
                Ok(other) => tracing::info!(%device, "command answered {other:?}"),
                // The device gets the order in its next welcome.
                Err(e) => tracing::debug!(%device, "push failed: {e}"),
            }
            return false;
        }
        self.replicas.send(Message::Push {
            device: device.clone(),
            command: command.clone(),
        });
        false
    }

    /// Tells the other replicas that the leader published CRLs.
    pub(super) fn relay_crls(&self) {
        self.replicas.send(Message::Crls);
    }

    /// Tells the other replicas that the PKI on disk changed.
    pub(super) fn relay_pki(&self) {
        self.replicas.send(Message::Pki);
    }

    /// Ends `device`'s session, wherever it is.
    pub(super) fn close_everywhere(&self, device: &DeviceId, reason: &str) {
        self.sessions.close(device, reason);
        self.replicas.send(Message::Close {
            device: device.clone(),
            reason: reason.to_string(),
        });
    }

    /// Carries out the other replicas' messages until `stop` turns true. When the channel is
    /// lost (the database restarted, a network cut) it listens again, every [`LEASE_RENEW`]
    /// until it can, then catches up on what it may have missed.
    pub async fn run_replica_messages(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(relay) = self.replicas.relay.clone() else {
            return;
        };
        let mut lost = false;
        loop {
            let mut messages = match relay.subscribe() {
                Ok(rx) => rx,
                Err(e) => {
                    tracing::error!("listening to the other replicas: {e}");
                    lost = true;
                    tokio::select! {
                        changed = stop.changed() => {
                            if changed.is_err() || *stop.borrow() {
                                return;
                            }
                        }
                        () = tokio::time::sleep(LEASE_RENEW) => {}
                    }
                    continue;
                }
            };
            if lost {
                self.catch_up().await;
            }
            loop {
                let payload = tokio::select! {
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() {
                            return;
                        }
                        continue;
                    }
                    payload = messages.recv() => payload,
                };
                match payload {
                    Some(payload) => self.take_message(&payload).await,
                    None => {
                        tracing::warn!(
                            "the channel to the other replicas was lost; listening again"
                        );
                        lost = true;
                        break;
                    }
                }
            }
        }
    }

    /// Reads again what the other replicas may have told while this one was not listening:
    /// revocations and anchors, the PKI on disk, the CRLs; the leader rebuilds its job index.
    async fn catch_up(&self) {
        let service = self.service.clone();
        if let Err(e) = super::blocking(move || service.reload_all().map_err(Into::into)).await {
            tracing::error!("reading the revocations and anchors again: {e}");
        }
        self.take_pki().await;
        if self.is_leader() {
            self.service.forget_jobs();
        }
        if let Err(e) = self.publish_crls().await {
            tracing::error!("taking the leader's CRLs: {e}");
        }
    }

    /// Loads the PKI the leader changed in the shared data directory.
    async fn take_pki(&self) {
        let (dir, config) = (self.dir.clone(), self.config.clone());
        let loaded = super::blocking(move || crate::pki::load(&dir, &config)).await;
        if let Err(e) = loaded.and_then(|pki| self.adopt(pki)) {
            tracing::error!("taking the leader's PKI: {e}");
        }
    }

    /// Carries out one relayed message (not this replica's own).
    async fn take_message(self: &Arc<Self>, payload: &str) {
        let Some(envelope) = base64::engine::general_purpose::STANDARD
            .decode(payload.as_bytes())
            .ok()
            .and_then(|b| {
                protocol::cbor::from_slice::<Envelope>(&b, crate::store::MAX_RELAYED).ok()
            })
        else {
            tracing::warn!("an unreadable message from a replica");
            return;
        };
        if envelope.from == self.replicas.id {
            return;
        }
        match envelope.message {
            Message::Push { device, command } => {
                if self.sessions.is_connected(&device) {
                    let this = self.clone();
                    tokio::spawn(async move { this.push_relayed(device, command).await });
                }
            }
            Message::Close { device, reason } => self.sessions.close(&device, &reason),
            Message::Reload(what) => {
                if let Err(e) = self.service.reload(what) {
                    tracing::error!("taking in another replica's change: {e}");
                }
            }
            Message::Pki => self.take_pki().await,
            Message::Crls => {
                if let Err(e) = self.publish_crls().await {
                    tracing::error!("taking the leader's CRLs: {e}");
                }
            }
        }
    }

    /// Pushes a command another replica relayed, and records what its acceptance means here
    /// (what the sender does with the acceptances of its own pushes).
    async fn push_relayed(&self, device: DeviceId, command: Command) {
        match self.sessions.push(&device, &command).await {
            Ok(protocol::message::CommandReply::Accepted) => {
                if let Command::TrustAnchors { anchors } = &command {
                    let digest = protocol::message::anchors_digest(anchors);
                    if let Err(e) = self.service.anchors_accepted(&[device], digest).await {
                        tracing::warn!("recording the roots a device took: {e}");
                    }
                }
            }
            Ok(other) => tracing::info!(%device, "relayed command answered {other:?}"),
            Err(e) => tracing::debug!(%device, "relayed command not pushed: {e}"),
        }
    }

    /// Takes or renews the leader's lease once (alone: always the leader); whether this
    /// replica leads now.
    pub async fn claim_leadership(&self) -> bool {
        if self.replicas.relay.is_none() {
            return true;
        }
        let store = self.service.store().clone();
        let id = self.replicas.id.clone();
        let held = tokio::task::spawn_blocking(move || store.lease(LEADER, &id, LEASE_TTL))
            .await
            .ok()
            .and_then(|r| {
                r.map_err(|e| tracing::warn!("the leader's lease: {e}"))
                    .ok()
            })
            .unwrap_or(false);
        if held != self.is_leader() {
            tracing::info!(replica = %self.replicas.id, leader = held, "leadership changed");
            if held {
                self.service.forget_jobs();
            }
            self.replicas.leader.send_replace(held);
        }
        held
    }

    /// Holds (or waits for) the leader's lease until `stop` turns true.
    pub async fn run_leadership(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.replicas.relay.is_none() {
            return;
        }
        loop {
            let was_leader = self.is_leader();
            // A replica that comes to lead (its predecessor died) first finishes what the
            // predecessor left half done, as a replica leading at start does.
            if self.claim_leadership().await
                && !was_leader
                && let Err(e) = self.resume().await
            {
                tracing::error!("finishing what the previous leader left: {e}");
            }
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                () = tokio::time::sleep(LEASE_RENEW) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::MakerId;
    use crate::store::Revocation;

    fn revocation(i: u32) -> Revocation {
        Revocation {
            cert_serial: format!("{i:040x}"),
            issuer: vec![7; 20],
            device: DeviceId::new(MakerId::of_spki(b"maker"), &format!("SN-{i:08}")).unwrap(),
            reason: certs::crl::Reason::Superseded,
            revoked_at: 1_700_000_000,
            effective_at: 1_700_000_600,
            not_after: 1_800_000_000,
        }
    }

    fn decode(payload: &str) -> Envelope {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        protocol::cbor::from_slice(&bytes, crate::store::MAX_RELAYED).unwrap()
    }

    #[test]
    fn a_long_list_of_revocations_is_relayed_in_parts_that_fit() {
        let all: Vec<Revocation> = (0..500).map(revocation).collect();
        let parts = payloads("r1", Message::Reload(Shared::Revoked(all.clone())));
        assert!(parts.len() > 1);
        let mut relayed = Vec::new();
        for part in &parts {
            assert!(part.len() <= crate::store::MAX_RELAYED, "{}", part.len());
            let envelope = decode(part);
            assert_eq!(envelope.from, "r1");
            match envelope.message {
                Message::Reload(Shared::Revoked(entries)) => relayed.extend(entries),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(relayed, all);
    }

    #[test]
    fn a_short_message_is_relayed_whole() {
        let parts = payloads("r1", Message::Reload(Shared::Revoked(vec![revocation(1)])));
        assert_eq!(parts.len(), 1);
        assert!(matches!(
            decode(&parts[0]).message,
            Message::Reload(Shared::Revoked(entries)) if entries == vec![revocation(1)]
        ));
    }
}
