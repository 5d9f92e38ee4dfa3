//! CoAP messaging over one secured session (RFC 7252, with coap-lite as the codec, which does
//! no transport): a confirmable request is answered in its acknowledgement, a retransmitted
//! one gets the same answer again without reaching the service (deduplication by message id,
//! 4.5), a request with an unknown critical option is refused (4.02), and bodies larger than a
//! message move in blocks (RFC 7959): Block1 for what the client sends (reassembled in order;
//! a block out of sequence gets 4.08 and the transfer starts over), Block2 for what it gets.

use std::collections::{HashMap, VecDeque};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use protocol::coap::{BLOCK, encode_block, encode_uint};

/// Largest body a request may carry once reassembled.
pub const MAX_BODY: usize = 64 * 1024;
/// Answers remembered per session for retransmitted requests.
const REMEMBERED: usize = 32;

/// A request ready for a resource: its method, path, content format, accepted format and
/// whole body.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// GET, POST, ...
    pub method: RequestType,
    /// The Uri-Path segments joined with '/', with a leading '/'.
    pub path: String,
    /// Content-Format of the body, if given.
    pub content_format: Option<u16>,
    /// Accept, if given.
    pub accept: Option<u16>,
    /// Observe (RFC 7641), if given: 0 registers.
    pub observe: Option<u32>,
    /// The block of the answer asked for (number, size) on a resource that cuts its own
    /// answer into blocks (a firmware image, read from any block on).
    pub block2: Option<(u32, usize)>,
    /// The body, reassembled.
    pub body: Vec<u8>,
}

/// A resource's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The response code.
    pub code: ResponseType,
    /// Content-Format of the body, if any.
    pub content_format: Option<u16>,
    /// Max-Age, for 5.03.
    pub max_age: Option<u32>,
    /// The body (a diagnostic text for errors).
    pub body: Vec<u8>,
    /// Set when the body is already one block of a larger whole (number, whether more
    /// follow), cut by the resource.
    pub block: Option<(u32, bool)>,
    /// A refusal made by the transport itself (a wrong format, a body that does not decode),
    /// which the listener counts; the service counts its own.
    pub refused_here: bool,
}

impl Answer {
    /// A successful answer with a body.
    pub fn content(code: ResponseType, content_format: u16, body: Vec<u8>) -> Self {
        Answer {
            code,
            content_format: Some(content_format),
            max_age: None,
            body,
            block: None,
            refused_here: false,
        }
    }

    /// A successful answer without a body.
    pub fn empty(code: ResponseType) -> Self {
        Answer {
            content_format: None,
            ..Answer::content(code, 0, Vec::new())
        }
    }

    /// An error with a diagnostic payload (RFC 7252 5.5.2).
    pub fn error(code: ResponseType, why: &str) -> Self {
        Answer {
            code,
            content_format: None,
            max_age: None,
            body: why.as_bytes().to_vec(),
            block: None,
            refused_here: code.is_error(),
        }
    }
}

/// What the message layer made of a datagram's plaintext.
#[derive(Debug)]
pub enum Incoming {
    /// Nothing to do (an empty message, a duplicate still being answered, a response).
    Nothing,
    /// Send this (an answer from the message layer itself: a remembered answer, 2.31
    /// Continue, the next Block2).
    Reply(Vec<u8>),
    /// Send this refusal of the message layer's (4.02, 4.08, 4.13, ...), counted as a refusal.
    Refused(Vec<u8>, ResponseType),
    /// A whole request for a resource; its answer goes through [`Messages::answer`] with
    /// this key.
    Request(Request, Key),
}

/// What an answer answers: the request's message id, type and token, and its Block2 wish.
#[derive(Debug, Clone)]
pub struct Key {
    message_id: u16,
    confirmable: bool,
    /// The request's token (an observation's notifications carry it).
    pub token: Vec<u8>,
    block_size: usize,
    path: String,
}

/// A body being received in Block1 pieces.
#[derive(Debug, Default)]
struct Upload {
    path: String,
    next: u32,
    body: Vec<u8>,
}

