//! Wiring: store, service, QUIC listener and admin API, started from a data directory.
//!
//! The device listeners (QUIC, HTTPS, CoAP) and every connection task run on a runtime of
//! their own ([`DeviceRuntime`]); the control loops and the admin API run on the caller's.
//! A long piece of control work (a campaign's first look at 100,000 records, a fleet-wide
//! scan) then shares the CPU with the listeners through the kernel's scheduler instead of
//! holding one of the threads they need: at 100,000 devices, a stall of that kind let the
//! connections' idle timeouts expire together.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, layout};
use crate::control::Control;
use crate::service::{Clock, Service};
use crate::store::Store;
use crate::store::images::{DirImages, ImageStore};
use crate::store::seal::SealingKey;
use crate::store::sled::SledStore;
use crate::transport::limits::Budgets;
use crate::transport::sessions::Sessions;
use crate::transport::{quic, tls};

/// Listener addresses that replace the configured ones (tests and the demo bind port 0).
#[derive(Debug, Clone, Copy, Default)]
pub struct Listen {
    /// QUIC (UDP) address.
    pub quic: Option<SocketAddr>,
    /// Admin API (TCP) address.
    pub api: Option<SocketAddr>,
    /// HTTPS (TCP) address of the standard interfaces; turns them on.
    pub https: Option<SocketAddr>,
    /// CoAPS (UDP) address for constrained devices; turns it on.
    pub coap: Option<SocketAddr>,
}

/// Where the server keeps its state.
#[derive(Clone)]
pub struct Backends {
    /// Device records, anchors, revocations, releases, campaigns and the audit log.
    pub store: Arc<dyn Store>,
    /// Firmware images.
    pub images: Arc<dyn ImageStore>,
    /// How replicas on the same store talk (none for a store one process opens).
    pub relay: Option<Arc<dyn crate::store::Relay>>,
}

impl Backends {
    /// The embedded defaults of the data directory `dir`: sled in `DIR/store` (its secrets
    /// sealed with `DIR/store.key`) and images in `DIR/firmware`.
    pub fn embedded(dir: &Path) -> Result<Backends> {
        let key = SealingKey::load_or_create(&dir.join(layout::STORE_KEY))?;
        Ok(Backends {
            store: Arc::new(SledStore::open(&dir.join(layout::STORE), key)?),
            images: Arc::new(DirImages::new(dir.join(layout::FIRMWARE))),
            relay: None,
        })
    }

    /// Records and images in the PostgreSQL database at `url`, secrets sealed with the data
    /// directory's `DIR/store.key` (which every replica on the database shares).
    pub fn postgres(dir: &Path, url: &str) -> Result<Backends> {
        let key = SealingKey::load_or_create(&dir.join(layout::STORE_KEY))?;
        let store = Arc::new(crate::store::postgres::PgStore::open(url, key)?);
        Ok(Backends {
            store: store.clone(),
            images: store.clone(),
            relay: Some(store),
        })
    }

    /// The backends `config` names: its database, else the embedded ones.
    pub fn configured(dir: &Path, config: &Config) -> Result<Backends> {
        match &config.store {
            Some(url) => Backends::postgres(dir, url),
            None => Backends::embedded(dir),
        }
    }
}

/// How to start a server: what replaces the configured listeners, the clock, the backends.
#[derive(Clone, Default)]
pub struct Options {
    /// Listener addresses that replace the configured ones.
    pub listen: Listen,
    /// The clock (the system clock if `None`).
    pub clock: Option<Clock>,
    /// The backends (the embedded ones of the data directory if `None`).
    pub backends: Option<Backends>,
    /// A manufacturers' voucher service for nonced vouchers (see [`crate::masa`]).
    pub masa: Option<Arc<dyn crate::masa::Masa>>,
}

/// A running onboarder.
pub struct Server {
    quic_addr: SocketAddr,
    api_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    coap: Option<Arc<crate::transport::coap::Listener>>,
    control: Arc<Control>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    devices: DeviceRuntime,
}

/// The runtime the device listeners and their connections run on, apart from the control's.
/// Dropped (with the server) without waiting for its threads, so that a server may be dropped
/// anywhere, an async test included.
struct DeviceRuntime(Option<tokio::runtime::Runtime>);

