//! The server sends no session tickets and resumes no session, on QUIC or HTTPS: a resumed session would skip the
//! client certificate's verification, where revoked and retired devices are refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::{NamedGroup, pki_types::ServerName};

use certs::Birth;

use crate::harness::World;

/// A client session store that counts the tickets it is handed.
#[derive(Debug)]
struct Counting {
    inner: ClientSessionMemoryCache,
    tickets: AtomicUsize,
}

impl Counting {
    fn new() -> Arc<Counting> {
        Arc::new(Counting {
            inner: ClientSessionMemoryCache::new(16),
            tickets: AtomicUsize::new(0),
        })
    }
}

impl ClientSessionStore for Counting {
    fn set_kx_hint(&self, server: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server, group)
    }
    fn kx_hint(&self, server: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server)
    }
    fn set_tls12_session(&self, server: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.set_tls12_session(server, value)
    }
    fn tls12_session(&self, server: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server)
    }
    fn remove_tls12_session(&self, server: &ServerName<'static>) {
        self.inner.remove_tls12_session(server)
    }
    fn insert_tls13_ticket(&self, server: ServerName<'static>, value: Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server, value)
    }
    fn take_tls13_ticket(&self, server: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server)
    }
}

/// The device's onboarding TLS client, remembering sessions in `store`.
fn client_tls(birth: Birth, store: &Arc<Counting>) -> rustls::ClientConfig {
    let key: Arc<dyn device_agent::platform::DeviceKey> = Arc::new(birth.key);
    let mut tls = device_agent::transport::quic::provisional_tls(
        std::slice::from_ref(&birth.identity.idevid),
        key,
    )
    .unwrap();
    tls.resumption = rustls::client::Resumption::store(store.clone());
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_tickets_are_sent_over_quic_or_https() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let world = World::new().await;
    world.expect(&["SN-TICKETS"], 30).await;
    let device = world.device("SN-TICKETS");

    // QUIC: a session that made a request, so that everything after the handshake arrived.
    let store = Counting::new();
    let mut tls = client_tls(device.birth(), &store);
    tls.alpn_protocols = vec![protocol::ALPN.to_vec()];
    let crypto = Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap());
    for _ in 0..2 {
        let session = device_agent::transport::quic::Session::connect(
            &world.endpoint,
            quinn::ClientConfig::new(crypto.clone()),
            world.server.quic_addr(),
            None,
        )
        .await
        .unwrap();
        // A round trip: whatever the answer, everything the server sent after the
        // handshake has arrived with it.
        let _ = session
            .call(&crate::harness::voucher_request(&device.birth(), &session))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        session.close();
    }
    assert_eq!(store.tickets.load(Ordering::SeqCst), 0, "tickets over QUIC");

    // HTTPS: a request answered in full, twice, with nothing to resume.
    let https = world.server.https_addr().unwrap();
    {
        let store = Counting::new();
        let mut tls = client_tls(device.birth(), &store);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        for _ in 0..2 {
            let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut stream = connector.connect(name, tcp).await.unwrap();
            assert_eq!(
                stream.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Full)
            );
            stream
                .write_all(
                    b"GET /.well-known/est/cacerts HTTP/1.1\r\nHost: localhost\r\n\
                      Connection: close\r\n\r\n",
                )
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            assert!(
                answer.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }
        assert_eq!(
            store.tickets.load(Ordering::SeqCst),
            0,
            "tickets over HTTPS"
        );
    }
}