/// The message layer's state for one session.
#[derive(Debug, Default)]
pub struct Messages {
    /// Answers to recent requests by message id (and the ids being answered: `None`).
    answered: HashMap<u16, Option<Vec<u8>>>,
    order: VecDeque<u16>,
    upload: Option<Upload>,
    /// Bodies answered in blocks, by path, for the client's next Block2 requests.
    downloads: HashMap<String, Answer>,
    next_id: u16,
    /// Our confirmable notifications not yet settled, and how each was settled (`true`:
    /// acknowledged, `false`: reset, which cancels the observation).
    sent: HashMap<u16, Option<bool>>,
}

fn block_value(option: Option<&Vec<u8>>) -> Option<(u32, bool, usize)> {
    protocol::coap::block(option?)
}

fn uint(option: Option<&Vec<u8>>) -> Option<u16> {
    protocol::coap::uint(option?, 2).and_then(|v| u16::try_from(v).ok())
}

fn first(packet: &Packet, option: CoapOption) -> Option<&Vec<u8>> {
    packet.get_option(option).and_then(|values| values.front())
}

impl Messages {
    /// Takes a message from the peer.
    pub fn incoming(&mut self, bytes: &[u8]) -> Incoming {
        let Ok(packet) = Packet::from_bytes(bytes) else {
            // Not CoAP (RFC 7252 4.2: a malformed message is rejected; with no id we can
            // trust, silently).
            return Incoming::Nothing;
        };
        let message_id = packet.header.message_id;
        let confirmable = packet.header.get_type() == MessageType::Confirmable;
        let MessageClass::Request(method) = packet.header.code else {
            // The peer's acknowledgement or reset of a notification we sent; anything else
            // (responses) is nothing for a server.
            match packet.header.get_type() {
                MessageType::Acknowledgement => self.settle(message_id, true),
                MessageType::Reset => self.settle(message_id, false),
                // A CoAP ping (an empty confirmable message, RFC 7252 4.3): a reset says we
                // are here.
                MessageType::Confirmable if packet.header.code == MessageClass::Empty => {
                    let mut pong = Packet::new();
                    pong.header.set_type(MessageType::Reset);
                    pong.header.code = MessageClass::Empty;
                    pong.header.message_id = message_id;
                    return Incoming::Reply(pong.to_bytes().unwrap_or_default());
                }
                _ => {}
            }
            return Incoming::Nothing;
        };
        match self.answered.get(&message_id) {
            Some(Some(answer)) => return Incoming::Reply(answer.clone()),
            Some(None) => return Incoming::Nothing,
            None => {}
        }
        let path = packet
            .get_option(CoapOption::UriPath)
            .map(|segments| {
                segments
                    .iter()
                    .map(|s| format!("/{}", String::from_utf8_lossy(s)))
                    .collect::<String>()
            })
            .unwrap_or_else(|| "/".into());
        let block2 = block_value(first(&packet, CoapOption::Block2));
        let key = Key {
            message_id,
            confirmable,
            token: packet.get_token().to_vec(),
            block_size: block2.map_or(BLOCK, |(_, _, size)| size.min(BLOCK)),
            path: path.clone(),
        };
        // Unknown critical options (odd numbers) refuse the request.
        if packet.options().any(
            |(number, _)| matches!(CoapOption::from(*number), CoapOption::Unknown(n) if n % 2 == 1),
        ) {
            return self.reply_now(
                &key,
                Answer::error(ResponseType::BadOption, "an unknown critical option"),
            );
        }
        // A resource that cuts its own answer into blocks is asked for one.
        let self_blocked = path.starts_with(protocol::coap::FIRMWARE);
        // The client asks for a later block of a body answered before.
        if let Some((num, _, size)) = block2
            && num > 0
            && !self_blocked
        {
            return match self.downloads.get(&path) {
                Some(whole) => {
                    let whole = whole.clone();
                    let key = Key {
                        block_size: size.min(BLOCK),
                        ..key
                    };
                    let bytes = self.encode(&key, &whole, num);
                    self.remember(message_id, bytes.clone());
                    Incoming::Reply(bytes)
                }
                None => self.reply_now(
                    &key,
                    Answer::error(ResponseType::BadRequest, "no body to continue"),
                ),
            };
        }
        let mut body = packet.payload.clone();
        if let Some((num, more, size)) = block_value(first(&packet, CoapOption::Block1)) {
            let upload = self.upload.get_or_insert_with(Upload::default);
            if num == 0 {
                *upload = Upload {
                    path: path.clone(),
                    next: 0,
                    body: Vec::new(),
                };
            }
            if upload.path != path || num != upload.next || (more && body.len() != size) {
                self.upload = None;
                return self.reply_now(
                    &key,
                    Answer::error(
                        ResponseType::RequestEntityIncomplete,
                        "a block out of sequence: start again from block 0",
                    ),
                );
            }
            upload.body.extend_from_slice(&body);
            upload.next += 1;
            if upload.body.len() > MAX_BODY {
                self.upload = None;
                return self.reply_now(
                    &key,
                    Answer::error(ResponseType::RequestEntityTooLarge, "the body is too large"),
                );
            }
            if more {
                let mut answer = self.response(&key, ResponseType::Continue);
                answer.add_option(CoapOption::Block1, encode_block(num, true, size));
                let bytes = answer.to_bytes().unwrap_or_default();
                self.remember(message_id, bytes.clone());
                return Incoming::Reply(bytes);
            }
            body = self.upload.take().map(|u| u.body).unwrap_or_default();
        } else if body.len() > MAX_BODY {
            return self.reply_now(
                &key,
                Answer::error(ResponseType::RequestEntityTooLarge, "the body is too large"),
            );
        }
        self.answered.insert(message_id, None);
        self.order.push_back(message_id);
        self.trim();
        Incoming::Request(
            Request {
                method,
                path,
                content_format: uint(first(&packet, CoapOption::ContentFormat)),
                accept: uint(first(&packet, CoapOption::Accept)),
                observe: first(&packet, CoapOption::Observe)
                    .filter(|v| v.len() <= 3)
                    .map(|v| v.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))),
                block2: self_blocked
                    .then(|| block2.map_or((0, BLOCK), |(num, _, size)| (num, size.min(BLOCK)))),
                body,
            },
            key,
        )
    }

    /// The datagram plaintext answering the request `key` with `answer` (its first block if
    /// it is larger than a block), registering an observation if `observe` gives its first
    /// sequence number.
    pub fn answer_observed(&mut self, key: &Key, answer: &Answer, observe: u32) -> Vec<u8> {
        let mut packet = self.response(key, answer.code);
        packet.add_option(CoapOption::Observe, encode_uint(observe));
        if let Some(format) = answer.content_format {
            packet.add_option(CoapOption::ContentFormat, encode_uint(u32::from(format)));
        }
        packet.payload = answer.body.clone();
        let bytes = packet.to_bytes().unwrap_or_default();
        self.remember(key.message_id, bytes.clone());
        bytes
    }

    /// The datagram plaintext answering the request `key` with `answer` (its first block if
    /// it is larger than a block).
    pub fn answer(&mut self, key: &Key, answer: &Answer) -> Vec<u8> {
        if answer.body.len() > key.block_size && answer.block.is_none() {
            self.downloads.insert(key.path.clone(), answer.clone());
        }
        let bytes = self.encode(key, answer, 0);
        self.remember(key.message_id, bytes.clone());
        bytes
    }

    /// A confirmable notification (RFC 7641 4.2) to the observation of `token`: its message
    /// id, and the message.
    pub fn notification(
        &mut self,
        token: &[u8],
        seq: u32,
        format: u16,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut packet = Packet::new();
        packet.header.set_type(MessageType::Confirmable);
        self.next_id = self.next_id.wrapping_add(1);
        packet.header.message_id = self.next_id;
        packet.header.code = MessageClass::Response(ResponseType::Content);
        packet.set_token(token.to_vec());
        packet.add_option(CoapOption::Observe, encode_uint(seq & 0x00ff_ffff));
        packet.add_option(CoapOption::ContentFormat, encode_uint(u32::from(format)));
        if body.len() > BLOCK {
            // The first block; the device asks for the rest (RFC 7959 2.6, 3.4).
            packet.add_option(CoapOption::Block2, encode_block(0, true, BLOCK));
            packet.payload = body[..BLOCK].to_vec();
            self.downloads.insert(
                protocol::coap::COMMANDS.to_string(),
                Answer::content(ResponseType::Content, format, body.to_vec()),
            );
        } else {
            packet.payload = body.to_vec();
        }
        if self.sent.len() >= REMEMBERED {
            self.sent.retain(|_, settled| settled.is_none());
        }
        self.sent.insert(self.next_id, None);
        (self.next_id, packet.to_bytes().unwrap_or_default())
    }

    /// How the notification `message_id` was settled, if it was.
    pub fn settled(&self, message_id: u16) -> Option<bool> {
        self.sent.get(&message_id).copied().flatten()
    }

    fn settle(&mut self, message_id: u16, acknowledged: bool) {
        if let Some(settled) = self.sent.get_mut(&message_id) {
            *settled = Some(acknowledged);
        }
    }

    fn reply_now(&mut self, key: &Key, answer: Answer) -> Incoming {
        let bytes = self.encode(key, &answer, 0);
        self.remember(key.message_id, bytes.clone());
        Incoming::Refused(bytes, answer.code)
    }

    fn response(&mut self, key: &Key, code: ResponseType) -> Packet {
        let mut packet = Packet::new();
        if key.confirmable {
            packet.header.set_type(MessageType::Acknowledgement);
            packet.header.message_id = key.message_id;
        } else {
            packet.header.set_type(MessageType::NonConfirmable);
            self.next_id = self.next_id.wrapping_add(1);
            packet.header.message_id = self.next_id;
        }
        packet.header.code = MessageClass::Response(code);
        packet.set_token(key.token.clone());
        packet
    }

    fn encode(&mut self, key: &Key, answer: &Answer, num: u32) -> Vec<u8> {
        let mut packet = self.response(key, answer.code);
        if let Some(format) = answer.content_format {
            packet.add_option(CoapOption::ContentFormat, encode_uint(u32::from(format)));
        }
        if let Some(age) = answer.max_age {
            packet.add_option(CoapOption::MaxAge, encode_uint(age));
        }
        let size = key.block_size;
        if let Some((num, more)) = answer.block {
            packet.add_option(CoapOption::Block2, encode_block(num, more, size));
            packet.payload = answer.body.clone();
        } else if answer.body.len() > size {
            let start = (num as usize).saturating_mul(size).min(answer.body.len());
            let end = (start + size).min(answer.body.len());
            let more = end < answer.body.len();
            packet.add_option(CoapOption::Block2, encode_block(num, more, size));
            packet.payload = answer.body[start..end].to_vec();
        } else {
            packet.payload = answer.body.clone();
        }
        packet.to_bytes().unwrap_or_default()
    }

    fn remember(&mut self, message_id: u16, bytes: Vec<u8>) {
        if self.answered.insert(message_id, Some(bytes)).is_none() {
            self.order.push_back(message_id);
        }
        self.trim();
    }

    fn trim(&mut self) {
        while self.order.len() > REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.answered.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: u16, method: RequestType, path: &[&str], body: &[u8]) -> Packet {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.message_id = id;
        p.header.code = MessageClass::Request(method);
        p.set_token(vec![1, 2]);
        for s in path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        p.payload = body.to_vec();
        p
    }

    fn decode(bytes: &[u8]) -> Packet {
        Packet::from_bytes(bytes).unwrap()
    }

    #[test]
    fn a_retransmitted_request_gets_the_same_answer_without_reaching_a_resource() {
        let mut m = Messages::default();
        let bytes = request(7, RequestType::Get, &[".well-known", "core"], b"")
            .to_bytes()
            .unwrap();
        let Incoming::Request(req, key) = m.incoming(&bytes) else {
            panic!()
        };
        assert_eq!(req.path, "/.well-known/core");
        // Again while it is being answered: nothing.
        assert!(matches!(m.incoming(&bytes), Incoming::Nothing));
        let answer = m.answer(
            &key,
            &Answer::content(ResponseType::Content, 40, b"<x>".to_vec()),
        );
        let p = decode(&answer);
        assert_eq!(p.header.get_type(), MessageType::Acknowledgement);
        assert_eq!(p.header.message_id, 7);
        assert_eq!(p.get_token(), &[1, 2]);
        // Again after: the same answer.
        match m.incoming(&bytes) {
            Incoming::Reply(again) => assert_eq!(again, answer),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_critical_options_and_garbage_are_refused() {
        let mut m = Messages::default();
        let mut p = request(1, RequestType::Get, &["x"], b"");
        p.add_option(CoapOption::Unknown(65001), vec![1]);
        match m.incoming(&p.to_bytes().unwrap()) {
            Incoming::Refused(r, _) => {
                assert_eq!(
                    decode(&r).header.code,
                    MessageClass::Response(ResponseType::BadOption)
                )
            }
            other => panic!("{other:?}"),
        }
        // An elective unknown option is ignored.
        let mut p = request(2, RequestType::Get, &["x"], b"");
        p.add_option(CoapOption::Unknown(65000), vec![1]);
        assert!(matches!(
            m.incoming(&p.to_bytes().unwrap()),
            Incoming::Request(..)
        ));
        assert!(matches!(m.incoming(b"\xff\x00garbage"), Incoming::Nothing));
        assert!(matches!(m.incoming(b""), Incoming::Nothing));
    }

    #[test]
    fn block1_reassembles_in_order_and_refuses_a_skip_or_a_repeat() {
        let mut m = Messages::default();
        let body: Vec<u8> = (0..40).collect();
        let block = |id: u16, num: u32, more: bool| {
            let start = num as usize * 16;
            let end = (start + 16).min(body.len());
            let mut p = request(id, RequestType::Post, &["up"], &body[start..end]);
            p.add_option(CoapOption::Block1, encode_block(num, more, 16));
            p.to_bytes().unwrap()
        };
        let Incoming::Reply(c) = m.incoming(&block(1, 0, true)) else {
            panic!()
        };
        assert_eq!(
            decode(&c).header.code,
            MessageClass::Response(ResponseType::Continue)
        );
        // Skipping block 1: 4.08, and the transfer starts over.
        let Incoming::Refused(r, _) = m.incoming(&block(2, 2, false)) else {
            panic!()
        };
        assert_eq!(
            decode(&r).header.code,
            MessageClass::Response(ResponseType::RequestEntityIncomplete)
        );
        assert!(matches!(
            m.incoming(&block(3, 1, true)),
            Incoming::Refused(_, ResponseType::RequestEntityIncomplete)
        ));
        assert!(m.upload.is_none(), "nothing kept of a refused transfer");
        // In order: the whole body.
        assert!(matches!(m.incoming(&block(4, 0, true)), Incoming::Reply(_)));
        assert!(matches!(m.incoming(&block(5, 1, true)), Incoming::Reply(_)));
        match m.incoming(&block(6, 2, false)) {
            Incoming::Request(req, _) => assert_eq!(req.body, body),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ping_is_answered_by_a_reset_and_a_large_notification_goes_in_blocks() {
        let mut m = Messages::default();
        let mut ping = Packet::new();
        ping.header.set_type(MessageType::Confirmable);
        ping.header.code = MessageClass::Empty;
        ping.header.message_id = 41;
        let Incoming::Reply(pong) = m.incoming(&ping.to_bytes().unwrap()) else {
            panic!()
        };
        let pong = decode(&pong);
        assert_eq!(pong.header.get_type(), MessageType::Reset);
        assert_eq!(pong.header.message_id, 41);

        let body: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let (_, first) = m.notification(&[9], 1, 60, &body);
        let first = decode(&first);
        assert_eq!(
            protocol::coap::block(
                first
                    .get_option(CoapOption::Block2)
                    .unwrap()
                    .front()
                    .unwrap()
            ),
            Some((0, true, BLOCK))
        );
        let mut got = first.payload;
        let mut rest = request(
            2,
            RequestType::Get,
            &[".well-known", "onboarder", "commands"],
            b"",
        );
        rest.add_option(CoapOption::Block2, encode_block(1, false, BLOCK));
        let Incoming::Reply(r) = m.incoming(&rest.to_bytes().unwrap()) else {
            panic!()
        };
        let r = decode(&r);
        assert_eq!(r.header.code, MessageClass::Response(ResponseType::Content));
        got.extend(r.payload);
        assert_eq!(got, body);
    }

    #[test]
    fn a_large_answer_goes_in_block2_pieces() {
        let mut m = Messages::default();
        let body: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let bytes = request(1, RequestType::Get, &["big"], b"")
            .to_bytes()
            .unwrap();
        let Incoming::Request(_, key) = m.incoming(&bytes) else {
            panic!()
        };
        let mut got = decode(&m.answer(
            &key,
            &Answer::content(ResponseType::Content, 281, body.clone()),
        ))
        .payload;
        for num in 1..3 {
            let mut p = request(1 + num as u16, RequestType::Get, &["big"], b"");
            p.add_option(CoapOption::Block2, encode_block(num, false, 1024));
            let Incoming::Reply(r) = m.incoming(&p.to_bytes().unwrap()) else {
                panic!()
            };
            got.extend(decode(&r).payload);
        }
        assert_eq!(got, body);
    }
}
