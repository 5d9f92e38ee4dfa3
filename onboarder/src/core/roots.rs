//! The owner-root rollover's rules: what each device must be sent and has confirmed, what still
//! depends on the old root, and when the rollover may take its next step.
//!
//! The rollover goes through three phases, each of which waits for the fleet:
//!
//! ```text
//! distributing --every active device trusts old+new--> moving --issuing CA and registrar
//!   under the new root, every device ordered to re-key--> retiring --nothing live chains
//!   to the old root--> retired (the old root leaves the server, the devices and EST)
//! ```
//!
//! A new root is thus on every device before anything it signs is used, and the old one goes
//! only when nothing needs it. A device that was away during distribution still connects: the
//! server presents the NewWithOld cross-certificate until the old root retires, and the
//! device's next welcome carries the new set before any rotation.

use protocol::message::{Command, Hello};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::decision::Decision;
use super::error::LifecycleError;
use super::identity::DeviceId;
use super::policy::Registrar;
use super::record::DeviceRecord;
use super::state::DeviceState;

/// Where an owner-root rollover stands.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootPhase {
    /// The new root is published beside the old one; devices are being sent both.
    Distributing,
    /// Devices have the new root: the issuing CA and the registrar move under it.
    Moving,
    /// Everything new is under the new root; waiting for the last certificates under the old
    /// one to be replaced.
    Retiring,
}

impl std::fmt::Display for RootPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RootPhase::Distributing => "distributing",
            RootPhase::Moving => "moving",
            RootPhase::Retiring => "retiring",
        })
    }
}

/// An owner-root rollover decided and not yet finished.
#[derive(utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRollover {
    /// The generation of the new root (the old one is the one before).
    pub generation: u32,
    /// Where it stands.
    pub phase: RootPhase,
    /// When it was decided.
    pub decided_at: u64,
    /// When it entered its phase.
    pub phase_at: u64,
}

/// What holds a rollover in its phase, device by device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootProgress {
    /// Active devices that said what they trust, and not yet the roots in force. A device
    /// that never says (an EST client, an older agent) cannot confirm and is not waited for:
    /// it learns the new root from EST `cacerts` (RFC 7030 4.1.3) or its next welcome.
    pub awaiting_anchors: Vec<DeviceId>,
    /// Devices with a live certificate (issued or active, not expired) issued under the old
    /// root.
    pub under_old_root: Vec<DeviceId>,
    /// Devices not yet onboarded whose voucher pins the old root (they would refuse the
    /// registrar once it retires): import vouchers pinning the new root for them.
    pub vouchers_for_old_root: Vec<DeviceId>,
}

/// What the next step of a rollover is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootStep {
    /// Nothing yet: the phase is waiting for devices.
    Wait,
    /// Move the issuing CA and the registrar under the new root.
    Move,
    /// Retire the old root.
    Retire,
}

impl RootRollover {
    /// The next step, given what holds the rollover. Distribution waits for every active
    /// device, but no longer than `distribution_wait` seconds (a device away that long gets
    /// the new roots in its next welcome, through the cross-certificate); retirement waits
    /// for nothing to depend on the old root, however long that takes.
    pub fn next_step(&self, progress: &RootProgress, now: u64, distribution_wait: u64) -> RootStep {
        match self.phase {
            RootPhase::Distributing
                if progress.awaiting_anchors.is_empty()
                    || now >= self.phase_at.saturating_add(distribution_wait) =>
            {
                RootStep::Move
            }
            RootPhase::Distributing => RootStep::Wait,
            RootPhase::Moving => RootStep::Move,
            RootPhase::Retiring
                if progress.under_old_root.is_empty()
                    && progress.vouchers_for_old_root.is_empty() =>
            {
                RootStep::Retire
            }
            RootPhase::Retiring => RootStep::Wait,
        }
    }
}

impl RootProgress {
    /// Notes what `record` holds back: the roots in force are `reg.roots`, and `old_root`
    /// (DER) is the one retiring.
    pub fn note(&mut self, reg: &Registrar, old_root: &[u8], record: &DeviceRecord, now: u64) {
        let finished = matches!(
            record.state,
            DeviceState::Decommissioned | DeviceState::DecommissionedUnattested
        );
        if finished {
            return;
        }
        if record.state == DeviceState::Active
            && record
                .anchors
                .as_ref()
                .is_some_and(|d| d.as_slice() != reg.roots.digest.as_slice())
        {
            self.awaiting_anchors.push(record.id.clone());
        }
        let old_issuers: Vec<&[u8]> = reg
            .generations()
            .filter(|g| g.chain.last().map(Vec::as_slice) == Some(old_root))
            .map(|g| g.key_id.as_slice())
            .collect();
        if record
            .certificates
            .iter()
            .any(|c| c.is_live() && c.not_after > now && old_issuers.contains(&c.issuer.as_slice()))
        {
            self.under_old_root.push(record.id.clone());
        }
        if record.state == DeviceState::Expected
            && let Some(voucher) = &record.voucher
            && certs::brski::parse_voucher_unverified(voucher)
                .is_ok_and(|v| v.pinned_domain_cert == old_root)
        {
            self.vouchers_for_old_root.push(record.id.clone());
        }
    }
}

/// The command that gives a device the roots in force, if its hello says it trusts another
/// set (or does not say).
pub(crate) fn anchors_command(reg: &Registrar, hello: &Hello) -> Option<Command> {
    (hello.anchors.as_ref().map(|d| d.as_slice()) != Some(reg.roots.digest.as_slice())).then(|| {
        Command::TrustAnchors {
            anchors: reg
                .roots
                .trusted
                .iter()
                .cloned()
                .map(ByteBuf::from)
                .collect(),
        }
    })
}

