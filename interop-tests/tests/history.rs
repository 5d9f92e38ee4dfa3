//! A device's exported history, checked by an independent verifier in Python (cryptography,
//! pycose, cbor2) with nothing but the owner root: the bundle the demo leaves for a
//! decommissioned device verifies, and fails once any byte of any part, entry, statement or
//! signer is changed, an entry is removed, or two entries are swapped.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use onboarder::service::HistoryBundle;

fn verify(root: &Path, bundle: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/verify_history.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(root)
        .arg(bundle)
        .output()
        .expect("python3 with pycose, cryptography and cbor2<6 (scripts/test installs them)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Writes `bundle` to a file of its own and verifies it: whether it passed, and the output.
fn verify_altered(root: &Path, dir: &Path, name: &str, bundle: &HistoryBundle) -> (bool, String) {
    let path = dir.join(format!("{name}.cbor"));
    std::fs::write(&path, protocol::cbor::to_vec(bundle)).unwrap();
    verify(root, &path)
}

fn flip(bytes: &mut [u8], at: usize) {
    bytes[at] ^= 0x01;
}

#[test]
fn the_history_of_a_decommissioned_device_verifies_offline_and_any_change_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let demo = Command::new(common::binary("onboarder", "onboarder"))
        .args(["demo", "--devices", "4", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let bundle_path: PathBuf = std::fs::read_dir(out.join("history"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let root = out
        .join("onboarder")
        .join(onboarder::config::layout::OWNER_ROOT);
    let (ok, text) = verify(&root, &bundle_path);
    assert!(ok, "{text}");
    for shown in ["entries:", "wipe attestation: signed by LDevID", "OK"] {
        assert!(text.contains(shown), "{shown} in {text}");
    }

    let bytes = std::fs::read(&bundle_path).unwrap();
    let bundle: HistoryBundle = protocol::cbor::from_slice(&bytes, 64 << 20).unwrap();
    for kind in [
        "idevid-key",
        "voucher",
        "ldevid",
        "firmware-manifest",
        "wipe-attestation",
        "sanitization-certificate",
    ] {
        assert!(bundle.parts.contains_key(kind), "{kind} missing");
    }
    assert!(
        bundle.entries.len() >= 8,
        "{} entries",
        bundle.entries.len()
    );
    let scratch = dir.path().join("altered");
    std::fs::create_dir(&scratch).unwrap();
    let refused = |name: &str, altered: &HistoryBundle| {
        let (ok, text) = verify_altered(&root, &scratch, name, altered);
        assert!(!ok, "{name} still verified: {text}");
        assert!(text.contains("REFUSED"), "{name}: {text}");
    };

    // One byte of each entry.
    for i in 0..bundle.entries.len() {
        let mut altered = bundle.clone();
        let len = altered.entries[i].len();
        flip(&mut altered.entries[i], len / 2);
        refused(&format!("entry-{i}"), &altered);
    }
    // One byte of each item of each part.
    for (kind, items) in &bundle.parts {
        for j in 0..items.len() {
            let mut altered = bundle.clone();
            let item = &mut altered.parts.get_mut(kind).unwrap()[j];
            let len = item.len();
            flip(item, len - 1);
            refused(&format!("{kind}-{j}"), &altered);
        }
    }
    // The statement (payload and signature) and the signer's certificate.
    for at in [bundle.statement.len() / 2, bundle.statement.len() - 3] {
        let mut altered = bundle.clone();
        flip(&mut altered.statement, at);
        refused(&format!("statement-{at}"), &altered);
    }
    let mut altered = bundle.clone();
    let len = altered.signer.len();
    flip(&mut altered.signer, len - 10);
    refused("signer", &altered);
    // An entry removed, each in turn; two entries swapped.
    for i in 0..bundle.entries.len() {
        let mut altered = bundle.clone();
        altered.entries.remove(i);
        refused(&format!("without-entry-{i}"), &altered);
    }
    let mut altered = bundle.clone();
    altered.entries.swap(1, 2);
    refused("swapped", &altered);
    // A part left out.
    let mut altered = bundle.clone();
    altered.parts.remove("wipe-attestation");
    refused("without-attestation", &altered);
    // Bytes of the file itself.
    for at in [bytes.len() / 5, bytes.len() / 3, bytes.len() * 4 / 5] {
        let mut raw = bytes.clone();
        flip(&mut raw, at);
        let path = scratch.join(format!("raw-{at}.cbor"));
        std::fs::write(&path, raw).unwrap();
        let (ok, text) = verify(&root, &path);
        assert!(!ok, "byte {at} changed and still verified: {text}");
    }
    // Another owner's root.
    let stranger = certs::Ca::root(
        &certs::CaName {
            organization: "Someone Else".into(),
            common_name: "Someone Else Root".into(),
        },
        certs::KeyPair::generate(certs::KeyKind::P256).unwrap(),
        certs::Validity::starting(certs::unix_now(), 86_400),
        &certs::ca::random_serial().unwrap(),
    )
    .unwrap();
    let other_root = dir.path().join("other-root.pem");
    std::fs::write(&other_root, certs::files::cert_pem(stranger.cert_der())).unwrap();
    let (ok, text) = verify(&other_root, &bundle_path);
    assert!(!ok, "verified under another root: {text}");
}
