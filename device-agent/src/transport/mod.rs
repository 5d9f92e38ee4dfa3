//! Transports of the agent. QUIC is the native one; HTTPS carries firmware images when an
//! offer names a URL.

pub mod address;
pub mod https;
pub mod quic;

pub use address::ServerAddress;

/// The agent's UDP socket for QUIC. One serves any number of agents in a process.
#[derive(Debug, Clone)]
pub struct Endpoint(quinn::Endpoint);

impl Endpoint {
    /// A socket of the family of `server` (an address the onboarder has).
    pub fn for_server(server: std::net::SocketAddr) -> Result<Endpoint, crate::AgentError> {
        Ok(Endpoint(quic::endpoint_for(server)?))
    }

    /// The QUIC endpoint underneath, for hand-built clients.
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.0
    }
}

impl From<quinn::Endpoint> for Endpoint {
    fn from(endpoint: quinn::Endpoint) -> Self {
        Endpoint(endpoint)
    }
}
