//! The C API as firmware written in C uses it: a C program, compiled here with the system's C
//! compiler against the generated header and the static library, onboards a device with a real
//! onboarder (in this process).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library cargo built for this test: `cargo test` leaves it in `deps/`, next to
/// the test binary (only `cargo build` copies it one level up).
fn static_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = "libdevice_agent_ffi.a";
    [deps.join(name), deps.parent().unwrap().join(name)]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("{name} was not built in {}", deps.display()))
}

#[test]
fn the_committed_header_is_the_generated_one() {
    let generated =
        std::fs::read_to_string(Path::new(env!("OUT_DIR")).join("device_agent.h")).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("include/device_agent.h"),
    )
    .unwrap();
    assert_eq!(
        committed, generated,
        "include/device_agent.h is stale: copy OUT_DIR/device_agent.h over it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c_program_onboards_a_device_through_the_c_api() {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("onboard");
    let lib = static_library();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/onboard.c"))
        .arg("-I")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("include"))
        .arg("-Wall")
        .arg("-Werror")
        .arg("-o")
        .arg(&program)
        .arg(&lib)
        .args([
            // OpenSSL, for the CoAP transport's DTLS.
            "-lssl",
            "-lcrypto",
            "-lpthread",
            "-ldl",
            "-lm",
            "-lrt",
            "-lgcc_s",
            "-lutil",
            "-lc",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The owner.
    let now = certs::unix_now();
    let data = dir.path().join("onboarder");
    let mut config = onboarder::config::Config::new("C Owner");
    config.quic_listen = "127.0.0.1:0".parse().unwrap();
    config.api_listen = "127.0.0.1:0".parse().unwrap();
    onboarder::pki::init(&data, &config, now).unwrap();
    let server = onboarder::server::Server::start(&data, Default::default())
        .await
        .unwrap();
    let maker = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("C Devices"),
        now,
    )
    .unwrap();
    let identity = dir.path().join("identity");
    maker
        .mint("SN-C0001", certs::KeyKind::P256, now)
        .unwrap()
        .save(&identity)
        .unwrap();
    let owner_root =
        certs::files::read_cert(&data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let service = server.service();
    service
        .import_anchor(&onboarder::service::AnchorImport {
            pem: certs::files::cert_pem(maker.root_cert()),
            masa_pem: Some(certs::files::cert_pem(maker.masa_cert())),
            name: Some("c".into()),
        })
        .await
        .unwrap();
    service
        .import_vouchers(&protocol::voucher::encode_bundle(&[maker
            .voucher("SN-C0001", &owner_root, now, now + 86_400)
            .unwrap()]))
        .await
        .unwrap();

    // The device, in C.
    let server_addr = format!("localhost:{}", server.quic_addr().port());
    let run = |identity: PathBuf, state: PathBuf| {
        let (program, server_addr) = (program.clone(), server_addr.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(program)
                .arg(identity)
                .arg(state)
                .arg(server_addr)
                .output()
                .unwrap()
        })
    };
    let out = run(identity.clone(), dir.path().join("state"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "onboarded SN-C0001");
    let id = service.resolve("c/SN-C0001").unwrap();
    assert_eq!(
        service.device(&id).unwrap().state,
        onboarder::core::DeviceState::Active
    );

    // A device the owner does not expect: a status and a reason, not a crash.
    let stranger = dir.path().join("stranger");
    maker
        .mint("SN-C0002", certs::KeyKind::P256, now)
        .unwrap()
        .save(&stranger)
        .unwrap();
    let out = run(stranger, dir.path().join("state2")).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("da_agent_onboard: status 4") && stderr.contains("UnknownDevice"),
        "{stderr}"
    );
    server.shutdown().await;
}
