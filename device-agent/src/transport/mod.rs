//! Transports of the agent. QUIC is the native one.

pub mod quic;
