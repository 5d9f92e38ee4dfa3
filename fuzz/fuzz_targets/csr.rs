//! PKCS#10 CSRs a device sends to enroll and re-key, through the whole policy check.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = certs::csr::parse_csr(data);
    let keys = onboarder_fuzz::keys();
    let policy = certs::csr::CsrPolicy {
        serial: "SN-000001",
        binding: &[7; 32],
        binding_required: false,
        forbidden_keys: &keys,
    };
    let _ = certs::csr::check_csr(data, &policy);
});
