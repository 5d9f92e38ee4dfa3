//! The server on a Linux host: its systemd unit, readiness and stopping through the
//! notification protocol, JSON logs, shell completions and manual pages.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::binary::{BIN, init};

#[test]
fn systemd_accepts_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    // The unit as shipped, with the binary where this build put it.
    let unit = include_str!("../../dist/onboarder.service").replace("/usr/bin/onboarder", BIN);
    let path = dir.path().join("onboarder.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (Debian systemd) is installed by ./scripts/test");
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("onboarder.service:"), "{text}");
}

/// The next notification, within `secs`.
fn next_notice(socket: &UnixDatagram, secs: u64) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(secs)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification from the server");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn under_systemd_it_says_ready_stops_on_sigterm_and_logs_json() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = init(root.path(), |_| {});
    let notify = root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify).unwrap();
    let server = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "--dir",
            dir.to_str().unwrap(),
            "serve",
        ])
        .env("NOTIFY_SOCKET", &notify)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ready = next_notice(&socket, 30);
    assert!(
        ready.starts_with("READY=1\nSTATUS=serving devices on"),
        "{ready}"
    );
    // Ready means serving: the admin API answers at once.
    let api = onboarder::operator::client::ApiClient::for_data_dir(&dir).unwrap();
    api.stats().unwrap();

    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(next_notice(&socket, 10), "STOPPING=1");
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let logs = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["fields"].is_object())
    );
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "shutting down")
    );
}

#[test]
fn completions_and_manual_pages_come_from_the_command_line_definition() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("onboarder") && script.contains("decommission"));
    // bash reads it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("onboarder.bash");
    std::fs::write(&path, &script).unwrap();
    let checked = Command::new("bash")
        .args(["-n", path.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(checked.success());

    let man = dir.path().join("man");
    let out = Command::new(BIN)
        .args(["man", man.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(man.join("onboarder.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH onboarder"),
        "{page}"
    );
    let serve = std::fs::read_to_string(man.join("onboarder-serve.1")).unwrap();
    // The global options are on every command's page.
    assert!(serve.contains("log\\-format"), "{serve}");
    assert!(man.join("onboarder-campaign.1").exists());
    assert!(man.join("onboarder-campaign-start.1").exists());
}
