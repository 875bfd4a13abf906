//! One connection with one peer: the control stream (Hello, ClusterConfig, index exchange,
//! then index updates as local changes happen) and the request streams the peer opens.
//!
//! The protocol is `proto/PROTOCOL.md`. Anything the peer sends that breaks it — a frame
//! error, records for a folder not shared with it, an unexpected message — closes the
//! connection with a logged reason; nothing from the peer is trusted beyond what `proto`
//! validated while decoding.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tandem_proto::model::{DeviceId, EntryKind, FileRecord, FolderId, RelPath};
use tandem_proto::wire::{
    ChunkEdit, Close, CloseCode, ClusterConfig, EDITS_VERSION, EditBatch, EditError, EditedRecord,
    ErrorCode, FolderShare, Hello, IndexBatch, MAX_EDITED_CHUNKS, MAX_IN_FLIGHT, MAX_INDEX_BATCH,
    MAX_REQUEST, Message, PROTOCOL_VERSION, Request, Resend, Response, ResponseBody,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::net::conn::{FramedRecv, FramedSend, StreamError};
use crate::sync::puller::serve_read;
use crate::sync::writer::FolderFs;
use crate::sync::{Inner, PeerState};

/// How long the peer has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Chunk lists shorter than this always travel in full: telling one as an edit needs a
/// lookup of our copy of the peer's record, which costs more than a short list saves.
const EDIT_MIN_CHUNKS: usize = 16;

/// Most `Resend` requests from the peer waiting for an answer; an honest peer sends one
/// now and then, merging what it asks for (PROTOCOL.md §9.9), so more is a flood and closes
/// the connection.
const MAX_RESENDS_WAITING: usize = 64;

/// Most records one session may be waiting for after `Resend`s: an honest peer's edits miss
/// their base only for records this device changed meanwhile, so more is a peer inventing
/// edits, and closes the connection instead of growing the list.
const MAX_PENDING: usize = 16 * MAX_INDEX_BATCH;

/// What the receiving half of a session needs the sending half (which owns the control
/// stream's send side) to send.
enum Outgoing {
    /// The peer asked for these records of ours in full.
    Answer(FolderId, Vec<RelPath>),
    /// Ask the peer for these records in full: their edits did not fit our records.
    Ask(FolderId, Vec<RelPath>),
}

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
        Ok(()) | Err(ProtocolError::Closed(_)) => (CloseCode::Shutdown, "shutdown".to_string()),
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
        Err(ProtocolError::Closed(why)) => {
            tracing::info!(%peer, "{peer} closed the connection: {why}")
        }
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
    // PROTOCOL.md §9.2: the connection speaks the lower of the two versions
    let version = theirs.protocol_version.min(PROTOCOL_VERSION);
    if version < 1 {
        let close = Close { code: CloseCode::VersionMismatch, reason: "version 1 required".into() };
        tx.send(&Message::Close(close)).await?;
        return Err(ProtocolError::Violation(format!(
            "peer speaks protocol {}",
            theirs.protocol_version
        )));
    }
    let dialer = if dialed_by_us { inner.device } else { peer };
    if !inner.register(peer, conn.clone(), dialer, version) {
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
    let edits = version >= EDITS_VERSION;
    let server = tokio::spawn(serve_requests(inner.clone(), conn.clone(), peer, edits));
    // answers are bounded (a flood of Resend closes the connection); our own asks are at
    // most one per record the peer sent, each path pending at most once
    let (answer_tx, answer_rx) = mpsc::channel(MAX_RESENDS_WAITING);
    let (ask_tx, ask_rx) = mpsc::unbounded_channel();
    let sending = Sending { peer: peer.to_string(), edits, answers: answer_rx, asks: ask_rx };
    let sender = tokio::spawn(send_index(inner.clone(), tx, shared.clone(), sending));
    let outgoing = Channels { answers: answer_tx, asks: ask_tx };
    let result = receive(inner, &mut rx, peer, &shared, edits, outgoing).await;
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

/// The sending half's view of the connection.
struct Sending {
    /// The peer's device id as the index keys it.
    peer: String,
    /// Protocol v2: chunk lists may be sent as edits, and `Resend` is understood.
    edits: bool,
    /// Records the peer asked for in full.
    answers: mpsc::Receiver<Outgoing>,
    /// Records we ask the peer for in full.
    asks: mpsc::UnboundedReceiver<Outgoing>,
}

/// The receiving half's way to the sending half.
struct Channels {
    answers: mpsc::Sender<Outgoing>,
    asks: mpsc::UnboundedSender<Outgoing>,
}

/// Sends our records: the initial exchange, then updates whenever the local index changes,
/// and the `Resend`s both ways.
async fn send_index(
    inner: Arc<Inner>,
    mut tx: FramedSend,
    shared: BTreeMap<FolderId, FolderShare>,
    mut sending: Sending,
) -> Result<(), ProtocolError> {
    let mut changes = inner.local_changes.subscribe();
    let mut closing = inner.closing.subscribe();
    let mut sent: BTreeMap<FolderId, u64> = BTreeMap::new();
    for (folder, theirs) in &shared {
        let meta = inner
            .index
            .ensure_folder(folder.as_str())
            .map_err(|e| ProtocolError::Store(e.to_string()))?;
        let resume = theirs.seen_index_id == meta.index_id && theirs.seen_sequence > 0;
        let since = if resume { theirs.seen_sequence } else { 0 };
        let to = Audience { sending: &sending, share: theirs };
        let last = send_since(&inner, &mut tx, folder, since, !resume, true, &to).await?;
        sent.insert(folder.clone(), last.max(since));
    }
    // the first Ping marks the end of the initial exchange (PROTOCOL.md §9)
    if inner.faults.first_ping_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.faults.first_ping_delay_ms)).await;
    }
    tx.send(&Message::Ping).await?;
    loop {
        changes.borrow_and_update();
        send_updates(&inner, &mut tx, &shared, &mut sent, &sending).await?;
        if *closing.borrow_and_update() {
            // everything up to now is sent (above): say goodbye; the peer closes the
            // connection once it has read it all (PROTOCOL.md §9.7)
            let close = Close { code: CloseCode::Shutdown, reason: "shutdown".into() };
            tx.send(&Message::Close(close)).await?;
            return Ok(());
        }
        let outgoing = tokio::select! {
            changed = changes.changed() => match changed {
                Ok(()) if inner.faults.update_delay_ms > 0 => {
                    let delay = Duration::from_millis(inner.faults.update_delay_ms);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        _ = closing.changed() => continue,
                    }
                }
                Ok(()) => continue,
                Err(_) => return Ok(()),
            },
            _ = closing.changed() => continue,
            Some(out) = sending.answers.recv() => out,
            Some(out) = sending.asks.recv() => out,
        };
        match outgoing {
            Outgoing::Answer(folder, paths) => {
                // everything up to now first: an answer may then carry only records the
                // peer's resume point can pass (PROTOCOL.md §9.9)
                send_updates(&inner, &mut tx, &shared, &mut sent, &sending).await?;
                let upto = sent.get(&folder).copied().unwrap_or(0);
                send_again(&inner, &mut tx, &folder, &paths, upto).await?;
            }
            Outgoing::Ask(folder, paths) => {
                // every ask queued meanwhile goes out merged, in as few Resends as fit
                let mut asks: BTreeMap<FolderId, std::collections::BTreeSet<RelPath>> =
                    BTreeMap::new();
                asks.entry(folder).or_default().extend(paths);
                while let Ok(Outgoing::Ask(folder, paths)) = sending.asks.try_recv() {
                    asks.entry(folder).or_default().extend(paths);
                }
                for (folder, paths) in asks {
                    let paths: Vec<RelPath> = paths.into_iter().collect();
                    for paths in paths.chunks(MAX_INDEX_BATCH) {
                        let resend = Resend { folder: folder.clone(), paths: paths.to_vec() };
                        tx.send(&Message::Resend(resend)).await?;
                    }
                }
            }
        }
    }
}

