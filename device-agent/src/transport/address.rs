//! Where the onboarder is: an address, or a DNS name resolved at every connection attempt (so
//! a move of the service is followed) into several addresses tried in turn.

use std::net::SocketAddr;

use crate::error::AgentError;

/// The onboarder's address as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddress {
    /// A fixed address.
    Addr(SocketAddr),
    /// `host:port`, resolved when connecting.
    Name(String),
}

impl From<SocketAddr> for ServerAddress {
    fn from(addr: SocketAddr) -> Self {
        ServerAddress::Addr(addr)
    }
}

impl std::str::FromStr for ServerAddress {
    type Err = AgentError;

    /// `192.0.2.7:4433`, `[2001:db8::7]:4433` or `onboarder.example.com:4433`.
    fn from_str(text: &str) -> Result<Self, AgentError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(ServerAddress::Addr(addr));
        }
        let valid = text.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        });
        if valid {
            Ok(ServerAddress::Name(text.to_string()))
        } else {
            Err(AgentError::Connection(format!(
                "{text:?} is neither an address nor a host:port"
            )))
        }
    }
}

impl std::fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAddress::Addr(addr) => write!(f, "{addr}"),
            ServerAddress::Name(name) => f.write_str(name),
        }
    }
}

impl ServerAddress {
    /// The addresses to try, in the resolver's order, of the family `ipv6` says (the agent's
    /// socket is of one family).
    pub async fn resolve(&self, ipv6: bool) -> Result<Vec<SocketAddr>, AgentError> {
        let all: Vec<SocketAddr> = match self {
            ServerAddress::Addr(addr) => vec![*addr],
            ServerAddress::Name(name) => tokio::net::lookup_host(name.as_str())
                .await
                .map_err(|e| AgentError::Connection(format!("resolving {name}: {e}")))?
                .collect(),
        };
        let usable: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| a.is_ipv6() == ipv6)
            .collect();
        if usable.is_empty() {
            return Err(AgentError::Connection(format!(
                "{self} has no IPv{} address",
                if ipv6 { 6 } else { 4 }
            )));
        }
        Ok(usable)
    }

    /// A first address, to choose the family of the agent's socket.
    pub async fn first(&self) -> Result<SocketAddr, AgentError> {
        match self {
            ServerAddress::Addr(addr) => Ok(*addr),
            ServerAddress::Name(name) => tokio::net::lookup_host(name.as_str())
                .await
                .map_err(|e| AgentError::Connection(format!("resolving {name}: {e}")))?
                .next()
                .ok_or_else(|| AgentError::Connection(format!("{name} has no address"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_and_names_parse_and_names_resolve() {
        let addr: ServerAddress = "127.0.0.1:4433".parse().unwrap();
        assert_eq!(
            addr.resolve(false).await.unwrap(),
            ["127.0.0.1:4433".parse().unwrap()]
        );
        let v6: ServerAddress = "[::1]:4433".parse().unwrap();
        assert!(matches!(v6, ServerAddress::Addr(a) if a.is_ipv6()));
        let name: ServerAddress = "localhost:4433".parse().unwrap();
        assert_eq!(name, ServerAddress::Name("localhost:4433".into()));
        let resolved = name.resolve(false).await.unwrap();
        assert!(
            resolved.contains(&"127.0.0.1:4433".parse().unwrap()),
            "{resolved:?}"
        );
        for bad in ["", "localhost", "local host:1", "x:99999", ":4433"] {
            assert!(bad.parse::<ServerAddress>().is_err(), "{bad}");
        }
        assert!(matches!(
            "no-such-host.invalid:4433"
                .parse::<ServerAddress>()
                .unwrap()
                .resolve(false)
                .await,
            Err(AgentError::Connection(_))
        ));
    }
}
