//! File names in the state directory of the reference platform.
/// Agent state.
pub const STATE: &str = "state.cbor";
/// Current LDevID key.
pub const LDEVID_KEY: &str = "ldevid.key";
/// Pending LDevID key.
pub const PENDING_KEY: &str = "ldevid-pending.key";
/// LDevID certificate (copy).
pub const LDEVID_CERT: &str = "ldevid.pem";
/// CA chain (copy).
pub const CHAIN: &str = "chain.pem";
/// Network credentials.
pub const NETWORK: &str = "network.json";
