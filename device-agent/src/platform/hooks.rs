//! The device maker's executables at the steps only the device knows how to carry out, as
//! Mender's state scripts: write an installed image where the bootloader finds it, reboot into
//! it, judge its health, wipe what the agent does not know of, apply network credentials.
//!
//! Each hook runs after the agent's own part of the step, with `DEVICE_AGENT_STEP` (install,
//! boot, health, wipe, network), `DEVICE_AGENT_FIRMWARE_DIR` and, for firmware steps,
//! `DEVICE_AGENT_DIGEST` (hex) in its environment; the network hook reads JSON on its standard
//! input: `profile` (Wi-Fi or EAP-TLS), and for EAP-TLS the LDevID (`client_cert`,
//! `client_chain`, PEM) and where its key is (`client_key`: a file path or a PKCS#11 URI). It
//! runs again after every renewal, as the old certificate is revoked soon after. Exit status 0 is success; anything else fails the step with the
//! first line of what the hook wrote on stderr (a failed health hook rolls the update back, a
//! failed wipe hook fails the decommissioning, so no attestation claims a wipe that did not
//! happen). A hook gets at most [`HOOK_TIMEOUT`].

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::attestation::{WipeMethod, WipedTarget};
use protocol::message::NetworkProfile;

use super::{ClientCredential, FirmwareSlots, NetworkApplier, Wiper};
use crate::error::PlatformError;

/// How long a hook may run before it is killed and the step fails.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// The hooks a device maker provides (each optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// After an image is installed in the inactive slot.
    pub install: Option<PathBuf>,
    /// To boot the installed image on trial.
    pub boot: Option<PathBuf>,
    /// To judge the new image's health (after the agent reached the onboarder with it).
    pub health: Option<PathBuf>,
    /// After the agent wiped the owner's data and credentials.
    pub wipe: Option<PathBuf>,
    /// To apply network credentials (JSON on stdin, see the module docs).
    pub network: Option<PathBuf>,
}

/// Runs `hook` for `step`; the first line of its stderr on failure.
fn run(
    hook: &Path,
    step: &str,
    env: &[(&str, String)],
    stdin: Option<&[u8]>,
) -> Result<(), String> {
    let mut child = Command::new(hook)
        .env("DEVICE_AGENT_STEP", step)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{step} hook {}: {e}", hook.display()))?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(bytes);
    }
    let deadline = Instant::now() + HOOK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{step} hook timed out after {HOOK_TIMEOUT:?}"));
            }
            Err(e) => return Err(format!("{step} hook: {e}")),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.by_ref().take(4096).read_to_string(&mut stderr);
    }
    let why = stderr.lines().next().unwrap_or("").trim();
    Err(format!("{step} hook failed ({status}): {why}"))
}

fn firmware_failure(e: String) -> PlatformError {
    PlatformError::Firmware(e)
}

/// Firmware slots with the install, boot and health hooks.
pub struct HookedSlots {
    inner: Arc<dyn FirmwareSlots>,
    hooks: Hooks,
    dir: PathBuf,
}

impl HookedSlots {
    /// `inner` (keeping its images in `dir`) with `hooks`.
    pub fn new(inner: Arc<dyn FirmwareSlots>, hooks: Hooks, dir: &Path) -> Self {
        HookedSlots {
            inner,
            hooks,
            dir: dir.to_path_buf(),
        }
    }

    fn env(&self, digest: Option<&[u8]>) -> Vec<(&'static str, String)> {
        let mut env = vec![("DEVICE_AGENT_FIRMWARE_DIR", self.dir.display().to_string())];
        if let Some(d) = digest {
            env.push(("DEVICE_AGENT_DIGEST", certs::inspect::hex(d)));
        }
        env
    }
}

