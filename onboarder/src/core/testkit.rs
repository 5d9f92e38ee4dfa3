//! What the core's unit tests share: a manufacturer, an owner with its issuing CA and registrar,
//! devices at each step of their life, a fixed clock and fixed entropy. Real keys and
//! certificates, no I/O.

use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{Birth, Ca, CaName, KeyKind, KeyPair, Validity};
use protocol::message::{Response, Status};

use super::decision::Decision;
use super::identity::{DeviceId, MakerId};
use super::peer::DevicePeer;
use super::policy::{Entropy, IssuingCa, OwnerRoots, Registrar};
use super::record::DeviceRecord;
use super::state::DeviceState;
use crate::config::Config;

/// The fixed "now" of every test.
pub(crate) const NOW: u64 = 1_800_000_000;
/// The session binding of every test session.
pub(crate) const BINDING: [u8; 32] = [7; 32];

/// Fixed entropy; `n` makes the certificate serial (and passphrase) distinct.
pub(crate) fn entropy(n: u8) -> Entropy {
    let mut cert_serial = [n; 16];
    cert_serial[0] = 0x11;
    Entropy {
        cert_serial,
        psk: [n; 16],
    }
}

/// A manufacturer and an owner.
pub(crate) struct Kit {
    pub(crate) maker: Manufacturer,
    pub(crate) maker_id: MakerId,
    pub(crate) owner_root: Vec<u8>,
    pub(crate) registrar: Registrar,
}

fn name(o: &str) -> CaName {
    CaName {
        organization: o.into(),
        common_name: format!("{o} CA"),
    }
}

impl Kit {
    pub(crate) fn new() -> Kit {
        let maker = Manufacturer::create(ManufacturerConfig::new("Kit Devices"), NOW).unwrap();
        let maker_id =
            MakerId::of_spki(&certs::CertInfo::parse(maker.root_cert()).unwrap().spki_der);
        let serial = certs::ca::random_serial().unwrap();
        let root = Ca::root(
            &name("Owner"),
            KeyPair::generate(KeyKind::P256).unwrap(),
            Validity::starting(NOW - 10, 10 * 365 * 86_400),
            &serial,
        )
        .unwrap();
        let issuing = root
            .intermediate(
                &name("Owner Issuing"),
                KeyPair::generate(KeyKind::P256).unwrap(),
                Validity::starting(NOW - 10, 5 * 365 * 86_400),
                &certs::ca::random_serial().unwrap(),
            )
            .unwrap();
        let server_key = KeyPair::generate(KeyKind::P256).unwrap();
        let registrar_cert = certs::profile::issue_registrar(
            &issuing,
            "Owner",
            &["onboarder.local".to_string()],
            &server_key,
            Validity::starting(NOW - 10, 365 * 86_400),
            &certs::ca::random_serial().unwrap(),
        )
        .unwrap();
        let key_id = certs::CertInfo::parse(issuing.cert_der())
            .unwrap()
            .subject_key_id
            .unwrap();
        let owner_root = root.cert_der().to_vec();
        Kit {
            maker,
            maker_id,
            registrar: Registrar {
                registrar_cert,
                previous_registrar_cert: None,
                issuing: IssuingCa {
                    generation: 1,
                    chain: vec![issuing.cert_der().to_vec(), owner_root.clone()],
                    ca: issuing,
                    key_id,
                    retired_at: None,
                },
                retired: Vec::new(),
                roots: OwnerRoots::new(vec![owner_root.clone()], Vec::new()),
                policy: Config::new("Owner").policy,
            },
            owner_root,
        }
    }

    /// The id of this maker's device `serial`.
    pub(crate) fn id(&self, serial: &str) -> DeviceId {
        DeviceId::new(self.maker_id.clone(), serial).unwrap()
    }

    /// A device fresh from the factory, and the peer its IDevID makes.
    pub(crate) fn device(&self, serial: &str) -> (Birth, DevicePeer) {
        let birth = self.maker.mint(serial, KeyKind::P256, NOW).unwrap();
        let peer = DevicePeer::from_certificate(
            &birth.identity.idevid,
            |_| false,
            || Some(self.maker_id.clone()),
        )
        .unwrap();
        (birth, peer)
    }

    /// The record of an expected device, with this maker's voucher for it.
    pub(crate) fn expected(&self, serial: &str) -> DeviceRecord {
        let voucher = self
            .maker
            .voucher(serial, &self.owner_root, NOW - 60, NOW + 86_400)
            .unwrap();
        DeviceRecord::expected(self.id(serial), voucher, Some(NOW + 86_400), NOW - 60)
    }

    /// A voucher request from the device `birth` in the test session.
    pub(crate) fn voucher_request(&self, birth: &Birth) -> Vec<u8> {
        device_agent::machine::onboarding::voucher_request(
            &birth.identity,
            &[1; 16],
            &self.registrar.registrar_cert,
            &BINDING,
            NOW,
        )
        .sign(&birth.key)
        .unwrap()
    }

    /// A CSR for `key`, bound to the test session.
    pub(crate) fn csr(&self, serial: &str, key: &KeyPair) -> Vec<u8> {
        certs::csr::build_csr(serial, key, &BINDING).unwrap()
    }

    /// Carries `record` through a decision, as the service would write it.
    pub(crate) fn apply(record: DeviceRecord, decision: &Decision) -> DeviceRecord {
        decision.write.clone().unwrap_or(record)
    }

    /// A device onboarded to the end: its active record, its LDevID key, and the peer its
    /// LDevID makes.
    pub(crate) fn onboarded(&self, serial: &str) -> (DeviceRecord, KeyPair, DevicePeer) {
        let (_, idevid) = self.device(serial);
        let mut record = self.expected(serial);
        let ok = Status {
            ok: true,
            reason: None,
        };
        let d =
            super::onboard::voucher_status(&idevid, Some(record.clone()), ok.clone(), NOW).unwrap();
        record = Kit::apply(record, &d);
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let d = super::onboard::enroll(
            &self.registrar,
            &idevid,
            Some(record.clone()),
            &self.csr(serial, &key),
            &BINDING,
            NOW,
            entropy(1),
        )
        .unwrap();
        let Response::Enrolled(enrollment) = &d.response else {
            panic!("not enrolled: {:?}", d.response)
        };
        let ldevid = enrollment.certificate.clone();
        record = Kit::apply(record, &d);
        let d = super::onboard::enroll_status(&idevid, Some(record.clone()), ok, NOW).unwrap();
        record = Kit::apply(record, &d);
        assert_eq!(record.state, DeviceState::Active);
        let peer =
            DevicePeer::from_certificate(&ldevid, |k| self.registrar.is_ours(k), || None).unwrap();
        (record, key, peer)
    }
}
