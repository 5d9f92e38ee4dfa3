//! Every response the server sends, as a device decodes it (CBOR, protocol::message).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::message::{self, MAX_RESPONSE, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = message::decode::<Response>(data, MAX_RESPONSE) {
        onboarder_fuzz::round_trip(&response, MAX_RESPONSE);
    }
});
