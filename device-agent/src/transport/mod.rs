//! Transports of the agent. QUIC is the native one.

pub mod address;
pub mod quic;

pub use address::ServerAddress;
