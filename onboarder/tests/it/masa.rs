//! The online MASA across the network: the registrar's HTTPS client
//! (`onboarder::masa::https`) asks the MASA server that `factory masa serve` runs
//! (`certs::masa::serve`), here in process on a real socket.

use std::sync::Arc;

use certs::factory::Manufacturer;
use onboarder::config::OnlineMasa;
use onboarder::core::DeviceState;
use protocol::message::ErrorCode;

use crate::harness::*;

/// Serves `manufacturer`'s MASA for the owners `owners` (root DER) on 127.0.0.1:`port`.
async fn serve_masa(
    manufacturer: &Manufacturer,
    owners: Vec<Vec<u8>>,
    dir: &std::path::Path,
    port: u16,
) -> tokio::sync::watch::Sender<bool> {
    manufacturer.save(dir).unwrap();
    let copy = Manufacturer::load(dir).unwrap();
    let (chain, key) = copy.masa_tls(&["localhost".into()], now()).unwrap();
    let tls = certs::masa::serve::tls_config(&chain, &key).unwrap();
    let masa = Arc::new(certs::masa::MasaService::new(copy, owners, None).unwrap());
    let (ready, bound) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    tokio::spawn(certs::masa::serve::serve(addr, tls, masa, ready, stopped));
    bound.await.unwrap();
    stop
}

/// Our QUIC agent, with no voucher imported for it, is admitted on the nonced voucher the
/// MASA (at the configured URL: its IDevID names none) signs for its own request, and
/// onboards. An owner the MASA does not know gets no voucher: its device stays unknown and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_agent_is_admitted_on_an_online_masa_voucher_and_a_stranger_is_not() {
    let port = free_port();
    let online = |c: &mut onboarder::config::Config| {
        c.online_masa = Some(OnlineMasa {
            url: Some(format!("https://localhost:{port}")),
        });
        c.policy.admit_vouched = true;
    };
    let world = World::with_config(online).await;
    let stranger = World::for_manufacturer_with(world.manufacturer.clone(), online).await;
    let _masa = serve_masa(
        &world.manufacturer,
        vec![world.owner_root.clone()],
        &world.dir.path().join("maker"),
        port,
    )
    .await;
    for w in [&world, &stranger] {
        w.server
            .service()
            .import_anchor(&anchor_import(&w.manufacturer))
            .await
            .unwrap();
    }

    let device = world.device("SN-ONLINE");
    let state = world.agent(&device).onboard().await.unwrap();
    assert!(state.ldevid.is_some());
    let record = world.record("SN-ONLINE").unwrap();
    assert_eq!(record.state, DeviceState::Active);
    let actions = world.actions("SN-ONLINE");
    assert_eq!(actions[0], "admitted-by-masa", "{actions:?}");
    assert!(actions.iter().any(|a| a == "voucher-issued"), "{actions:?}");

    let other = stranger.device("SN-ELSEWHERE");
    let code = refused(stranger.agent(&other).onboard().await);
    assert_eq!(code, ErrorCode::UnknownDevice);
    assert!(stranger.record("SN-ELSEWHERE").is_none());
    assert!(other.is_factory_fresh());
}

/// The MASA server refuses what is not a registrar's CMS request: another media type (415),
/// a body that is not CMS (400), too large (413); its log stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_masa_server_refuses_malformed_requests() {
    let world = World::new().await;
    let port = free_port();
    let maker_dir = world.dir.path().join("maker");
    let _masa = serve_masa(
        &world.manufacturer,
        vec![world.owner_root.clone()],
        &maker_dir,
        port,
    )
    .await;
    let root = maker_dir.join(certs::factory::layout::ROOT_CERT);
    let big = world.dir.path().join("big");
    std::fs::write(&big, vec![0x30; 100 * 1024]).unwrap();
    let big = format!("@{}", big.display());
    for (media, body, status) in [
        ("application/json", "{}", 415),
        (certs::brski::VOUCHER_CMS, "not cms", 400),
        (certs::brski::VOUCHER_CMS, big.as_str(), 413),
    ] {
        for resource in ["requestvoucher", "requestauditlog"] {
            let out = std::process::Command::new("curl")
                .args(["--silent", "--write-out", "%{http_code}", "-o", "/dev/null"])
                .arg("--cacert")
                .arg(&root)
                // (curl waits for the verdict before sending: an early 413 is not a reset.)
                .args(["-H", "Expect: 100-continue"])
                .args([
                    "-H",
                    &format!("Content-Type: {media}"),
                    "--data-binary",
                    body,
                ])
                .arg(format!(
                    "https://localhost:{port}/.well-known/brski/{resource}"
                ))
                .output()
                .unwrap();
            let got = String::from_utf8_lossy(&out.stdout).to_string();
            assert_eq!(got, status.to_string(), "{resource} {media} {body}");
        }
    }
}
