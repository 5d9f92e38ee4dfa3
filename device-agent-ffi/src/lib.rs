//! The device agent for firmware written in C: one opaque handle, blocking calls, status codes
//! and a readable message for the last failure. Link `libdevice_agent_ffi.a` (or `.so`), with
//! the system's OpenSSL for the static library (`-lssl -lcrypto`: the CoAP transport's DTLS), and
//! include `include/device_agent.h`.
//!
//! ```c
//! DaAgent *agent = NULL;
//! if (da_agent_new("/etc/device-agent/identity", "/var/lib/device-agent",
//!                  "onboarder.example.com:4433", &agent) != DA_STATUS_OK) return 1;
//! if (da_agent_onboard(agent) != DA_STATUS_OK)
//!     fprintf(stderr, "%s\n", da_agent_last_error(agent));
//! da_agent_run(agent);      /* until da_agent_stop(agent) from another thread */
//! da_agent_free(agent);
//! ```
//!
//! Every function may be called from any thread; `da_agent_run` blocks its caller. No function
//! lets a Rust panic cross into C: it becomes `DA_STATUS_INTERNAL`.

#![deny(missing_docs)]

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use device_agent::{Agent, AgentError, AgentOptions};

/// What a call did.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaStatus {
    /// Done.
    Ok = 0,
    /// A null pointer, or text that is not UTF-8, or a malformed server address.
    InvalidArgument = 1,
    /// The birth identity could not be loaded.
    Identity = 2,
    /// The onboarder could not be reached (retry later).
    Connection = 3,
    /// The onboarder refused the request.
    Refused = 4,
    /// The onboarder refused the device's certificate (only the owner can change that).
    CredentialRefused = 5,
    /// The device refused what the onboarder sent (voucher, registrar, enrollment, firmware).
    RejectedByDevice = 6,
    /// The device's storage or keys failed.
    Platform = 7,
    /// Anything else (a protocol error, a panic).
    Internal = 8,
}

/// A device agent (opaque).
pub struct DaAgent {
    runtime: tokio::runtime::Runtime,
    agent: Arc<Agent>,
    serial: CString,
    stop: tokio::sync::watch::Sender<bool>,
    last_error: Mutex<CString>,
}

fn status_of(e: &AgentError) -> DaStatus {
    match e {
        AgentError::Identity(_) => DaStatus::Identity,
        AgentError::Connection(_) | AgentError::Busy(_) => DaStatus::Connection,
        AgentError::Refused { .. } => DaStatus::Refused,
        AgentError::CredentialRefused { .. } => DaStatus::CredentialRefused,
        AgentError::Voucher(_)
        | AgentError::RogueRegistrar(_)
        | AgentError::BadEnrollment(_)
        | AgentError::Firmware(_) => DaStatus::RejectedByDevice,
        AgentError::Platform(_) => DaStatus::Platform,
        _ => DaStatus::Internal,
    }
}

fn text(ptr: *const c_char) -> Option<String> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller passes a NUL-terminated string (the header says so).
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .ok()
        .map(str::to_string)
}

fn guarded(f: impl FnOnce() -> DaStatus) -> DaStatus {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(DaStatus::Internal)
}

impl DaAgent {
    fn fail(&self, e: &AgentError) -> DaStatus {
        let message = CString::new(e.to_string().replace('\0', " ")).unwrap_or_default();
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = message;
        status_of(e)
    }
}

