//! The certificate profiles, end to end through the manufacturer and an owner CA.

use certs::ca::{NO_EXPIRY, random_serial};
use certs::chain::{self, Usage};
use certs::csr::{CsrPolicy, build_csr, check_csr};
use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::profile::{issue_ldevid, issue_registrar};
use certs::{Birth, Ca, CaName, CertInfo, ChainError, Identity, KeyKind, KeyPair, Validity};
use protocol::voucher::{Voucher, VoucherExpectation};

const NOW: u64 = 1_790_000_000;

fn manufacturer() -> Manufacturer {
    let config = ManufacturerConfig {
        mud_url: Some("https://mud.example.com/sensor-1".into()),
        masa_url: Some("masa.example.com".into()),
        ..ManufacturerConfig::new("Acme")
    };
    Manufacturer::create(config, NOW).unwrap()
}

fn owner() -> (Ca, Ca) {
    let root = Ca::root(
        &CaName {
            organization: "Owner".into(),
            common_name: "Owner Root".into(),
        },
        KeyPair::generate(KeyKind::P256).unwrap(),
        Validity::starting(NOW, 10 * 365 * 86400),
        &random_serial().unwrap(),
    )
    .unwrap();
    let issuing = root
        .intermediate(
            &CaName {
                organization: "Owner".into(),
                common_name: "Owner Issuing".into(),
            },
            KeyPair::generate(KeyKind::P256).unwrap(),
            Validity::starting(NOW, 5 * 365 * 86400),
            &random_serial().unwrap(),
        )
        .unwrap();
    (root, issuing)
}

#[test]
fn idevid_profile_reads_back() {
    let m = manufacturer();
    for kind in [KeyKind::P256, KeyKind::P384, KeyKind::Ed25519] {
        let id = m.mint("SN-000042", kind, NOW).unwrap().identity;
        let info = &id.info;
        assert_eq!(info.subject_serial.as_deref(), Some("SN-000042"));
        let hmn = info.hardware_module.as_ref().unwrap();
        assert_eq!(hmn.hw_type, certs::factory::DEFAULT_HW_TYPE);
        assert_eq!(hmn.hw_serial, b"SN-000042");
        assert_eq!(
            info.mud_url.as_deref(),
            Some("https://mud.example.com/sensor-1")
        );
        assert_eq!(info.masa_url.as_deref(), Some("masa.example.com"));
        assert_eq!(info.not_after, NO_EXPIRY);
        assert!(info.client_auth && !info.is_ca);
        // Valid far in the future too: no well-defined expiration.
        chain::verify(
            &id.idevid,
            &[],
            &[m.root_cert().to_vec()],
            NOW + 50 * 365 * 86400,
            Usage::ClientAuth,
        )
        .unwrap();
    }
}

