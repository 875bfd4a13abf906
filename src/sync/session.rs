//! One connection with one peer: the control stream (Hello, ClusterConfig, index exchange,
//! then index updates as local changes happen) and the request streams the peer opens.
//!
//! The protocol is `proto/PROTOCOL.md`. Anything the peer sends that breaks it — a frame
//! error, records for a folder not shared with it, an unexpected message — closes the
//! connection with a logged reason; nothing from the peer is trusted beyond what `proto`
//! validated while decoding.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_proto::model::{DeviceId, FolderId};
use tandem_proto::wire::{
    Close, CloseCode, ClusterConfig, FolderShare, Hello, IndexBatch, MAX_IN_FLIGHT,
    MAX_INDEX_BATCH, MAX_REQUEST, Message, PROTOCOL_VERSION, Response, ResponseBody,
};
use tokio::sync::Semaphore;

use crate::net::conn::{FramedRecv, FramedSend, StreamError};
use crate::sync::puller::serve_read;
use crate::sync::writer::FolderFs;
use crate::sync::{Inner, PeerState};

/// How long the peer has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A stream failed or carried garbage.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The peer closed the session.
    #[error("peer closed: {0}")]
    Closed(String),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Another connection to this peer is kept.
    #[error("duplicate connection")]
    Duplicate,
    /// The index failed.
    #[error("index: {0}")]
    Store(String),
}

/// Runs a session until the connection ends.
pub(crate) async fn run(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    peer: DeviceId,
    dialed_by_us: bool,
) {
    let result = session(&inner, &conn, peer, dialed_by_us).await;
    let (code, reason) = match &result {
        Ok(()) => (CloseCode::Shutdown, "shutdown".to_string()),
        Err(ProtocolError::Duplicate) => (CloseCode::Duplicate, "duplicate connection".to_string()),
        Err(e) => (CloseCode::ProtocolError, e.to_string()),
    };
    let orderly = match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            let code = close.error_code.into_inner();
            code == u64::from(CloseCode::Shutdown.as_u32())
                || code == u64::from(CloseCode::Duplicate.as_u32())
        }
        Some(quinn::ConnectionError::LocallyClosed) => true,
        _ => false,
    };
    match &result {
        Err(ProtocolError::Duplicate) | Ok(()) => tracing::debug!(%peer, "session ended: {reason}"),
        Err(_) if orderly => tracing::info!(%peer, "{peer} disconnected"),
        Err(e) => tracing::warn!(%peer, "session with {peer} ended: {e}"),
    }
    conn.close(code.as_u32().into(), reason.as_bytes());
    inner.unregister(&peer, conn.stable_id());
}

async fn session(
    inner: &Arc<Inner>,
    conn: &quinn::Connection,
    peer: DeviceId,
    dialed_by_us: bool,
) -> Result<(), ProtocolError> {
    let (send, recv) = if dialed_by_us { conn.open_bi().await? } else { conn.accept_bi().await? };
    let (mut tx, mut rx) = (FramedSend::new(send), FramedRecv::new(recv));
    tx.send(&Message::Hello(hello(inner))).await?;
    let theirs = match tokio::time::timeout(HELLO_TIMEOUT, rx.recv()).await {
        Ok(Ok(Some(Message::Hello(h)))) => h,
        Ok(Ok(other)) => {
            return Err(ProtocolError::Violation(format!("expected Hello, got {other:?}")));
        }
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ProtocolError::Violation("no Hello within 10 s".into())),
    };
    if theirs.protocol_version < 1 {
        let close = Close { code: CloseCode::VersionMismatch, reason: "version 1 required".into() };
        tx.send(&Message::Close(close)).await?;
        return Err(ProtocolError::Violation(format!(
            "peer speaks protocol {}",
            theirs.protocol_version
        )));
    }
    let dialer = if dialed_by_us { inner.device } else { peer };
    if !inner.register(peer, conn.clone(), dialer) {
        return Err(ProtocolError::Duplicate);
    }
    tracing::info!(%peer, "connected to {} ({}) at {}", theirs.device_name, theirs.client_version, conn.remote_address());
    tx.send(&Message::ClusterConfig(cluster_config(inner, &peer)?)).await?;
    let their_config = match rx.recv().await? {
        Some(Message::ClusterConfig(c)) => c,
        other => {
            return Err(ProtocolError::Violation(format!("expected ClusterConfig, got {other:?}")));
        }
    };
    let shared = shared_folders(inner, &peer, &their_config);
    inner.set_peer_state(
        &peer,
        PeerState { shared: shared.keys().cloned().collect(), received_index: Vec::new() },
    );
    let server = tokio::spawn(serve_requests(inner.clone(), conn.clone(), peer));
    let sender = tokio::spawn(send_index(inner.clone(), tx, shared.clone()));
    let result = receive(inner, &mut rx, peer, &shared).await;
    server.abort();
    sender.abort();
    result
}

fn hello(inner: &Inner) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        device_name: inner.device_name(),
        client_version: format!("tandem {}", env!("CARGO_PKG_VERSION")),
    }
}

