//! The `onboarder` binary as an operator runs it, in its own process: what it leaves on disk
//! under a permissive umask, what its commands print of device-supplied text, and what a
//! flood of incomplete requests costs its memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use onboarder::config::Config;
use onboarder::operator::client::ApiClient;
use protocol::message::{NetworkProfile, Request, Status};

use crate::harness::*;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_onboarder");

/// `onboarder ARGS` run by a shell whose umask is 022, as on most machines.
fn run_under_umask_022(args: &[&str]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(args);
    command
}

/// A data directory made by `onboarder init` (under umask 022), with settings edited by `edit`.
pub(crate) fn init(root: &Path, edit: impl FnOnce(&mut Config)) -> (PathBuf, std::net::SocketAddr) {
    let dir = root.join("owner");
    let quic = format!("127.0.0.1:{}", free_port());
    let api = format!("127.0.0.1:{}", free_port());
    let status = run_under_umask_022(&[
        "init",
        dir.to_str().unwrap(),
        "--listen",
        &quic,
        "--api",
        &api,
        // Tests run side by side: no fixed HTTPS port.
        "--https",
        "off",
        "--coap",
        "off",
    ])
    .stdout(Stdio::null())
    .status()
    .unwrap();
    assert!(status.success());
    let mut config = Config::load(&dir).unwrap();
    edit(&mut config);
    config.save(&dir).unwrap();
    (dir, quic.parse().unwrap())
}

/// `onboarder serve` in its own process; killed when dropped.
struct Serving(Child);