#[test]
fn identity_bundle_round_trips_through_files() {
    let m = manufacturer();
    let dir = tempfile::tempdir().unwrap();
    let birth = m.mint("SN-1", KeyKind::P256, NOW).unwrap();
    birth.save(dir.path()).unwrap();
    let again = Birth::load(dir.path(), NOW).unwrap();
    assert_eq!(again.identity.serial, "SN-1");
    assert_eq!(again.identity.idevid, birth.identity.idevid);
    assert_eq!(again.key.public_key(), birth.key.public_key());
    // The certificates alone load without the key file: a key in a secure element has none.
    std::fs::remove_file(dir.path().join("idevid.key")).unwrap();
    let certificates = Identity::load(dir.path(), NOW).unwrap();
    certificates.check_key(&birth.key.public_key()).unwrap();
    assert!(matches!(
        certificates.check_key(&KeyPair::generate(KeyKind::P256).unwrap().public_key()),
        Err(certs::CertError::Key(_))
    ));
    // An identity from another manufacturer's root does not load.
    let other = manufacturer();
    certs::files::write_public(
        &dir.path().join("manufacturer-root.pem"),
        certs::files::cert_pem(other.root_cert()).as_bytes(),
    )
    .unwrap();
    // Same issuer name, other key: the signature check is what refuses it.
    let err = Identity::load(dir.path(), NOW).unwrap_err();
    assert!(
        matches!(
            err,
            certs::CertError::Chain(ChainError::BadSignature | ChainError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[test]
fn manufacturer_round_trips_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = manufacturer();
    m.save(dir.path()).unwrap();
    let again = Manufacturer::load(dir.path()).unwrap();
    assert_eq!(again.root_cert(), m.root_cert());
    assert_eq!(
        again.firmware_key().public_key(),
        m.firmware_key().public_key()
    );
}

#[test]
fn ldevid_and_registrar_profiles_chain_to_the_owner() {
    let m = manufacturer();
    let (root, issuing) = owner();
    let birth = m.mint("SN-7", KeyKind::P256, NOW).unwrap();
    let id = &birth.identity;
    let new_key = KeyPair::generate(KeyKind::P256).unwrap();
    let csr = build_csr("SN-7", &new_key, &[1; 32]).unwrap();
    let checked = check_csr(
        &csr,
        &CsrPolicy {
            serial: &id.serial,
            binding: &[1; 32],
            binding_required: true,
            forbidden_keys: &[birth.key.public_key()],
        },
    )
    .unwrap();
    let ldevid = issue_ldevid(
        &issuing,
        &certs::profile::LdevidProfile {
            serial: "SN-7",
            common_name: "SN-7",
            organization: "Owner",
            crl_url: None,
        },
        &checked.spki_der,
        Validity::starting(NOW, 90 * 86400),
        &random_serial().unwrap(),
    )
    .unwrap();
    let info = CertInfo::parse(&ldevid).unwrap();
    assert_eq!(info.subject_serial.as_deref(), Some("SN-7"));
    assert_eq!(info.public_key, new_key.public_key());
    assert!(info.client_auth);
    assert_eq!(info.not_after, NOW + 90 * 86400);
    let chain = [issuing.cert_der().to_vec()];
    let anchors = [root.cert_der().to_vec()];
    chain::verify(&ldevid, &chain, &anchors, NOW, Usage::ClientAuth).unwrap();
    assert_eq!(
        chain::verify(
            &ldevid,
            &chain,
            &anchors,
            NOW + 91 * 86400,
            Usage::ClientAuth
        ),
        Err(ChainError::Expired)
    );
    assert_eq!(
        chain::verify(&ldevid, &chain, &anchors, NOW, Usage::ServerAuth),
        Err(ChainError::WrongUsage)
    );
    // The LDevID does not chain to the manufacturer.
    assert_eq!(
        chain::verify(
            &ldevid,
            &chain,
            &[m.root_cert().to_vec()],
            NOW,
            Usage::ClientAuth
        ),
        Err(ChainError::UnknownIssuer)
    );

    let server_key = KeyPair::generate(KeyKind::P256).unwrap();
    let server = issue_registrar(
        &issuing,
        "Owner",
        &["onboarder.local".into(), "127.0.0.1".into()],
        &server_key,
        Validity::starting(NOW, 365 * 86400),
        &random_serial().unwrap(),
    )
    .unwrap();
    let info = CertInfo::parse(&server).unwrap();
    assert!(info.server_auth && info.cmc_ra && !info.client_auth);
    chain::verify(&server, &chain, &anchors, NOW, Usage::ServerAuth).unwrap();
}

#[test]
fn vouchers_pin_the_owner_and_name_the_idevid_issuer() {
    let m = manufacturer();
    let (root, _) = owner();
    let id = m.mint("SN-9", KeyKind::P256, NOW).unwrap().identity;
    let signed = m.voucher("SN-9", root.cert_der(), NOW, NOW + 3600).unwrap();
    let masa = CertInfo::parse(m.masa_cert()).unwrap().public_key;
    let v = Voucher::open(&signed, &masa).unwrap();
    assert_eq!(v.pinned_domain_cert, root.cert_der());
    v.check(
        &VoucherExpectation {
            serial: "SN-9",
            idevid_issuer: id.idevid_issuer(),
            nonce: b"whatever",
        },
        NOW + 10,
    )
    .unwrap();
    assert!(
        v.check(
            &VoucherExpectation {
                serial: "SN-9",
                idevid_issuer: id.idevid_issuer(),
                nonce: b"",
            },
            NOW + 3600,
        )
        .is_err()
    );
}

#[test]
fn the_factory_certifies_a_key_the_device_made_and_nothing_else() {
    let m = manufacturer();
    for kind in [KeyKind::P256, KeyKind::P384] {
        let key = KeyPair::generate(kind).unwrap();
        let csr = certs::csr::build_birth_csr("SN-BORN", &key).unwrap();
        let identity = m.certify(&csr, NOW).unwrap();
        assert_eq!(identity.serial, "SN-BORN");
        identity.check_key(&key.public_key()).unwrap();
        assert_eq!(
            identity.idevid_issuer(),
            m.mint("SN-X", kind, NOW).unwrap().identity.idevid_issuer()
        );
    }
    // A CSR whose signature does not hold: not proof that the device has the key.
    let key = KeyPair::generate(KeyKind::P256).unwrap();
    let mut tampered = certs::csr::build_birth_csr("SN-BORN", &key).unwrap();
    let at = tampered.windows(7).position(|w| w == b"SN-BORN").unwrap();
    tampered[at + 6] = b'X';
    assert!(matches!(
        m.certify(&tampered, NOW),
        Err(certs::CertError::Csr(certs::CsrError::BadSignature))
    ));
    // A serial the factory would never mint.
    let csr = {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 5]), "SN BORN/..");
        params.serialize_request(&key).unwrap().der().to_vec()
    };
    assert!(matches!(
        m.certify(&csr, NOW),
        Err(certs::CertError::Profile(_))
    ));
    assert!(matches!(
        m.certify(&[0x30, 0x03, 0x02, 0x01, 0x00], NOW),
        Err(certs::CertError::Csr(certs::CsrError::Malformed(_)))
    ));
}

