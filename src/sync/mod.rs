//! Sync: the per-folder runner that scans, asks `proto::rules` for a plan and carries it
//! out, and the shared state the peer sessions and runners meet in.
//!
//! The runner never decides anything itself: it builds the global state from the local
//! index and every peer's announced records, takes the planner's ordered steps, executes
//! each (`writer`, `puller`) and commits the step's records only after the bytes are on
//! disk. A step that finds the disk different from the index stops the round and rescans,
//! so a local change is never overwritten unseen.

pub mod executor;
pub mod puller;
pub mod session;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_proto::model::FolderMode;
use tandem_proto::model::{DeviceId, FileRecord, FolderId, RelPath, ShortId};
use tandem_proto::rules::{
    Action, GlobalState, Need, Plan, PlanConfig, Records, is_announced, need, plan, resolve,
};
use tokio::sync::{Notify, watch};

use crate::config::{Config, FolderConfig};
use crate::home::Home;
use crate::scan::{ScanTarget, scan_folder};
use crate::store::{Index, LocalRecord, StoreError};

/// Planning rounds per wake-up before waiting for news.
const MAX_ROUNDS: usize = 8;

/// Byte counters, for logs, tests and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    /// Chunk bytes received from peers (verified).
    pub network: AtomicU64,
    /// Chunk bytes copied from local files instead.
    pub reused: AtomicU64,
    /// Chunk bytes found already in a partial temp file.
    pub resumed: AtomicU64,
    /// Chunks discarded because their hash did not match.
    pub rejected: AtomicU64,
}

/// What a folder's runner is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FolderState {
    /// Waiting for changes.
    #[default]
    Idle,
    /// Reading the disk.
    Scanning,
    /// Applying a plan.
    Syncing,
    /// The last round failed as a whole (see the error).
    Error,
}

impl FolderState {
    /// `idle`, `scanning`, `syncing` or `error`, as in `status --json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Scanning => "scanning",
            Self::Syncing => "syncing",
            Self::Error => "error",
        }
    }
}

/// What a session knows about a connected peer.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerState {
    /// Folders both sides share.
    pub shared: Vec<FolderId>,
    /// Folders whose index the peer has sent at least once on this connection.
    pub received_index: Vec<FolderId>,
}

struct PeerEntry {
    conn: quinn::Connection,
    dialer: DeviceId,
}

/// State shared by the sessions, the runners and the daemon.
pub struct Inner {
    /// The index.
    pub index: Index,
    /// This device.
    pub device: DeviceId,
    /// Its short id.
    pub short: ShortId,
    /// The home (to keep it out of scans).
    pub home: Home,
    config: RwLock<Config>,
    peers: Mutex<BTreeMap<DeviceId, PeerEntry>>,
    reached: Mutex<BTreeMap<DeviceId, PeerState>>,
    folder_wakeups: Mutex<BTreeMap<FolderId, Arc<Notify>>>,
    /// Per folder: (news counter, the counter value at which a plan came out empty).
    folder_clean: Mutex<BTreeMap<FolderId, (u64, Option<u64>)>>,
    folder_states: Mutex<BTreeMap<FolderId, (FolderState, Option<String>)>>,
    /// Bumped after every local index change; sessions send updates when it moves.
    pub local_changes: watch::Sender<u64>,
    /// Byte counters.
    pub stats: Stats,
    /// Fault injection for tests (from environment variables).
    pub faults: Faults,
    request_ids: AtomicU64,
}

/// Faults a test can inject into a real daemon through environment variables. Production
/// never sets them; each one is logged loudly when active.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// `TANDEM_TEST_CORRUPT_RESPONSES=1`: flip a byte in every chunk we serve.
    pub corrupt_responses: bool,
    /// `TANDEM_TEST_RESPONSE_DELAY_MS=N`: wait N ms before answering each request.
    pub response_delay_ms: u64,
}