/// The folders we share with `peer`, with what we hold of its records.
fn cluster_config(inner: &Inner, peer: &DeviceId) -> Result<ClusterConfig, ProtocolError> {
    let mut folders = Vec::new();
    for folder in inner.folders_shared_with(peer) {
        let meta = inner
            .index
            .ensure_folder(folder.as_str())
            .map_err(|e| ProtocolError::Store(e.to_string()))?;
        let seen = inner
            .index
            .peer_meta(folder.as_str(), &peer.to_string())
            .map_err(|e| ProtocolError::Store(e.to_string()))?;
        folders.push(FolderShare {
            id: folder,
            index_id: meta.index_id,
            seen_index_id: seen.index_id,
            seen_sequence: seen.max_sequence,
        });
    }
    Ok(ClusterConfig { folders })
}

/// Folders both sides share: ours with the peer ∩ theirs, with the peer's view of ours.
fn shared_folders(
    inner: &Inner,
    peer: &DeviceId,
    theirs: &ClusterConfig,
) -> BTreeMap<FolderId, FolderShare> {
    let ours = inner.folders_shared_with(peer);
    theirs
        .folders
        .iter()
        .filter(|f| ours.contains(&f.id))
        .map(|f| (f.id.clone(), f.clone()))
        .collect()
}

