//! The owner-root rollover, end to end: 200 connected agents and an EST client made of curl and
//! openssl (which follows the root through `cacerts` as RFC 7030 4.1.3 says) keep working
//! before, during and after it, and the old root is retired at the end: out of the server's
//! trust, the agents', EST's and the client's, its key gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use certs::{CertInfo, KeyKind, KeyPair, files};
use onboarder::config::layout;

use crate::harness::*;

/// What the EST client did.
#[derive(Default)]
struct EstLog {
    /// Enrollments that worked (and whose certificate openssl verified).
    enrolled: usize,
    /// What went wrong, each time.
    failures: Vec<String>,
    /// The roots it trusts now (DER).
    roots: Vec<Vec<u8>>,
    /// Its certificates, oldest first.
    certificates: Vec<Vec<u8>>,
}

/// An EST client made of curl and openssl, looping: `cacerts` (taking a new root only when a
/// cross-certificate in the answer, checked by openssl against a root it trusts, vouches for
/// it; dropping roots the answer no longer lists), then `simpleenroll` with its IDevID the
/// first time and `simplereenroll` with its last certificate after, each certificate checked
/// by `openssl verify` against the roots it trusts (with `cacerts` fetched again if the CA
/// changed in between).
struct EstClient {
    port: u16,
    dir: PathBuf,
    serial: String,
    idevid: (PathBuf, PathBuf),
    log: Arc<Mutex<EstLog>>,
}

