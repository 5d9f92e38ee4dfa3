//! BRSKI (RFC 8995) against a pledge we did not write: `scripts/brski-pledge.sh`, made only of
//! curl and openssl, asks for its voucher with a CMS-signed request, verifies the CMS voucher
//! with `openssl cms -verify` against its maker's MASA certificate, and enrolls over EST
//! trusting the domain CA the voucher pins. The onboarder's record and audit show the same
//! history as for a QUIC device; once revoked, the device is refused in the TLS handshake.

mod common;

use certs::brski::Encoding;
use certs::factory::{Manufacturer, ManufacturerConfig};
use common::{Owner, refused_in_handshake, script};
use onboarder::core::DeviceState;

/// Runs the pledge for `serial` of `maker` against `owner`; its output.
fn pledge(owner: &Owner, maker: &Manufacturer, serial: &str, nonced: bool) -> String {
    let dir = owner.dir.path().join(serial);
    let identity = dir.join("identity");
    maker
        .mint(serial, certs::KeyKind::P256, certs::unix_now())
        .unwrap()
        .save(&identity)
        .unwrap();
    let work = dir.join("pledge");
    std::fs::create_dir_all(&work).unwrap();
    script(
        "brski-pledge.sh",
        &[
            ("IDEVID_CERT", &identity.join("idevid.pem")),
            ("IDEVID_KEY", &identity.join("idevid.key")),
            ("MANUFACTURER_ROOT", &identity.join("manufacturer-root.pem")),
            ("MASA_CERT", &identity.join("masa.pem")),
            ("WORK", &work),
        ],
        &[
            ("BRSKI", &owner.url()),
            ("SERIAL", serial),
            ("NONCED", if nonced { "1" } else { "0" }),
        ],
    )
}

/// The record and audit after a pledge enrolled, and its refusal once revoked.
async fn enrolled_like_a_quic_device(owner: &Owner, name: &str, serial: &str) {
    let id = owner.service.resolve(&format!("{name}/{serial}")).unwrap();
    let record = owner.service.device(&id).unwrap();
    assert_eq!(record.state, DeviceState::Active);
    assert_eq!(record.certificates.len(), 2, "{record:?}");
    let actions = owner.actions(&id);
    let steps = [
        "voucher-issued",
        "voucher-accepted",
        "certificate-issued",
        "enrolled",
    ];
    let mut at = 0;
    for step in steps {
        at += actions[at..]
            .iter()
            .position(|a| a == step)
            .unwrap_or_else(|| panic!("{step} missing or out of order in {actions:?}"));
    }
    assert!(
        !actions.iter().any(|a| a == "est-enrollment"),
        "{actions:?}"
    );

    owner
        .server
        .control()
        .revoke(&id, certs::crl::Reason::KeyCompromise)
        .await
        .unwrap();
    let work = owner.dir.path().join(serial).join("pledge");
    refused_in_handshake(
        owner,
        &work.join("renewed.pem"),
        &work.join("renewed.key"),
        &format!("{}/.well-known/est/simplereenroll", owner.url()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curl_and_openssl_pledge_onboards_with_an_imported_cms_voucher() {
    let owner = Owner::start("BRSKI Owner").await;
    let now = certs::unix_now();
    let maker = Manufacturer::create(ManufacturerConfig::new("Pledge Makers"), now).unwrap();
    owner.import_maker(&maker, "pm").await;
    let voucher = maker
        .voucher_in(
            Encoding::Cms,
            "SN-PLEDGE",
            &owner.owner_root_der(),
            now,
            now + 86_400,
        )
        .unwrap();
    owner.import_voucher(voucher).await;

    let text = pledge(&owner, &maker, "SN-PLEDGE", false);
    assert!(text.contains("pledge enrolled"), "{text}");
    enrolled_like_a_quic_device(&owner, "pm", "SN-PLEDGE").await;
    owner.server.shutdown().await;
}

/// `factory masa serve` as a child process, stopped when dropped.
struct MasaProcess(std::process::Child);

impl MasaProcess {
    /// Serves `maker_dir` for `owner` on `port`, once it says it listens.
    fn start(maker_dir: &std::path::Path, owner: &Owner, port: u16) -> MasaProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(common::factory_binary())
            .args(["masa", "serve", "--name", "localhost"])
            .arg("--dir")
            .arg(maker_dir)
            .arg("--owner")
            .arg(&owner.owner_root)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("MASA listening on https://"), "{line:?}");
        MasaProcess(child)
    }
}

impl Drop for MasaProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// No voucher imported: the onboarder asks the MASA the IDevID names (`factory masa serve`,
/// which knows this owner), admits the device it vouches for, and hands the pledge the nonced
/// CMS voucher, which the pledge checks against its nonce. The MASA logged the voucher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curl_and_openssl_pledge_onboards_with_a_voucher_from_factory_masa_serve() {
    let masa_port = common::free_port();
    let owner = Owner::start_with("BRSKI Owner", |c| {
        c.online_masa = Some(onboarder::config::OnlineMasa { url: None });
        c.policy.admit_vouched = true;
    })
    .await;
    let now = certs::unix_now();
    let maker = Manufacturer::create(
        ManufacturerConfig {
            masa_url: Some(format!("https://localhost:{masa_port}")),
            ..ManufacturerConfig::new("Online Makers")
        },
        now,
    )
    .unwrap();
    let maker_dir = owner.dir.path().join("maker");
    maker.save(&maker_dir).unwrap();
    owner.import_maker(&maker, "om").await;
    let _masa = MasaProcess::start(&maker_dir, &owner, masa_port);

    let text = pledge(&owner, &maker, "SN-ONLINE", true);
    assert!(text.contains("pledge enrolled"), "{text}");
    let id = owner.service.resolve("om/SN-ONLINE").unwrap();
    let actions = owner.actions(&id);
    assert_eq!(
        actions.first().map(String::as_str),
        Some("admitted-by-masa"),
        "{actions:?}"
    );
    enrolled_like_a_quic_device(&owner, "om", "SN-ONLINE").await;
    let log = std::fs::read_to_string(maker_dir.join(certs::factory::layout::MASA_LOG)).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(log.contains("\"serial\":\"SN-ONLINE\""), "{log}");
    owner.server.shutdown().await;
}