/// Sends every folder's records committed since what was sent (`sent` moves on).
async fn send_updates(
    inner: &Inner,
    tx: &mut FramedSend,
    shared: &BTreeMap<FolderId, FolderShare>,
    sent: &mut BTreeMap<FolderId, u64>,
    sending: &Sending,
) -> Result<(), ProtocolError> {
    for (folder, theirs) in shared {
        let since = sent.get(folder).copied().unwrap_or(0);
        let to = Audience { sending, share: theirs };
        let last = send_since(inner, tx, folder, since, false, false, &to).await?;
        sent.insert(folder.clone(), last.max(since));
    }
    Ok(())
}

/// Answers a `Resend`: our current records of `paths`, chunk lists in full (PROTOCOL.md
/// §9.9), those with a sequence up to `upto` (what was sent): a newer one is on its way as
/// an update, and answering with it could move the peer's resume point past records not
/// sent yet. A path we hold no announced record of is left out.
async fn send_again(
    inner: &Inner,
    tx: &mut FramedSend,
    folder: &FolderId,
    paths: &[RelPath],
    upto: u64,
) -> Result<(), ProtocolError> {
    let store = |e: crate::store::StoreError| ProtocolError::Store(e.to_string());
    let mut records = Vec::new();
    {
        let snapshot = inner.index.snapshot().map_err(store)?;
        let paths: std::collections::BTreeSet<_> = paths.iter().collect();
        for path in paths {
            records.extend(snapshot.record(folder.as_str(), path).map_err(store)?);
        }
    }
    records.retain(|l| l.record.sequence <= upto);
    records.sort_by_key(|l| l.record.sequence);
    let records = inner.announced(folder, records).map_err(store)?;
    for chunk in batches(&records) {
        let records = chunk.iter().map(|l| l.record.clone()).collect();
        let batch = IndexBatch { folder: folder.clone(), records, first: false };
        tx.send(&Message::IndexUpdate(batch)).await?;
    }
    Ok(())
}

