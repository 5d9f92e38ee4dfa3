//! Datagrams reaching the CoAPS listener before any session: ClientHellos and their cookies.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| onboarder::fuzzing::dtls_datagram(data));
