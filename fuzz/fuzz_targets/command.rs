//! Commands the server pushes (decoded by a device) and the device's replies (decoded by the
//! server).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::message::{self, Command, CommandReply, MAX_REQUEST, MAX_RESPONSE};

fuzz_target!(|data: &[u8]| {
    if let Ok(command) = message::decode::<Command>(data, MAX_RESPONSE) {
        onboarder_fuzz::round_trip(&command, MAX_RESPONSE);
    }
    if let Ok(reply) = message::decode::<CommandReply>(data, MAX_REQUEST) {
        onboarder_fuzz::round_trip(&reply, MAX_REQUEST);
    }
});