/// Who a batch is for: what decides whether chunk lists may go as edits.
struct Audience<'a> {
    sending: &'a Sending,
    /// The peer's `FolderShare`: its current index id for the folder.
    share: &'a FolderShare,
}

/// The records of a batch with chunk lists told as edits where that is much shorter, or
/// `None` when no record gains from it (the batch goes as v1 `Index`/`IndexUpdate`).
///
/// The base of an edit is our copy of the peer's own record of the path, which the peer
/// announced with that sequence; it is used only when our copy came from the peer's current
/// index (else its sequences name other records). The peer rebuilds the list from its
/// record, or asks for it in full if that record changed meanwhile.
fn with_edits(
    inner: &Inner,
    folder: &FolderId,
    to: &Audience<'_>,
    records: &[crate::store::LocalRecord],
) -> Result<Option<Vec<EditedRecord>>, crate::store::StoreError> {
    let long = |r: &FileRecord| {
        r.kind == EntryKind::File && !r.deleted && r.chunks.len() >= EDIT_MIN_CHUNKS
    };
    if !to.sending.edits || !records.iter().any(|l| long(&l.record)) {
        return Ok(None);
    }
    if inner.index.peer_meta(folder.as_str(), &to.sending.peer)?.index_id != to.share.index_id {
        return Ok(None);
    }
    let mut snapshot = inner.index.snapshot()?;
    let mut out = Vec::with_capacity(records.len());
    let mut any = false;
    for local in records {
        let record = &local.record;
        let mut edit = None;
        if long(record) {
            let base = snapshot.peer_record(folder.as_str(), &to.sending.peer, &record.path)?;
            if let Some(base) = base.filter(|b| b.kind == EntryKind::File && !b.deleted) {
                let e = ChunkEdit::between(base.sequence, base.hash, &base.chunks, &record.chunks);
                if e.added() + e.ops.len() <= record.chunks.len() / 2 {
                    edit = Some(e);
                }
            }
        }
        any |= edit.is_some();
        let record = if edit.is_some() {
            FileRecord { chunks: Vec::new(), ..record.clone() }
        } else {
            record.clone()
        };
        out.push(EditedRecord { record, edit });
    }
    Ok(any.then_some(out))
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
    to: &Audience<'_>,
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
            let edited =
                if first { None } else { with_edits(inner, folder, to, chunk).map_err(store)? };
            let message = if let Some(records) = edited {
                Message::IndexEdits(EditBatch { folder: folder.clone(), records })
            } else {
                let records: Vec<_> = chunk.iter().map(|l| l.record.clone()).collect();
                let batch = IndexBatch { folder: folder.clone(), records, first };
                if initial { Message::Index(batch) } else { Message::IndexUpdate(batch) }
            };
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
    edits: bool,
    outgoing: Channels,
) -> Result<(), ProtocolError> {
    let peer_key = peer.to_string();
    let mut initial_done = false;
    // per folder, the records asked for again and the sequence each came with
    let mut pending: BTreeMap<FolderId, BTreeMap<RelPath, u64>> = BTreeMap::new();
    let mut counted = 0;
    loop {
        let message = rx.recv().await?;
        inner.stats.index.fetch_add(rx.received() - counted, Ordering::Relaxed);
        counted = rx.received();
        let batch = match message {
            Some(Message::Index(b)) => b,
            Some(Message::IndexEdits(b)) if edits => {
                let (batch, unresolved) = rebuild(inner, shared, b)?;
                if !unresolved.is_empty() {
                    let waiting = pending.entry(batch.folder.clone()).or_default();
                    let mut ask = Vec::new();
                    for (path, sequence) in unresolved {
                        match waiting.get_mut(&path) {
                            // asked for already: the answer is on its way
                            Some(seq) => *seq = (*seq).min(sequence),
                            None => {
                                waiting.insert(path.clone(), sequence);
                                ask.push(path);
                            }
                        }
                    }
                    if pending.values().map(BTreeMap::len).sum::<usize>() > MAX_PENDING {
                        return Err(ProtocolError::Violation(format!(
                            "more than {MAX_PENDING} edits whose base this device does not hold"
                        )));
                    }
                    if initial_done {
                        // not in sync with this peer until the answers are in
                        inner.unmark_index_received(&peer, &batch.folder);
                    }
                    tracing::info!(%peer, "{} records of folder {} changed here since {peer} based edits on them; asking for them in full", ask.len(), batch.folder);
                    // the sending half outlives this loop unless the session is ending
                    let _ = outgoing.asks.send(Outgoing::Ask(batch.folder.clone(), ask));
                }
                batch
            }
            Some(Message::Resend(r)) if edits => {
                if !shared.contains_key(&r.folder) || r.paths.len() > MAX_INDEX_BATCH {
                    return Err(ProtocolError::Violation(format!(
                        "Resend of {} paths in folder {}",
                        r.paths.len(),
                        r.folder
                    )));
                }
                match outgoing.answers.try_send(Outgoing::Answer(r.folder, r.paths)) {
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return Err(ProtocolError::Violation(format!(
                            "more than {MAX_RESENDS_WAITING} Resend requests waiting"
                        )));
                    }
                    // the sending half has said Close (or failed): nothing more is answered
                    Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
                continue;
            }
            Some(Message::IndexUpdate(b)) if b.first => {
                return Err(ProtocolError::Violation("IndexUpdate with first set".into()));
            }
            Some(Message::IndexUpdate(b)) => b,
            Some(Message::Ping) => {
                if !initial_done {
                    initial_done = true;
                    // a folder with records asked for again is received when they are in
                    for folder in shared.keys() {
                        if pending.get(folder).is_none_or(BTreeMap::is_empty) {
                            inner.mark_index_received(&peer, folder);
                        }
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
        // a record that arrives whole (or rebuilt) ends the wait for it; what still waits
        // holds the resume point below its sequence, so a reconnect sends it again
        let waiting = pending.entry(batch.folder.clone()).or_default();
        let was_waiting = !waiting.is_empty();
        if batch.first {
            waiting.clear();
        }
        for record in &batch.records {
            waiting.remove(&record.path);
        }
        let cap = waiting.values().min().map(|seq| seq.saturating_sub(1));
        store_batch(inner, &peer_key, share.index_id, &batch, cap)?;
        if was_waiting && waiting.is_empty() && initial_done {
            inner.mark_index_received(&peer, &batch.folder);
        }
        let paths: Vec<_> = batch.records.iter().map(|r| r.path.clone()).collect();
        inner.peer_news(&batch.folder, &paths, batch.first);
    }
}

/// Rebuilds the chunk lists of an `IndexEdits` batch from our own records (PROTOCOL.md
/// §5.8): the batch of the records whose base we hold, and the paths (with sequences) whose
/// base changed since we announced it, to be asked for again.
fn rebuild(
    inner: &Inner,
    shared: &BTreeMap<FolderId, FolderShare>,
    batch: EditBatch,
) -> Result<(IndexBatch, Vec<(RelPath, u64)>), ProtocolError> {
    let violation =
        |what: String| ProtocolError::Violation(format!("folder {}: {what}", batch.folder));
    if !shared.contains_key(&batch.folder) {
        return Err(violation("edits for a folder not shared with it".into()));
    }
    if batch.records.len() > MAX_INDEX_BATCH {
        return Err(violation(format!("edit batch of {} records", batch.records.len())));
    }
    let store = |e: crate::store::StoreError| ProtocolError::Store(e.to_string());
    let snapshot = inner.index.snapshot().map_err(store)?;
    let mut records = Vec::with_capacity(batch.records.len());
    let mut unresolved = Vec::new();
    // the lists of the whole batch together, not each record's, are bounded
    let mut budget = MAX_EDITED_CHUNKS;
    for EditedRecord { mut record, edit } in batch.records {
        let Some(edit) = edit else {
            records.push(record);
            continue;
        };
        if !record.chunks.is_empty() {
            return Err(violation(format!("record {} has both chunks and an edit", record.path)));
        }
        let base = snapshot.record(batch.folder.as_str(), &record.path).map_err(store)?;
        let base = base.map(|l| l.record).filter(|b| {
            b.sequence == edit.base_sequence
                && b.hash == edit.base_hash
                && b.kind == EntryKind::File
                && !b.deleted
        });
        match base {
            Some(base) => {
                let bad = |e: EditError| violation(format!("record {}: {e}", record.path));
                budget -= edit.built_len(base.chunks.len(), budget).map_err(bad)?;
                record.chunks = edit.apply(&base.chunks).map_err(bad)?;
                records.push(record);
            }
            None => unresolved.push((record.path, record.sequence)),
        }
    }
    Ok((IndexBatch { folder: batch.folder, records, first: false }, unresolved))
}

fn store_batch(
    inner: &Inner,
    peer: &str,
    index_id: u64,
    batch: &IndexBatch,
    cap: Option<u64>,
) -> Result<(), ProtocolError> {
    let store = |e: crate::store::StoreError| ProtocolError::Store(e.to_string());
    let mut write = inner.index.write().map_err(store)?;
    let folder = batch.folder.as_str();
    write.put_peer_records(folder, peer, index_id, &batch.records, batch.first).map_err(store)?;
    if let Some(cap) = cap {
        write.cap_peer_sequence(folder, peer, cap).map_err(store)?;
    }
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
        Message::IndexEdits(_) => "IndexEdits",
        Message::Resend(_) => "Resend",
        Message::DeltaRequest(_) => "DeltaRequest",
    }
}

/// Answers the peer's requests, at most `MAX_IN_FLIGHT` at once. Requests an honest peer
/// never sends (too many at once, over the size limit) are refused and logged, once per
/// connection and kind so a flood cannot flood the log.
async fn serve_requests(inner: Arc<Inner>, conn: quinn::Connection, peer: DeviceId, v2: bool) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let logged = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
    let reads = Arc::new(SmallReads::default());
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (inner, slots, logged) = (inner.clone(), slots.clone(), logged.clone());
        let reads = reads.clone();
        tokio::spawn(async move {
            let permit = slots.try_acquire();
            let (mut tx, mut rx) = (FramedSend::new(send), FramedRecv::new(recv));
            let (request, delta) = match rx.recv().await {
                Ok(Some(Message::Request(request))) => (request, None),
                Ok(Some(Message::DeltaRequest(d))) if v2 => (d.request.clone(), Some(d)),
                _ => return,
            };
            let body = match permit {
                Err(_) => {
                    if !logged[0].swap(true, Ordering::Relaxed) {
                        tracing::warn!(%peer, "{peer} has more than {MAX_IN_FLIGHT} requests in flight; answering Busy");
                    }
                    ResponseBody::Error(ErrorCode::Busy)
                }
                Ok(_) if request.size > MAX_REQUEST => {
                    if !logged[1].swap(true, Ordering::Relaxed) {
                        tracing::warn!(%peer, "refused a request from {peer} for {} bytes (the limit is {MAX_REQUEST})", request.size);
                    }
                    ResponseBody::Error(ErrorCode::Invalid)
                }
                Ok(_) => answer(&inner, &peer, &request, delta, &reads).await,
            };
            let _ = tx.send(&Message::Response(Response { id: request.id, body })).await;
            let _ = tx.finish();
        });
    }
}

/// Reads the bytes of `request` (or, for a delta request, its chunk as a delta against the
/// pieces the peer has) on the blocking pool.
async fn answer(
    inner: &Arc<Inner>,
    peer: &DeviceId,
    request: &Request,
    delta: Option<tandem_proto::wire::DeltaRequest>,
    reads: &Arc<SmallReads>,
) -> ResponseBody {
    let Some(root) = inner.folder_root_shared_with(&request.folder, peer) else {
        return ResponseBody::Error(ErrorCode::NotShared);
    };
    let request = request.clone();
    if inner.faults.response_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.faults.response_delay_ms)).await;
    }
    if let Some(delta) = delta {
        let read = tokio::task::spawn_blocking(move || {
            crate::sync::delta::answer(&FolderFs::new(root), &delta)
        })
        .await;
        return match read {
            Ok(ResponseBody::Delta(mut ops)) if inner.faults.corrupt_responses => {
                let first = ops.iter_mut().find_map(|op| match op {
                    tandem_proto::wire::DeltaOp::Bytes(bytes) => bytes.first_mut(),
                    tandem_proto::wire::DeltaOp::Have(_) => None,
                });
                if let Some(first) = first {
                    *first ^= 0xFF;
                }
                ResponseBody::Delta(ops)
            }
            Ok(body) => body,
            Err(_) => ResponseBody::Error(ErrorCode::Io),
        };
    }
    let read = if request.size <= SMALL_READ {
        reads.read(root, request).await
    } else {
        tokio::task::spawn_blocking(move || serve_read(&FolderFs::new(root), &request))
            .await
            .unwrap_or(Err(ErrorCode::Io))
    };
    match read {
        Ok(mut data) if inner.faults.corrupt_responses => {
            if let Some(first) = data.first_mut() {
                *first ^= 0xFF;
            }
            ResponseBody::Data(data)
        }
        Ok(data) => ResponseBody::Data(data),
        Err(code) => ResponseBody::Error(code),
    }
}

