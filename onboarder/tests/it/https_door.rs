//! Our protocol over HTTPS, the fallback for devices whose network blocks UDP, driven by curl
//! with CBOR bodies: a device onboards (voucher, status, enrollment, its report), says hello
//! with its LDevID, which opens its session, and takes a command the server pushes (it asks
//! for commands, answers the one it gets). Malformed or out-of-turn requests are refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::message::{self, Command as Order, CommandReply, Hello, Request, Response, Status};

use crate::harness::*;

/// curl's status and body for a POST of `body` (CBOR) to `resource` with `client`.
fn post(world: &World, resource: &str, client: (&Path, &Path), body: &[u8]) -> (u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&input, body).unwrap();
    let out = Command::new("curl")
        .args(["--silent", "--write-out", "%{http_code}", "--cacert"])
        .arg(world.data.join(onboarder::config::layout::OWNER_ROOT))
        .arg("--cert")
        .arg(client.0)
        .arg("--key")
        .arg(client.1)
        .args(["-H", "Content-Type: application/cbor", "--data-binary"])
        .arg(format!("@{}", input.display()))
        .arg("-o")
        .arg(&output)
        .arg(format!(
            "https://localhost:{}/.well-known/onboarder/{resource}",
            world.server.https_addr().unwrap().port()
        ))
        .output()
        .expect("curl is installed by scripts/test");
    let status = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (status, std::fs::read(&output).unwrap_or_default())
}

