//! The stateless half of a DTLS 1.2 handshake (RFC 6347 4.2.1): a ClientHello without a good
//! cookie is answered with a HelloVerifyRequest whose cookie is a MAC of the client's address
//! and its hello, and nothing about the client is kept. Only a ClientHello that returns the
//! cookie (so its source address is real) gets a session. This is the only DTLS parsing we do
//! by hand: a few fixed fields of the first record.

use std::net::SocketAddr;

use ring::hmac;

/// Bytes of a cookie (RFC 6347 allows up to 255).
const COOKIE_LEN: usize = 16;
/// DTLS record header: type, version, epoch, sequence number, length.
const RECORD_HEADER: usize = 13;
/// DTLS handshake header: type, length, message_seq, fragment offset and length.
const HANDSHAKE_HEADER: usize = 12;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;
/// DTLS 1.0's version, which a HelloVerifyRequest carries whatever the version negotiated
/// (RFC 6347 4.2.1).
const DTLS_1_0: [u8; 2] = [0xfe, 0xff];

/// The parts of a ClientHello the cookie exchange needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// The record's sequence number, echoed in the HelloVerifyRequest.
    record_seq: [u8; 6],
    /// The handshake message_seq, echoed too.
    message_seq: [u8; 2],
    /// The client's version, random and session id: what the cookie is bound to.
    hello_prefix: &'a [u8],
    /// The cookie the client returned (empty the first time).
    pub cookie: &'a [u8],
}

impl ClientHello<'_> {
    /// The client's random: a retransmitted hello repeats it, a new handshake has another.
    pub fn random(&self) -> &[u8] {
        self.hello_prefix.get(2..34).unwrap_or_default()
    }
}

/// Reads the first ClientHello of a handshake from a datagram, or `None` if the datagram
/// does not start with one (whole, unfragmented, in epoch 0).
pub fn client_hello(datagram: &[u8]) -> Option<ClientHello<'_>> {
    let record = datagram.get(..RECORD_HEADER)?;
    if record[0] != CONTENT_HANDSHAKE || record[3..5] != [0, 0] {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([record[11], record[12]]));
    let body = datagram.get(RECORD_HEADER..RECORD_HEADER + length)?;
    let handshake = body.get(..HANDSHAKE_HEADER)?;
    let total = u32::from_be_bytes([0, handshake[1], handshake[2], handshake[3]]);
    let fragment_offset = u32::from_be_bytes([0, handshake[6], handshake[7], handshake[8]]);
    let fragment_length = u32::from_be_bytes([0, handshake[9], handshake[10], handshake[11]]);
    if handshake[0] != CLIENT_HELLO || fragment_offset != 0 || fragment_length != total {
        return None;
    }
    let hello = body.get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + usize::try_from(total).ok()?)?;
    // client_version (2), random (32), session_id (1 + n), cookie (1 + n), ...
    let session_id_len = usize::from(*hello.get(34)?);
    let cookie_at = 35 + session_id_len;
    let cookie_len = usize::from(*hello.get(cookie_at)?);
    let cookie = hello.get(cookie_at + 1..cookie_at + 1 + cookie_len)?;
    let mut record_seq = [0u8; 6];
    record_seq.copy_from_slice(&record[5..11]);
    Some(ClientHello {
        record_seq,
        message_seq: [handshake[4], handshake[5]],
        hello_prefix: &hello[..cookie_at],
        cookie,
    })
}

/// Makes and checks cookies with a key of this process (a restart only costs clients a
/// round trip).
pub struct Cookies {
    key: hmac::Key,
}

