//! Several onboarders on one PostgreSQL database (`ONBOARDER_TEST_POSTGRES`, which
//! `scripts/test` provides), acting as one: an order given on one replica reaches a device
//! connected to another, and the work that runs once moves to another replica when its
//! leader stops.

use std::sync::Arc;

use onboarder::core::DeviceState;
use onboarder::server::{Backends, Options, Server};
use protocol::attestation::WipeMethod;

use crate::harness::*;

/// A fresh schema of the test database, or `None` (and the test says it did not run).
fn database() -> Option<String> {
    let Ok(base) = std::env::var("ONBOARDER_TEST_POSTGRES") else {
        eprintln!("ONBOARDER_TEST_POSTGRES is not set: replicas are not tested");
        return None;
    };
    Some(onboarder::store::postgres::fresh_schema(&base).unwrap())
}

/// The relay channel of the schema `url` works in.
async fn relay_channel(url: &str) -> String {
    let client = connect(url).await;
    let schema: String = client
        .query_one("SELECT current_schema()", &[])
        .await
        .unwrap()
        .get(0);
    onboarder::store::postgres::relay_channel(&schema)
}

/// How many connections listen on `channel`; with `end`, ends them first (and counts those).
async fn listeners(url: &str, channel: &str, end: bool) -> i64 {
    let client = connect(url).await;
    let listen = format!("LISTEN \"{channel}\"");
    let sql = if end {
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1"
    } else {
        "SELECT count(*) FROM pg_stat_activity WHERE query = $1"
    };
    client.query_one(sql, &[&listen]).await.unwrap().get(0)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Another replica of `world`'s onboarder: the same data directory and database.
async fn replica(world: &World, url: &str) -> Server {
    let clock = world.clock.clone();
    Server::start_with(
        &world.data,
        Options {
            clock: Some(Arc::new(move || clock.now())),
            backends: Some(Backends::postgres(&world.data, url).unwrap()),
            ..Options::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_given_on_one_replica_reaches_a_device_connected_to_another() {
    let Some(url) = database() else { return };
    let store = url.clone();
    let world = World::with_config(move |c| c.store = Some(store)).await;
    let b = replica(&world, &url).await;
    // The world's server started first: it leads.
    eventually(10, "a leader", || world.server.control().is_leader()).await;
    assert!(!b.control().is_leader());

    world.expect(&["SN-REPL"], 30).await;
    let device = world.device("SN-REPL");
    let id = world.id("SN-REPL");
    world.agent(&device).onboard().await.unwrap();
    let running = Running::start(world.agent(&device));
    eventually(10, "the session on the first replica", || {
        world.server.sessions().is_connected(&id)
    })
    .await;
    assert!(!b.sessions().is_connected(&id));

    // The order is given on B; the device, connected to A, wipes itself and attests.
    b.control()
        .decommission(vec![id.clone()], WipeMethod::Clear)
        .await
        .unwrap();
    eventually(20, "the decommissioning", || {
        b.service()
            .device(&id)
            .is_ok_and(|r| r.state == DeviceState::Decommissioned)
    })
    .await;
    eventually(10, "the device's reset", || {
        world
            .agent(&device)
            .load_state()
            .is_ok_and(|s| s.phase == device_agent::machine::Phase::Factory && s.ldevid.is_none())
    })
    .await;
    // Its revocation reached B's verifier and B serves the leader's CRLs listing it.
    let record = b.service().device(&id).unwrap();
    let trust = b.service().trust();
    eventually(10, "B's verifier", || {
        record
            .certificates
            .iter()
            .all(|c| trust.is_revoked(&c.serial, now()))
    })
    .await;
    eventually(10, "B's CRLs", || {
        b.control().crls().iter().any(|c| c.entries > 0)
    })
    .await;
    running.stop().await;

    // The database ends both replicas' listening connections (a restart, a network cut): each
    // listens again, and an order given on B goes on reaching a device behind A.
    let channel = relay_channel(&url).await;
    assert_eq!(listeners(&url, &channel, true).await, 2);
    let mut relistened = false;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if listeners(&url, &channel, false).await == 2 {
            relistened = true;
            break;
        }
    }
    assert!(relistened, "the replicas did not listen again");
    world.expect(&["SN-REPL2"], 30).await;
    let second = world.device("SN-REPL2");
    let second_id = world.id("SN-REPL2");
    world.agent(&second).onboard().await.unwrap();
    let running = Running::start(world.agent(&second));
    eventually(10, "the second session on the first replica", || {
        world.server.sessions().is_connected(&second_id)
    })
    .await;
    b.control()
        .decommission(vec![second_id.clone()], WipeMethod::Clear)
        .await
        .unwrap();
    eventually(20, "the second device's reset", || {
        world
            .agent(&second)
            .load_state()
            .is_ok_and(|s| s.phase == device_agent::machine::Phase::Factory && s.ldevid.is_none())
    })
    .await;
    running.stop().await;

    // The leader stops: B takes over the work that runs once.
    world.server.shutdown().await;
    eventually(onboarder::control::LEASE_TTL + 10, "B's leadership", || {
        b.control().is_leader()
    })
    .await;
    b.shutdown().await;
    drop(world.dir);
}

/// A UDP load balancer in front of the replicas, as an operator puts them behind one address:
/// each client address goes to one live backend (round robin at its first datagram), and to
/// another once its backend is marked dead.
struct Balancer {
    addr: std::net::SocketAddr,
    dead: Arc<std::sync::Mutex<std::collections::HashSet<usize>>>,
    routes: Arc<std::sync::Mutex<std::collections::HashMap<std::net::SocketAddr, usize>>>,
}

impl Balancer {
    async fn start(backends: Vec<std::net::SocketAddr>) -> Balancer {
        use std::collections::HashMap;
        let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let dead = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
        let routes = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let (d, r) = (dead.clone(), routes.clone());
        tokio::spawn(async move {
            let mut upstreams: HashMap<(std::net::SocketAddr, usize), Arc<tokio::net::UdpSocket>> =
                HashMap::new();
            let mut next = 0usize;
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, client)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let backend = {
                    let dead = d.lock().unwrap();
                    let mut routes = r.lock().unwrap();
                    match routes.get(&client) {
                        Some(b) if !dead.contains(b) => *b,
                        _ => {
                            let live: Vec<usize> =
                                (0..backends.len()).filter(|b| !dead.contains(b)).collect();
                            let b = live[next % live.len()];
                            next += 1;
                            routes.insert(client, b);
                            b
                        }
                    }
                };
                let upstream = match upstreams.get(&(client, backend)) {
                    Some(u) => u.clone(),
                    None => {
                        let u = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        let (back, front) = (u.clone(), front.clone());
                        tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok(n) = back.recv(&mut buf).await {
                                let _ = front.send_to(&buf[..n], client).await;
                            }
                        });
                        u.connect(backends[backend]).await.unwrap();
                        upstreams.insert((client, backend), u.clone());
                        u
                    }
                };
                let _ = upstream.send(&buf[..n]).await;
            }
        });
        Balancer { addr, dead, routes }
    }

    fn mark_dead(&self, backend: usize) {
        self.dead.lock().unwrap().insert(backend);
    }

    /// The backend the client on local port `port` goes to now.
    fn route(&self, port: u16) -> Option<usize> {
        self.routes
            .lock()
            .unwrap()
            .iter()
            .find(|(client, _)| client.port() == port)
            .map(|(_, b)| *b)
    }
}