fn call(world: &World, client: (&Path, &Path), request: &Request) -> Response {
    let (status, body) = post(world, "request", client, &message::encode(request));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    message::decode(&body, message::MAX_RESPONSE).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_onboards_and_takes_a_pushed_command_over_https() {
    let world = World::new().await;
    world.expect(&["SN-NOUDP"], 30).await;
    let device = world.device("SN-NOUDP");
    let birth = device.birth();
    let idevid: (PathBuf, PathBuf) = (
        device.identity_dir.join("idevid.pem"),
        device.identity_dir.join("idevid.key"),
    );
    let idevid = (idevid.0.as_path(), idevid.1.as_path());
    let registrar =
        certs::files::read_certs(&world.data.join(onboarder::config::layout::SERVER_CERT))
            .unwrap()
            .remove(0);
    // Each curl is a connection of its own, so no step is bound to a session: a request
    // without a binding is what HTTPS allows (a client that keeps its connection may bind).
    let request = device_agent::machine::onboarding::voucher_request(
        &birth.identity,
        &[4; 16],
        &registrar,
        &[],
        now(),
    )
    .sign(&birth.key)
    .unwrap();
    assert!(matches!(
        call(&world, idevid, &Request::VoucherRequest(request)),
        Response::Voucher(_)
    ));
    let ok = Status {
        ok: true,
        reason: None,
    };
    assert!(matches!(
        call(&world, idevid, &Request::VoucherStatus(ok.clone())),
        Response::Ack
    ));
    let key = certs::KeyPair::generate(certs::KeyKind::P256).unwrap();
    let csr = certs::csr::build_birth_csr("SN-NOUDP", &key).unwrap();
    let Response::Enrolled(enrolled) = call(&world, idevid, &Request::enroll(csr)) else {
        panic!("not enrolled");
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_file) = (dir.path().join("ldevid.pem"), dir.path().join("ldevid.key"));
    std::fs::write(&cert, certs::files::cert_pem(&enrolled.certificate)).unwrap();
    std::fs::write(&key_file, key.to_pem()).unwrap();
    let ldevid = (cert.as_path(), key_file.as_path());
    assert!(matches!(
        call(&world, idevid, &Request::EnrollStatus(ok)),
        Response::Ack
    ));

    // No session before the hello: asking for commands is out of turn.
    assert_eq!(post(&world, "commands", ldevid, b"").0, 409);
    let hello = Request::Hello(Hello {
        agent_version: "curl".into(),
        firmware_version: "1.0.0".into(),
        firmware_sequence: 0,
        class_id: String::new(),
        hardware: Default::default(),
        anchors: None,
    });
    assert!(matches!(call(&world, ldevid, &hello), Response::Welcome(_)));
    let id = world.id("SN-NOUDP");
    assert!(world.server.sessions().is_connected(&id));
    assert_eq!(
        world.record("SN-NOUDP").unwrap().state,
        onboarder::core::DeviceState::Active
    );

    // The server pushes a ping; the device asks for it and answers.
    ping(&world, &id, ldevid, 7).await;
    let pong = message::encode(&CommandReply::Pong { nonce: 7 });

    // Out of turn or malformed: refused, nothing changed.
    let before = world.record("SN-NOUDP").unwrap();
    assert_eq!(post(&world, "reply", ldevid, &pong).0, 409);
    assert_eq!(post(&world, "request", ldevid, b"garbage").0, 400);
    assert_eq!(post(&world, "reply", ldevid, b"garbage").0, 400);
    // A hello refused on another connection: its session, made the device's while the hello
    // was decided, gives way to the one that was open.
    let hardware = (0..=message::MAX_HARDWARE_FACTS)
        .map(|i| (format!("fact-{i}"), String::new()))
        .collect();
    let Request::Hello(mut bad) = hello else {
        unreachable!()
    };
    bad.hardware = hardware;
    assert!(matches!(
        call(&world, ldevid, &Request::Hello(bad)),
        Response::Error(_)
    ));
    assert_eq!(world.record("SN-NOUDP").unwrap(), before);
    assert!(world.server.sessions().is_connected(&id));
    ping(&world, &id, ldevid, 8).await;
}

/// The server pushes a ping to `id`'s HTTPS session; the device (curl) asks for it and answers.
async fn ping(world: &World, id: &onboarder::core::DeviceId, client: (&Path, &Path), nonce: u64) {
    let sessions = world.server.sessions().clone();
    let pushed = {
        let id = id.clone();
        tokio::spawn(async move { sessions.push(&id, &Order::Ping { nonce }).await })
    };
    let (status, body) = tokio::task::block_in_place(|| post(world, "commands", client, b""));
    assert_eq!(status, 200);
    let order: Order = message::decode(&body, message::MAX_RESPONSE).unwrap();
    assert_eq!(order, Order::Ping { nonce });
    let pong = message::encode(&CommandReply::Pong { nonce });
    assert_eq!(post(world, "reply", client, &pong).0, 204);
    assert_eq!(pushed.await.unwrap().unwrap(), CommandReply::Pong { nonce });
}

/// A network that blocks UDP: the agent's QUIC address is a port that drops everything. With
/// the onboarder's HTTPS listener in its options the agent onboards, renews and takes a
/// pushed command over HTTPS; the server treats it as any device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_behind_a_udp_block_onboards_renews_and_takes_commands_over_https() {
    let world = World::new().await;
    world.expect(&["SN-BLOCKED"], 30).await;
    let device = world.device("SN-BLOCKED");
    // Bound and never read: every QUIC packet to it is dropped.
    let blackhole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let https = format!(
        "https://localhost:{}",
        world.server.https_addr().unwrap().port()
    );
    let agent = || {
        device.agent_with(
            blackhole.local_addr().unwrap(),
            &world.endpoint,
            device_agent::AgentOptions {
                clock: world.clock.clone(),
                https_url: Some(https.clone()),
                ..fast_options()
            },
        )
    };

    let state = agent().onboard().await.unwrap();
    assert!(state.ldevid.is_some());
    let record = world.record("SN-BLOCKED").unwrap();
    assert_eq!(record.state, onboarder::core::DeviceState::Active);

    let a = agent();
    let session = a.renew(a.connect().await.unwrap()).await.unwrap();
    session.close();
    assert_eq!(world.record("SN-BLOCKED").unwrap().certificates.len(), 2);

    let running = Running::start(agent());
    let id = world.id("SN-BLOCKED");
    // The running agent's own session (the one above was closed, which the server cannot see
    // over HTTPS until the device says hello again).
    eventually(20, "the session over HTTPS", || {
        running
            .agent
            .stats()
            .sessions
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && world.server.sessions().is_connected(&id)
    })
    .await;
    let reply = world
        .server
        .sessions()
        .push(&id, &Order::Ping { nonce: 42 })
        .await
        .unwrap();
    assert_eq!(reply, CommandReply::Pong { nonce: 42 });
    running.stop().await;
}
