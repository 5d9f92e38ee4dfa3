//! What the onboarder and its agent agree on when they speak CoAP (RFC 7252): option values
//! as bytes (the codec, coap-lite, carries them opaque), the block-wise option of RFC 7959,
//! the content formats and resource paths both sides use, and [`Pipe`], which lets a TLS
//! library that reads and writes streams work on datagrams routed by hand.

use std::collections::VecDeque;
use std::io::{self, Read, Write};

/// Largest block either side sends (SZX 6), so that a block and its headers fit the IPv6
/// minimum MTU less DTLS overhead.
pub const BLOCK: usize = 1024;

/// application/cose; cose-type="cose-sign1" (RFC 9052): the wipe attestation.
pub const COSE_SIGN1: u16 = 18;
/// application/link-format (RFC 6690).
pub const LINK_FORMAT: u16 = 40;
/// application/cbor: our protocol's bodies.
pub const CBOR: u16 = 60;
/// application/pkcs7-mime; smime-type=certs-only.
pub const PKCS7_CERTS: u16 = 281;
/// application/pkcs10.
pub const PKCS10: u16 = 286;
/// application/pkix-cert.
pub const PKIX_CERT: u16 = 287;
/// application/voucher+cose (the constrained BRSKI draft).
pub const VOUCHER_COSE: u16 = 836;

/// Our protocol's request resource: a CBOR request in, the CBOR answer out.
pub const REQUEST: &str = "/.well-known/onboarder/request";
/// The observed resource (RFC 7641) whose notifications are the server's commands.
pub const COMMANDS: &str = "/.well-known/onboarder/commands";
/// Where a device replies to the command it was last given.
pub const REPLY: &str = "/.well-known/onboarder/reply";
/// Prefix of a firmware image's resource: the image's SHA-256 in hex follows. Read by Block2
/// from any block on, so a download resumes where it stopped.
pub const FIRMWARE: &str = "/.well-known/onboarder/fw/";
/// Where a device posts its signed wipe attestation (COSE_Sign1, by Block1).
pub const WIPE: &str = "/.well-known/onboarder/wipe";

/// A Block1 or Block2 option's value (RFC 7959 2.2): block number, whether more blocks
/// follow, and block size; `None` for a value that is too long or the reserved size.
pub fn block(value: &[u8]) -> Option<(u32, bool, usize)> {
    if value.len() > 3 {
        return None;
    }
    let v = value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    let szx = v & 0x7;
    if szx == 7 {
        return None;
    }
    Some((v >> 4, v & 0x8 != 0, 16usize << szx))
}

/// The value of a Block1 or Block2 option (`size` a power of two from 16 to 1024).
pub fn encode_block(num: u32, more: bool, size: usize) -> Vec<u8> {
    let szx = (size.trailing_zeros().saturating_sub(4)).min(6);
    encode_uint((num << 4) | (u32::from(more) << 3) | szx)
}

/// An unsigned option value in the fewest bytes (RFC 7252 3.2).
pub fn encode_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// An unsigned option value of at most `max_len` bytes.
pub fn uint(value: &[u8], max_len: usize) -> Option<u32> {
    (value.len() <= max_len.min(4))
        .then(|| value.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Datagrams in and out of a security layer that reads and writes a stream (OpenSSL's DTLS
/// over an `SslStream`): each read takes one whole datagram, each write is one datagram.
#[derive(Debug, Default)]
pub struct Pipe {
    /// Datagrams received, not yet read.
    pub inbox: VecDeque<Vec<u8>>,
    /// Datagrams written, not yet sent.
    pub outbox: Vec<Vec<u8>>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbox.pop_front() {
            Some(datagram) => {
                let n = datagram.len().min(buf.len());
                buf[..n].copy_from_slice(&datagram[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbox.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_options_round_trip_and_refuse_the_reserved_size() {
        for (num, more, size) in [(0, true, 1024), (5, false, 16), (70_000, true, 512)] {
            assert_eq!(
                block(&encode_block(num, more, size)),
                Some((num, more, size))
            );
        }
        assert_eq!(block(&[0x07]), None, "SZX 7 is reserved");
        assert_eq!(block(&[1, 2, 3, 4]), None, "at most three bytes");
        assert_eq!(encode_uint(0), Vec::<u8>::new());
        assert_eq!(uint(&encode_uint(836), 2), Some(836));
        assert_eq!(uint(&[1, 2, 3], 2), None);
    }

    #[test]
    fn a_pipe_reads_one_datagram_at_a_time() {
        let mut pipe = Pipe::default();
        pipe.inbox.push_back(vec![1, 2, 3]);
        pipe.inbox.push_back(vec![4]);
        let mut buf = [0u8; 8];
        assert_eq!(pipe.read(&mut buf).unwrap(), 3);
        assert_eq!(pipe.read(&mut buf).unwrap(), 1);
        assert_eq!(
            pipe.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        pipe.write_all(&[9, 9]).unwrap();
        assert_eq!(pipe.outbox, vec![vec![9, 9]]);
    }
}
