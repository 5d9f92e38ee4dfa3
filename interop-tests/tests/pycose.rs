//! Python pycose verifies the firmware manifest written by `factory sign-firmware` with only
//! the manufacturer's public key, and refuses it once one byte is changed.

mod common;

use std::path::Path;
use std::process::Command;

use common::factory_binary;

fn factory(args: &[&str]) {
    let out = Command::new(factory_binary()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pycose(manifest: &Path, key: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/verify_manifest.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(manifest)
        .arg(key)
        .output()
        .expect("python3 with pycose and cbor2<6 is installed by .ci/run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn pycose_verifies_the_manifest_and_refuses_a_changed_byte() {
    let dir = tempfile::tempdir().unwrap();
    let maker = dir.path().join("acme");
    let image = dir.path().join("image.bin");
    std::fs::write(&image, vec![0x5a; 70_000]).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    factory(&["init", &s(&maker), "--name", "Acme", "--model", "sensor-1"]);
    factory(&[
        "sign-firmware",
        "--dir",
        &s(&maker),
        &s(&image),
        "--version",
        "1.2.3",
        "--sequence",
        "42",
    ]);
    let manifest = dir.path().join("image.bin.manifest");
    let key = maker.join("firmware.pub");
    let (ok, text) = pycose(&manifest, &key);
    assert!(ok, "{text}");
    assert!(text.contains("vendor-id=Acme"), "{text}");
    assert!(text.contains("sequence-number=42"), "{text}");
    assert!(text.contains("image-size=70000"), "{text}");
    let digest = certs::inspect::hex(&protocol::manifest::sha256(&vec![0x5a; 70_000]));
    assert!(text.contains(&format!("image-digest={digest}")), "{text}");

    // One changed byte anywhere in the payload or the signature: refused.
    let bytes = std::fs::read(&manifest).unwrap();
    for at in [bytes.len() / 3, bytes.len() / 2, bytes.len() - 5] {
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        let path = dir.path().join(format!("tampered-{at}"));
        std::fs::write(&path, &tampered).unwrap();
        let (ok, text) = pycose(&path, &key);
        assert!(!ok, "byte {at} changed and still verified: {text}");
    }
    // Another manufacturer's key: refused.
    let other = dir.path().join("other");
    factory(&["init", &s(&other)]);
    let (ok, _) = pycose(&manifest, &other.join("firmware.pub"));
    assert!(!ok);
}
