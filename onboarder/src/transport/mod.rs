//! Transports: authenticate the peer, frame bytes, call the [`crate::service::Service`].
//! No lifecycle rule lives here.
//!
//! - [`quic`]: the native QUIC listener; [`tls`]: its TLS configuration and client verifier.
//! - [`https`]: the standard interfaces (EST) over HTTPS, with the same verifier.
//! - [`sessions`]: live operational sessions, for commands pushed to devices.
//! - [`limits`]: what peers may make the listener hold.

pub mod backlog;
pub mod coap;
pub mod https;
pub mod limits;
pub mod quic;
pub mod sessions;
pub mod tls;

/// Application close codes of the QUIC transport.
pub mod close {
    /// Normal close.
    pub const NORMAL: u32 = 0;
    /// The client certificate does not name a device.
    pub const UNAUTHORIZED: u32 = 1;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 2;
    /// The device's credentials were revoked.
    pub const REVOKED: u32 = 3;
    /// The device opened a newer session, which replaces this one.
    pub const REPLACED: u32 = 4;
}

/// Writes `payload` as one frame and finishes the stream, then waits until the peer has it, so
/// closing the connection right after cannot lose it.
pub async fn send_frame(mut send: quinn::SendStream, payload: &[u8]) -> std::io::Result<()> {
    protocol::frame_io::write_frame(&mut send, payload).await?;
    send.finish().map_err(std::io::Error::other)?;
    let _ = send.stopped().await;
    Ok(())
}