impl FirmwareSlots for HookedSlots {
    fn staged_len(&self, digest: &[u8]) -> Result<u64, PlatformError> {
        self.inner.staged_len(digest)
    }
    fn stage(&self, digest: &[u8], offset: u64, bytes: &[u8]) -> Result<(), PlatformError> {
        self.inner.stage(digest, offset, bytes)
    }
    fn staged_digest(&self, digest: &[u8]) -> Result<(u64, [u8; 32]), PlatformError> {
        self.inner.staged_digest(digest)
    }
    fn discard(&self, digest: &[u8]) -> Result<(), PlatformError> {
        self.inner.discard(digest)
    }
    fn install(&self, digest: &[u8], manifest: &[u8]) -> Result<(), PlatformError> {
        self.inner.install(digest, manifest)?;
        match &self.hooks.install {
            Some(hook) => {
                run(hook, "install", &self.env(Some(digest)), None).map_err(firmware_failure)
            }
            None => Ok(()),
        }
    }
    fn boot_trial(&self) -> Result<(), PlatformError> {
        self.inner.boot_trial()?;
        match &self.hooks.boot {
            Some(hook) => run(hook, "boot", &self.env(None), None).map_err(firmware_failure),
            None => Ok(()),
        }
    }
    fn self_test(&self) -> Result<(), String> {
        self.inner.self_test()?;
        match &self.hooks.health {
            Some(hook) => run(hook, "health", &self.env(None), None),
            None => Ok(()),
        }
    }
    fn commit(&self) -> Result<(), PlatformError> {
        self.inner.commit()
    }
    fn rollback(&self) -> Result<(), PlatformError> {
        self.inner.rollback()
    }
    fn in_trial(&self) -> Result<bool, PlatformError> {
        self.inner.in_trial()
    }
}

/// A wiper followed by the wipe hook.
pub struct HookedWiper {
    inner: Arc<dyn Wiper>,
    hook: PathBuf,
}

impl HookedWiper {
    /// `inner`, then `hook`.
    pub fn new(inner: Arc<dyn Wiper>, hook: PathBuf) -> Self {
        HookedWiper { inner, hook }
    }
}

impl Wiper for HookedWiper {
    fn wipe(&self, method: WipeMethod) -> Result<Vec<WipedTarget>, PlatformError> {
        let wiped = self.inner.wipe(method)?;
        let method = match method {
            WipeMethod::Clear => "clear",
            WipeMethod::PurgeCryptographicErase => "purge",
            _ => "other",
        };
        run(
            &self.hook,
            "wipe",
            &[("DEVICE_AGENT_WIPE_METHOD", method.to_string())],
            None,
        )
        .map_err(PlatformError::Wipe)?;
        Ok(wiped)
    }
}

/// Network credentials handed to the network hook.
pub struct HookNetwork {
    hook: PathBuf,
}

impl HookNetwork {
    /// Applies profiles through `hook`.
    pub fn new(hook: PathBuf) -> Self {
        HookNetwork { hook }
    }
}

impl NetworkApplier for HookNetwork {
    fn apply(
        &self,
        profile: &NetworkProfile,
        client: &ClientCredential,
    ) -> Result<(), PlatformError> {
        let json = serde_json::to_vec(&serde_json::json!({
            "profile": profile,
            "client_cert": certs::files::cert_pem(&client.certificate),
            "client_chain": certs::files::certs_pem(client.chain.iter().map(Vec::as_slice)),
            "client_key": client.key,
        }))
        .map_err(|e| PlatformError::Network(format!("the network profile: {e}")))?;
        run(&self.hook, "network", &[], Some(&json)).map_err(PlatformError::Network)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn hooks_see_their_step_and_a_failure_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let ok = script(
            dir.path(),
            "ok",
            &format!(
                "echo \"$DEVICE_AGENT_STEP $DEVICE_AGENT_DIGEST\" >> {}; cat >> {}",
                log.display(),
                log.display()
            ),
        );
        run(
            &ok,
            "install",
            &[("DEVICE_AGENT_DIGEST", "ab12".into())],
            None,
        )
        .unwrap();
        run(&ok, "network", &[], Some(b"{\"wifi\":1}")).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("install ab12"), "{text}");
        assert!(text.contains("{\"wifi\":1}"), "{text}");
        let bad = script(dir.path(), "bad", "echo 'disk full' >&2; exit 3");
        let e = run(&bad, "health", &[], None).unwrap_err();
        assert!(e.contains("disk full") && e.contains("health"), "{e}");
        let e = run(&dir.path().join("missing"), "boot", &[], None).unwrap_err();
        assert!(e.contains("boot hook"), "{e}");
    }
}