impl EstClient {
    fn run(self, stop: Arc<AtomicBool>) {
        let mut client: Option<(PathBuf, PathBuf)> = None;
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = self.round(&mut client) {
                self.log.lock().unwrap().failures.push(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    fn bundle(&self) -> PathBuf {
        let path = self.dir.join("trusted.pem");
        let roots = self.log.lock().unwrap().roots.clone();
        std::fs::write(&path, files::certs_pem(roots.iter().map(Vec::as_slice))).unwrap();
        path
    }

    fn curl(
        &self,
        resource: &str,
        client: Option<&(PathBuf, PathBuf)>,
        body: Option<&str>,
    ) -> Result<Vec<u8>, String> {
        let mut cmd = Command::new("curl");
        cmd.args(["--silent", "--show-error", "--fail"])
            .arg("--cacert")
            .arg(self.bundle());
        if let Some((cert, key)) = client {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(body) = body {
            cmd.args([
                "-H",
                "Content-Type: application/pkcs10",
                "--data-binary",
                body,
            ]);
        }
        let out = cmd
            .arg(format!(
                "https://localhost:{}/.well-known/est/{resource}",
                self.port
            ))
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{resource}: curl {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let compact: Vec<u8> = out
            .stdout
            .into_iter()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| format!("{resource}: base64: {e}"))
    }

    /// `openssl verify` of `cert` against the roots trusted now, through `untrusted`.
    fn verify(&self, cert: &[u8], untrusted: &[Vec<u8>]) -> Result<(), String> {
        let leaf = self.dir.join("verify-leaf.pem");
        std::fs::write(&leaf, files::cert_pem(cert)).unwrap();
        let mut cmd = Command::new("openssl");
        cmd.arg("verify").arg("-CAfile").arg(self.bundle());
        if !untrusted.is_empty() {
            let path = self.dir.join("untrusted.pem");
            std::fs::write(&path, files::certs_pem(untrusted.iter().map(Vec::as_slice))).unwrap();
            cmd.arg("-untrusted").arg(path);
        }
        let out = cmd
            .arg(&leaf)
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl verify: {}{}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `cacerts`: takes the roots it vouches for, and returns the CA certificates below them.
    fn cacerts(&self) -> Result<Vec<Vec<u8>>, String> {
        let p7 = self.curl("cacerts", None, None)?;
        let answer = certs::pkcs7::certificates(&p7).map_err(|e| format!("cacerts: {e}"))?;
        let infos: Vec<CertInfo> = answer
            .iter()
            .map(|c| CertInfo::parse(c).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let trusted = self.log.lock().unwrap().roots.clone();
        let mut roots = Vec::new();
        for (der, info) in answer.iter().zip(&infos) {
            if info.subject != info.issuer {
                continue;
            }
            if trusted.contains(der) {
                roots.push(der.clone());
                continue;
            }
            // NewWithOld: this root's name and key, issued by a root trusted now.
            let link = answer.iter().zip(&infos).find(|(_, l)| {
                l.subject == info.subject
                    && l.public_key == info.public_key
                    && l.issuer != l.subject
            });
            if let Some((link, _)) = link
                && self.verify(link, &[]).is_ok()
            {
                roots.push(der.clone());
            }
        }
        if roots.is_empty() {
            return Err("cacerts lists no root this client can trust".into());
        }
        self.log.lock().unwrap().roots = roots;
        Ok(answer
            .iter()
            .zip(&infos)
            .filter(|(_, i)| i.subject != i.issuer)
            .map(|(c, _)| c.clone())
            .collect())
    }

    fn round(&self, client: &mut Option<(PathBuf, PathBuf)>) -> Result<(), String> {
        let intermediates = self.cacerts()?;

        // Enroll (IDevID) or re-enroll (the last certificate), with a fresh key each time.
        let key = KeyPair::generate(KeyKind::P256).unwrap();
        let csr = certs::csr::build_birth_csr(&self.serial, &key).unwrap();
        let csr = base64::engine::general_purpose::STANDARD.encode(csr);
        let (resource, with) = match client {
            Some(c) => ("simplereenroll", c.clone()),
            None => ("simpleenroll", self.idevid.clone()),
        };
        let p7 = self.curl(resource, Some(&with), Some(&csr))?;
        let issued = certs::pkcs7::certificates(&p7)
            .map_err(|e| format!("{resource}: {e}"))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{resource}: no certificate"))?;
        // A certificate of a CA newer than the `cacerts` at hand (the issuing CA moved in
        // between): fetch them again, as a client does before it gives up.
        if self.verify(&issued, &intermediates).is_err() {
            self.verify(&issued, &self.cacerts()?)?;
        }
        let n = self.log.lock().unwrap().certificates.len();
        let (cert, key_path) = (
            self.dir.join(format!("ldevid-{n}.pem")),
            self.dir.join(format!("ldevid-{n}.key")),
        );
        files::write_private(&cert, files::cert_pem(&issued).as_bytes()).unwrap();
        files::write_secret(&key_path, key.to_pem().as_bytes()).unwrap();
        *client = Some((cert, key_path));
        let mut log = self.log.lock().unwrap();
        log.certificates.push(issued);
        log.enrolled += 1;
        Ok(())
    }
}

fn enrolled(log: &Mutex<EstLog>) -> usize {
    log.lock().unwrap().enrolled
}

fn read_roots(data: &Path) -> Vec<Vec<u8>> {
    files::read_certs(&data.join(layout::OWNER_ROOTS)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_root_rolls_over_under_a_connected_fleet_and_an_est_client() {
    const FLEET: usize = 200;
    // A device that is away while the new root is sent is waited for this long.
    let world = World::with_config(|c| {
        c.policy.root_distribution_wait = 3;
        c.coap_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let old_root = world.owner_root.clone();
    let serials: Vec<String> = (0..FLEET).map(|i| format!("SN-ROOT-{i:03}")).collect();
    let devices: Vec<Device> = serials.iter().map(|s| world.device(s)).collect();
    let mut refs: Vec<&str> = serials.iter().map(String::as_str).collect();
    refs.extend(["SN-ROOT-EST", "SN-ROOT-AWAY"]);
    world.expect(&refs, 30).await;
    // A device onboarded and connected once, then away until the CA has moved: it trusts the
    // old root alone when it comes back.
    let away = world.device("SN-ROOT-AWAY");
    let gone = Running::start(world.agent(&away));
    eventually(60, "the away device connected", || {
        gone.agent.stats().sessions.load(Ordering::SeqCst) == 1
    })
    .await;
    gone.stop().await;
    let running: Vec<Running> = devices
        .iter()
        .map(|d| Running::start(world.agent(d)))
        .collect();
    eventually(90, "the fleet connected", || {
        world.server.sessions().len() == FLEET
            && running
                .iter()
                .all(|r| r.agent.stats().sessions.load(Ordering::SeqCst) == 1)
    })
    .await;

    // The EST client, trusting the old root, enrolls and keeps re-enrolling.
    let est_device = world.device("SN-ROOT-EST");
    let log = Arc::new(Mutex::new(EstLog {
        roots: vec![old_root.clone()],
        ..EstLog::default()
    }));
    let est_dir = tempfile::tempdir().unwrap();
    let client = EstClient {
        port: world.server.https_addr().unwrap().port(),
        dir: est_dir.path().to_path_buf(),
        serial: "SN-ROOT-EST".into(),
        idevid: (
            est_device.identity_dir.join("idevid.pem"),
            est_device.identity_dir.join("idevid.key"),
        ),
        log: log.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let est = {
        let stop = stop.clone();
        std::thread::spawn(move || client.run(stop))
    };
    eventually(60, "the EST client enrolled before", || enrolled(&log) >= 2).await;

    // The rollover: started, then carried to its end by the server alone.
    let control = world.server.control();
    let started = control.root_rollover().await.unwrap();
    assert_eq!(started.rollover.map(|r| r.generation), Some(2));
    let new_root = files::read_cert(&world.data.join(layout::root_cert(2))).unwrap();
    // Refused while one is under way.
    assert!(control.root_rollover().await.is_err());
    let during = enrolled(&log);
    // The away device holds the rollover in distribution until the deadline, then in
    // retirement (its certificate is under the old root) until it comes back: through the
    // cross-certificate the server presents, it connects, takes the new root from its welcome
    // and re-keys.
    eventually(60, "the CA moved under the new root", || {
        world
            .server
            .service()
            .pending_root_rollover()
            .unwrap()
            .map(|r| r.phase)
            == Some(onboarder::core::roots::RootPhase::Retiring)
    })
    .await;
    eventually(90, "everyone else re-keyed under the new root", || {
        control.root_status().unwrap().under_old_root == 1
    })
    .await;
    let status = control.root_status().unwrap();
    assert_eq!(status.holding, [world.id("SN-ROOT-AWAY").to_string()]);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert!(
        world
            .server
            .service()
            .pending_root_rollover()
            .unwrap()
            .is_some(),
        "the old root waits for the device away"
    );
    let back = Running::start(world.agent(&away));
    eventually(180, "the old root retired", || {
        world
            .server
            .service()
            .pending_root_rollover()
            .unwrap()
            .is_none()
    })
    .await;
    assert!(
        enrolled(&log) > during,
        "the EST client enrolled during the rollover"
    );
    let after = enrolled(&log);
    eventually(60, "the EST client enrolled after", || {
        enrolled(&log) >= after + 2
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    est.join().unwrap();

    // Nobody failed: not the EST client, not an agent (their one new session each is the
    // planned switch to a certificate under the new root).
    let log = std::mem::take(&mut *log.lock().unwrap());
    assert!(log.failures.is_empty(), "{:?}", log.failures);
    assert_eq!(
        log.roots,
        std::slice::from_ref(&new_root),
        "the EST client trusts the new root alone"
    );
    let registrar = world.server.service().registrar();
    let new_ca = registrar.issuing.key_id.clone();
    for (r, s) in running.iter().zip(&serials) {
        let stats = r.agent.stats();
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0, "{s}");
        assert_eq!(stats.sessions.load(Ordering::Relaxed), 2, "{s}");
        let record = world.record(s).unwrap();
        assert_eq!(record.active_certificate().unwrap().issuer, new_ca, "{s}");
        let state = r.agent.load_state().unwrap();
        assert_eq!(state.roots(), std::slice::from_ref(&new_root), "{s}");
    }
    // The registrar, its issuing CA and what vouchers pin are under the new root.
    assert_eq!(registrar.owner_root(), Some(new_root.as_slice()));
    assert_eq!(registrar.roots.trusted, std::slice::from_ref(&new_root));
    assert!(registrar.roots.links.is_empty());
    let last = log.certificates.last().unwrap();
    assert_eq!(
        CertInfo::parse(last).unwrap().authority_key_id,
        Some(new_ca.clone())
    );

    // Retired: gone from the files, its key deleted, out of EST.
    assert_eq!(read_roots(&world.data), std::slice::from_ref(&new_root));
    assert_eq!(
        files::read_cert(&world.data.join(layout::OWNER_ROOT)).unwrap(),
        new_root
    );
    assert!(!world.data.join(layout::root_key(1)).exists());
    assert!(!world.data.join(layout::LEGACY_ROOT_KEY).exists());
    assert!(world.data.join(layout::root_key(2)).exists());
    let port = world.server.https_addr().unwrap().port();
    let roots_pem = est_dir.path().join("new-root.pem");
    std::fs::write(&roots_pem, files::cert_pem(&new_root)).unwrap();
    let out = Command::new("curl")
        .args(["--silent", "--fail", "--cacert"])
        .arg(&roots_pem)
        .arg(format!("https://localhost:{port}/.well-known/est/cacerts"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let compact: Vec<u8> = out
        .stdout
        .into_iter()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let listed = certs::pkcs7::certificates(
        &base64::engine::general_purpose::STANDARD
            .decode(compact)
            .unwrap(),
    )
    .unwrap();
    assert!(!listed.contains(&old_root));
    assert!(listed.contains(&new_root));
    // A certificate under the old root is refused in the handshake now: the client's first.
    let first = (
        est_dir.path().join("ldevid-0.pem"),
        est_dir.path().join("ldevid-0.key"),
    );
    let out = Command::new("curl")
        .args(["--silent", "--cacert"])
        .arg(&roots_pem)
        .arg("--cert")
        .arg(&first.0)
        .arg("--key")
        .arg(&first.1)
        .args([
            "--write-out",
            "%{http_code}",
            "-H",
            "Content-Type: application/pkcs10",
        ])
        .args(["--data-binary", "AAAA"])
        .arg(format!(
            "https://localhost:{port}/.well-known/est/simplereenroll"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "000",
        "refused in the handshake"
    );

    // The audit log tells the story, and the status says it is over.
    let actions: Vec<String> = world
        .audit()
        .iter()
        .map(|e| e.event.action.clone())
        .collect();
    for action in [
        "root-rollover",
        "root-rollover-phase",
        "ca-rollover",
        "root-retired",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    let status = control.root_status().unwrap();
    assert_eq!((status.in_force, status.trusted), (2, 1));
    assert!(status.rollover.is_none());

    // A device whose voucher pins the new root onboards under it.
    let late = world.device("SN-ROOT-LATE");
    let voucher = world
        .manufacturer
        .voucher("SN-ROOT-LATE", &new_root, now(), now() + DAY)
        .unwrap();
    let report = world
        .server
        .service()
        .import_vouchers(&protocol::voucher::encode_bundle(&[voucher]))
        .await
        .unwrap();
    assert!(report.rejected.is_empty(), "{report:?}");
    let state = world.agent(&late).onboard().await.unwrap();
    assert_eq!(state.roots(), std::slice::from_ref(&new_root));
    // CoAPS presents the registrar's new chain too: a libcoap client trusting only the new
    // root enrolls.
    let coap_device = world.device("SN-ROOT-COAP");
    let voucher = world
        .manufacturer
        .voucher("SN-ROOT-COAP", &new_root, now(), now() + DAY)
        .unwrap();
    world
        .server
        .service()
        .import_vouchers(&protocol::voucher::encode_bundle(&[voucher]))
        .await
        .unwrap();
    let csr = crate::coap::openssl_csr(est_dir.path(), "SN-ROOT-COAP");
    let out = est_dir.path().join("coap.p7");
    let url = format!(
        "coaps://{}/.well-known/est/sen",
        world.server.coap().unwrap().local_addr().unwrap()
    );
    let (ok, text) =
        crate::coap::coap_enroll("openssl", &coap_device, &roots_pem, &csr, &out, &url, 10);
    assert!(ok && out.exists(), "{text}");
    // One that still pins the old root is refused at import.
    let stale = world
        .manufacturer
        .voucher("SN-ROOT-STALE", &old_root, now(), now() + DAY)
        .unwrap();
    let report = world
        .server
        .service()
        .import_vouchers(&protocol::voucher::encode_bundle(&[stale]))
        .await
        .unwrap();
    assert_eq!(report.rejected.len(), 1);
    let stats = back.agent.stats();
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
    assert_eq!(
        back.agent.load_state().unwrap().roots(),
        std::slice::from_ref(&new_root)
    );
    let record = world.record("SN-ROOT-AWAY").unwrap();
    assert_eq!(record.active_certificate().unwrap().issuer, new_ca);
    for r in running.into_iter().chain([back]) {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roots_that_would_cut_a_device_off_are_refused_and_change_nothing() {
    let world = World::new().await;
    world.expect(&["SN-ROOT-BAD"], 30).await;
    let device = world.device("SN-ROOT-BAD");
    let running = Running::start(world.agent(&device));
    eventually(60, "the device connected", || {
        running.agent.stats().sessions.load(Ordering::SeqCst) == 1
    })
    .await;
    let id = world.id("SN-ROOT-BAD");
    let before = running.agent.load_state().unwrap();
    let record_before = world.record("SN-ROOT-BAD").unwrap();
    let stranger = certs::Ca::root(
        &certs::CaName {
            organization: "Someone Else".into(),
            common_name: "Someone Else Root".into(),
        },
        KeyPair::generate(KeyKind::P256).unwrap(),
        certs::Validity::starting(now(), DAY),
        &certs::ca::random_serial().unwrap(),
    )
    .unwrap();
    let issuing = certs::files::read_cert(&world.data.join(layout::ISSUING_CA)).unwrap();
    for (what, anchors) in [
        (
            "another owner's root alone",
            vec![stranger.cert_der().to_vec()],
        ),
        ("no root", vec![]),
        (
            "a CA that is not a root",
            vec![world.owner_root.clone(), issuing],
        ),
        ("too many", vec![world.owner_root.clone(); 5]),
    ] {
        let command = protocol::message::Command::TrustAnchors {
            anchors: anchors.into_iter().map(Into::into).collect(),
        };
        let reply = world.server.sessions().push(&id, &command).await.unwrap();
        match reply {
            protocol::message::CommandReply::Error(e) => {
                assert_eq!(e.code, protocol::message::ErrorCode::BadRequest, "{what}");
                assert!(
                    e.message.contains("owner roots refused"),
                    "{what}: {}",
                    e.message
                );
            }
            other => panic!("{what}: {other:?}"),
        }
        // Nothing changed but the security event the refusal is (forwarded at once).
        let mut after = running.agent.load_state().unwrap();
        assert_eq!(after.security_events, Vec::new(), "{what}");
        after.security_sequence = before.security_sequence;
        assert_eq!(after, before, "{what}");
    }
    // The device still trusts what it did, still connected, and the server's record is as
    // it was, but for the refusals it heard of as security events.
    assert_eq!(running.agent.stats().sessions.load(Ordering::SeqCst), 1);
    eventually(10, "the refusals reached the device's history", || {
        world.record("SN-ROOT-BAD").unwrap().security.recorded == 4
    })
    .await;
    let mut record_after = world.record("SN-ROOT-BAD").unwrap();
    assert_eq!(record_after.security.next, 4);
    record_after.security = record_before.security.clone();
    record_after.version = record_before.version;
    record_after.updated_at = record_before.updated_at;
    assert_eq!(record_after, record_before);
    running.stop().await;
}