impl Serving {
    fn start(dir: &Path) -> (Serving, ApiClient) {
        let serving = Serving(
            run_under_umask_022(&["--dir", dir.to_str().unwrap(), "serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let api = ApiClient::for_data_dir(dir).unwrap();
        // Up to 30 s: the suite runs its tests side by side on a small machine.
        for _ in 0..600 {
            if api.stats().is_ok() {
                return (serving, api);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the onboarder did not come up");
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Imports `m` and vouchers for `serials` through the admin API.
async fn expect(api: ApiClient, dir: &Path, m: &certs::factory::Manufacturer, serials: &[&str]) {
    let owner_root =
        certs::files::read_cert(&dir.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let vouchers: Vec<Vec<u8>> = serials
        .iter()
        .map(|s| m.voucher(s, &owner_root, now(), now() + DAY).unwrap())
        .collect();
    let anchor = anchor_import(m);
    tokio::task::spawn_blocking(move || {
        api.import_anchor(&anchor).unwrap();
        let report = api
            .import_vouchers(&protocol::voucher::encode_bundle(&vouchers))
            .unwrap();
        assert_eq!(report.imported, vouchers.len(), "{report:?}");
    })
    .await
    .unwrap();
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        }
        out.push(path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_and_holds_no_passphrase_in_the_clear() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let (dir, quic) = init(root.path(), |_| {});
    let (server, api) = Serving::start(&dir);
    let maker = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Disk Devices"),
        now(),
    )
    .unwrap();
    let serials = ["SN-DISK-1", "SN-DISK-2", "SN-DISK-3"];
    expect(api, &dir, &maker, &serials).await;
    let endpoint = device_agent::transport::quic::endpoint_for(quic).unwrap();
    let mut passphrases = Vec::new();
    for serial in serials {
        let device = Device::mint(&maker, &root.path().join("devices"), serial);
        let state = device.agent(quic, &endpoint).onboard().await.unwrap();
        match state.network.unwrap() {
            NetworkProfile::Wifi { psk, .. } => passphrases.push(psk),
            other => panic!("{other:?}"),
        }
    }
    // Stop it the hard way: whatever sled left behind counts.
    drop(server);

    let mut paths = Vec::new();
    walk(&dir, &mut paths);
    paths.push(dir.clone());
    assert!(paths.len() > 10, "{paths:?}");
    for path in &paths {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
    // The store's files (and everything else in the directory but the key) hold no
    // passphrase.
    let key = dir.join(onboarder::config::layout::STORE_KEY);
    for path in paths.iter().filter(|p| p.is_file() && **p != key) {
        let bytes = std::fs::read(path).unwrap();
        for psk in &passphrases {
            assert!(
                !bytes.windows(psk.len()).any(|w| w == psk.as_bytes()),
                "{} holds a passphrase",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_supplied_text_is_escaped_in_audit_show() {
    let root = tempfile::tempdir().unwrap();
    let (dir, quic) = init(root.path(), |_| {});
    let (_server, api) = Serving::start(&dir);
    let maker = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Loud Devices"),
        now(),
    )
    .unwrap();
    expect(api, &dir, &maker, &["SN-LOUD"]).await;
    let device = Device::mint(&maker, &root.path().join("devices"), "SN-LOUD");
    // A device forging an operator's line, with escape codes to hide its own.
    let forged =
        "fine\n      99 1700000000 operator           anchor-imported          evil\x1b[2K\x1b[1A";
    let birth = device.birth();
    let key: std::sync::Arc<dyn device_agent::platform::DeviceKey> = std::sync::Arc::new(birth.key);
    let config = device_agent::transport::quic::provisional_config(
        std::slice::from_ref(&birth.identity.idevid),
        key,
        Default::default(),
    )
    .unwrap();
    let endpoint = device_agent::transport::quic::endpoint_for(quic).unwrap();
    let session = device_agent::transport::quic::Session::connect(&endpoint, config, quic, None)
        .await
        .unwrap();
    session
        .call(&Request::VoucherStatus(Status {
            ok: false,
            reason: Some(forged.into()),
        }))
        .await
        .unwrap();
    session.close();

    let output = Command::new(BIN)
        .args(["--dir", dir.to_str().unwrap(), "audit", "show"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains('\x1b'), "{text:?}");
    let rejected: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("voucher-rejected"))
        .collect();
    assert_eq!(rejected.len(), 1, "{text}");
    assert!(rejected[0].contains("fine\\u{a}"), "{}", rejected[0]);
    assert!(rejected[0].contains("\\u{1b}[2K"), "{}", rejected[0]);
    // No line stands on its own pretending to be the operator's.
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("99 1700000000")),
        "{text}"
    );
    // By default the newest entries are shown: the last is the device's.
    let last = Command::new(BIN)
        .args([
            "--dir",
            dir.to_str().unwrap(),
            "audit",
            "show",
            "--limit",
            "1",
        ])
        .output()
        .unwrap();
    let last = String::from_utf8(last.stdout).unwrap();
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(last.contains("voucher-rejected"), "{last}");
    // JSON output carries the text as it was, escaped by the encoder.
    let json = Command::new(BIN)
        .args(["--dir", dir.to_str().unwrap(), "audit", "show", "--json"])
        .output()
        .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    assert!(entries.iter().any(|e| e["detail"] == forged));
}

/// The attack that took the server from 23 MB to 670 MB: many connections, each with 16
/// streams whose frames announce 64 KiB and send part of it. The bytes held stay within the
/// configured budget; the server's RSS is printed for the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_frames_stay_within_budget_in_the_server_process() {
    const CONNECTIONS: usize = 400;
    const SENT: usize = 8 * 1024;
    const BUDGET: usize = 16 * 1024 * 1024;
    let root = tempfile::tempdir().unwrap();
    let (dir, quic) = init(root.path(), |c| {
        c.limits.frame_bytes_total = BUDGET;
        c.limits.max_connections_per_address = CONNECTIONS * 2;
    });
    let (server, api) = Serving::start(&dir);
    let maker = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Hold Devices"),
        now(),
    )
    .unwrap();
    let api = std::sync::Arc::new(api);
    let stats = {
        let api = api.clone();
        move || {
            let api = api.clone();
            async move {
                tokio::task::spawn_blocking(move || api.stats().unwrap())
                    .await
                    .unwrap()
            }
        }
    };
    expect(
        ApiClient::for_data_dir(&dir).unwrap(),
        &dir,
        &maker,
        &["SN-HOLDER"],
    )
    .await;
    let device = Device::mint(&maker, &root.path().join("devices"), "SN-HOLDER");
    let birth = device.birth();
    let key: std::sync::Arc<dyn device_agent::platform::DeviceKey> = std::sync::Arc::new(birth.key);
    let config = device_agent::transport::quic::provisional_config(
        std::slice::from_ref(&birth.identity.idevid),
        key,
        Default::default(),
    )
    .unwrap();
    let endpoints: Vec<quinn::Endpoint> = (0..4)
        .map(|_| device_agent::transport::quic::endpoint_for(quic).unwrap())
        .collect();
    let rss_before = server.rss_kib();
    let mut held = Vec::new();
    let mut connections = Vec::new();
    for i in 0..CONNECTIONS {
        let conn = endpoints[i % endpoints.len()]
            .connect_with(config.clone(), quic, "onboarder.invalid")
            .unwrap()
            .await
            .unwrap();
        for _ in 0..16 {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&(protocol::message::MAX_REQUEST as u32).to_be_bytes())
                .await
                .unwrap();
            send.write_all(&[0x5a; SENT]).await.unwrap();
            // A stream keeps its connection open.
            held.push((send, recv));
        }
        connections.push(conn);
    }
    let mut peak_held = 0;
    let mut rss_peak = 0;
    for _ in 0..10 {
        peak_held = peak_held.max(stats().await.frame_bytes_held);
        rss_peak = rss_peak.max(server.rss_kib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempted = CONNECTIONS * 16 * SENT;
    assert!(peak_held > 0);
    assert!(peak_held <= BUDGET, "held {peak_held} of {attempted} bytes");
    // Stalled frames are dropped, and their memory released.
    let mut released = false;
    for _ in 0..100 {
        if stats().await.frame_bytes_held == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "stalled frames still held");
    drop(held);
    for conn in connections {
        conn.close(0u32.into(), b"done");
    }
    for endpoint in &endpoints {
        endpoint.wait_idle().await;
    }
    let rss_after = server.rss_kib();
    let refused = stats().await.metrics.refusals.get("Unavailable").copied();
    eprintln!(
        "held frames: {CONNECTIONS} connections x 16 streams x {SENT} bytes sent of 64 KiB \
         announced ({attempted} bytes attempted): peak held {peak_held} bytes (budget \
         {BUDGET}), {refused:?} frames refused as over budget; server RSS {rss_before} kB \
         before, {rss_peak} kB at peak, {rss_after} kB after"
    );
}

#[test]
fn a_failed_init_leaves_nothing_behind() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("owner");
    let output = Command::new(BIN)
        .args(["init", dir.to_str().unwrap(), "--api", "0.0.0.0:4480"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(!dir.exists());
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    // A directory that is not empty is refused, and left as it was.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let output = Command::new(BIN)
        .args(["init", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = init(root.path(), |_| {});
    let (_server, _api) = Serving::start(&dir);
    let config = Config::load(&dir).unwrap();
    let token = onboarder::pki::token(&dir).unwrap();
    let status = |scheme: &str| {
        let mut stream = std::net::TcpStream::connect(config.api_listen).unwrap();
        write!(
            stream,
            "GET /v1/stats HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {token}\r\n\
             Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.lines().next().unwrap_or_default().to_string()
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        assert!(
            status(scheme).contains(" 200 "),
            "{scheme}: {}",
            status(scheme)
        );
    }
    assert!(status("Basic").contains(" 401 "));
}

/// Sends SIGTERM to `serving` and waits for a clean exit.
fn terminate(mut serving: Serving) {
    let status = Command::new("kill")
        .args(["-TERM", &serving.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = serving.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_interrupted_by_sigterm_resumes_after_the_restart() {
    use onboarder::core::campaign::{CampaignOrder, CampaignState};
    use onboarder::service::{CampaignSpec, Target};
    let root = tempfile::tempdir().unwrap();
    let (dir, quic) = init(root.path(), |_| {});
    let (server, api) = Serving::start(&dir);
    let maker = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Term Devices"),
        now(),
    )
    .unwrap();
    let serials: Vec<String> = (0..8).map(|i| format!("SN-TERM-{i}")).collect();
    let names: Vec<&str> = serials.iter().map(String::as_str).collect();
    expect(api, &dir, &maker, &names).await;
    let endpoint = device_agent::transport::quic::endpoint_for(quic).unwrap();
    let mut running = Vec::new();
    for serial in &serials {
        let device = Device::mint(&maker, &root.path().join("devices"), serial);
        device.agent(quic, &endpoint).onboard().await.unwrap();
        running.push(Running::start(device.agent(quic, &endpoint)));
    }

    // One offer per second: the campaign is under way when the server is told to stop.
    let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let manifest = maker
        .sign_firmware(
            &image,
            &certs::factory::FirmwareRelease::new("2.0.0", 2),
            now(),
        )
        .unwrap();
    let api = ApiClient::for_data_dir(&dir).unwrap();
    let (pem, vendor) = (maker.firmware_key().public_pem(), maker.config.name.clone());
    let started = {
        let api = api.clone();
        let targets = serials.clone();
        tokio::task::spawn_blocking(move || {
            api.import_firmware_key(&vendor, &pem).unwrap();
            let release = api.upload_release(&manifest, &image, None).unwrap();
            let campaign = api
                .create_campaign(&CampaignSpec {
                    release: release.digest,
                    target: Target::Devices(targets),
                    waves: vec![25, 100],
                    failure_threshold: 0,
                    rate: Some(1),
                    wave_timeout: None,
                    over_https: false,
                    signed_urls: false,
                    ramp: None,
                })
                .unwrap();
            api.order_campaign(&campaign.id, CampaignOrder::Start)
                .unwrap()
        })
        .await
        .unwrap()
    };
    let status = |api: &ApiClient| api.campaign_status(&started.id, false).ok();
    let mut under_way = false;
    for _ in 0..600 {
        if status(&api).is_some_and(|s| s.total.healthy >= 1) {
            under_way = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(under_way, "no device updated");
    let before = status(&api).unwrap();
    assert_eq!(before.state, CampaignState::Running, "{before:?}");
    assert!(before.total.healthy < serials.len(), "{before:?}");

    terminate(server);
    let (_server, api) = Serving::start(&dir);
    let mut done = None;
    for _ in 0..1200 {
        match status(&api) {
            Some(s) if s.state == CampaignState::Completed => {
                done = Some(s);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let done = done.expect("the campaign did not complete after the restart");
    assert_eq!(done.total.healthy, serials.len(), "{done:?}");
    for r in running {
        r.stop().await;
    }
}

/// The inventory from the command line: labels, filtered lists through the device index, saved
/// queries; a bad filter is refused before anything is asked.
/// Runs the CLI on the data directory `dir`: whether it succeeded, its stdout and stderr.
fn cli(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["--dir", dir.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_labels_filters_and_saves_queries() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = init(root.path(), |_| {});
    let (_serving, api) = Serving::start(&dir);
    let m = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Cli Maker"),
        now(),
    )
    .unwrap();
    expect(api, &dir, &m, &["SN-CLI-1", "SN-CLI-2", "SN-CLI-3"]).await;
    let cli = |args: &[&str]| cli(&dir, args);
    let serials = |text: &str| -> Vec<String> {
        let devices: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
        devices
            .iter()
            .map(|d| d["serial"].as_str().unwrap().to_string())
            .collect()
    };
    let (ok, text, err) = cli(&[
        "device", "label", "SN-CLI-2", "--tag", "pilot", "--set", "site=a",
    ]);
    assert!(ok, "{err}");
    assert!(text.contains("pilot") && text.contains("site=a"), "{text}");
    let (ok, text, _) = cli(&["device", "list", "--tag", "pilot", "--json"]);
    assert!(ok);
    assert_eq!(serials(&text), ["SN-CLI-2"]);
    let (_, text, _) = cli(&[
        "device", "list", "--state", "expected", "--serial", "SN-CLI", "--json",
    ]);
    assert_eq!(serials(&text), ["SN-CLI-1", "SN-CLI-2", "SN-CLI-3"]);
    let (ok, _, err) = cli(&[
        "device", "query", "save", "pilots", "--tag", "pilot", "--attr", "site=a",
    ]);
    assert!(ok, "{err}");
    let (_, text, _) = cli(&["device", "query", "list", "--json"]);
    let queries: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(queries["pilots"]["tags"][0], "pilot");
    let (_, text, _) = cli(&["device", "list", "--query", "pilots", "--json"]);
    assert_eq!(serials(&text), ["SN-CLI-2"]);
    let (ok, _, err) = cli(&["device", "list", "--state", "sleeping"]);
    assert!(!ok);
    assert!(err.contains("no state \"sleeping\""), "{err}");
    let (ok, _, err) = cli(&["device", "label", "SN-CLI-1", "--set", "no-equals-sign"]);
    assert!(!ok);
    assert!(err.contains("NAME=VALUE"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_support_periods_prints_labels_and_exports_histories() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = init(root.path(), |_| {});
    let (_serving, api) = Serving::start(&dir);
    let m = certs::factory::Manufacturer::create(
        certs::factory::ManufacturerConfig::new("Cli Maker"),
        now(),
    )
    .unwrap();
    expect(api.clone(), &dir, &m, &["SN-TR-1"]).await;
    let cli = |args: &[&str]| cli(&dir, args);
    let (ok, text, err) = cli(&[
        "support",
        "set",
        "sensor-1",
        "--ends-on",
        "2031-06-30",
        "--notice-days",
        "60",
    ]);
    assert!(ok, "{err}");
    assert!(text.contains("end on 2031-06-30"), "{text}");
    let (_, text, _) = cli(&["support", "list", "--json"]);
    let periods: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(periods[0]["notice_days"], 60);
    let (ok, _, err) = cli(&["support", "set", "sensor-1", "--ends-on", "2031-02-30"]);
    assert!(!ok);
    assert!(err.contains("YYYY-MM-DD"), "{err}");

    // Labels under the owner's own base URL; the QR code written for printing.
    let mut settings = api.label_settings().unwrap();
    settings.base_url = Some("https://labels.example/d".into());
    api.set_label_settings(&settings).unwrap();
    let qr = root.path().join("label.png");
    let (ok, text, err) = cli(&["live-label", "SN-TR-1", "--qr", qr.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(text.starts_with("https://labels.example/d/"), "{text}");
    // Not onboarded yet: no class reported, so no period applies to it.
    assert!(
        text.contains("security updates: no end date published"),
        "{text}"
    );
    assert!(std::fs::read(&qr).unwrap().starts_with(b"\x89PNG"));

    // The history of a device: a bundle whose statement is signed and lists its entries.
    let file = root.path().join("history.cbor");
    let (ok, text, err) = cli(&[
        "device",
        "history",
        "SN-TR-1",
        "--export",
        file.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(text.contains("wrote"), "{text}");
    let bundle: onboarder::service::HistoryBundle =
        protocol::cbor::from_slice(&std::fs::read(&file).unwrap(), 1 << 24).unwrap();
    assert!(!bundle.entries.is_empty());
    assert!(bundle.parts.contains_key("voucher"));
    let (ok, _, err) = cli(&[
        "device",
        "history",
        "SN-NOBODY",
        "--export",
        file.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("SN-NOBODY"), "{err}");
}