/// A device confirmed that it trusts the roots whose digest is `digest` (it accepted a
/// `TrustAnchors` command): recorded, so the rollover knows it may go on.
pub fn anchors_accepted(
    record: Option<DeviceRecord>,
    id: &DeviceId,
    digest: &[u8; 32],
    now: u64,
) -> Result<Decision, LifecycleError> {
    let mut record = record.ok_or_else(|| LifecycleError::UnknownDevice(id.clone()))?;
    if record.anchors.as_deref() == Some(digest.as_slice()) {
        return Ok(Decision::reply(protocol::message::Response::Ack));
    }
    record.anchors = Some(digest.to_vec());
    record.updated_at = now;
    Ok(Decision::ack(record, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testkit::{Kit, NOW};

    fn rollover(phase: RootPhase) -> RootRollover {
        RootRollover {
            generation: 2,
            phase,
            decided_at: NOW,
            phase_at: NOW,
        }
    }

    #[test]
    fn distribution_waits_for_every_active_device_or_its_deadline() {
        let waiting = RootProgress {
            awaiting_anchors: vec![Kit::new().id("SN-1")],
            ..RootProgress::default()
        };
        let r = rollover(RootPhase::Distributing);
        assert_eq!(r.next_step(&waiting, NOW + 10, 60), RootStep::Wait);
        assert_eq!(r.next_step(&waiting, NOW + 60, 60), RootStep::Move);
        assert_eq!(
            r.next_step(&RootProgress::default(), NOW, 60),
            RootStep::Move
        );
        assert_eq!(
            rollover(RootPhase::Moving).next_step(&waiting, NOW, 60),
            RootStep::Move
        );
    }

    #[test]
    fn retirement_waits_for_every_certificate_and_voucher_under_the_old_root() {
        let r = rollover(RootPhase::Retiring);
        let id = Kit::new().id("SN-1");
        for held in [
            RootProgress {
                under_old_root: vec![id.clone()],
                ..RootProgress::default()
            },
            RootProgress {
                vouchers_for_old_root: vec![id.clone()],
                ..RootProgress::default()
            },
        ] {
            assert_eq!(r.next_step(&held, NOW + 1_000_000_000, 0), RootStep::Wait);
        }
        assert_eq!(
            r.next_step(&RootProgress::default(), NOW, 0),
            RootStep::Retire
        );
    }

    #[test]
    fn a_device_is_held_for_what_it_trusts_holds_and_was_vouched() {
        let kit = Kit::new();
        let old_root = kit.owner_root.clone();
        let mut progress = RootProgress::default();
        // Expected, with a voucher pinning the old root.
        let expected = kit.expected("SN-1");
        progress.note(&kit.registrar, &old_root, &expected, NOW);
        assert_eq!(
            progress.vouchers_for_old_root,
            std::slice::from_ref(&expected.id)
        );
        assert!(progress.awaiting_anchors.is_empty());

        // Active, with a certificate of the (only) generation, under the old root. Until it
        // says what it trusts it is not waited for; once it says another set, it is.
        let (mut active, _, _) = kit.onboarded("SN-2");
        let mut p = RootProgress::default();
        p.note(&kit.registrar, &old_root, &active, NOW);
        assert!(p.awaiting_anchors.is_empty());
        assert_eq!(p.under_old_root, [active.id.clone()]);
        active.anchors = Some(vec![0; 32]);
        let mut p = RootProgress::default();
        p.note(&kit.registrar, &old_root, &active, NOW);
        assert_eq!(p.awaiting_anchors, [active.id.clone()]);
        // Once it confirms the roots in force, only its certificate holds.
        let confirmed = anchors_accepted(
            Some(active.clone()),
            &active.id,
            &kit.registrar.roots.digest,
            NOW,
        )
        .unwrap()
        .write
        .unwrap();
        let mut p = RootProgress::default();
        p.note(&kit.registrar, &old_root, &confirmed, NOW);
        assert!(p.awaiting_anchors.is_empty());
        // Confirming again writes nothing.
        let again = anchors_accepted(
            Some(confirmed.clone()),
            &confirmed.id,
            &kit.registrar.roots.digest,
            NOW,
        )
        .unwrap();
        assert!(again.write.is_none());
        // Under another root, nothing holds it.
        let mut p = RootProgress::default();
        p.note(&kit.registrar, b"another root", &confirmed, NOW);
        assert!(p.under_old_root.is_empty());
        // An unknown device is refused.
        assert!(matches!(
            anchors_accepted(None, &active.id, &kit.registrar.roots.digest, NOW),
            Err(LifecycleError::UnknownDevice(_))
        ));
    }

    #[test]
    fn a_hello_that_trusts_other_roots_is_sent_the_roots_in_force() {
        let kit = Kit::new();
        let mut hello = Hello {
            agent_version: "a".into(),
            firmware_version: "1".into(),
            firmware_sequence: 0,
            class_id: String::new(),
            hardware: Default::default(),
            anchors: None,
        };
        let expected = Command::TrustAnchors {
            anchors: vec![ByteBuf::from(kit.owner_root.clone())],
        };
        assert_eq!(anchors_command(&kit.registrar, &hello), Some(expected));
        hello.anchors = Some(ByteBuf::from(kit.registrar.roots.digest.to_vec()));
        assert_eq!(anchors_command(&kit.registrar, &hello), None);
    }
}
