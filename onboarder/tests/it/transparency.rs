//! Transparency: support periods told to devices and shown everywhere, vulnerability status
//! from VEX statements, and the public live label (in Chromium, its QR code read back by
//! zbarimg).

use std::path::{Path, PathBuf};
use std::process::Command;

use onboarder::core::support;
use onboarder::operator::api::SupportRequest;
use onboarder::operator::client::ApiClient;
use protocol::message::{ErrorCode, Request};
use serde_json::Value;

use crate::browser::{Browser, screenshots};
use crate::firmware::{fleet, image, publish, run_campaign, trust_firmware};
use crate::harness::*;

fn client(world: &World) -> ApiClient {
    let base = format!("http://{}", world.server.api_addr());
    ApiClient::new(&base, onboarder::pki::token(&world.data).unwrap())
}

/// The owner root as PEM, for curl to check the HTTPS listener with.
fn owner_root_pem(world: &World) -> PathBuf {
    let path = world.dir.path().join("owner-root.pem");
    std::fs::write(&path, certs::files::cert_pem(&world.owner_root)).unwrap();
    path
}

/// GETs `url` with curl (an independent HTTPS client) trusting only the owner root: the
/// status and the body.
fn fetch(ca: &Path, url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let split = out.stdout.iter().rposition(|b| *b == b'\n').unwrap();
    let status = std::str::from_utf8(&out.stdout[split + 1..])
        .unwrap()
        .parse()
        .unwrap();
    (status, out.stdout[..split].to_vec())
}

