//! Every request a device sends, as the server decodes it (CBOR, protocol::message).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::message::{self, MAX_REQUEST, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = message::decode::<Request>(data, MAX_REQUEST) {
        onboarder_fuzz::round_trip(&request, MAX_REQUEST);
    }
});