#[test]
fn a_cross_certificate_links_the_old_root_to_the_new_one_and_back() {
    let (old_root, _) = owner();
    let new_root = Ca::root(
        &CaName {
            organization: "Owner".into(),
            common_name: "Owner Root 2".into(),
        },
        KeyPair::generate(KeyKind::P256).unwrap(),
        Validity::starting(NOW, 10 * 365 * 86400),
        &random_serial().unwrap(),
    )
    .unwrap();
    let validity = Validity::starting(NOW, 365 * 86400);
    let new_with_old = old_root
        .cross_certify(&new_root, validity, &random_serial().unwrap())
        .unwrap();
    let old_with_new = new_root
        .cross_certify(&old_root, validity, &random_serial().unwrap())
        .unwrap();
    // Same name and key as the new root, issued by the old one.
    let link = CertInfo::parse(&new_with_old).unwrap();
    let new = CertInfo::parse(new_root.cert_der()).unwrap();
    let old = CertInfo::parse(old_root.cert_der()).unwrap();
    assert_eq!(
        (link.subject, link.public_key),
        (new.subject.clone(), new.public_key)
    );
    assert_eq!(link.issuer, old.subject);
    assert_eq!(link.subject_key_id, new.subject_key_id);
    assert_eq!(link.authority_key_id, old.subject_key_id);
    assert!(link.is_ca);

    // A server under the new root, seen by a peer that still trusts only the old one: the
    // link makes the path; without it there is none.
    let issuing = new_root
        .intermediate(
            &CaName {
                organization: "Owner".into(),
                common_name: "Owner Issuing 2".into(),
            },
            KeyPair::generate(KeyKind::P256).unwrap(),
            Validity::starting(NOW, 365 * 86400),
            &random_serial().unwrap(),
        )
        .unwrap();
    let key = KeyPair::generate(KeyKind::P256).unwrap();
    let server = issue_registrar(
        &issuing,
        "Owner",
        &["onboarder.example".into()],
        &key,
        Validity::starting(NOW, 86400),
        &random_serial().unwrap(),
    )
    .unwrap();
    let old_only = [old_root.cert_der().to_vec()];
    let path = [issuing.cert_der().to_vec(), new_with_old.clone()];
    chain::verify(&server, &path, &old_only, NOW, Usage::ServerAuth).unwrap();
    assert_eq!(
        chain::verify(&server, &path[..1], &old_only, NOW, Usage::ServerAuth),
        Err(ChainError::UnknownIssuer)
    );
    // And OldWithNew: the old root's name and key, signed by the new root's key.
    let back = CertInfo::parse(&old_with_new).unwrap();
    assert_eq!(
        (back.subject, back.public_key),
        (old.subject, old.public_key)
    );
    assert_eq!(back.authority_key_id, new.subject_key_id);
    let (_, cert) = x509_parser::parse_x509_certificate(&old_with_new).unwrap();
    let (_, signer) = x509_parser::parse_x509_certificate(new_root.cert_der()).unwrap();
    cert.verify_signature(Some(signer.public_key())).unwrap();
    let (_, stranger) = x509_parser::parse_x509_certificate(old_root.cert_der()).unwrap();
    assert!(cert.verify_signature(Some(stranger.public_key())).is_err());
}
