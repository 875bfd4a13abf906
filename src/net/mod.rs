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
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
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
