//! `onboarder radius init DIR`: a FreeRADIUS 3 configuration directory to start from, run as
//! `freeradius -f -d DIR` (or installed over `/etc/freeradius/3.0`):
//!
//! ```text
//! DIR/radiusd.conf            server settings; includes the rest
//! DIR/clients.conf            the access points and switches, with their shared secrets (0600)
//! DIR/mods-enabled/eap        EAP-TLS: our server certificate, client certificates checked
//!                             against DIR/ca with the CRLs (reloaded every 10 s)
//! DIR/mods-enabled/onboarder  the rest module: the onboarder's RADIUS endpoints (0600: token)
//! DIR/sites-enabled/onboarder what a login goes through
//! DIR/certs/server.pem, .key  the RADIUS server's certificate, issued by the owner's issuing
//!                             CA, so devices check it with the owner root they hold
//! DIR/ca/                     kept by the onboarder (roots, issuing CAs, CRLs)
//! DIR/log/, DIR/run/          FreeRADIUS's own files
//! ```
//!
//! A login: EAP-TLS (the LDevID) is verified by FreeRADIUS, then `post-auth` asks the
//! onboarder, whose answer accepts (with the device's VLAN or filter) or rejects; a request
//! without EAP is a MAC authorization, which `authorize` asks the onboarder about (the answer
//! carries the device's own passphrase as Tunnel-Password). The onboarder unreachable:
//! reject, or with `fail_open_verified` accept a certificate FreeRADIUS verified itself (chain
//! and CRL: a device that was active when the CRL was published) without a placement.
//! `Post-Auth-Type REJECT` reports FreeRADIUS's own refusals to the onboarder's audit log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::{Error, Result};

/// How FreeRADIUS CA directory reloads are spaced, in seconds: how long a new CRL waits to be
/// read (the onboarder's answer refuses a revoked device at once).
pub const CA_RELOAD_SECS: u32 = 10;

/// One access point, switch or network of them allowed to ask.
#[derive(Debug, Clone)]
pub struct RadiusClient {
    /// An address or a network (`10.0.0.0/8`).
    pub network: String,
    /// Its shared secret.
    pub secret: String,
}

/// What `onboarder radius init` writes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Where FreeRADIUS listens for authentication requests.
    pub listen: SocketAddr,
    /// Who may ask.
    pub clients: Vec<RadiusClient>,
    /// Names in the RADIUS server's certificate.
    pub names: Vec<String>,
    /// Accept a certificate FreeRADIUS verified when the onboarder cannot be asked.
    pub fail_open_verified: bool,
}

/// Writes the FreeRADIUS configuration for the onboarder in `data_dir` into `out` (new or
/// empty), and turns the onboarder's RADIUS side on (its settings and token; a running
/// onboarder picks them up at its next start).
pub fn init(data_dir: &Path, out: &Path, options: &InitOptions, now: u64) -> Result<PathBuf> {
    if let Ok(mut entries) = std::fs::read_dir(out)
        && entries.next().is_some()
    {
        return Err(Error::Config(format!(
            "{} already exists and is not empty",
            out.display()
        )));
    }
    for client in &options.clients {
        check_value("client network", &client.network)?;
        check_value("client secret", &client.secret)?;
    }
    for name in &options.names {
        check_value("server name", name)?;
    }
    let mut config = Config::load(data_dir)?;
    let token = super::token(data_dir)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let out = out.canonicalize().map_err(|e| Error::io(out, e))?;
    for sub in ["mods-enabled", "sites-enabled", "certs", "log", "run"] {
        let dir = out.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let (chain, key) = crate::pki::issue_server(data_dir, &config, &options.names, now)?;
    certs::files::write_public(
        &out.join("certs/server.pem"),
        certs::files::certs_pem(chain.iter().map(Vec::as_slice)).as_bytes(),
    )?;
    certs::files::write_secret(&out.join("certs/server.key"), key.to_pem().as_bytes())?;
    let text = |t: &str| {
        t.replace("@DIR@", &out.display().to_string())
            .replace("@API@", &format!("http://{}", config.api_listen))
            .replace("@TOKEN@", &token)
            .replace("@LISTEN_ADDR@", &options.listen.ip().to_string())
            .replace("@LISTEN_PORT@", &options.listen.port().to_string())
            .replace("@RELOAD@", &CA_RELOAD_SECS.to_string())
            .replace(
                "@UNREACHABLE@",
                if options.fail_open_verified {
                    "ok"
                } else {
                    "reject"
                },
            )
    };
    certs::files::write_public(&out.join("radiusd.conf"), text(RADIUSD).as_bytes())?;
    certs::files::write_public(&out.join("mods-enabled/eap"), text(EAP).as_bytes())?;
    certs::files::write_secret(&out.join("mods-enabled/onboarder"), text(REST).as_bytes())?;
    certs::files::write_public(&out.join("sites-enabled/onboarder"), text(SITE).as_bytes())?;
    certs::files::write_secret(
        &out.join("clients.conf"),
        clients(&options.clients).as_bytes(),
    )?;
    let settings = super::RadiusSettings {
        ca_dir: out.join("ca"),
    };
    super::write_ca_dir_from_disk(data_dir, &config, &settings)?;
    config.radius = Some(settings);
    config.save(data_dir)?;
    Ok(out)
}

/// Refuses a value that would break out of its quoted place in the configuration.
fn check_value(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\'' | '$' | '{' | '}'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} {value:?}: printable ASCII without quotes, backslashes, `$`, `{{` or `}}`"
        )))
    }
}