impl Cookies {
    /// Cookies under a fresh random key.
    pub fn new() -> Result<Self, ring::error::Unspecified> {
        Ok(Cookies {
            key: hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())?,
        })
    }

    fn cookie(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> [u8; COOKIE_LEN] {
        let mut ctx = hmac::Context::with_key(&self.key);
        match peer {
            SocketAddr::V4(a) => ctx.update(&a.ip().octets()),
            SocketAddr::V6(a) => ctx.update(&a.ip().octets()),
        }
        ctx.update(&peer.port().to_be_bytes());
        ctx.update(hello.hello_prefix);
        let mut cookie = [0u8; COOKIE_LEN];
        cookie.copy_from_slice(&ctx.sign().as_ref()[..COOKIE_LEN]);
        cookie
    }

    /// Whether `hello` from `peer` returns the cookie we would give it.
    pub fn valid(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> bool {
        // The comparison is of a MAC we made: constant time, as HMAC verification is.
        let expected = self.cookie(peer, hello);
        hello.cookie.len() == COOKIE_LEN
            && hello
                .cookie
                .iter()
                .zip(expected.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The HelloVerifyRequest datagram that answers `hello` from `peer`.
    pub fn hello_verify_request(&self, peer: SocketAddr, hello: &ClientHello<'_>) -> Vec<u8> {
        let cookie = self.cookie(peer, hello);
        let body_len = 2 + 1 + COOKIE_LEN;
        let fragment_len = u32::try_from(body_len).unwrap_or(0).to_be_bytes();
        let record_len = u16::try_from(HANDSHAKE_HEADER + body_len)
            .unwrap_or(0)
            .to_be_bytes();
        let mut out = Vec::with_capacity(RECORD_HEADER + HANDSHAKE_HEADER + body_len);
        out.push(CONTENT_HANDSHAKE);
        out.extend_from_slice(&DTLS_1_0);
        out.extend_from_slice(&[0, 0]); // epoch
        out.extend_from_slice(&hello.record_seq);
        out.extend_from_slice(&record_len);
        out.push(HELLO_VERIFY_REQUEST);
        out.extend_from_slice(&fragment_len[1..]);
        out.extend_from_slice(&hello.message_seq);
        out.extend_from_slice(&[0, 0, 0]); // fragment offset
        out.extend_from_slice(&fragment_len[1..]);
        out.extend_from_slice(&DTLS_1_0);
        out.push(COOKIE_LEN as u8);
        out.extend_from_slice(&cookie);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a DTLS 1.2 client sends it, with `cookie`.
    fn hello(cookie: &[u8], random: u8) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&[random; 32]);
        body.push(0); // session id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xae, 1, 0]); // one suite, null compression
        let len = (body.len() as u32).to_be_bytes();
        let mut hs = vec![CLIENT_HELLO, len[1], len[2], len[3], 0, 1, 0, 0, 0];
        hs.extend_from_slice(&len[1..]);
        hs.extend_from_slice(&body);
        let rlen = (hs.len() as u16).to_be_bytes();
        let mut out = vec![CONTENT_HANDSHAKE, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 7];
        out.extend_from_slice(&rlen);
        out.extend_from_slice(&hs);
        out
    }

    #[test]
    fn a_cookie_is_given_then_recognised_for_the_same_address_and_hello_only() {
        let cookies = Cookies::new().unwrap();
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let first = hello(&[], 1);
        let parsed = client_hello(&first).unwrap();
        assert!(parsed.cookie.is_empty());
        assert!(!cookies.valid(peer, &parsed));
        let hvr = cookies.hello_verify_request(peer, &parsed);
        // Record: handshake, DTLS 1.0, epoch 0, the client's sequence number.
        assert_eq!(&hvr[..11], &[22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(hvr[13], HELLO_VERIFY_REQUEST);
        assert_eq!(&hvr[17..19], &[0, 1], "message_seq echoed");
        let cookie = &hvr[hvr.len() - COOKIE_LEN..];

        let second = hello(cookie, 1);
        let parsed = client_hello(&second).unwrap();
        assert!(cookies.valid(peer, &parsed));
        // Another port, another hello, a damaged cookie: no.
        assert!(!cookies.valid("192.0.2.1:5001".parse().unwrap(), &parsed));
        assert!(!cookies.valid(peer, &client_hello(&hello(cookie, 2)).unwrap()));
        let mut bad = cookie.to_vec();
        bad[0] ^= 1;
        assert!(!cookies.valid(peer, &client_hello(&hello(&bad, 1)).unwrap()));
    }

    #[test]
    fn anything_but_a_whole_client_hello_is_not_one() {
        let good = hello(&[], 1);
        assert!(client_hello(&good).is_some());
        for n in 0..good.len() {
            assert!(client_hello(&good[..n]).is_none(), "truncated at {n}");
        }
        let mut other_type = good.clone();
        other_type[0] = 23;
        assert!(client_hello(&other_type).is_none());
        let mut later_epoch = good.clone();
        later_epoch[4] = 1;
        assert!(client_hello(&later_epoch).is_none());
        let mut fragment = good;
        fragment[RECORD_HEADER + 8] = 1;
        assert!(client_hello(&fragment).is_none());
        assert!(client_hello(b"garbage that is long enough to look at").is_none());
    }
}
