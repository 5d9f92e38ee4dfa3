//! The operator's interface: the admin API and the CLI over it.

use onboarder::core::DeviceState;
use onboarder::operator::client::ApiClient;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_imports_lists_and_verifies() {
    let world = World::new().await;
    let device = world.device("SN-API1");
    let token = onboarder::pki::token(&world.data).unwrap();
    let base = format!("http://{}", world.server.api_addr());
    let client = ApiClient::new(&base, token);
    let anchor = anchor_import(&world.manufacturer);
    let vouchers = protocol::voucher::encode_bundle(&[
        world
            .manufacturer
            .voucher("SN-API1", &world.owner_root, now(), now() + DAY)
            .unwrap(),
        world
            .manufacturer
            .voucher("SN-API2", &world.owner_root, now(), now() + DAY)
            .unwrap(),
        // Pins another owner: refused with its reason.
        world
            .manufacturer
            .voucher(
                "SN-API3",
                world.manufacturer.root_cert(),
                now(),
                now() + DAY,
            )
            .unwrap(),
    ]);
    let wrong = ApiClient::new(&base, "not-the-token".into());
    let (added, again, report, reimport, unauthorized) = tokio::task::spawn_blocking({
        let vouchers = vouchers.clone();
        move || {
            (
                client.import_anchor(&anchor).unwrap(),
                client.import_anchor(&anchor).unwrap(),
                client.import_vouchers(&vouchers).unwrap(),
                client.import_vouchers(&vouchers).unwrap(),
                wrong.devices().unwrap_err().to_string(),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(added.len(), 1);
    assert!(again.is_empty(), "importing twice adds nothing");
    assert_eq!(report.imported, 2);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].serial.as_deref(), Some("SN-API3"));
    assert_eq!(reimport.unchanged, 2);
    assert!(unauthorized.contains("401"), "{unauthorized}");

    world.agent(&device).onboard().await.unwrap();
    let client = ApiClient::new(&base, onboarder::pki::token(&world.data).unwrap());
    let (devices, one, audit, summary, missing) = tokio::task::spawn_blocking(move || {
        (
            client.devices().unwrap(),
            client.device("SN-API1").unwrap(),
            client.audit(Some(1), 1000).unwrap(),
            client.verify_audit().unwrap(),
            client.device("SN-NONE").unwrap_err().to_string(),
        )
    })
    .await
    .unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(one.state, DeviceState::Active);
    assert!(
        one.certificates[0]
            .pem
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(one.network.as_ref().unwrap().kind, "wifi");
    // The passphrase never leaves the server through the API.
    let json = serde_json::to_string(&one).unwrap();
    assert!(!json.contains("psk"));
    assert_eq!(summary.entries, audit.len() as u64);
    assert_eq!(audit.last().unwrap().hash, summary.head);
    assert!(missing.contains("404"), "{missing}");
}

/// A list of vouchers larger than one bundle (100,000 do not fit in the bundle limit) goes in
/// several: every voucher filed once, the refusal of the second bundle reported, the reports
/// added up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voucher_list_larger_than_a_bundle_is_imported_in_bundles() {
    use onboarder::operator::client::VOUCHERS_PER_BUNDLE;
    let world = World::new().await;
    let client = ApiClient::new(
        &format!("http://{}", world.server.api_addr()),
        onboarder::pki::token(&world.data).unwrap(),
    );
    let mut vouchers: Vec<Vec<u8>> = (0..VOUCHERS_PER_BUNDLE)
        .map(|i| {
            let serial = format!("SN-L{i:05}");
            let voucher =
                world
                    .manufacturer
                    .voucher(&serial, &world.owner_root, now(), now() + DAY);
            voucher.unwrap()
        })
        .collect();
    // In the second bundle: one more device, and one voucher that pins another owner.
    vouchers.push(
        world
            .manufacturer
            .voucher("SN-LAST", &world.owner_root, now(), now() + DAY)
            .unwrap(),
    );
    vouchers.push(
        world
            .manufacturer
            .voucher(
                "SN-ELSE",
                world.manufacturer.root_cert(),
                now(),
                now() + DAY,
            )
            .unwrap(),
    );
    let anchor = anchor_import(&world.manufacturer);
    let report = tokio::task::spawn_blocking(move || {
        client.import_anchor(&anchor).unwrap();
        client.import_voucher_list(&vouchers).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(report.imported, VOUCHERS_PER_BUNDLE + 1);
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].serial.as_deref(), Some("SN-ELSE"));
    assert_eq!(
        world.server.service().store().device_count().unwrap(),
        VOUCHERS_PER_BUNDLE as u64 + 1
    );
    assert_eq!(
        world.record("SN-LAST").unwrap().state,
        DeviceState::Expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_audit_log_fails_verification() {
    let world = World::new().await;
    let device = world.device("SN-AUDIT");
    world.expect(&["SN-AUDIT"], 30).await;
    world.agent(&device).onboard().await.unwrap();
    world.server.service().verify_audit().unwrap();
    let data = world.data.clone();
    world.server.shutdown().await;
    // Rewrite one entry behind the store's back, as someone with the disk (or the database)
    // could.
    let forge = |stored: &[u8]| {
        let mut entry: onboarder::audit::AuditEntry =
            protocol::cbor::from_slice(stored, 1 << 20).unwrap();
        entry.event.detail = "nothing happened here".into();
        protocol::cbor::to_vec(&entry)
    };
    let config = onboarder::config::Config::load(&data).unwrap();
    let store: Box<dyn onboarder::store::Store> = match &config.store {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let row = client
                .query_one("SELECT entry FROM audit WHERE seq = 2", &[])
                .await
                .unwrap();
            let forged = forge(row.get::<_, &[u8]>(0));
            client
                .execute("UPDATE audit SET entry = $1 WHERE seq = 2", &[&forged])
                .await
                .unwrap();
            let key = onboarder::store::seal::SealingKey::load_or_create(&data.join("store.key"))
                .unwrap();
            Box::new(onboarder::store::postgres::PgStore::open(url, key).unwrap())
        }
        None => Box::new(tampered_sled(&data, forge).await),
    };
    let (_, head) = store.audit_head().unwrap();
    assert_eq!(
        onboarder::audit::verify_chain(store.audit(1, 1000).unwrap(), &head),
        Err(onboarder::audit::AuditError::BrokenLink(3))
    );
    drop(store);
    drop(world.dir);
}

/// The sled store in `data` with audit entry 2 rewritten by `forge`, reopened.
async fn tampered_sled(
    data: &std::path::Path,
    forge: impl Fn(&[u8]) -> Vec<u8>,
) -> onboarder::store::sled::SledStore {
    let db = open_when_released(&data.join("store")).await;
    let audit_key = [b"a/".as_slice(), &2u64.to_be_bytes()].concat();
    let forged = forge(&db.get(&audit_key).unwrap().unwrap());
    db.insert(&audit_key, forged).unwrap();
    db.flush().unwrap();
    drop(db);
    // sled's flusher thread lets go of the file lock a moment after the drop.
    let mut store = None;
    for _ in 0..100 {
        let key =
            onboarder::store::seal::SealingKey::load_or_create(&data.join("store.key")).unwrap();
        match onboarder::store::sled::SledStore::open(&data.join("store"), key) {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    store.expect("the store stayed locked after the rewrite")
}

/// Opens the sled database once the server has let go of it.
async fn open_when_released(path: &std::path::Path) -> sled::Db {
    for _ in 0..100 {
        if let Ok(db) = sled::open(path) {
            return db;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the store stayed locked after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_one_json_problem() {
    let world = World::new().await;
    let base = format!("http://{}", world.server.api_addr());
    let token = onboarder::pki::token(&world.data).unwrap();
    let problems = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let bearer = format!("Bearer {token}");
        let read = |mut r: ureq::http::Response<ureq::Body>| {
            let kind = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            let body: serde_json::Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            (r.status().as_u16(), kind, body)
        };
        vec![
            // No token.
            read(agent.get(format!("{base}/v1/devices")).call().unwrap()),
            // A body that is not JSON (the framework's own refusal).
            read(
                agent
                    .post(format!("{base}/v1/anchors"))
                    .header("Authorization", &bearer)
                    .header("Content-Type", "application/json")
                    .send("not json")
                    .unwrap(),
            ),
            // An unknown route.
            read(
                agent
                    .get(format!("{base}/v1/nothing-here"))
                    .header("Authorization", &bearer)
                    .call()
                    .unwrap(),
            ),
            // An unknown device (ours).
            read(
                agent
                    .get(format!("{base}/v1/devices/SN-NOBODY"))
                    .header("Authorization", &bearer)
                    .call()
                    .unwrap(),
            ),
        ]
    })
    .await
    .unwrap();
    let statuses: Vec<u16> = problems.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(statuses[0], 401);
    assert!((400..500).contains(&statuses[1]), "{statuses:?}");
    assert_eq!(&statuses[2..], [404, 404]);
    for (status, kind, body) in &problems {
        assert_eq!(kind.as_deref(), Some("application/problem+json"));
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["status"], *status);
        assert!(body["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    assert!(
        problems[3].2["detail"]
            .as_str()
            .unwrap()
            .contains("SN-NOBODY")
    );
}