impl Faults {
    /// Reads the fault variables.
    pub fn from_env() -> Self {
        let faults = Self {
            corrupt_responses: std::env::var("TANDEM_TEST_CORRUPT_RESPONSES")
                .is_ok_and(|v| v == "1"),
            response_delay_ms: std::env::var("TANDEM_TEST_RESPONSE_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        if faults.corrupt_responses || faults.response_delay_ms > 0 {
            tracing::warn!("TEST FAULTS ACTIVE: {faults:?}");
        }
        faults
    }
}

impl Inner {
    /// Shared state for a daemon with this configuration.
    pub fn new(index: Index, device: DeviceId, home: Home, config: Config) -> Self {
        Self {
            index,
            device,
            short: device.short(),
            home,
            config: RwLock::new(config),
            peers: Mutex::new(BTreeMap::new()),
            reached: Mutex::new(BTreeMap::new()),
            folder_wakeups: Mutex::new(BTreeMap::new()),
            folder_clean: Mutex::new(BTreeMap::new()),
            folder_states: Mutex::new(BTreeMap::new()),
            local_changes: watch::Sender::new(0),
            stats: Stats::default(),
            faults: Faults::from_env(),
            request_ids: AtomicU64::new(1),
        }
    }

    /// A copy of the configuration.
    pub fn config(&self) -> Config {
        self.config.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    pub(crate) fn device_name(&self) -> String {
        self.config().device.name
    }

    pub(crate) fn folders_shared_with(&self, peer: &DeviceId) -> Vec<FolderId> {
        self.config()
            .folders
            .iter()
            .filter(|f| f.share.contains(peer))
            .map(|f| f.id.clone())
            .collect()
    }

    pub(crate) fn folder_root_shared_with(
        &self,
        folder: &FolderId,
        peer: &DeviceId,
    ) -> Option<PathBuf> {
        let config = self.config();
        let found = config.folders.iter().find(|f| &f.id == folder && f.share.contains(peer));
        found.map(|f| f.path.clone())
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a session's connection; false when another connection to the same peer is
    /// kept (the one dialed by the device with the smaller id).
    pub(crate) fn register(
        &self,
        peer: DeviceId,
        conn: quinn::Connection,
        dialer: DeviceId,
    ) -> bool {
        let Ok(mut peers) = self.peers.lock() else { return false };
        if let Some(existing) = peers.get(&peer).filter(|e| e.conn.close_reason().is_none()) {
            let keeper = self.device.min(peer);
            if existing.dialer == keeper && dialer != keeper {
                return false;
            }
            existing.conn.close(
                tandem_proto::wire::CloseCode::Duplicate.as_u32().into(),
                b"duplicate connection",
            );
        }
        peers.insert(peer, PeerEntry { conn, dialer });
        true
    }

    pub(crate) fn unregister(&self, peer: &DeviceId, stable_id: usize) {
        if let Ok(mut peers) = self.peers.lock()
            && peers.get(peer).is_some_and(|e| e.conn.stable_id() == stable_id)
        {
            peers.remove(peer);
        }
    }

    pub(crate) fn set_peer_state(&self, peer: &DeviceId, state: PeerState) {
        if let Ok(mut reached) = self.reached.lock() {
            reached.insert(*peer, state);
        }
    }

    pub(crate) fn mark_index_received(&self, peer: &DeviceId, folder: &FolderId) {
        if let Ok(mut reached) = self.reached.lock() {
            let known = reached.entry(*peer).or_default();
            if !known.received_index.contains(folder) {
                known.received_index.push(folder.clone());
            }
        }
    }

    /// Every peer a session was established with since start, with what it shared and
    /// sent (kept after it disconnects: its records stay in the index).
    pub(crate) fn reached(&self) -> Vec<(DeviceId, PeerState)> {
        self.reached
            .lock()
            .map(|r| r.iter().map(|(id, s)| (*id, s.clone())).collect())
            .unwrap_or_default()
    }

    /// The live connection to `peer`, if any.
    pub fn connection(&self, peer: &DeviceId) -> Option<quinn::Connection> {
        let peers = self.peers.lock().ok()?;
        peers.get(peer).filter(|e| e.conn.close_reason().is_none()).map(|e| e.conn.clone())
    }

    /// The records of `folder` this device may announce: all of them, except in a
    /// receive-only folder, where its own local changes are held back (only versions the
    /// peers' state has seen are announced).
    pub(crate) fn announced(
        &self,
        folder: &FolderId,
        records: Vec<LocalRecord>,
    ) -> Result<Vec<LocalRecord>, StoreError> {
        let Ok(cfg) = self.config().folder(folder).cloned() else { return Ok(Vec::new()) };
        if cfg.mode != FolderMode::ReceiveOnly {
            return Ok(records);
        }
        let mut out = Vec::with_capacity(records.len());
        for local in records {
            let mut theirs = Vec::new();
            for peer in &cfg.share {
                theirs.extend(self.index.peer_record(
                    folder.as_str(),
                    &peer.to_string(),
                    &local.record.path,
                )?);
            }
            let refs: Vec<&FileRecord> = theirs.iter().collect();
            if is_announced(cfg.mode, &local.record, resolve(&refs).as_ref()) {
                out.push(local);
            }
        }
        Ok(out)
    }

    /// Wakes the runner of `folder`.
    pub fn notify_folder(&self, folder: &FolderId) {
        self.wakeup(folder).notify_one();
    }

    fn wakeup(&self, folder: &FolderId) -> Arc<Notify> {
        let mut map = match self.folder_wakeups.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(folder.clone()).or_default().clone()
    }

    fn local_changed(&self) {
        self.local_changes.send_modify(|n| *n += 1);
    }

    /// The folder's news counter: bumped whenever peer records arrive.
    fn news(&self, folder: &FolderId) -> u64 {
        self.folder_clean.lock().ok().and_then(|m| m.get(folder).map(|e| e.0)).unwrap_or(0)
    }

    /// Records that a plan made at news counter `seen` had `clean` (no steps).
    fn set_clean(&self, folder: &FolderId, seen: u64, clean: bool) {
        if let Ok(mut map) = self.folder_clean.lock() {
            let entry = map.entry(folder.clone()).or_default();
            entry.1 = clean.then_some(seen);
        }
    }

    /// New peer records for `folder`: whatever the runner planned before is stale.
    pub(crate) fn peer_news(&self, folder: &FolderId) {
        if let Ok(mut map) = self.folder_clean.lock() {
            map.entry(folder.clone()).or_default().0 += 1;
        }
        self.notify_folder(folder);
    }

    fn set_state(&self, folder: &FolderId, state: FolderState, error: Option<String>) {
        if let Ok(mut map) = self.folder_states.lock() {
            map.insert(folder.clone(), (state, error));
        }
    }

    /// What each folder's runner is doing, with the last whole-folder error.
    pub fn folder_states(&self) -> BTreeMap<FolderId, (FolderState, Option<String>)> {
        self.folder_states.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Peers with a live connection.
    pub fn connected_peers(&self) -> Vec<DeviceId> {
        let Ok(peers) = self.peers.lock() else { return Vec::new() };
        peers.iter().filter(|(_, e)| e.conn.close_reason().is_none()).map(|(id, _)| *id).collect()
    }

    /// True when a plan made after the latest peer records had nothing left to do.
    pub fn is_clean(&self, folder: &FolderId) -> bool {
        let entry = self.folder_clean.lock().ok().and_then(|m| m.get(folder).copied());
        entry.is_some_and(|(news, clean_at)| clean_at == Some(news))
    }
}

/// Runs one folder forever: scan, apply, wait for news or the rescan interval.
pub async fn run_folder(inner: Arc<Inner>, folder: FolderId, rescan: Duration) {
    let wakeup = inner.wakeup(&folder);
    let _watch = start_watch(&inner, &folder, wakeup.clone());
    loop {
        match sync_folder_once(&inner, &folder).await {
            Ok(()) => inner.set_state(&folder, FolderState::Idle, None),
            Err(e) => {
                tracing::warn!("folder {folder}: {e:#}");
                inner.set_state(&folder, FolderState::Error, Some(e.to_string()));
            }
        }
        tokio::select! {
            () = wakeup.notified() => tokio::time::sleep(DEBOUNCE).await,
            () = tokio::time::sleep(rescan) => {}
        }
    }
}

/// How long to let a burst of filesystem events settle before rescanning (an editor's
/// save is several events).
const DEBOUNCE: Duration = Duration::from_millis(30);

/// Watches the folder so local edits wake its runner at once (the periodic rescan stays
/// the safety net, and the only mechanism if watching fails).
fn start_watch(
    inner: &Inner,
    folder: &FolderId,
    wakeup: Arc<Notify>,
) -> Option<crate::scan::watch::FolderWatcher> {
    let root = inner.config().folder(folder).ok()?.path.clone();
    let name = folder.clone();
    let on_change = move |overflow: bool| {
        if overflow {
            tracing::warn!("folder {name}: change notifications were lost; rescanning everything");
        }
        wakeup.notify_one();
    };
    match crate::scan::watch::watch(&root, on_change) {
        Ok(watch) => Some(watch),
        Err(e) => {
            tracing::warn!("folder {folder}: {e}");
            None
        }
    }
}

/// Why a folder round failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The folder is no longer configured.
    #[error("not configured")]
    Gone,
    /// Scanning failed.
    #[error(transparent)]
    Scan(#[from] crate::scan::ScanError),
    /// The index failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Scans one folder (the daemon does this for every folder before it talks to peers, so
/// the first index it announces matches the disk).
pub async fn initial_scan(inner: &Arc<Inner>, folder: &FolderId) -> Result<(), FolderError> {
    let cfg = inner.config().folder(folder).cloned().map_err(|_| FolderError::Gone)?;
    inner.set_state(folder, FolderState::Scanning, None);
    scan(inner, &cfg).await
}

/// One scan and up to `MAX_ROUNDS` plan-and-apply rounds.
pub async fn sync_folder_once(inner: &Arc<Inner>, folder: &FolderId) -> Result<(), FolderError> {
    let cfg = inner.config().folder(folder).cloned().map_err(|_| FolderError::Gone)?;
    let mut rescan = true;
    for round in 0..MAX_ROUNDS {
        if rescan {
            inner.set_state(folder, FolderState::Scanning, None);
            scan(inner, &cfg).await?;
        }
        inner.set_state(folder, FolderState::Syncing, None);
        let seen = inner.news(folder);
        let planned = blocking(inner, {
            let cfg = cfg.clone();
            move |inner| plan_folder(inner, &cfg)
        })
        .await??;
        inner.set_clean(folder, seen, planned.plan.steps.is_empty());
        if round == 0 {
            for (path, reason) in &planned.plan.deferred {
                tracing::info!("folder {folder}: {path} not synced: {reason}");
            }
        }
        if planned.plan.steps.is_empty() {
            return Ok(());
        }
        let Planned { plan, local, sources } = planned;
        let outcome = executor::execute(inner, &cfg, plan, local, sources).await;
        if outcome.committed > 0 {
            inner.local_changed();
        }
        if outcome.committed == 0 && !outcome.rescan {
            return Ok(());
        }
        rescan = outcome.rescan;
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> T + Send + 'static,
) -> Result<T, FolderError> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || f(&inner))
        .await
        .map_err(|e| FolderError::Task(e.to_string()))
}

async fn scan(inner: &Arc<Inner>, cfg: &FolderConfig) -> Result<(), FolderError> {
    let cfg = cfg.clone();
    let summary = blocking(inner, move |inner| {
        let target = ScanTarget {
            folder: cfg.id.as_str(),
            root: &cfg.path,
            device: inner.short,
            skip_dir: inner.home.canonical(),
            mode: cfg.mode,
            peers: cfg.share.iter().map(ToString::to_string).collect(),
        };
        scan_folder(&inner.index, &target)
    })
    .await??;
    for issue in &summary.issues {
        tracing::warn!("{}: {}", issue.path, issue.error);
    }
    if summary.new + summary.changed + summary.deleted > 0 {
        tracing::info!(
            "scanned: {} new, {} changed, {} deleted",
            summary.new,
            summary.changed,
            summary.deleted
        );
        inner.local_changed();
    }
    Ok(())
}

/// A plan, with what executing it needs.
struct Planned {
    plan: Plan,
    local: BTreeMap<RelPath, LocalRecord>,
    sources: BTreeMap<RelPath, Vec<DeviceId>>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Loads the local index and every peer's records, and plans.
fn plan_folder(inner: &Inner, cfg: &FolderConfig) -> Result<Planned, StoreError> {
    let folder = cfg.id.as_str();
    let local: BTreeMap<RelPath, LocalRecord> =
        inner.index.records(folder)?.into_iter().map(|l| (l.record.path.clone(), l)).collect();
    let local_records: Records = local.iter().map(|(p, l)| (p.clone(), l.record.clone())).collect();
    let peers = peer_records(inner, cfg)?;
    let peer_refs: Vec<&Records> = peers.iter().map(|(_, r)| r).collect();
    let global = GlobalState::build(cfg.mode, &local_records, &peer_refs);
    let config = PlanConfig {
        mode: cfg.mode,
        local_id: inner.short,
        now_secs: now_secs(),
        case_insensitive: false,
    };
    let plan = plan(&local_records, &global, &config);
    let sources = pull_sources(&plan, &peers);
    Ok(Planned { plan, local, sources })
}

fn peer_records(inner: &Inner, cfg: &FolderConfig) -> Result<Vec<(DeviceId, Records)>, StoreError> {
    let mut out = Vec::new();
    for peer in &cfg.share {
        let records = inner.index.peer_records(cfg.id.as_str(), &peer.to_string())?;
        out.push((*peer, records.into_iter().map(|r| (r.path.clone(), r)).collect()));
    }
    Ok(out)
}

/// For each file to pull, the peers that announced the same content.
fn pull_sources(plan: &Plan, peers: &[(DeviceId, Records)]) -> BTreeMap<RelPath, Vec<DeviceId>> {
    let mut out = BTreeMap::new();
    for step in &plan.steps {
        if let Action::Pull { record, .. } = &step.action {
            let have = peers.iter().filter(|(_, records)| {
                records.get(&record.path).is_some_and(|r| !r.deleted && r.same_content(record))
            });
            out.insert(record.path.clone(), have.map(|(id, _)| *id).collect());
        }
    }
    out
}

/// True when `folder` needs nothing here and every connected peer that shares it has sent
/// its index and needs nothing from us.
pub fn folder_in_sync(
    inner: &Inner,
    folder: &FolderId,
    connected: &[(DeviceId, Vec<FolderId>, Vec<FolderId>)],
) -> Result<bool, StoreError> {
    let Ok(cfg) = inner.config().folder(folder).cloned() else { return Ok(true) };
    if !inner.is_clean(folder) {
        return Ok(false);
    }
    let local: Records = inner
        .index
        .records(folder.as_str())?
        .into_iter()
        .map(|l| (l.record.path.clone(), l.record))
        .collect();
    let peers = peer_records(inner, &cfg)?;
    let peer_refs: Vec<&Records> = peers.iter().map(|(_, r)| r).collect();
    let global = GlobalState::build(cfg.mode, &local, &peer_refs);
    for (peer, shared, received) in connected {
        if !shared.contains(folder) {
            continue;
        }
        if !received.contains(folder) {
            return Ok(false);
        }
        let Some((_, records)) = peers.iter().find(|(id, _)| id == peer) else { return Ok(false) };
        if !peer_needs_nothing(records, &global) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn peer_needs_nothing(records: &Records, global: &GlobalState<'_>) -> bool {
    let paths: BTreeSet<&RelPath> = records.keys().chain(global.iter().map(|r| r.path())).collect();
    paths.into_iter().all(|path| {
        let theirs: Option<&FileRecord> = records.get(path);
        matches!(
            need(FolderMode::SendReceive, theirs, global.get(path)),
            Need::InSync | Need::Ahead
        )
    })
}
