//! Network access on a real RADIUS server: FreeRADIUS, configured by `onboarder radius init`,
//! driven by wpa_supplicant's `eapol_test` (EAP-TLS) and `radclient` (MAC authorization)
//! with the credentials real agents got from a real onboarding.
//!
//! One owner, three devices: A logs in with its LDevID (placed in the VLAN its MUD URL maps
//! to), re-keys (the new certificate works, the superseded one stops when its grace ends) and
//! is revoked; B gets its own passphrase by MAC authorization and is decommissioned; C shows
//! that nobody gets on while the onboarder cannot be asked. Certificates FreeRADIUS refuses
//! itself (an IDevID, another CA's, an expired one) are refused too, and every answer is in
//! the onboarder's audit log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{CaName, KeyKind, KeyPair, Validity};
use common::{Owner, path};
use device_agent::{Agent, AgentOptions, Backoff};
use onboarder::core::network_access::{AccessPolicy, Placement, PlacementRule, QuarantineAccess};
use onboarder::core::{DeviceId, DeviceState};
use onboarder::radius::freeradius::{InitOptions, RadiusClient};

const SECRET: &str = "radius-test-secret";
const MUD_URL: &str = "https://makers.example/mud/sensor.json";
const SENSOR_VLAN: &str = "20";

/// FreeRADIUS in the foreground with debug output (to a file), stopped when dropped.
struct FreeRadius {
    child: Child,
    log: PathBuf,
}