/// Requests of at most this many bytes are read by [`SmallReads`].
const SMALL_READ: u32 = 64 << 10;

/// The small reads a connection's requests need, served in arrival order by one blocking
/// task at a time, which takes every read queued meanwhile before it ends.
///
/// Why: a blocking task per request cost a thread wake-up and a context switch per small
/// file, more than the read of a few KiB from the page cache; a peer pulling many small
/// files sends them 64 at a time, so they queue and one wake-up serves many. Larger reads
/// keep a blocking task each, so they proceed in parallel.
#[derive(Default)]
struct SmallReads {
    queue: Mutex<VecDeque<ReadJob>>,
    /// A blocking task is draining `queue`.
    draining: AtomicBool,
}

struct ReadJob {
    root: PathBuf,
    request: Request,
    reply: oneshot::Sender<Result<Vec<u8>, ErrorCode>>,
}

impl SmallReads {
    async fn read(self: &Arc<Self>, root: PathBuf, request: Request) -> Result<Vec<u8>, ErrorCode> {
        let (reply, answer) = oneshot::channel();
        self.jobs().push_back(ReadJob { root, request, reply });
        if !self.draining.swap(true, Ordering::AcqRel) {
            let reads = self.clone();
            tokio::task::spawn_blocking(move || reads.drain());
        }
        answer.await.unwrap_or(Err(ErrorCode::Io))
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, VecDeque<ReadJob>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn drain(&self) {
        let _unwind = DrainGuard(self);
        loop {
            let job = self.jobs().pop_front();
            if let Some(job) = job {
                let _ = job.reply.send(serve_read(&FolderFs::new(job.root), &job.request));
                continue;
            }
            self.draining.store(false, Ordering::Release);
            // a read queued between the pop and the store left the draining to us: take it
            // back, unless the queue is empty or a new drainer has started
            if self.jobs().is_empty() || self.draining.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

/// Should a read panic, the queued reads fail (their senders are dropped) instead of
/// waiting for a drainer that is gone, and the next read starts a new one.
struct DrainGuard<'a>(&'a SmallReads);

impl Drop for DrainGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.jobs().clear();
            self.0.draining.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_proto::model::{Hash, RelPath};

    #[test]
    fn many_concurrent_small_reads_are_all_answered_with_their_own_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let request = |i: u64| {
            let data = format!("file number {i}");
            let name = format!("f{i}");
            std::fs::write(root.join(&name), &data).unwrap();
            Request {
                id: i,
                folder: FolderId::new("f").unwrap(),
                path: RelPath::new(name).unwrap(),
                offset: 0,
                size: data.len() as u32,
                hash: Hash::of(data.as_bytes()),
            }
        };
        let requests: Vec<Request> = (0..500).map(request).collect();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let reads = Arc::new(SmallReads::default());
        runtime.block_on(async {
            for round in 0..4 {
                let tasks: Vec<_> = requests
                    .iter()
                    .cloned()
                    .map(|r| {
                        let (reads, root) = (reads.clone(), root.clone());
                        tokio::spawn(async move { (r.id, reads.read(root, r).await) })
                    })
                    .collect();
                for task in tasks {
                    let wait = tokio::time::timeout(Duration::from_secs(30), task);
                    let (id, data) = wait.await.expect("a read was never answered").unwrap();
                    assert_eq!(data.unwrap(), format!("file number {id}").into_bytes(), "{round}");
                }
            }
            // a file that is gone is refused, and the queue goes on
            let mut gone = requests[0].clone();
            gone.path = RelPath::new("missing".to_string()).unwrap();
            assert_eq!(reads.read(root.clone(), gone).await, Err(ErrorCode::NoSuchFile));
            assert!(reads.read(root.clone(), requests[1].clone()).await.is_ok());
        });
    }
}