/// Sends our records: the initial exchange, then updates whenever the local index changes.
async fn send_index(
    inner: Arc<Inner>,
    mut tx: FramedSend,
    shared: BTreeMap<FolderId, FolderShare>,
) -> Result<(), ProtocolError> {
    let mut changes = inner.local_changes.subscribe();
    let mut sent: BTreeMap<FolderId, u64> = BTreeMap::new();
    for (folder, theirs) in &shared {
        let meta = inner
            .index
            .ensure_folder(folder.as_str())
            .map_err(|e| ProtocolError::Store(e.to_string()))?;
        let resume = theirs.seen_index_id == meta.index_id && theirs.seen_sequence > 0;
        let since = if resume { theirs.seen_sequence } else { 0 };
        let last = send_since(&inner, &mut tx, folder, since, !resume, true).await?;
        sent.insert(folder.clone(), last.max(since));
    }
    // the first Ping marks the end of the initial exchange (PROTOCOL.md §9)
    if inner.faults.first_ping_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.faults.first_ping_delay_ms)).await;
    }
    tx.send(&Message::Ping).await?;
    loop {
        changes.borrow_and_update();
        for folder in shared.keys() {
            let since = sent.get(folder).copied().unwrap_or(0);
            let last = send_since(&inner, &mut tx, folder, since, false, false).await?;
            sent.insert(folder.clone(), last.max(since));
        }
        if changes.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Records read from the index per page while sending (bounds the memory of a full
/// exchange of a big folder).
const SEND_PAGE: usize = 8192;

/// Sends records changed after `since` in batches, a page of the index at a time; returns
/// the highest sequence sent.
async fn send_since(
    inner: &Inner,
    tx: &mut FramedSend,
    folder: &FolderId,
    since: u64,
    first: bool,
    initial: bool,
) -> Result<u64, ProtocolError> {
    let store = |e: crate::store::StoreError| ProtocolError::Store(e.to_string());
    let (mut last, mut first) = (since, first);
    loop {
        let page = inner.index.changes_since(folder.as_str(), last, SEND_PAGE).map_err(store)?;
        let full = page.len() >= SEND_PAGE;
        let page_last = page.iter().map(|l| l.record.sequence).max().unwrap_or(last);
        let records = inner.announced(folder, page).map_err(store)?;
        if records.is_empty() && first && !full {
            let batch = IndexBatch { folder: folder.clone(), records: Vec::new(), first };
            tx.send(&Message::Index(batch)).await?;
            return Ok(page_last.max(last));
        }
        for chunk in batches(&records) {
            let records: Vec<_> = chunk.iter().map(|l| l.record.clone()).collect();
            let batch = IndexBatch { folder: folder.clone(), records, first };
            let message = if initial { Message::Index(batch) } else { Message::IndexUpdate(batch) };
            tx.send(&message).await?;
            first = false;
        }
        last = page_last.max(last);
        if !full {
            return Ok(last);
        }
    }
}

/// Splits records into batches of at most `MAX_INDEX_BATCH` records and about a quarter of
/// the frame limit (a chunk costs at most ~45 encoded bytes, a record's rest ~300).
fn batches(records: &[crate::store::LocalRecord]) -> Vec<&[crate::store::LocalRecord]> {
    const BUDGET: usize = tandem_proto::wire::MAX_FRAME / 4;
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (idx, local) in records.iter().enumerate() {
        let cost = 300 + local.record.path.as_str().len() + 45 * local.record.chunks.len();
        if idx > start && (idx - start >= MAX_INDEX_BATCH || size + cost > BUDGET) {
            out.push(&records[start..idx]);
            (start, size) = (idx, 0);
        }
        size += cost;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

/// Receives the peer's records until the control stream ends.
async fn receive(
    inner: &Arc<Inner>,
    rx: &mut FramedRecv,
    peer: DeviceId,
    shared: &BTreeMap<FolderId, FolderShare>,
) -> Result<(), ProtocolError> {
    let peer_key = peer.to_string();
    let mut initial_done = false;
    loop {
        let batch = match rx.recv().await? {
            Some(Message::Index(b)) => b,
            Some(Message::IndexUpdate(b)) if b.first => {
                return Err(ProtocolError::Violation("IndexUpdate with first set".into()));
            }
            Some(Message::IndexUpdate(b)) => b,
            Some(Message::Ping) => {
                if !initial_done {
                    initial_done = true;
                    for folder in shared.keys() {
                        inner.mark_index_received(&peer, folder);
                    }
                }
                continue;
            }
            Some(Message::Close(c)) => return Err(ProtocolError::Closed(c.reason)),
            None => return Ok(()),
            Some(other) => {
                return Err(ProtocolError::Violation(format!(
                    "unexpected {} on the control stream",
                    kind(&other)
                )));
            }
        };
        let Some(share) = shared.get(&batch.folder) else {
            return Err(ProtocolError::Violation(format!(
                "index for folder {} which is not shared with it",
                batch.folder
            )));
        };
        if batch.records.len() > MAX_INDEX_BATCH {
            return Err(ProtocolError::Violation(format!(
                "index batch of {} records",
                batch.records.len()
            )));
        }
        for record in &batch.records {
            record.check_chunks().map_err(|e| {
                ProtocolError::Violation(format!(
                    "record {} in folder {}: {e}",
                    record.path, batch.folder
                ))
            })?;
        }
        store_batch(inner, &peer_key, share.index_id, &batch)?;
        let paths: Vec<_> = batch.records.iter().map(|r| r.path.clone()).collect();
        inner.peer_news(&batch.folder, &paths, batch.first);
    }
}

fn store_batch(
    inner: &Inner,
    peer: &str,
    index_id: u64,
    batch: &IndexBatch,
) -> Result<(), ProtocolError> {
    let store = |e: crate::store::StoreError| ProtocolError::Store(e.to_string());
    let mut write = inner.index.write().map_err(store)?;
    write
        .put_peer_records(batch.folder.as_str(), peer, index_id, &batch.records, batch.first)
        .map_err(store)?;
    write.commit().map_err(store)
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "Hello",
        Message::ClusterConfig(_) => "ClusterConfig",
        Message::Index(_) => "Index",
        Message::IndexUpdate(_) => "IndexUpdate",
        Message::Request(_) => "Request",
        Message::Response(_) => "Response",
        Message::Ping => "Ping",
        Message::Close(_) => "Close",
    }
}

/// Answers the peer's requests, at most `MAX_IN_FLIGHT` at once. Requests an honest peer
/// never sends (too many at once, over the size limit) are refused and logged, once per
/// connection and kind so a flood cannot flood the log.
async fn serve_requests(inner: Arc<Inner>, conn: quinn::Connection, peer: DeviceId) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let logged = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (inner, slots, logged) = (inner.clone(), slots.clone(), logged.clone());
        tokio::spawn(async move {
            let permit = slots.try_acquire();
            let (mut tx, mut rx) = (FramedSend::new(send), FramedRecv::new(recv));
            let Ok(Some(Message::Request(request))) = rx.recv().await else { return };
            let body = match permit {
                Err(_) => {
                    if !logged[0].swap(true, Ordering::Relaxed) {
                        tracing::warn!(%peer, "{peer} has more than {MAX_IN_FLIGHT} requests in flight; answering Busy");
                    }
                    ResponseBody::Error(tandem_proto::wire::ErrorCode::Busy)
                }
                Ok(_) if request.size > MAX_REQUEST => {
                    if !logged[1].swap(true, Ordering::Relaxed) {
                        tracing::warn!(%peer, "refused a request from {peer} for {} bytes (the limit is {MAX_REQUEST})", request.size);
                    }
                    ResponseBody::Error(tandem_proto::wire::ErrorCode::Invalid)
                }
                Ok(_) => answer(&inner, &peer, &request).await,
            };
            let _ = tx.send(&Message::Response(Response { id: request.id, body })).await;
            let _ = tx.finish();
        });
    }
}

async fn answer(
    inner: &Arc<Inner>,
    peer: &DeviceId,
    request: &tandem_proto::wire::Request,
) -> ResponseBody {
    let Some(root) = inner.folder_root_shared_with(&request.folder, peer) else {
        return ResponseBody::Error(tandem_proto::wire::ErrorCode::NotShared);
    };
    let request = request.clone();
    if inner.faults.response_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.faults.response_delay_ms)).await;
    }
    let read =
        tokio::task::spawn_blocking(move || serve_read(&FolderFs::new(root), &request)).await;
    match read {
        Ok(Ok(mut data)) if inner.faults.corrupt_responses => {
            if let Some(first) = data.first_mut() {
                *first ^= 0xFF;
            }
            ResponseBody::Data(data)
        }
        Ok(Ok(data)) => ResponseBody::Data(data),
        Ok(Err(code)) => ResponseBody::Error(code),
        Err(_) => ResponseBody::Error(tandem_proto::wire::ErrorCode::Io),
    }
}
