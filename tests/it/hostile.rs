//! A hostile peer: a trusted device whose messages try to escape the folder or crash the
//! daemon. It speaks real QUIC with its real identity (through tandem's own transport), then
//! sends what no honest peer would.

use std::net::SocketAddr;

use tandem::home::Home;
use tandem::identity::Identity;
use tandem::net::Endpoint;
use tandem::net::tls::TrustedPeers;
use tandem_proto::model::{EntryKind, FileRecord, FolderId, Hash, RelPath, ShortId, VersionVector};
use tandem_proto::wire::{ClusterConfig, FolderShare, Hello, IndexBatch, Message, encode_frame};

use crate::support::{Device, wait_until};

/// Connects to `target` as `me` and returns the control stream after the handshake
/// messages (Hello and ClusterConfig sharing `docs`).
pub(crate) async fn open_session(
    me: &Device,
    target: &Device,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let home = Home::new(&me.home()).unwrap();
    let identity = Identity::load(&home).unwrap();
    let target_id = target.id().parse().unwrap();
    let endpoint = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        identity.cert_der().unwrap(),
        identity.key_der(),
        TrustedPeers::new([target_id]),
    )
    .unwrap();
    let addr: SocketAddr = target.listen().parse().unwrap();
    let conn = endpoint.connect(addr, target_id).await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let hello = Message::Hello(Hello {
        protocol_version: 1,
        device_name: "mallory".into(),
        client_version: "evil 1.0".into(),
    });
    let share = FolderShare {
        id: FolderId::new("docs").unwrap(),
        index_id: 77,
        seen_index_id: 0,
        seen_sequence: 0,
    };
    let config = Message::ClusterConfig(ClusterConfig { folders: vec![share] });
    for message in [hello, config] {
        send.write_all(&encode_frame(&message).unwrap()).await.unwrap();
    }
    std::mem::forget(endpoint); // keep the socket for the connection's lifetime
    (conn, send, recv)
}

/// An index frame whose single record is named `name` (any bytes, same length as the
/// placeholder), built by encoding a valid record and patching its name.
fn index_frame_naming(name: &str) -> Vec<u8> {
    index_frame_patched(&"p".repeat(name.len()), name)
}

/// An index frame whose single record, encoded with the valid name `placeholder`, is then
/// renamed to `name` (the same length) in the encoded bytes.
pub(crate) fn index_frame_patched(placeholder: &str, name: &str) -> Vec<u8> {
    assert_eq!(placeholder.len(), name.len());
    let record = FileRecord {
        path: RelPath::new(placeholder).unwrap(),
        kind: EntryKind::File,
        size: 5,
        mtime_ns: 1,
        mode: 0o644,
        symlink_target: None,
        hash: Hash::of(b"pwned"),
        chunks: Vec::new(),
        version: VersionVector::new().bumped(ShortId::new(9), 4_000_000_000),
        sequence: 1,
        deleted: false,
        modified_by: ShortId::new(9),
    };
    let batch = Message::Index(IndexBatch {
        folder: FolderId::new("docs").unwrap(),
        records: vec![record],
        first: true,
    });
    let mut frame = encode_frame(&batch).unwrap();
    let at = frame.windows(placeholder.len()).position(|w| w == placeholder.as_bytes()).unwrap();
    frame[at..at + name.len()].copy_from_slice(name.as_bytes());
    frame
}

#[test]
fn traversal_names_and_garbage_from_a_trusted_peer_are_refused_and_others_still_served() {
    let (victim, mallory, honest) = (Device::peer(), Device::peer(), Device::peer());
    victim.trust(&mallory);
    victim.trust(&honest);
    honest.trust(&victim);
    victim.write("real.txt", b"for the honest peer");
    let serve = victim.serve();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for attack in [
        index_frame_naming("../../escape"),
        index_frame_naming("/etc/passwd0"),
        index_frame_naming("a\0b"),
        vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3], // absurd length
        vec![0, 0, 0, 5, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE], // unknown message type
    ] {
        runtime.block_on(async {
            let (conn, mut send, _recv) = open_session(&mallory, &victim).await;
            let _ = send.write_all(&attack).await;
            let _ = send.finish();
            // the victim closes the connection on the protocol error
            let closed =
                tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed()).await;
            assert!(closed.is_ok(), "the connection stayed open after {attack:?}");
        });
    }
    let parent = victim.dir.path();
    assert!(!parent.join("escape").exists() && !parent.parent().unwrap().join("escape").exists());
    assert!(!victim.path("a").exists());
    let log_has = |needle: &str| wait_until(10, || serve.log_text().contains(needle));
    assert!(log_has("malformed message"), "{}", serve.log_text());
    assert!(log_has("exceeds the"), "the oversize frame was not named: {}", serve.log_text());
    // the victim keeps serving its honest peer
    honest.sync_ok();
    assert_eq!(std::fs::read(honest.path("real.txt")).unwrap(), b"for the honest peer");
}