fn label_json(ca: &Path, url: &str) -> Value {
    let (status, body) = fetch(ca, &format!("{url}/json"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn agent_state(device: &Device) -> device_agent::machine::AgentState {
    use device_agent::platform::StateStore;
    device_agent::platform::files::FileStateStore::new(&device.state_dir)
        .load()
        .unwrap()
        .unwrap()
}

fn audit_actions(world: &World) -> Vec<String> {
    world.audit().into_iter().map(|e| e.event.action).collect()
}

/// A class's support period enters its notice period: the connected device is told at once,
/// records it and confirms; the API, the label and the audit log show it ending. The clock
/// moves past the date: the audit log says it ended, and API and label show the device
/// unsupported. A confirmation of a date never sent is refused, typed, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_support_reaches_the_device_the_api_the_label_and_the_audit_log() {
    let world = World::new().await;
    let serial = "SN-EOS-1";
    world.expect(&[serial], 30).await;
    let device = world.device(serial);
    let running = Running::start(world.agent(&device));
    eventually(30, "the device connected", || {
        world.server.sessions().len() == 1
    })
    .await;
    let api = client(&world);
    let ca = owner_root_pem(&world);

    let day = support::date(now() + 10 * DAY);
    let ends_on = support::parse_date(&day).unwrap();
    let request = SupportRequest {
        ends_on: day.clone(),
        notice_days: 30,
    };
    let period = api.set_support("sensor-1", &request).unwrap();
    assert_eq!(period.ends_on, ends_on);
    eventually(20, "the device recorded the notice", || {
        agent_state(&device).support_ends_on == Some(ends_on)
    })
    .await;
    eventually(20, "the server heard the device recorded it", || {
        world.record(serial).unwrap().support_notice == Some(ends_on)
    })
    .await;
    let view = api.device(serial).unwrap();
    assert_eq!(view.support.status, Some(support::SupportStatus::Ending));
    assert_eq!(view.support.ends_on, Some(ends_on));
    assert!(view.support.notice_recorded);
    let label = api.device_label(serial).unwrap();
    let public = label_json(&ca, &label.url);
    assert_eq!(public["support"]["status"], "ending");
    assert_eq!(public["support"]["ends_on"], day.as_str());
    let actions = audit_actions(&world);
    for action in [
        "support-period-set",
        "support-ending",
        "support-notice-recorded",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    // Told once: a reconnect does not bring the notice again.
    let told = world
        .actions(serial)
        .iter()
        .filter(|a| *a == "support-notice-recorded")
        .count();
    assert_eq!(told, 1);

    // The date passes.
    world.advance_clock(11 * DAY);
    world.server.control().support_sweep(false).await.unwrap();
    assert!(audit_actions(&world).iter().any(|a| a == "support-ended"));
    let view = api.device(serial).unwrap();
    assert_eq!(
        view.support.status,
        Some(support::SupportStatus::Unsupported)
    );
    let public = label_json(&ca, &label.url);
    assert_eq!(public["support"]["status"], "unsupported");
    let (_, page) = fetch(&ca, &label.url);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("this device is unsupported"), "{page}");
    // Sweeping again announces nothing twice.
    world.server.control().support_sweep(false).await.unwrap();
    let ended = audit_actions(&world)
        .iter()
        .filter(|a| *a == "support-ended")
        .count();
    assert_eq!(ended, 1);

    // A confirmation of a date that was never sent: refused, nothing changed.
    running.stop().await;
    let session = world.ldevid_session(&device).await;
    let before = world.record(serial).unwrap();
    let answer = session
        .call(&Request::SupportNoticeRecorded {
            ends_on: ends_on + DAY,
        })
        .await;
    assert!(
        matches!(
            answer,
            Err(device_agent::AgentError::Refused {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{answer:?}"
    );
    assert_eq!(world.record(serial).unwrap(), before);
}

/// VEX statements mark the release devices run affected and a later one fixed: the API and
/// the label show them affected and the fixing release, the owner's fix plan names the
/// campaign, and once it ran they are not affected. The label page renders in Chromium
/// (screenshot), its QR code reads back as its URL with zbarimg, its JSON holds no secret, and
/// an altered token is a plain 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vex_statements_give_devices_their_vulnerability_status_and_the_label_shows_it() {
    let world = World::new().await;
    trust_firmware(&world).await;
    let serials = ["SN-VEX-1", "SN-VEX-2"];
    let (_, running) = fleet(&world, &serials).await;
    let api = client(&world);
    let ca = owner_root_pem(&world);
    let (_, old) = publish(&world, &image(20_000, 1), "1.1.0", 1).await;
    let (_, fixed) = publish(&world, &image(20_000, 2), "1.2.0", 2).await;
    let campaign = run_campaign(&world, &hex::encode(&old.digest), &serials, vec![100], 0).await;
    eventually(60, "the fleet runs 1.1.0", || {
        serials
            .iter()
            .all(|s| world.record(s).unwrap().firmware_sequence == 1)
    })
    .await;
    let _ = campaign;
    assert_eq!(
        api.device_vulnerabilities(serials[0]).unwrap().status,
        "unknown"
    );

    let releases = api.releases().unwrap();
    let purl_old = releases
        .iter()
        .find(|r| r.version == "1.1.0")
        .unwrap()
        .purl
        .clone();
    assert_eq!(purl_old, "pkg:generic/Test%20Devices/sensor-1@1.1.0");
    let vex = serde_json::json!({
        "@context": "https://openvex.dev/ns/v0.2.0",
        "@id": "https://example.test/vex/1",
        "author": "Test Devices PSIRT",
        "timestamp": "2026-12-01T00:00:00Z",
        "version": 1,
        "statements": [
            {"vulnerability": {"name": "CVE-2026-4242"},
             "products": [{"@id": purl_old}],
             "status": "affected",
             "action_statement": "update to 1.2.0"},
            {"vulnerability": {"name": "CVE-2026-4242"},
             "products": [{"@id": "pkg:generic/x", "hashes": {"sha-256": hex::encode(&fixed.digest)}}],
             "status": "fixed"}
        ]
    });
    let report = api.import_vex(&serde_json::to_vec(&vex).unwrap()).unwrap();
    assert_eq!(report.statements.len(), 2);
    assert_eq!(report.unknown_products, Vec::<String>::new());
    let exposure = api.device_vulnerabilities(serials[0]).unwrap();
    assert_eq!(exposure.status, "affected");
    assert_eq!(exposure.exposures[0].vulnerability, "CVE-2026-4242");
    assert_eq!(exposure.exposures[0].fixed_in.as_deref(), Some("1.2.0"));
    let label = api.device_label(serials[0]).unwrap();
    let public = label_json(&ca, &label.url);
    assert_eq!(public["vulnerabilities"]["status"], "affected");
    assert_eq!(
        public["vulnerabilities"]["exposures"][0]["fixed_in"],
        "1.2.0"
    );
    assert_eq!(public["firmware"]["current"], false);
    assert_eq!(public["firmware"]["newest"], "1.2.0");
    assert_eq!(public["certificate"]["valid"], true);
    assert_eq!(public["decommissioned"], false);
    // Nothing secret and nothing of the owner's inventory.
    let text = public.to_string();
    for secret in [
        "psk",
        "passphrase",
        "PRIVATE",
        "tags",
        "attributes",
        "nonce",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }

    // In a browser, with a screenshot; the QR code reads back as the label's URL.
    let url = label.url.clone();
    let qr_png = fetch(&ca, &format!("{url}/qr.png"));
    assert_eq!(qr_png.0, 200);
    let (qr_svg_status, qr_svg) = fetch(&ca, &format!("{url}/qr.svg"));
    assert_eq!(qr_svg_status, 200);
    assert!(String::from_utf8_lossy(&qr_svg).contains("<svg"));
    let browsed = tokio::task::spawn_blocking(move || {
        let b = Browser::start();
        b.go(&url);
        let text = (
            b.text("#vulnerabilities"),
            b.text("#firmware"),
            b.text("#model"),
        );
        b.screenshot("label");
        text
    })
    .await
    .unwrap();
    assert!(browsed.0.contains("CVE-2026-4242"), "{browsed:?}");
    assert!(browsed.0.contains("fixed in 1.2.0"), "{browsed:?}");
    assert!(
        browsed.1.contains("an update is available: 1.2.0"),
        "{browsed:?}"
    );
    assert_eq!(browsed.2, "sensor-1");
    let qr_file = screenshots().join("label-qr.png");
    std::fs::write(&qr_file, &qr_png.1).unwrap();
    let decoded = Command::new("zbarimg")
        .args(["--quiet", "--raw"])
        .arg(&qr_file)
        .output()
        .expect("zbarimg (Debian package zbar-tools; scripts/test installs it)");
    assert!(decoded.status.success(), "{decoded:?}");
    assert_eq!(String::from_utf8(decoded.stdout).unwrap().trim(), label.url);
    // An altered token names nothing.
    let mut altered = label.url.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(fetch(&ca, &format!("{altered}/json")).0, 404);
    assert_eq!(fetch(&ca, &format!("{altered}/qr.png")).0, 404);

    // The owner's plan: the campaign to 1.2.0 for both devices; once run, not affected.
    let plans = api.vulnerabilities().unwrap();
    let plan = plans
        .iter()
        .find(|p| p.vulnerability == "CVE-2026-4242")
        .unwrap();
    assert_eq!(plan.affected_release, "1.1.0");
    assert_eq!(plan.fixed_in.as_deref(), Some("1.2.0"));
    assert_eq!(plan.devices.len(), 2);
    let spec = plan.campaign.clone().unwrap();
    let created = api.create_campaign(&spec).unwrap();
    api.order_campaign(&created.id, onboarder::core::campaign::CampaignOrder::Start)
        .unwrap();
    eventually(60, "the fleet runs 1.2.0", || {
        serials
            .iter()
            .all(|s| world.record(s).unwrap().firmware_sequence == 2)
    })
    .await;
    for serial in serials {
        let exposure = api.device_vulnerabilities(serial).unwrap();
        assert_eq!(exposure.status, "not-affected", "{serial}");
        assert!(exposure.exposures.is_empty());
    }
    let public = label_json(&ca, &label.url);
    assert_eq!(public["vulnerabilities"]["status"], "not-affected");
    assert_eq!(public["firmware"]["current"], true);
    assert!(api.vulnerabilities().unwrap()[0].devices.is_empty());

    // The owner hides fields: the label no longer shows them.
    let mut settings = api.label_settings().unwrap();
    settings
        .show
        .remove(&onboarder::core::label::LabelField::Serial);
    settings
        .show
        .remove(&onboarder::core::label::LabelField::Vulnerabilities);
    api.set_label_settings(&settings).unwrap();
    let public = label_json(&ca, &label.url);
    assert!(public.get("serial").is_none() && public.get("vulnerabilities").is_none());
    assert_eq!(public["model"], "sensor-1");
    // A bad VEX document is refused, typed, and keeps nothing.
    let before = api.device_vulnerabilities(serials[0]).unwrap();
    assert!(api.import_vex(b"{\"statements\": 7}").is_err());
    assert_eq!(api.device_vulnerabilities(serials[0]).unwrap(), before);
    // The manufacturer's signed end of support becomes the class's period.
    assert!(api.support().unwrap().is_empty());
    let until = now() + 3 * 365 * DAY;
    let signed = world
        .manufacturer
        .sign_firmware(
            &image(20_000, 3),
            &certs::factory::FirmwareRelease {
                version: "1.3.0",
                sequence: 3,
                class_id: None,
                expires_on: None,
                sbom: None,
                support_ends_on: Some(until),
            },
            now(),
        )
        .unwrap();
    world
        .server
        .service()
        .upload_release(&signed, &image(20_000, 3), None)
        .await
        .unwrap();
    let periods = api.support().unwrap();
    assert_eq!(periods.len(), 1);
    assert_eq!(periods[0].ends_on, until);
    assert_eq!(periods[0].source, support::SupportSource::Manufacturer);

    for r in running {
        r.stop().await;
    }
}
