//! Transports of the agent. QUIC is the native one; HTTPS carries the same protocol where
//! UDP is blocked (and firmware images when an offer names a URL); CoAP over DTLS carries it
//! for constrained devices and networks.

pub mod address;
#[cfg(feature = "capture")]
pub mod capture;
pub mod coap;
pub mod https;
pub mod quic;

pub use address::ServerAddress;

/// How the agent reaches the onboarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// QUIC to the server's address; HTTPS to `https_url` when QUIC cannot connect and the
    /// options name it.
    #[default]
    Quic,
    /// HTTPS only, to `https_url` (a network that blocks UDP).
    Https,
    /// CoAP over DTLS to the server's address (the onboarder's CoAPS listener, UDP 5684):
    /// constrained devices and networks.
    Coap,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quic" => Ok(Transport::Quic),
            "https" => Ok(Transport::Https),
            "coap" => Ok(Transport::Coap),
            other => Err(format!("transport {other:?}: quic, https or coap")),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Quic => "quic",
            Transport::Https => "https",
            Transport::Coap => "coap",
        })
    }
}

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

/// An operational or onboarding session with the onboarder: over QUIC, or over HTTPS where the
/// network blocks UDP (the same requests, answers and commands).
#[derive(Debug)]
pub enum Session {
    /// The native transport.
    Quic(quic::Session),
    /// The fallback.
    Https(Box<https::HttpsSession>),
    /// For constrained devices and networks.
    Coap(Box<coap::CoapSession>),
}

/// Where the answer to a command goes.
#[derive(Debug)]
pub enum Replier {
    /// The QUIC stream the command came on.
    Quic(quinn::SendStream),
    /// The HTTPS session's reply resource.
    Https,
    /// The CoAP session's reply resource.
    Coap,
}

/// A command as received: decoded (or why not), and where to answer it.
pub type IncomingCommand = (
    Result<protocol::message::Command, protocol::DecodeError>,
    Replier,
);

impl Session {
    /// The certificate chain the server presented (leaf first), DER.
    pub fn server_chain(&self) -> Vec<Vec<u8>> {
        match self {
            Session::Quic(s) => s.server_chain(),
            Session::Https(s) => s.server_chain(),
            Session::Coap(s) => s.server_chain(),
        }
    }

    /// The TLS exporter value that binds requests to this session.
    pub fn binding(&self) -> Result<[u8; protocol::EXPORTER_LEN], crate::AgentError> {
        match self {
            Session::Quic(s) => s.binding(),
            Session::Https(s) => Ok(s.binding()),
            Session::Coap(s) => Ok(s.binding()),
        }
    }

    /// Bytes of firmware asked for at once, and staged before the next: the largest chunk
    /// the server serves, or over CoAP sixteen blocks, so a constrained link that drops
    /// keeps most of what it carried.
    pub fn chunk(&self) -> u32 {
        match self {
            Session::Coap(_) => 16 * protocol::coap::BLOCK as u32,
            _ => protocol::message::MAX_CHUNK,
        }
    }

    /// Sends a request and returns the server's response, whatever it is.
    pub async fn exchange(
        &self,
        request: &protocol::message::Request,
    ) -> Result<protocol::message::Response, crate::AgentError> {
        #[cfg(feature = "capture")]
        capture::request(request);
        let response = match self {
            Session::Quic(s) => s.exchange(request).await,
            Session::Https(s) => s.exchange(request).await,
            Session::Coap(s) => s.exchange(request).await,
        };
        #[cfg(feature = "capture")]
        if let Ok(response) = &response {
            capture::response(response);
        }
        response
    }

    /// Sends a request; a refusal becomes [`crate::AgentError::Refused`].
    pub async fn call(
        &self,
        request: &protocol::message::Request,
    ) -> Result<protocol::message::Response, crate::AgentError> {
        match self.exchange(request).await? {
            protocol::message::Response::Error(e) => Err(crate::AgentError::Refused {
                code: e.code,
                message: e.message,
            }),
            other => Ok(other),
        }
    }

    /// Waits for the next command from the server; `None` once the session is closed.
    pub async fn next_command(&self) -> Option<Result<IncomingCommand, crate::AgentError>> {
        let incoming = self.incoming_command().await;
        #[cfg(feature = "capture")]
        if let Some(Ok((Ok(command), _))) = &incoming {
            capture::command(command);
        }
        incoming
    }

    async fn incoming_command(&self) -> Option<Result<IncomingCommand, crate::AgentError>> {
        match self {
            Session::Quic(s) => Some(
                s.next_command()
                    .await?
                    .map(|(command, send)| (command, Replier::Quic(send))),
            ),
            Session::Https(s) => Some(s.next_command().await?.map(|c| (c, Replier::Https))),
            Session::Coap(s) => Some(s.next_command().await?.map(|c| (c, Replier::Coap))),
        }
    }

    /// Answers a command.
    pub async fn reply(
        &self,
        to: Replier,
        reply: &protocol::message::CommandReply,
    ) -> Result<(), crate::AgentError> {
        match (self, to) {
            (_, Replier::Quic(send)) => quic::Session::reply(send, reply).await,
            (Session::Https(s), Replier::Https) => s.reply(reply).await,
            (Session::Coap(s), Replier::Coap) => s.reply(reply).await,
            _ => Err(crate::AgentError::Protocol(
                "a reply on another session than its command's".into(),
            )),
        }
    }

    /// Closes the session.
    pub fn close(&self) {
        match self {
            Session::Quic(s) => s.close(),
            Session::Https(s) => s.close(),
            Session::Coap(s) => s.close(),
        }
    }

    /// Resolves when the session is closed, with the reason.
    pub async fn closed(&self) -> String {
        match self {
            Session::Quic(s) => s.closed().await,
            Session::Https(s) => s.closed().await,
            Session::Coap(s) => s.closed().await,
        }
    }
}
