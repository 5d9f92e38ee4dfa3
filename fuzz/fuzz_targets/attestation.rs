//! Signed wipe attestations, as the server reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::attestation::{MAX_ATTESTATION, WipeAttestation};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = WipeAttestation::parse_unverified(data) {
        onboarder_fuzz::round_trip(&a, MAX_ATTESTATION);
        let _ = a.all_verified();
    }
    for key in &onboarder_fuzz::keys() {
        assert!(
            WipeAttestation::open(data, key).is_err(),
            "an attestation signed by no one opened"
        );
    }
});