/// Creates an agent on the file platform: the factory identity in `identity_dir`, its own
/// state in `state_dir` (created), talking to `server` (`host:port` or an address). Writes the
/// handle to `*out`; free it with `da_agent_free`.
///
/// # Safety
/// The strings are NUL-terminated; `out` points to writable memory.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn da_agent_new(
    identity_dir: *const c_char,
    state_dir: *const c_char,
    server: *const c_char,
    out: *mut *mut DaAgent,
) -> DaStatus {
    guarded(|| {
        let (Some(identity), Some(state), Some(server)) =
            (text(identity_dir), text(state_dir), text(server))
        else {
            return DaStatus::InvalidArgument;
        };
        if out.is_null() {
            return DaStatus::InvalidArgument;
        }
        let Ok(server) = server.parse::<device_agent::transport::ServerAddress>() else {
            return DaStatus::InvalidArgument;
        };
        let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        else {
            return DaStatus::Internal;
        };
        let made = runtime.block_on(async {
            certs::files::create_private_dir(std::path::Path::new(&state))
                .map_err(|e| AgentError::Platform(e.into()))?;
            let endpoint = device_agent::transport::Endpoint::for_server(server.first().await?)?;
            Agent::with_files(
                std::path::Path::new(&identity),
                std::path::Path::new(&state),
                server,
                endpoint,
                AgentOptions::default(),
            )
        });
        let agent = match made {
            Ok(agent) => agent,
            Err(e) => return status_of(&e),
        };
        let handle = DaAgent {
            serial: CString::new(agent.serial()).unwrap_or_default(),
            agent: Arc::new(agent),
            runtime,
            stop: tokio::sync::watch::Sender::new(false),
            last_error: Mutex::new(CString::default()),
        };
        // SAFETY: checked non-null above; the caller owns the memory.
        unsafe { *out = Box::into_raw(Box::new(handle)) };
        DaStatus::Ok
    })
}

/// Onboards the device if it is not onboarded yet (blocking). Safe to call again after any
/// failure: it resumes where the device stands.
///
/// # Safety
/// `agent` comes from `da_agent_new` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn da_agent_onboard(agent: *const DaAgent) -> DaStatus {
    guarded(|| {
        // SAFETY: the caller passes a live handle.
        let Some(agent) = (unsafe { agent.as_ref() }) else {
            return DaStatus::InvalidArgument;
        };
        match agent.runtime.block_on(agent.agent.onboard()) {
            Ok(_) => DaStatus::Ok,
            Err(e) => agent.fail(&e),
        }
    })
}

/// Runs the device (onboarding, the operational session, commands, renewals, updates) until
/// `da_agent_stop` is called or the owner decommissions it. Blocks its caller.
///
/// # Safety
/// `agent` comes from `da_agent_new` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn da_agent_run(agent: *const DaAgent) -> DaStatus {
    guarded(|| {
        // SAFETY: the caller passes a live handle.
        let Some(agent) = (unsafe { agent.as_ref() }) else {
            return DaStatus::InvalidArgument;
        };
        let mut stopped = agent.stop.subscribe();
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        match agent.runtime.block_on(agent.agent.run(stop)) {
            Ok(()) => DaStatus::Ok,
            Err(e) => agent.fail(&e),
        }
    })
}

/// Asks a running `da_agent_run` to return. Any thread.
///
/// # Safety
/// `agent` comes from `da_agent_new` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn da_agent_stop(agent: *const DaAgent) -> DaStatus {
    guarded(|| {
        // SAFETY: the caller passes a live handle.
        let Some(agent) = (unsafe { agent.as_ref() }) else {
            return DaStatus::InvalidArgument;
        };
        agent.stop.send_replace(true);
        DaStatus::Ok
    })
}

/// The device serial. Valid as long as the handle.
///
/// # Safety
/// `agent` comes from `da_agent_new` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn da_agent_serial(agent: *const DaAgent) -> *const c_char {
    // SAFETY: the caller passes a live handle.
    match unsafe { agent.as_ref() } {
        Some(agent) => agent.serial.as_ptr(),
        None => std::ptr::null(),
    }
}

/// Why the last call on this handle failed (empty if none did). Valid until the next call on
/// the handle.
///
/// # Safety
/// `agent` comes from `da_agent_new` and was not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn da_agent_last_error(agent: *const DaAgent) -> *const c_char {
    // SAFETY: the caller passes a live handle.
    match unsafe { agent.as_ref() } {
        Some(agent) => agent
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ptr(),
        None => std::ptr::null(),
    }
}

/// Frees the handle (after `da_agent_run` returned). Null is ignored.
///
/// # Safety
/// `agent` comes from `da_agent_new` and is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn da_agent_free(agent: *mut DaAgent) {
    if !agent.is_null() {
        // SAFETY: made by Box::into_raw in da_agent_new, freed once.
        drop(unsafe { Box::from_raw(agent) });
    }
}