fn clients(clients: &[RadiusClient]) -> String {
    let mut text =
        String::from("# The access points and switches that may ask, with their shared secrets.\n");
    for (n, client) in clients.iter().enumerate() {
        text.push_str(&format!(
            "client nas{n} {{\n\tipaddr = {}\n\tsecret = \"{}\"\n}}\n",
            client.network, client.secret
        ));
    }
    text
}

const RADIUSD: &str = r#"# FreeRADIUS for the onboarder (written by `onboarder radius init`).
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
raddbdir = @DIR@
confdir = ${raddbdir}
logdir = ${raddbdir}/log
run_dir = ${raddbdir}/run
libdir = /usr/lib/freeradius
pidfile = ${run_dir}/freeradius.pid
name = freeradius
max_request_time = 30
cleanup_delay = 5
max_requests = 16384
hostname_lookups = no

log {
	destination = files
	file = ${logdir}/radius.log
	auth = yes
	auth_badpass = no
	auth_goodpass = no
}

security {
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 1
	status_server = yes
}

thread pool {
	start_servers = 4
	max_servers = 32
	min_spare_servers = 2
	max_spare_servers = 8
	max_requests_per_server = 0
}

$INCLUDE clients.conf

modules {
	$INCLUDE mods-enabled/
}

$INCLUDE sites-enabled/
"#;

const EAP: &str = r#"# EAP-TLS with the devices' LDevIDs (written by `onboarder radius init`).
eap {
	default_eap_type = tls
	timer_expire = 60
	ignore_unknown_eap_types = no
	max_sessions = 16384

	tls-config tls-common {
		certificate_file = ${confdir}/certs/server.pem
		private_key_file = ${confdir}/certs/server.key
		# Owner roots, issuing CAs and their CRLs, kept by the onboarder.
		ca_path = ${confdir}/ca
		check_crl = yes
		ca_path_reload_interval = @RELOAD@
		tls_min_version = "1.2"
		tls_max_version = "1.2"
		cipher_list = "DEFAULT"
		ecdh_curve = "prime256v1"
	}

	tls {
		tls = tls-common
	}
}
"#;

const REST: &str = r#"# The onboarder's RADIUS endpoints (written by `onboarder radius init`; holds its token).
always reject {
	rcode = reject
}
always ok {
	rcode = ok
}

rest onboarder {
	connect_timeout = 2.0
	authorize {
		uri = "@API@/radius/v1/mac"
		method = 'post'
		body = 'json'
		auth = 'basic'
		username = "freeradius"
		password = "@TOKEN@"
		timeout = 2.0
	}
	post-auth {
		uri = "@API@/radius/v1/eap-tls"
		method = 'post'
		body = 'json'
		auth = 'basic'
		username = "freeradius"
		password = "@TOKEN@"
		timeout = 2.0
	}
	pool {
		start = 0
		min = 0
		max = 32
		spare = 8
		uses = 0
		retry_delay = 1
		lifetime = 0
		idle_timeout = 60
	}
}

rest onboarder_refused {
	connect_timeout = 2.0
	post-auth {
		uri = "@API@/radius/v1/refused"
		method = 'post'
		body = 'json'
		auth = 'basic'
		username = "freeradius"
		password = "@TOKEN@"
		timeout = 2.0
	}
	pool {
		start = 0
		min = 0
		max = 8
		spare = 2
		uses = 0
		retry_delay = 1
		lifetime = 0
		idle_timeout = 60
	}
}
"#;

const SITE: &str = r#"# Logins of the onboarder's devices (written by `onboarder radius init`).
server onboarder {
	listen {
		type = auth
		ipaddr = @LISTEN_ADDR@
		port = @LISTEN_PORT@
	}

	authorize {
		if (&EAP-Message) {
			eap {
				ok = return
			}
		}
		else {
			# MAC authorization: the onboarder answers with the device's own passphrase.
			onboarder {
				fail = 1
				reject = 1
				notfound = 1
				userlock = 1
				invalid = 1
			}
			if (fail) {
				# The onboarder cannot be asked: a passphrase cannot be had elsewhere.
				reject
			}
			elsif (!ok && !updated) {
				update control {
					&Tmp-String-0 := "decided by the onboarder"
				}
				reject
			}
		}
	}

	authenticate {
		Auth-Type eap {
			eap
		}
	}

	post-auth {
		if (&EAP-Message) {
			if (!&TLS-Client-Cert-Serial) {
				reject
			}
			# The certificate verified (chain, CRL): may its device on now, and where?
			onboarder {
				fail = 1
				reject = 1
				notfound = 1
				userlock = 1
				invalid = 1
			}
			if (fail) {
				# The onboarder cannot be asked.
				@UNREACHABLE@
			}
			elsif (!ok && !updated) {
				update control {
					&Tmp-String-0 := "decided by the onboarder"
				}
				reject
			}
		}

		Post-Auth-Type REJECT {
			# Nothing of a refused login leaves: no keys, no passphrase, no EAP success.
			update reply {
				&MS-MPPE-Recv-Key !* ANY
				&MS-MPPE-Send-Key !* ANY
				&Tunnel-Password !* ANY
				&EAP-Message !* ANY
			}
			# Refusals the onboarder did not decide reach its audit log.
			if (!&control:Tmp-String-0) {
				onboarder_refused
			}
		}
	}
}
"#;
