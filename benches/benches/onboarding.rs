//! The hot operations of onboarding, alone and end to end over loopback QUIC.

use std::time::{Duration, Instant};

use certs::ca::random_serial;
use certs::csr::{CsrPolicy, build_csr, check_csr};
use certs::factory::{Manufacturer, ManufacturerConfig};
use certs::{Ca, CaName, KeyKind, KeyPair, Validity, unix_now};
use criterion::{Criterion, criterion_group, criterion_main};
use protocol::voucher::{Assertion, Voucher, VoucherRequest};

fn crypto(c: &mut Criterion) {
    let now = unix_now();
    let m = Manufacturer::create(ManufacturerConfig::new("Bench"), now).unwrap();
    let masa = certs::CertInfo::parse(m.masa_cert()).unwrap().public_key;
    let owner = Ca::root(
        &CaName {
            organization: "Owner".into(),
            common_name: "Owner Root".into(),
        },
        KeyPair::generate(KeyKind::P256).unwrap(),
        Validity::starting(now, 86_400 * 365),
        &random_serial().unwrap(),
    )
    .unwrap();
    let voucher = m
        .voucher("SN-1", owner.cert_der(), now, now + 3600)
        .unwrap();
    c.bench_function("voucher sign", |b| {
        b.iter(|| {
            m.voucher("SN-1", owner.cert_der(), now, now + 3600)
                .unwrap()
        })
    });
    c.bench_function("voucher verify", |b| {
        b.iter(|| Voucher::open(&voucher, &masa).unwrap())
    });
    // The same voucher as CMS-signed JSON (RFC 8366), what BRSKI pledges get.
    let cms = certs::brski::Encoding::Cms;
    let cms_voucher = m
        .voucher_in(cms, "SN-1", owner.cert_der(), now, now + 3600)
        .unwrap();
    c.bench_function("voucher sign (CMS)", |b| {
        b.iter(|| {
            m.voucher_in(cms, "SN-1", owner.cert_der(), now, now + 3600)
                .unwrap()
        })
    });
    c.bench_function("voucher verify (CMS)", |b| {
        b.iter(|| certs::brski::open_voucher(&cms_voucher, &masa).unwrap())
    });

    let device = KeyPair::generate(KeyKind::P256).unwrap();
    let request = VoucherRequest {
        created_on: now,
        assertion: Assertion::Proximity,
        serial_number: "SN-1".into(),
        nonce: vec![1; 16],
        proximity_registrar_cert: owner.cert_der().to_vec(),
        session_binding: vec![2; 32],
    }
    .sign(&device)
    .unwrap();
    let device_key = device.public_key();
    c.bench_function("voucher request verify", |b| {
        b.iter(|| VoucherRequest::open(&request, &device_key).unwrap())
    });

    let csr = build_csr("SN-1", &KeyPair::generate(KeyKind::P256).unwrap(), &[3; 32]).unwrap();
    c.bench_function("CSR check + LDevID issue", |b| {
        b.iter(|| {
            let checked = check_csr(
                &csr,
                &CsrPolicy {
                    serial: "SN-1",
                    binding: &[3; 32],
                    binding_required: true,
                    forbidden_keys: &[],
                },
            )
            .unwrap();
            certs::profile::issue_ldevid(
                &owner,
                &certs::profile::LdevidProfile {
                    serial: "SN-1",
                    common_name: "SN-1",
                    organization: "Owner",
                    crl_url: None,
                },
                &checked.spki_der,
                Validity::starting(now, 90 * 86_400),
                &random_serial().unwrap(),
            )
            .unwrap()
        })
    });
}

fn full_onboarding(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bench = rt.block_on(benches::Bench::start());
    let endpoint = {
        let _guard = rt.enter();
        device_agent::transport::quic::endpoint_for(bench.server.quic_addr()).unwrap()
    };
    let mut group = c.benchmark_group("onboarding over loopback QUIC");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("one device, start to operational session", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let devices = bench.devices(iters as usize).await;
                let mut total = Duration::ZERO;
                for (identity, state) in devices {
                    let agent = device_agent::Agent::with_files(
                        &identity,
                        &state,
                        bench.server.quic_addr(),
                        endpoint.clone(),
                        Default::default(),
                    )
                    .unwrap();
                    let start = Instant::now();
                    agent.enroll_once().await.unwrap();
                    agent.connect().await.unwrap().close();
                    total += start.elapsed();
                }
                total
            })
        })
    });
    group.finish();
}

criterion_group!(benches, crypto, full_onboarding);
criterion_main!(benches);