/// An `onboarder serve` process, killed with SIGKILL when dropped.
struct Replica {
    child: std::process::Child,
    base: String,
    api: onboarder::operator::client::ApiClient,
    quic: std::net::SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_replica(data: &std::path::Path) -> Replica {
    let quic: std::net::SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_onboarder"))
        .arg("--dir")
        .arg(data)
        .args([
            "serve",
            "--listen",
            &quic.to_string(),
            "--api",
            &api.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://{api}");
    let api =
        onboarder::operator::client::ApiClient::new(&base, onboarder::pki::token(data).unwrap());
    let started = std::time::Instant::now();
    while api.stats().is_err() {
        assert!(started.elapsed().as_secs() < 60, "a replica did not start");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Replica {
        child,
        base,
        api,
        quic,
    }
}

/// 1,000 devices onboard through a load balancer in front of three replicas while half of
/// them, already onboarded, take a firmware campaign; the leader (which runs the campaign
/// engine) is killed with SIGKILL in the middle. Every device completes against the others,
/// no record or live certificate is duplicated, the audit chain verifies, and a decommission
/// order given on one replica reaches a device connected to another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_one_in_the_middle_and_nothing_is_lost() {
    use device_agent::platform::Platform;
    use onboarder::exercise::{Exercise, Fleet, incompressible_image};
    let Some(url) = database() else { return };
    const DEVICES: usize = 1000;
    const ENDPOINTS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("onboarder");
    let mut config = onboarder::config::Config::new("Replicated Owner");
    config.store = Some(url);
    config.policy.heartbeat_secs = 1;
    config.limits = onboarder::transport::limits::Limits::single_host();
    onboarder::pki::init(&data, &config, now()).unwrap();
    // The first replica makes the schema and leads.
    let mut replicas = vec![start_replica(&data).await];
    for _ in 1..3 {
        replicas.push(start_replica(&data).await);
    }
    let balancer = Balancer::start(replicas.iter().map(|r| r.quic).collect()).await;

    let maker = Arc::new(
        certs::factory::Manufacturer::create(
            certs::factory::ManufacturerConfig::new("Replicated Devices"),
            now(),
        )
        .unwrap(),
    );
    let owner_root =
        certs::files::read_cert(&data.join(onboarder::config::layout::OWNER_ROOT)).unwrap();
    let serials: Vec<String> = (0..DEVICES).map(|i| format!("SN-R{i:05}")).collect();
    let m = maker.clone();
    let (births, vouchers) = tokio::task::spawn_blocking(move || {
        let births: Vec<certs::Birth> = serials
            .iter()
            .map(|s| m.mint(s, certs::KeyKind::P256, now()).unwrap())
            .collect();
        let vouchers: Vec<Vec<u8>> = serials
            .iter()
            .map(|s| m.voucher(s, &owner_root, now(), now() + DAY).unwrap())
            .collect();
        (births, vouchers)
    })
    .await
    .unwrap();
    // Orders and imports go through the last replica, which is never killed.
    let api = Arc::new(onboarder::operator::client::ApiClient::new(
        &replicas[2].base,
        onboarder::pki::token(&data).unwrap(),
    ));
    api.import_anchor(&onboarder::operator::AnchorImport {
        pem: certs::files::cert_pem(maker.root_cert()),
        masa_pem: Some(certs::files::cert_pem(maker.masa_cert())),
        name: Some("replicated".into()),
    })
    .unwrap();
    let report = api
        .import_vouchers(&protocol::voucher::encode_bundle(&vouchers))
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);

    let endpoints: Vec<quinn::Endpoint> = (0..ENDPOINTS)
        .map(|_| device_agent::transport::quic::endpoint_for(balancer.addr).unwrap())
        .collect();
    let agents: Vec<Arc<device_agent::Agent>> = births
        .into_iter()
        .enumerate()
        .map(|(i, birth)| {
            Arc::new(device_agent::Agent::new(
                Arc::new(birth.identity),
                Platform::memory(birth.key),
                balancer.addr,
                endpoints[i % ENDPOINTS].clone(),
                fast_options(),
            ))
        })
        .collect();
    let exercise = Exercise {
        api: api.clone(),
        manufacturer: maker.clone(),
        concurrency: 64,
        progress: false,
    };
    let (first, second) = agents.split_at(DEVICES / 2);
    let report = exercise.onboard(first).await.unwrap();
    assert_eq!(report.failed, 0, "{report:?}");
    let fleet = Fleet::start(first);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    // The campaign for the first half and the onboarding of the second, together; the
    // leader dies in the middle.
    let killer = async {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let leader = &mut replicas[0];
        leader.child.kill().unwrap();
        leader.child.wait().unwrap();
        balancer.mark_dead(0);
    };
    let (campaign, onboarding, ()) = tokio::join!(
        exercise.firmware(first, incompressible_image(64 * 1024, 1), 1, false),
        exercise.onboard(second),
        killer,
    );
    let (campaign, onboarding) = (campaign.unwrap(), onboarding.unwrap());
    assert_eq!(onboarding.failed, 0, "onboarding: {onboarding:?}");
    assert_eq!(campaign.failed, 0, "the campaign: {campaign:?}");

    // Nothing duplicated: one record per device, at most one active certificate each, no
    // certificate serial twice; the audit chain verifies.
    let devices = api.devices().unwrap();
    assert_eq!(devices.len(), DEVICES);
    let mut serials = std::collections::HashSet::new();
    for d in &devices {
        assert_eq!(d.state, DeviceState::Active, "{}", d.id);
        let active = d
            .certificates
            .iter()
            .filter(|c| c.status == onboarder::core::CertStatus::Active)
            .count();
        assert_eq!(active, 1, "{}: {:?}", d.id, d.certificates);
        for c in &d.certificates {
            assert!(
                serials.insert(c.serial.clone()),
                "{} issued twice",
                c.serial
            );
        }
    }
    api.verify_audit().unwrap();
    // The tallies the replicas moved with every write, through the kill, agree with the records.
    let states = api.stats().unwrap().states;
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states.get("active").copied(), Some(DEVICES as u64));

    // A decommission order given on replica 2 reaches a device whose session is on replica 1.
    let ports: Vec<u16> = endpoints
        .iter()
        .map(|e| e.local_addr().unwrap().port())
        .collect();
    let (_, target) = first
        .iter()
        .enumerate()
        .find(|(i, _)| balancer.route(ports[i % ENDPOINTS]) == Some(1))
        .expect("a device behind replica 1");
    let id = devices
        .iter()
        .find(|d| d.serial == target.serial())
        .unwrap()
        .id
        .clone();
    api.decommission(vec![id.to_string()], WipeMethod::Clear, None)
        .unwrap();
    eventually(30, "the decommissioning through replica 1", || {
        replicas[2]
            .api
            .device(&id.to_string())
            .is_ok_and(|d| d.state == DeviceState::Decommissioned)
    })
    .await;
    fleet.stop().await;
    drop(replicas);
}
