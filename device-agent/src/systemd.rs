//! The systemd notification protocol (sd_notify), written out: readiness, status lines,
//! stopping, and the watchdog, for the agent's daemon and the onboarder's server alike.
//! Nothing happens when the process was not started by systemd (no NOTIFY_SOCKET).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (`READY=1`, `STATUS=...`, `STOPPING=1`, `WATCHDOG=1`) to systemd.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    let address = match path.strip_prefix('@') {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| {
        UnixDatagram::unbound().and_then(|socket| socket.send_to_addr(state.as_bytes(), &address))
    });
    if let Err(e) = sent {
        tracing::debug!("sd_notify {state}: {e}");
    }
}

/// How often systemd wants to hear from the watchdog: half its timeout, if it set one for
/// this process.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}