impl FreeRadius {
    fn start(config: &Path) -> FreeRadius {
        let log = config.join("debug.log");
        let child = Command::new("freeradius")
            .args(["-f", "-X", "-d", path(config)])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("freeradius is installed by scripts/test");
        let radius = FreeRadius { child, log };
        let started = Instant::now();
        while !radius.debug().contains("Ready to process requests") {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "FreeRADIUS did not start: {}",
                radius.debug()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        radius
    }

    fn debug(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An EAP-TLS login by `eapol_test`: whether it was accepted, and the VLAN the answer gave.
fn eap_tls(
    work: &Path,
    port: u16,
    owner_root: &Path,
    cert: &Path,
    key: &Path,
) -> (bool, Option<String>) {
    let conf = work.join("eapol.conf");
    std::fs::write(
        &conf,
        format!(
            "network={{\n\tkey_mgmt=WPA-EAP\n\teap=TLS\n\tidentity=\"device\"\n\tca_cert=\"{}\"\n\tclient_cert=\"{}\"\n\tprivate_key=\"{}\"\n}}\n",
            path(owner_root),
            path(cert),
            path(key)
        ),
    )
    .unwrap();
    let out = Command::new("eapol_test")
        .args(["-c", path(&conf), "-a", "127.0.0.1", "-s", SECRET])
        .args(["-p", &port.to_string(), "-t", "10"])
        .output()
        .expect("eapol_test is installed by scripts/test");
    let text = String::from_utf8_lossy(&out.stdout);
    (out.status.success(), vlan_in(&text))
}

/// The Tunnel-Private-Group-Id of the last RADIUS message `eapol_test` printed.
fn vlan_in(text: &str) -> Option<String> {
    let mut lines = text.lines();
    let mut vlan = None;
    while let Some(line) = lines.next() {
        if line.contains("(Tunnel-Private-Group-Id)") {
            let hex = lines.next()?.trim().strip_prefix("Value: ")?.to_string();
            vlan = certs::inspect::unhex(&hex).and_then(|b| String::from_utf8(b).ok());
        }
    }
    vlan
}

/// A MAC authorization by `radclient`, as an access point asks for a station's passphrase:
/// the passphrase, if the answer was an Access-Accept with one.
fn mac_authorization(port: u16, mac: &str) -> Option<String> {
    let mut child = Command::new("radclient")
        .args(["-x", "-r", "1", "-t", "5"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["auth", SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("radclient is installed by scripts/test");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "User-Name = \"{mac}\", User-Password = \"{mac}\", Calling-Station-Id = \"{mac}\"\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("Received Access-Accept") {
        return None;
    }
    text.lines()
        .find(|l| l.trim_start().starts_with("Tunnel-Password"))
        .and_then(|l| l.split_once('"'))
        .map(|(_, rest)| rest.trim_end_matches('"').to_string())
}

/// The passphrase the agent received, from its network credentials file.
fn passphrase_of(state_dir: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("network.json")).unwrap()).unwrap();
    json.pointer("/psk")
        .and_then(|p| p.as_str())
        .unwrap_or_else(|| panic!("no passphrase in {json}"))
        .to_string()
}

/// Copies the agent's current LDevID and key to `to` (they go with a wipe or a renewal).
fn keep_ldevid(state_dir: &Path, to: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(to).unwrap();
    let (cert, key) = (to.join("ldevid.pem"), to.join("ldevid.key"));
    std::fs::copy(state_dir.join("ldevid.pem"), &cert).unwrap();
    std::fs::copy(state_dir.join("ldevid.key"), &key).unwrap();
    (cert, key)
}

/// A client certificate for `id` from `ca`, valid from `from` for `seconds`, and its key.
fn client_cert(
    ca: &certs::Ca,
    id: &DeviceId,
    from: u64,
    seconds: u64,
    to: &Path,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate(KeyKind::P256).unwrap();
    let der = certs::profile::issue_ldevid(
        ca,
        &certs::profile::LdevidProfile {
            serial: &id.serial,
            common_name: &id.to_string(),
            organization: "Radius Owner",
            crl_url: None,
        },
        &key.spki_der(),
        Validity::starting(from, seconds),
        &certs::ca::random_serial().unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(to).unwrap();
    let (cert, key_path) = (to.join("cert.pem"), to.join("cert.key"));
    std::fs::write(&cert, certs::files::cert_pem(&der)).unwrap();
    std::fs::write(&key_path, key.to_pem()).unwrap();
    (cert, key_path)
}

fn options(mac: &str) -> AgentOptions {
    let mut hardware = device_agent::hardware_facts();
    hardware.insert("mac".into(), mac.into());
    AgentOptions {
        hardware,
        backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            busy: Duration::from_secs(1),
            refused: Duration::from_secs(2),
        },
        ..AgentOptions::default()
    }
}

/// A running agent, stopped when dropped with its task.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(agent: Agent) -> Running {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let _ = agent
                .run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
        });
        Running { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn eventually(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(seconds),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `onboarder radius init` for the onboarder in `data`: FreeRADIUS on `port`, configured in
/// `out`.
fn radius_init(data: &Path, out: &Path, port: u16, fail_open_verified: bool) -> PathBuf {
    onboarder::radius::freeradius::init(
        data,
        out,
        &InitOptions {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            clients: vec![RadiusClient {
                network: "127.0.0.1".into(),
                secret: SECRET.into(),
            }],
            names: vec!["radius.local".into()],
            fail_open_verified,
        },
        certs::unix_now(),
    )
    .unwrap()
}

/// An owner whose onboarder FreeRADIUS (configured by `radius init` in `<tmp>/freeradius`,
/// listening on `radius_port`) asks, with sensor devices placed in [`SENSOR_VLAN`].
async fn start_owner(radius_port: u16) -> (Owner, PathBuf) {
    let api_port = common::free_port();
    let mut radius_dir = PathBuf::new();
    let owner = Owner::start_prepared(
        "Radius Owner",
        |c| {
            c.api_listen = format!("127.0.0.1:{api_port}").parse().unwrap();
            c.policy.heartbeat_secs = 1;
            c.policy.superseded_grace = 4;
            c.policy.network_access = AccessPolicy {
                rules: vec![PlacementRule {
                    mud_url: Some(MUD_URL.into()),
                    class: None,
                    placement: Placement {
                        vlan: Some(SENSOR_VLAN.into()),
                        filter_id: None,
                    },
                }],
                default: Placement {
                    vlan: Some("10".into()),
                    filter_id: None,
                },
                quarantine: QuarantineAccess::Reject,
            };
        },
        |data, tmp| {
            radius_dir = radius_init(data, &tmp.join("freeradius"), radius_port, false);
        },
    )
    .await;
    (owner, radius_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeradius_admits_devices_by_their_ldevid_and_passphrase_until_their_access_is_removed() {
    let radius_port = common::free_port();
    let (owner, radius_dir) = start_owner(radius_port).await;
    let (service, control) = (&owner.service, owner.server.control());
    let work = owner.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let now = certs::unix_now();
    let maker = Manufacturer::create(
        ManufacturerConfig {
            mud_url: Some(MUD_URL.into()),
            ..ManufacturerConfig::new("Radius Devices")
        },
        now,
    )
    .unwrap();
    owner.import_maker(&maker, "radius").await;
    let root = owner.owner_root.clone();
    let endpoint = device_agent::transport::quic::endpoint_for(owner.server.quic_addr()).unwrap();
    let mut devices = Vec::new();
    for (serial, mac) in [
        ("SN-RAD-A", "02:00:00:aa:bb:0a"),
        ("SN-RAD-B", "02:00:00:aa:bb:0b"),
        ("SN-RAD-C", "02:00:00:aa:bb:0c"),
    ] {
        owner
            .import_voucher(
                maker
                    .voucher(serial, &owner.owner_root_der(), now, now + 86_400)
                    .unwrap(),
            )
            .await;
        let identity = work.join(serial).join("identity");
        let state = work.join(serial).join("state");
        maker
            .mint(serial, KeyKind::P256, now)
            .unwrap()
            .save(&identity)
            .unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let agent = || {
            Agent::with_files(
                &identity,
                &state,
                owner.server.quic_addr(),
                endpoint.clone(),
                options(mac),
            )
            .unwrap()
        };
        agent().onboard().await.unwrap();
        let running = Running::start(agent());
        let id = service.resolve(&format!("radius/{serial}")).unwrap();
        // Active, and its first operational session reported its MAC address.
        eventually("the device's first session", 20, || {
            service
                .device(&id)
                .is_ok_and(|r| r.state == DeviceState::Active && r.hardware.contains_key("mac"))
        })
        .await;
        assert_eq!(
            service.device(&id).unwrap().mud_url.as_deref(),
            Some(MUD_URL)
        );
        devices.push((id, identity, state, mac, running));
    }
    let radius = FreeRadius::start(&radius_dir);
    let login = |cert: &Path, key: &Path| eap_tls(&work, radius_port, &root, cert, key);

    // A: its LDevID gets it on, into the VLAN its MUD URL maps to.
    let (a, a_identity, a_state, _, a_agent) = devices.remove(0);
    let (a_cert, a_key) = keep_ldevid(&a_state, &work.join("a-first"));
    assert_eq!(
        login(&a_cert, &a_key),
        (true, Some(SENSOR_VLAN.to_string())),
        "{}",
        radius.debug()
    );

    // Refused by FreeRADIUS itself: the IDevID alone, another CA's certificate, an expired
    // certificate of ours.
    assert!(
        !login(
            &a_identity.join("idevid.pem"),
            &a_identity.join("idevid.key")
        )
        .0
    );
    let other = certs::Ca::root(
        &CaName {
            organization: "Someone Else".into(),
            common_name: "Someone Else CA".into(),
        },
        KeyPair::generate(KeyKind::P256).unwrap(),
        Validity::starting(now - 60, 86_400),
        &certs::ca::random_serial().unwrap(),
    )
    .unwrap();
    let (cert, key) = client_cert(&other, &a, now - 60, 86_400, &work.join("other-ca"));
    assert!(!login(&cert, &key).0, "another CA's certificate");
    let data = owner.dir.path().join("onboarder");
    let config = onboarder::config::Config::load(&data).unwrap();
    let pki = onboarder::pki::load(&data, &config).unwrap();
    let (cert, key) = client_cert(
        &pki.registrar.issuing.ca,
        &a,
        now - 3 * 86_400,
        86_400,
        &work.join("expired"),
    );
    assert!(!login(&cert, &key).0, "an expired certificate");

    // A re-keys: the new certificate gets on; the superseded one until its grace ends only.
    control.rotate(Some(vec![a.clone()]), None).await.unwrap();
    eventually("the renewal", 30, || {
        service.device(&a).is_ok_and(|r| {
            r.certificates.len() == 2 && r.active_certificate() == r.certificates.last()
        }) && std::fs::read(a_state.join("ldevid.pem")).ok() != std::fs::read(&a_cert).ok()
    })
    .await;
    let (a_new_cert, a_new_key) = keep_ldevid(&a_state, &work.join("a-second"));
    assert!(login(&a_new_cert, &a_new_key).0, "the renewed certificate");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !login(&a_cert, &a_key).0,
        "the superseded certificate after its grace"
    );
    assert!(login(&a_new_cert, &a_new_key).0);

    // A revoked: refused at its next login, whatever FreeRADIUS's CRL says yet.
    a_agent.stop().await;
    let revoked_at = Instant::now();
    control
        .revoke(&a, certs::crl::Reason::KeyCompromise)
        .await
        .unwrap();
    let mut refused_after = None;
    while revoked_at.elapsed() < Duration::from_secs(10) {
        if !login(&a_new_cert, &a_new_key).0 {
            refused_after = Some(revoked_at.elapsed());
            break;
        }
    }
    let refused_after = refused_after.expect("the revoked device was still accepted after 10 s");
    println!("Access-Reject {refused_after:?} after the revocation");

    // B: its own passphrase by MAC authorization (as an access point asks, in its format),
    // until it is decommissioned.
    let (b, _, b_state, b_mac, b_agent) = devices.remove(0);
    let ap_format = b_mac.replace(':', "-").to_uppercase();
    assert_eq!(
        mac_authorization(radius_port, &ap_format),
        Some(passphrase_of(&b_state))
    );
    assert_eq!(mac_authorization(radius_port, "02-00-00-00-00-99"), None);
    let (b_cert, b_key) = keep_ldevid(&b_state, &work.join("b"));
    assert!(login(&b_cert, &b_key).0);
    control
        .decommission(vec![b.clone()], protocol::attestation::WipeMethod::Clear)
        .await
        .unwrap();
    eventually("the decommissioning", 30, || {
        service
            .device(&b)
            .is_ok_and(|r| r.state == DeviceState::Decommissioned)
    })
    .await;
    b_agent.stop().await;
    assert!(
        !login(&b_cert, &b_key).0,
        "a decommissioned device's LDevID"
    );
    assert_eq!(mac_authorization(radius_port, &ap_format), None);

    // The onboarder's audit log holds the admissions and refusals, FreeRADIUS's own too.
    let entries = service.audit_entries(1, 10_000).unwrap();
    let of = |id: &DeviceId, action: &str| {
        entries
            .iter()
            .filter(|e| e.event.device.as_ref() == Some(id) && e.event.action == action)
            .map(|e| e.event.detail.clone())
            .collect::<Vec<_>>()
    };
    let granted = of(&a, "network-access-granted");
    assert!(granted.iter().any(|d| d.contains("VLAN 20")), "{granted:?}");
    // Refused: the superseded certificate after its grace, and the device once revoked.
    let refused = of(&a, "network-access-refused");
    let first = &service.device(&a).unwrap().certificates[0].serial;
    let line = format!("certificate {first} is no longer accepted");
    assert!(refused.iter().any(|d| d.contains(&line)), "{refused:?}");
    assert!(
        refused.iter().any(|d| d.contains("is quarantined")),
        "{refused:?}"
    );
    assert!(
        refused
            .iter()
            .any(|d| d.contains("the access server refused")),
        "FreeRADIUS's own refusal (another CA's certificate naming A): {refused:?}"
    );
    assert!(
        of(&b, "network-access-granted")
            .iter()
            .any(|d| d.contains("MAC authorization")),
    );
    assert!(
        of(&b, "network-access-refused")
            .iter()
            .any(|d| d.contains("is decommissioned")),
        "{:?}",
        of(&b, "network-access-refused")
    );

    // C: accepted while the onboarder answers; refused once it cannot be asked (fail closed).
    let (_, _, c_state, _, c_agent) = devices.remove(0);
    c_agent.stop().await;
    let (c_cert, c_key) = keep_ldevid(&c_state, &work.join("c"));
    assert!(login(&c_cert, &c_key).0);
    owner.server.shutdown().await;
    assert!(
        !login(&c_cert, &c_key).0,
        "accepted with the onboarder down: {}",
        radius.debug()
    );
    drop(radius);

    // The operator's exception, --fail-open-verified: with the onboarder down, a certificate
    // FreeRADIUS verifies (chain and CRL) gets on, without a placement; A's, revoked and on the
    // CRL, does not.
    let open_port = common::free_port();
    let open_dir = radius_init(&data, &work.join("fail-open"), open_port, true);
    let open = FreeRadius::start(&open_dir);
    let login = |cert: &Path, key: &Path| eap_tls(&work, open_port, &root, cert, key);
    assert_eq!(login(&c_cert, &c_key), (true, None), "{}", open.debug());
    assert!(!login(&a_new_cert, &a_new_key).0, "a revoked certificate");
}

/// `curl` posting `body` to the RADIUS endpoint `route` with `user:password`: the status.
fn post(owner: &Owner, route: &str, credentials: Option<&str>, body: &[u8]) -> u16 {
    let file = owner.dir.path().join("body");
    std::fs::write(&file, body).unwrap();
    let mut curl = Command::new("curl");
    curl.args([
        "--silent",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
    ])
    .args(["-H", "Content-Type: application/json", "--data-binary"])
    .arg(format!("@{}", path(&file)));
    if let Some(credentials) = credentials {
        curl.args(["-u", credentials]);
    }
    let out = curl
        .arg(format!("http://{}{route}", owner.server.api_addr()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_radius_endpoints_refuse_strangers_and_bad_bodies_and_record_nothing_of_them() {
    let (owner, _) = start_owner(common::free_port()).await;
    let data = owner.dir.path().join("onboarder");
    let token = std::fs::read_to_string(data.join("radius-token")).unwrap();
    let admin = std::fs::read_to_string(data.join("admin-token")).unwrap();
    let ours = format!("freeradius:{}", token.trim());
    let audit = || owner.service.audit_entries(1, 10_000).unwrap().len();
    let before = audit();
    let login =
        br#"{"TLS-Client-Cert-Common-Name": {"type": "string", "value": ["0011223344556677/SN-X"]},
                    "TLS-Client-Cert-Serial": {"type": "string", "value": ["0a"]}}"#;
    for (credentials, body, status) in [
        (None, &login[..], 403),
        (
            Some(format!("freeradius:{}", admin.trim())),
            &login[..],
            403,
        ),
        (Some("freeradius:wrong".to_string()), &login[..], 403),
        (Some(ours.clone()), &b"not json"[..], 400),
        (Some(ours.clone()), &b"[1, 2]"[..], 400),
        (Some(ours.clone()), &vec![b' '; 100 * 1024][..], 413),
    ] {
        assert_eq!(
            post(&owner, "/radius/v1/eap-tls", credentials.as_deref(), body),
            status,
            "{credentials:?}"
        );
    }
    assert_eq!(audit(), before, "a refused request wrote to the audit log");
    // The RADIUS token opens nothing of the admin API.
    let devices = Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
        ])
        .args(["-u", &ours])
        .arg(format!("http://{}/v1/devices", owner.server.api_addr()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&devices.stdout), "401");
    // A well-formed question about a device we do not know: refused (401 is the rest
    // module's reject), and recorded.
    assert_eq!(post(&owner, "/radius/v1/eap-tls", Some(&ours), login), 401);
    let unknown_station =
        br#"{"Calling-Station-Id": {"type": "string", "value": ["02-00-00-00-00-99"]}}"#;
    assert_eq!(
        post(&owner, "/radius/v1/mac", Some(&ours), unknown_station),
        401
    );
    assert_eq!(audit(), before + 2);
    owner.server.shutdown().await;
}

/// The command an operator runs: `onboarder radius init` writes a configuration FreeRADIUS
/// accepts (`freeradius -C`), with its secrets private, and turns the onboarder's side on.
#[test]
fn onboarder_radius_init_writes_a_configuration_freeradius_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("freeradius"));
    let onboarder = common::binary("onboarder", "onboarder");
    let run = |args: &[&str]| {
        let out = Command::new(&onboarder)
            .arg("--dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    assert!(run(&["init", "--org", "Radius Owner"]).0);
    let (ok, text) = run(&["radius", "init", path(&out), "--client", "10.0.0.0/8"]);
    assert!(ok, "{text}");
    assert!(text.contains("freeradius -f -d"), "{text}");
    let checked = Command::new("freeradius")
        .args(["-C", "-d", path(&out)])
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    use std::os::unix::fs::PermissionsExt;
    for secret in ["clients.conf", "mods-enabled/onboarder", "certs/server.key"] {
        let mode = std::fs::metadata(out.join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{secret} is readable by others");
    }
    assert!(
        std::fs::read_to_string(out.join("clients.conf"))
            .unwrap()
            .contains("10.0.0.0/8")
    );
    let config = onboarder::config::Config::load(&data).unwrap();
    assert_eq!(
        config.radius.unwrap().ca_dir,
        out.canonicalize().unwrap().join("ca")
    );
    // The CA directory is there before the onboarder first runs: the owner root, the issuing
    // CA.
    assert_eq!(std::fs::read_dir(out.join("ca")).unwrap().count(), 2);
    // A second run does not overwrite the first.
    let (ok, text) = run(&["radius", "init", path(&out)]);
    assert!(!ok && text.contains("not empty"), "{text}");
}
