//! Signed firmware manifests, as a device (and the server, at upload) reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::manifest::{MAX_MANIFEST, Manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse_unverified(data) {
        onboarder_fuzz::round_trip(&m, MAX_MANIFEST);
    }
    for key in &onboarder_fuzz::keys() {
        assert!(
            Manifest::open(data, key).is_err(),
            "a manifest signed by no one opened"
        );
    }
});
