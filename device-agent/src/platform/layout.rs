//! File names in the state directory of the reference platform.
/// Agent state.
pub const STATE: &str = "state.cbor";
/// The state being shredded by a reset: a second name for the old state until the new one
/// has replaced it, then overwritten and removed (a crash leaves it for the next start).
pub const STATE_SHREDDING: &str = "state.cbor.shredding";
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
