//! The `factory` binary introduces itself by its own name.

#[test]
fn factory_version_names_the_tool() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_factory"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("factory "), "{text}");
}

/// `factory certify` turns a device's CSR (PEM, as a device prints it) into the device's
/// identity directory: certificates only, for the key the CSR proves.
#[test]
fn factory_certify_writes_the_identity_of_a_device_born_key() {
    let dir = tempfile::tempdir().unwrap();
    let maker = dir.path().join("acme");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_factory"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&["init", maker.to_str().unwrap(), "--name", "Acme"]);
    assert!(ok, "{text}");
    let key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = certs::csr::build_birth_csr("SN-000777", &key).unwrap();
    let csr_path = dir.path().join("device.csr");
    std::fs::write(
        &csr_path,
        certs::files::pem_block("CERTIFICATE REQUEST", &csr),
    )
    .unwrap();
    let out = dir.path().join("SN-000777");
    let (ok, text) = run(&[
        "certify",
        "--dir",
        maker.to_str().unwrap(),
        csr_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("\"certified\":\"SN-000777\""), "{text}");
    let identity = certs::Identity::load(&out, certs::unix_now()).unwrap();
    identity.check_key(&key.public_key()).unwrap();
    assert!(!out.join("idevid.key").exists());
    // A CSR that is not one is refused with a non-zero exit and a reason.
    std::fs::write(&csr_path, b"not a csr").unwrap();
    let (ok, text) = run(&[
        "certify",
        "--dir",
        maker.to_str().unwrap(),
        csr_path.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(text.contains("malformed CSR"), "{text}");
}