impl DeviceRuntime {
    fn new() -> Result<DeviceRuntime> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("onboarder-devices")
            .enable_all()
            .build()
            .map_err(|e| Error::os("starting the device listeners' runtime", e))?;
        Ok(DeviceRuntime(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        match &self.0 {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the runtime is only taken when dropped"),
        }
    }

    /// Runs `work` to its end on the device runtime: a listener bound there is driven by that
    /// runtime's reactor.
    async fn run<F>(&self, work: F) -> Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle()
            .spawn(work)
            .await
            .map_err(|e| Error::Config(format!("the device listeners' runtime: {e}")))
    }
}

impl Drop for DeviceRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Server {
    /// Opens the data directory `dir` and starts listening.
    pub async fn start(dir: &Path, listen: Listen) -> Result<Server> {
        Server::start_with(
            dir,
            Options {
                listen,
                ..Options::default()
            },
        )
        .await
    }

    /// Opens the data directory `dir` with `options` and starts listening. Before the first
    /// device is served, the server finishes what a crash left half done (a CA rollover).
    pub async fn start_with(dir: &Path, options: Options) -> Result<Server> {
        let mut config = Config::load(dir)?;
        if let Some(addr) = options.listen.quic {
            config.quic_listen = addr;
        }
        if let Some(addr) = options.listen.api {
            config.api_listen = addr;
        }
        if let Some(addr) = options.listen.https {
            config.https_listen = Some(addr);
        }
        if let Some(addr) = options.listen.coap {
            config.coap_listen = Some(addr);
        }
        let clock = options.clock.unwrap_or_else(|| Arc::new(certs::unix_now));
        // The directory holds keys and every device's sealed credentials: its owner only.
        certs::files::create_private_dir(dir)?;
        let pki = crate::pki::load(dir, &config)?;
        let token = crate::pki::token(dir)?;
        let radius_token = match &config.radius {
            Some(_) => Some(crate::radius::token(dir)?),
            None => None,
        };
        let backends = match options.backends {
            Some(b) => b,
            None => Backends::configured(dir, &config)?,
        };
        let service = Arc::new(
            Service::new(
                backends.store,
                backends.images,
                pki.registrar,
                clock.clone(),
            )?
            .with_masa(match (options.masa, &config.online_masa) {
                (Some(masa), _) => Some(masa),
                (None, Some(online)) => Some(Arc::new(crate::masa::https::HttpsMasa::new(
                    online.url.clone(),
                    pki.server_chain.clone(),
                    certs::KeyPair::from_pkcs8_der(pki.server_key.pkcs8_der())?,
                    clock.clone(),
                )) as Arc<dyn crate::masa::Masa>),
                (None, None) => None,
            })
            .with_url_key(&certs::files::secret(&dir.join(layout::URL_KEY), 32)?),
        );
        let identity = Arc::new(tls::RegistrarIdentity::new(
            &pki.server_chain,
            &pki.server_key,
        )?);
        let tls = tls::server_config(identity.clone(), service.trust(), clock.clone())?;
        let devices = DeviceRuntime::new()?;
        let https = match config.https_listen {
            Some(addr) => {
                let listener = devices.run(crate::transport::https::bind(addr)).await??;
                let tls = crate::transport::https::server_config(
                    identity.clone(),
                    service.trust(),
                    clock,
                )?;
                Some((listener, tls))
            }
            None => None,
        };
        let https_addr = match &https {
            Some((listener, _)) => Some(
                listener
                    .local_addr()
                    .map_err(|e| Error::os("the HTTPS address", e))?,
            ),
            None => None,
        };
        let reset_key = certs::files::secret(&dir.join(layout::RESET_KEY), 32)?;
        let (endpoint, backlog) = {
            // quinn spawns the endpoint's driver, and every connection's, where it is bound.
            let _devices = devices.handle().enter();
            quic::bind(config.quic_listen, tls, &reset_key)?
        };
        let api_listen = config.api_listen;
        let api = tokio::net::TcpListener::bind(api_listen)
            .await
            .map_err(|e| Error::os(format!("binding the admin API on {api_listen}"), e))?;
        let quic_addr = endpoint
            .local_addr()
            .map_err(|e| Error::os("the QUIC address", e))?;
        let api_addr = api
            .local_addr()
            .map_err(|e| Error::os("the admin API address", e))?;
        if let Some(addr) = https_addr {
            // Labels are published here unless the owner says where (their settings).
            let authority = match config.server_names.first() {
                Some(name) if addr.ip().is_unspecified() => format!("{name}:{}", addr.port()),
                _ => addr.to_string(),
            };
            service.set_label_home(format!("https://{authority}/label"));
        }
        let sessions = Arc::new(Sessions::default());
        let coap = match config.coap_listen {
            Some(addr) => {
                let (identity, service, sessions, limits) = (
                    identity.clone(),
                    service.clone(),
                    sessions.clone(),
                    config.limits,
                );
                let bound = devices
                    .run(async move {
                        crate::transport::coap::bind(addr, identity, service, sessions, &limits)
                            .await
                    })
                    .await?;
                Some(bound.map_err(|e| Error::os(format!("binding CoAPS on {addr}"), e))?)
            }
            None => None,
        };
        let (stop, stopped) = watch::channel(false);
        let mut budgets = Budgets::new(&config.limits);
        // Firmware chunks wait while the QUIC listener's reader is behind.
        if let Some(backlog) = backlog {
            budgets.chunks = budgets.chunks.yielding_to(backlog.watch(stopped.clone()));
        }
        let limits = config.limits;
        let control = Arc::new(Control::new(
            service.clone(),
            sessions.clone(),
            budgets.clone(),
            identity,
            dir.to_path_buf(),
            config,
            backends.relay.clone(),
        ));
        // What a crash left half done is finished (by the replica that leads), and the first
        // CRLs exist, before the first device connects.
        if control.claim_leadership().await {
            control.resume().await?;
        }
        control.publish_crls().await?;
        let mut tasks = vec![
            devices.handle().spawn(quic::serve(
                endpoint.clone(),
                service.clone(),
                sessions.clone(),
                limits,
                budgets.clone(),
            )),
            tokio::spawn(control.clone().run_audit_budget(stopped.clone())),
            tokio::spawn(control.clone().run_crl_publisher(stopped.clone())),
            tokio::spawn(control.clone().run_campaigns(stopped.clone())),
            tokio::spawn(control.clone().run_support_notices(stopped.clone())),
            tokio::spawn(control.clone().run_registrar_renewal(stopped.clone())),
            tokio::spawn(control.clone().run_root_rollover(stopped.clone())),
            tokio::spawn(control.clone().run_leadership(stopped.clone())),
            tokio::spawn(control.clone().run_replica_messages(stopped.clone())),
        ];
        if let Some((listener, tls)) = https {
            let crls = control.clone();
            let routes = crate::transport::https::routes(
                service.clone(),
                sessions.clone(),
                Arc::new(move |file: &str| crls.crl_file(file)),
                budgets.chunks.clone(),
            );
            tasks.push(devices.handle().spawn(crate::transport::https::serve(
                listener,
                tls,
                service.clone(),
                routes,
                limits,
                stopped.clone(),
            )));
        }
        if let Some(listener) = &coap {
            tasks.push(
                devices
                    .handle()
                    .spawn(listener.clone().serve(stopped.clone())),
            );
        }
        let api_control = control.clone();
        tasks.push(tokio::spawn(async move {
            let mut stopped = stopped;
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) =
                crate::operator::api::serve(api, api_control, token, radius_token, shutdown).await
            {
                tracing::error!("admin API failed: {e}");
            }
        }));
        tracing::info!(%quic_addr, %api_addr, ?https_addr, "onboarder listening");
        Ok(Server {
            quic_addr,
            api_addr,
            https_addr,
            coap,
            control,
            endpoint,
            stop,
            tasks,
            devices,
        })
    }

    /// Where devices connect (UDP).
    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    /// Where the standard interfaces (EST) listen (TCP), if they are on.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The CoAPS listener, if it is on.
    pub fn coap(&self) -> Option<&Arc<crate::transport::coap::Listener>> {
        self.coap.as_ref()
    }

    /// Where the admin API listens (TCP, loopback).
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The service.
    pub fn service(&self) -> &Arc<Service> {
        &self.control.service
    }

    /// Live operational sessions.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.control.sessions
    }

    /// Bytes of incomplete device requests held now (bounded by `limits` in the settings).
    pub fn frame_bytes_held(&self) -> usize {
        self.control.budgets.frames.held()
    }

    /// Firmware chunks being served now, over every transport.
    pub fn firmware_chunks_in_flight(&self) -> usize {
        self.control.budgets.chunks.in_flight()
    }

    /// Operator control (rotation, revocation, rollover, CRLs).
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// Stops listening, closes every connection and waits for the tasks.
    pub async fn shutdown(self) {
        self.endpoint.close(
            crate::transport::close::SHUTDOWN.into(),
            b"server shutting down",
        );
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.endpoint.wait_idle().await;
        drop(self.devices);
    }
}
