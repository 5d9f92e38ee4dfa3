use super::*;
use crate::brski::{Encoding, RegistrarRequest};
use crate::ca::{Ca, CaName, Validity, random_serial};
use crate::factory::ManufacturerConfig;
use crate::key::{KeyKind, KeyPair};
use crate::profile::issue_registrar;
use protocol::voucher::{Assertion, VoucherRequest};

const NOW: u64 = 1_790_000_000;

/// An owner: its root and a registrar certificate under it.
struct Owner {
    root: Ca,
    registrar_key: KeyPair,
    registrar_cert: Vec<u8>,
}

fn owner(name: &str) -> Owner {
    let root = Ca::root(
        &CaName {
            organization: name.into(),
            common_name: format!("{name} Root"),
        },
        KeyPair::generate(KeyKind::P256).unwrap(),
        Validity::starting(NOW - 10, 86_400),
        &random_serial().unwrap(),
    )
    .unwrap();
    let registrar_key = KeyPair::generate(KeyKind::P256).unwrap();
    let registrar_cert = issue_registrar(
        &root,
        name,
        &["registrar.example".into()],
        &registrar_key,
        Validity::starting(NOW - 10, 86_400),
        &random_serial().unwrap(),
    )
    .unwrap();
    Owner {
        root,
        registrar_key,
        registrar_cert,
    }
}

/// A pledge's CMS request, and the registrar's request carrying it, for `serial`.
fn requests(
    maker: &Manufacturer,
    owner: &Owner,
    serial: &str,
    registrar_nonce: Option<Vec<u8>>,
) -> (Vec<u8>, Vec<u8>) {
    let birth = maker.mint(serial, KeyKind::P256, NOW).unwrap();
    let pledge = VoucherRequest {
        created_on: NOW,
        assertion: Assertion::Proximity,
        serial_number: serial.into(),
        nonce: vec![7; 16],
        proximity_registrar_cert: owner.registrar_cert.clone(),
        session_binding: Vec::new(),
    };
    let signed = crate::cms::sign(
        brski::OID_JSON_VOUCHER,
        &brski::request_json(&pledge),
        &birth.key,
        &birth.identity.idevid,
        &[],
        NOW,
    )
    .unwrap();
    let rvr = brski::sign_registrar_request(
        &RegistrarRequest {
            created_on: NOW,
            serial_number: serial.into(),
            nonce: registrar_nonce.unwrap_or(pledge.nonce),
            prior_signed_voucher_request: signed.clone(),
        },
        &owner.registrar_key,
        &owner.registrar_cert,
        &[owner.root.cert_der()],
        NOW,
    )
    .unwrap();
    (signed, rvr)
}

fn maker() -> Manufacturer {
    Manufacturer::create(ManufacturerConfig::new("Acme"), NOW - 10).unwrap()
}

#[test]
fn a_known_registrar_gets_a_nonced_cms_voucher_pinning_its_owner_and_it_is_logged() {
    let (acme, ours) = (maker(), owner("Ours"));
    let (_, rvr) = requests(&acme, &ours, "SN-1", None);
    let masa_key = acme.masa_key().public_key();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log.jsonl");
    let masa = MasaService::new(acme, vec![ours.root.cert_der().to_vec()], Some(&log)).unwrap();
    let signed = masa.request_voucher(&rvr, NOW).unwrap();
    assert_eq!(Encoding::of(&signed), Encoding::Cms);
    let voucher = brski::open_voucher(&signed, &masa_key).unwrap();
    assert_eq!(voucher.serial_number, "SN-1");
    assert_eq!(voucher.nonce, Some(vec![7; 16]));
    assert_eq!(voucher.pinned_domain_cert, ours.root.cert_der());

    // The log survives a restart.
    let (acme, ours2) = (maker(), ours);
    drop(acme);
    let masa = MasaService::new(maker(), vec![ours2.root.cert_der().to_vec()], Some(&log)).unwrap();
    assert_eq!(masa.log.lock().unwrap().len(), 1);
    assert_eq!(masa.log.lock().unwrap()[0].serial, "SN-1");
}

#[test]
fn the_audit_log_lists_the_vouchers_of_the_device() {
    let (acme, ours) = (maker(), owner("Ours"));
    let (_, rvr) = requests(&acme, &ours, "SN-1", None);
    let (_, other) = requests(&acme, &ours, "SN-2", None);
    let masa = MasaService::new(acme, vec![ours.root.cert_der().to_vec()], None).unwrap();
    masa.request_voucher(&rvr, NOW).unwrap();
    masa.request_voucher(&rvr, NOW + 1).unwrap();
    masa.request_voucher(&other, NOW).unwrap();
    let log: serde_json::Value =
        serde_json::from_slice(&masa.audit_log(&rvr, NOW).unwrap()).unwrap();
    assert_eq!(log["version"], "1");
    let events = log["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{log}");
    assert_eq!(events[0]["nonce"], B64.encode([7; 16]));
    let ski = CertInfo::parse(ours.root.cert_der())
        .unwrap()
        .subject_key_id
        .unwrap();
    assert_eq!(events[0]["domainID"], B64.encode(ski));
}

#[test]
fn strangers_other_makers_devices_and_mismatched_nonces_are_refused() {
    let (acme, ours, theirs) = (maker(), owner("Ours"), owner("Theirs"));
    let (_, from_stranger) = requests(&acme, &theirs, "SN-1", None);
    let (_, wrong_nonce) = requests(&acme, &ours, "SN-1", Some(vec![8; 16]));
    let other_maker = maker();
    let (_, not_ours) = requests(&other_maker, &ours, "SN-1", None);
    let masa = MasaService::new(acme, vec![ours.root.cert_der().to_vec()], None).unwrap();
    assert!(matches!(
        masa.request_voucher(&from_stranger, NOW),
        Err(MasaError::UnknownRegistrar(_))
    ));
    assert!(matches!(
        masa.request_voucher(&wrong_nonce, NOW),
        Err(MasaError::Refused(_))
    ));
    assert!(matches!(
        masa.request_voucher(&not_ours, NOW),
        Err(MasaError::Refused(_))
    ));
    assert!(matches!(
        masa.request_voucher(b"garbage", NOW),
        Err(MasaError::BadRequest(_))
    ));
    // Nothing was logged.
    let (_, rvr) = requests(masa.manufacturer(), &ours, "SN-1", None);
    let log: serde_json::Value =
        serde_json::from_slice(&masa.audit_log(&rvr, NOW).unwrap()).unwrap();
    assert_eq!(log["events"].as_array().unwrap().len(), 0);
}
