//! The QUIC transport: one quinn endpoint per daemon that listens and dials, with mutual
//! pinned TLS (`tls`), and framed message streams on top of QUIC streams (`conn`).
//!
//! Socket buffers are raised to 4 MiB: with quinn's defaults the receiver drops packets on
//! a loaded 2-core machine (anchors/limits.md §3).

pub mod conn;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tandem_proto::model::DeviceId;

use crate::net::tls::{TlsSetupError, TrustedPeers, client_config, device_of, server_config};

/// Send and receive socket buffer size.
const SOCKET_BUFFER: usize = 4 << 20;

/// Why the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Socket setup failed.
    #[error("socket {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// Dialing failed before the handshake.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::ConnectError,
    },
    /// The handshake or connection failed.
    #[error("connection with {addr}: {source}")]
    Connection {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: quinn::ConnectionError,
    },
    /// The peer presented no usable certificate.
    #[error("peer at {0} presented no usable certificate")]
    NoIdentity(SocketAddr),
}

/// This device's QUIC endpoint.
pub struct Endpoint {
    endpoint: quinn::Endpoint,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Endpoint {
    /// Binds `addr` (UDP) and accepts connections from `trusted` devices.
    pub fn bind(
        addr: SocketAddr,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
        trusted: TrustedPeers,
    ) -> Result<Self, ConnectError> {
        let socket = udp_socket(addr).map_err(|source| ConnectError::Socket { addr, source })?;
        let mut server = server_config(cert.clone(), key.clone_key(), trusted)?;
        server.transport_config(transport());
        let runtime = quinn::default_runtime().ok_or_else(|| ConnectError::Socket {
            addr,
            source: std::io::Error::other("no async runtime"),
        })?;
        let endpoint = quinn::Endpoint::new(endpoint_config(&key), Some(server), socket, runtime)
            .map_err(|source| ConnectError::Socket { addr, source })?;
        Ok(Self { endpoint, cert, key })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Dials `addr`, expecting device `peer` there.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        peer: DeviceId,
    ) -> Result<quinn::Connection, ConnectError> {
        let mut client = client_config(self.cert.clone(), self.key.clone_key(), peer)?;
        client.transport_config(transport());
        let connecting = self
            .endpoint
            .connect_with(client, addr, "tandem")
            .map_err(|source| ConnectError::Connect { addr, source })?;
        connecting.await.map_err(|source| ConnectError::Connection { addr, source })
    }

    /// The next incoming connection attempt (`None` once the endpoint is closed).
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self, code: u32, reason: &str) {
        self.endpoint.close(code.into(), reason.as_bytes());
    }

    /// Waits until every connection is closed cleanly.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
    }
}

/// The device at the other end of an established connection.
pub fn peer_device(conn: &quinn::Connection) -> Result<DeviceId, ConnectError> {
    let identity = conn.peer_identity().ok_or(ConnectError::NoIdentity(conn.remote_address()))?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| ConnectError::NoIdentity(conn.remote_address()))?;
    let first = certs.first().ok_or(ConnectError::NoIdentity(conn.remote_address()))?;
    device_of(first).map_err(|_| ConnectError::NoIdentity(conn.remote_address()))
}

/// The endpoint's stateless-reset key, derived from the device's private key so it
/// survives a restart. A device that crashed and came back then answers packets of a
/// connection it no longer has with a stateless reset its peer believes (RFC 9000 §10.3),
/// and the peer drops the dead connection at once. With quinn's defaults (a random key per
/// run, and connection ids signed with another random key, so a restarted endpoint drops
/// packets for its previous run's ids without a word) the peer kept the dead connection
/// until the 60 s idle timeout, refusing the restarted device's new connection as a
/// duplicate of it all that time (PROTOCOL.md §9.8).
fn endpoint_config(key: &PrivateKeyDer<'_>) -> quinn::EndpointConfig {
    let reset = blake3::derive_key("tandem 2026 QUIC stateless reset key v1", key.secret_der());
    let mut config = quinn::EndpointConfig::new(Arc::new(ResetKey(reset)));
    config.cid_generator(|| Box::new(ConnectionIds { issued: 0 }));
    config
}

/// A keyed BLAKE3 MAC for stateless-reset tokens.
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        let n = signature_out.len().min(32);
        signature_out[..n].copy_from_slice(&mac.as_bytes()[..n]);
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        let expected = blake3::keyed_hash(&self.0, data);
        let given = <[u8; 32]>::try_from(signature).map_err(|_| quinn::crypto::CryptoError)?;
        // blake3::Hash compares in constant time
        if blake3::Hash::from(given) == expected { Ok(()) } else { Err(quinn::crypto::CryptoError) }
    }
}

/// Random 8-byte connection ids that any run of this endpoint accepts as possibly its own
/// (quinn's default validation would drop a previous run's ids before the stateless reset).
struct ConnectionIds {
    issued: u64,
}

impl quinn::ConnectionIdGenerator for ConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use std::hash::BuildHasher;
        self.issued += 1;
        // RandomState's keys come from the OS: an observer cannot link two ids
        let random = std::collections::hash_map::RandomState::new().hash_one(self.issued);
        quinn::ConnectionId::new(&random.to_le_bytes())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(60_000))));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(256));
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    Arc::new(t)
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    socket.set_recv_buffer_size(SOCKET_BUFFER).ok();
    socket.set_send_buffer_size(SOCKET_BUFFER).ok();
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
