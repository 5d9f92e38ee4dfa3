//! The length-prefixed frame every QUIC stream carries (protocol::frame).
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocol::frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = frame::decode(data, frame::MAX_FRAME) {
        // The format promises one encoding: the frame of the payload is the input.
        assert!(payload.len() <= frame::MAX_FRAME);
        assert_eq!(frame::encode(payload).ok().as_deref(), Some(data));
    }
    if let Ok(header) =
        <[u8; frame::HEADER_LEN]>::try_from(data.get(..frame::HEADER_LEN).unwrap_or(&[]))
    {
        if let Ok(len) = frame::payload_len(header, frame::MAX_FRAME) {
            assert!(len <= frame::MAX_FRAME);
            assert_eq!(frame::header(len).ok(), Some(header));
        }
    }
});
