//! Transports: authenticate the peer, frame bytes, call the [`crate::service::Service`].
//! No lifecycle rule lives here.

pub mod limits;
pub mod quic;
pub mod sessions;
pub mod tls;
