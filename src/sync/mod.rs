//! Sync: the per-folder runner that scans, asks `proto::rules` for a plan and carries it
//! out, and the shared state the peer sessions and runners meet in.
//!
//! The runner never decides anything itself: it builds the global state from the local
//! index and every peer's announced records, takes the planner's ordered steps, executes
//! each (`writer`, `puller`) and commits the step's records only after the bytes are on
//! disk. A step that finds the disk different from the index stops the round and rescans,
//! so a local change is never overwritten unseen.

pub mod delta;
pub mod durable;
pub mod executor;
pub mod modes;
pub mod puller;
pub mod session;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_proto::model::FolderMode;
use tandem_proto::model::{DeviceId, EntryKind, FileRecord, FolderId, RelPath, ShortId};
use tandem_proto::rules::{
    Action, GlobalState, Need, Plan, PlanConfig, Records, is_announced, need, plan, resolve,
};
use tokio::sync::{Notify, watch};

use crate::config::{Config, FolderConfig};
use crate::home::Home;
use crate::scan::watch::Change;
use crate::scan::{ScanTarget, scan_folder, scan_paths};
use crate::store::{Index, LocalRecord, Snapshot, StoreError};

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
    /// Bytes of peers' records received on control streams (index exchange and updates).
    pub index: AtomicU64,
}

/// What a folder's runner is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FolderState {
    /// This daemon's first full scan of the folder (at start-up, or since the folder was
    /// added) has not finished: the index is not yet a picture of the disk. Reported from
    /// `Inner::first_scan_pending`, which overrides what the runner last set.
    Starting,
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
    /// `starting`, `idle`, `scanning`, `syncing` or `error`, as in `status --json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
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
    /// Our requests outstanding on `conn`: at most `MAX_IN_FLIGHT` (PROTOCOL §10.4), shared
    /// by every transfer, so parallel pulls are queued here instead of answered `Busy`.
    slots: Arc<tokio::sync::Semaphore>,
    /// The protocol version negotiated on `conn`.
    version: u32,
}

/// A path this device cannot sync right now (per-file error), kept until its cause is gone.
#[derive(Clone, Debug)]
pub struct Problem {
    /// What went wrong, for people.
    pub error: String,
    /// When it was first seen (Unix seconds).
    pub since: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not retried before this.
    retry_at: Instant,
    /// Found by the scanner (cleared by the next scan) rather than by applying a step.
    from_scan: bool,
}

/// First retry delay of a failed step; doubles per failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(2);
/// Longest retry delay of a failed step.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// What a folder's runner has been through, beyond its state.
#[derive(Clone, Debug, Default)]
struct FolderLife {
    /// Rounds started and finished (a `scan` request waits for a round that began after it).
    started: u64,
    finished: u64,
    /// The last scan's counts: new, changed, deleted.
    last_scan: (u64, u64, u64),
    /// Watching failed (so only the periodic rescan finds local changes).
    watch_failed: Option<String>,
    /// The last time change notifications were lost (Unix seconds).
    overflow_at: Option<u64>,
    /// A full scan was asked for (`tandem scan`).
    full_requested: bool,
    /// What the next plan must look at.
    work: Work,
    /// In sync with every peer it is shared with, as of the last round.
    in_sync: bool,
    /// When it was last known in sync (Unix seconds), while it is not.
    synced_at: Option<u64>,
}

/// Incremental planning: a round plans the paths that changed since the last plan plus
/// those still unsettled, instead of the whole folder; a whole-folder pass runs first, and
/// again whenever a change cannot be listed (a peer's full index, a full rescan with many
/// changes, a configuration change).
#[derive(Clone, Debug)]
struct Work {
    /// Paths changed, locally or by a peer, since the last plan.
    news: BTreeSet<RelPath>,
    /// Only a whole-folder pass will do.
    full: bool,
    /// A whole-folder pass has run (before it, nothing is known about the peers).
    planned_once: bool,
    /// Paths whose need was not settled at the last plan (pulls, failures, held changes).
    pending: BTreeSet<RelPath>,
    /// Per peer: paths where it lacks the global version.
    missing: BTreeMap<DeviceId, BTreeSet<RelPath>>,
}

impl Default for Work {
    fn default() -> Self {
        Self {
            news: BTreeSet::new(),
            full: true,
            planned_once: false,
            pending: BTreeSet::new(),
            missing: BTreeMap::new(),
        }
    }
}

/// What a round plans: everything, or these paths.
enum PlanScope {
    All,
    Paths(BTreeSet<RelPath>),
}

/// True when `path` (a problem's key) is `dir` itself or lies below it.
fn at_or_under(path: &str, dir: &RelPath) -> bool {
    path == dir.as_str()
        || path.strip_prefix(dir.as_str()).is_some_and(|rest| rest.starts_with('/'))
}

/// When a peer was last connected, as this daemon saw it.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerLink {
    /// Connected now.
    pub connected: bool,
    /// Unix seconds: connected since (when connected), else last seen (0: never).
    pub since: u64,
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
    /// Folders whose first full scan by this daemon has not finished (every configured
    /// folder at start-up; a folder added or moved while it runs): their state is
    /// `Starting`, and requests that rewrite their index wait for it.
    first_scans: watch::Sender<BTreeSet<FolderId>>,
    problems: Mutex<BTreeMap<FolderId, BTreeMap<String, Problem>>>,
    lives: Mutex<BTreeMap<FolderId, FolderLife>>,
    links: Mutex<BTreeMap<DeviceId, PeerLink>>,
    /// Bumped whenever any folder finishes a round.
    rounds: watch::Sender<u64>,
    /// When this daemon started (Unix seconds).
    pub started: u64,
    /// Bumped after every local index change; sessions send updates when it moves.
    pub local_changes: watch::Sender<u64>,
    /// Set when the daemon is about to exit: sessions send what they have not sent yet and
    /// a `Close`, so peers learn this device's last state (see `close_sessions`).
    pub closing: watch::Sender<bool>,
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
    /// `TANDEM_TEST_WATCH_LIMIT=N`: watching a tree of more than N directories fails as
    /// if inotify's watch limit (`fs.inotify.max_user_watches`) were exhausted.
    pub watch_limit: Option<usize>,
    /// `TANDEM_TEST_STALL_SECS=N`: a peer that sends nothing for N s while requests wait is
    /// given up on (default 30 s).
    pub stall_secs: Option<u64>,
    /// `TANDEM_TEST_CLOCK_SKEW_SECS=N`: the clock that stamps versions and conflict names
    /// runs N seconds ahead (or behind, when negative), as on a machine with a wrong clock.
    pub clock_skew_secs: i64,
    /// `TANDEM_TEST_REDIAL_SECS=N`: dial every peer again every N s even while connected,
    /// so both sides hold two connections at once and one is closed as a duplicate.
    pub redial_secs: Option<u64>,
    /// `TANDEM_TEST_FIRST_PING_DELAY_MS=N`: end the initial index exchange (its Ping) N ms
    /// after the records, as a slow link or a busy peer would.
    pub first_ping_delay_ms: u64,
    /// `TANDEM_TEST_UPDATE_DELAY_MS=N`: send index updates N ms after a local change, as a
    /// busy sender would (a daemon that exits meanwhile must still send them).
    pub update_delay_ms: u64,
    /// `TANDEM_TEST_FIRST_SCAN_DELAY_MS=N`: the daemon's first scan of each folder (at
    /// start-up, or when the folder is added) starts N ms late, as a big folder's would
    /// take long: the daemon answers meanwhile and says it is starting.
    pub first_scan_delay_ms: u64,
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
            watch_limit: std::env::var("TANDEM_TEST_WATCH_LIMIT").ok().and_then(|v| v.parse().ok()),
            stall_secs: std::env::var("TANDEM_TEST_STALL_SECS").ok().and_then(|v| v.parse().ok()),
            clock_skew_secs: std::env::var("TANDEM_TEST_CLOCK_SKEW_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            redial_secs: std::env::var("TANDEM_TEST_REDIAL_SECS").ok().and_then(|v| v.parse().ok()),
            first_ping_delay_ms: std::env::var("TANDEM_TEST_FIRST_PING_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            update_delay_ms: std::env::var("TANDEM_TEST_UPDATE_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            first_scan_delay_ms: std::env::var("TANDEM_TEST_FIRST_SCAN_DELAY_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        };
        let active = faults.corrupt_responses
            || faults.response_delay_ms > 0
            || faults.watch_limit.is_some()
            || faults.stall_secs.is_some()
            || faults.clock_skew_secs != 0
            || faults.redial_secs.is_some()
            || faults.first_ping_delay_ms > 0
            || faults.update_delay_ms > 0
            || faults.first_scan_delay_ms > 0;
        if active {
            tracing::warn!("TEST FAULTS ACTIVE: {faults:?}");
        }
        faults
    }
}

impl Inner {
    /// Shared state for a daemon with this configuration; every configured folder is
    /// `Starting` until `initial_scan` of it ends.
    pub fn new(index: Index, device: DeviceId, home: Home, config: Config) -> Self {
        let folders = config.folders.iter().map(|f| f.id.clone()).collect();
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
            first_scans: watch::Sender::new(folders),
            problems: Mutex::new(BTreeMap::new()),
            lives: Mutex::new(BTreeMap::new()),
            links: Mutex::new(BTreeMap::new()),
            rounds: watch::Sender::new(0),
            started: now_secs(),
            local_changes: watch::Sender::new(0),
            closing: watch::Sender::new(false),
            stats: Stats::default(),
            faults: Faults::from_env(),
            request_ids: AtomicU64::new(1),
        }
    }

    /// The time (Unix seconds) that stamps new versions (`Faults::clock_skew_secs` applied).
    pub fn version_clock(&self) -> u64 {
        now_secs().saturating_add_signed(self.faults.clock_skew_secs)
    }

    /// A copy of the configuration.
    pub fn config(&self) -> Config {
        self.config.read().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replaces the configuration (a running daemon reloading `config.toml`).
    pub fn set_config(&self, config: Config) {
        match self.config.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
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
        version: u32,
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
        let slots = Arc::new(tokio::sync::Semaphore::new(tandem_proto::wire::MAX_IN_FLIGHT));
        peers.insert(peer, PeerEntry { conn, dialer, slots, version });
        if let Ok(mut links) = self.links.lock() {
            links.insert(peer, PeerLink { connected: true, since: now_secs() });
        }
        true
    }

    pub(crate) fn unregister(&self, peer: &DeviceId, stable_id: usize) {
        let removed = match self.peers.lock() {
            Ok(mut peers) if peers.get(peer).is_some_and(|e| e.conn.stable_id() == stable_id) => {
                peers.remove(peer);
                true
            }
            _ => false,
        };
        if removed {
            if let Ok(mut links) = self.links.lock() {
                links.insert(*peer, PeerLink { connected: false, since: now_secs() });
            }
            for folder in self.folders_shared_with(peer) {
                self.set_in_sync(&folder, false);
            }
        }
    }

    /// What this daemon knows of each peer's connection.
    pub fn peer_links(&self) -> BTreeMap<DeviceId, PeerLink> {
        self.links.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Closes the connection to `peer`, if any (its configuration changed; the dial loops
    /// reconnect with the new one when it is still trusted).
    pub fn drop_connection(&self, peer: &DeviceId, why: &str) {
        if let Some(conn) = self.connection(peer) {
            conn.close(tandem_proto::wire::CloseCode::Shutdown.as_u32().into(), why.as_bytes());
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
        // whether the folder is in sync is decided after a round: a reconnect that brings no
        // records starts none, so without this the daemon would not know it is in sync
        // (no `synced_at`) until the next rescan
        self.notify_folder(folder);
    }

    /// `peer`'s records of `folder` are incomplete again: some were asked for again
    /// (`Resend`), and being in sync with it waits for them.
    pub(crate) fn unmark_index_received(&self, peer: &DeviceId, folder: &FolderId) {
        if let Ok(mut reached) = self.reached.lock()
            && let Some(known) = reached.get_mut(peer)
        {
            known.received_index.retain(|f| f != folder);
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
        self.link(peer).map(|(conn, _)| conn)
    }

    /// Asks every session to send its last updates and close, and waits until the peers
    /// have closed the connections (they close on our `Close`, after reading what came
    /// before it) or `limit` has passed.
    pub async fn close_sessions(&self, limit: Duration) {
        self.closing.send_replace(true);
        let live = || {
            self.peers
                .lock()
                .map(|peers| peers.values().filter(|e| e.conn.close_reason().is_none()).count())
                .unwrap_or(0)
        };
        let deadline = tokio::time::Instant::now() + limit;
        while live() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The protocol version spoken on the live connection to `peer` (0 when none).
    pub(crate) fn speaks(&self, peer: &DeviceId) -> u32 {
        let Ok(peers) = self.peers.lock() else { return 0 };
        peers.get(peer).filter(|e| e.conn.close_reason().is_none()).map_or(0, |e| e.version)
    }

    /// The live connection to `peer` and the request slots that go with it.
    pub(crate) fn link(
        &self,
        peer: &DeviceId,
    ) -> Option<(quinn::Connection, Arc<tokio::sync::Semaphore>)> {
        let peers = self.peers.lock().ok()?;
        let entry = peers.get(peer).filter(|e| e.conn.close_reason().is_none())?;
        Some((entry.conn.clone(), entry.slots.clone()))
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

    pub(crate) fn local_changed(&self) {
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

    /// Whether `peer` had everything of `folder` at the last plan.
    fn peer_complete(&self, folder: &FolderId, peer: &DeviceId) -> bool {
        self.life(folder, |life| {
            life.work.planned_once && life.work.missing.get(peer).is_none_or(BTreeSet::is_empty)
        })
        .unwrap_or(false)
    }

    /// These paths of `folder` changed: the next plan looks at them, and a failed step on
    /// one of them or below one of them is retried at once (its cause may be gone).
    pub(crate) fn note_changed<'p>(
        &self,
        folder: &FolderId,
        paths: impl IntoIterator<Item = &'p RelPath>,
    ) {
        let paths: Vec<&RelPath> = paths.into_iter().collect();
        if let Ok(mut map) = self.problems.lock()
            && let Some(problems) = map.get_mut(folder)
        {
            let now = Instant::now();
            for (path, problem) in problems.iter_mut().filter(|(_, p)| !p.from_scan) {
                let touched = paths.iter().any(|p| at_or_under(path, p));
                if touched {
                    problem.retry_at = now;
                }
            }
        }
        self.life(folder, |life| {
            if life.work.full {
                return;
            }
            life.work.news.extend(paths.into_iter().cloned());
            if life.work.news.len() > MAX_DIRTY {
                life.work.full = true;
                life.work.news.clear();
            }
        });
    }

    /// The next plan of `folder` must look at every path.
    pub fn plan_everything(&self, folder: &FolderId) {
        self.life(folder, |life| {
            life.work.full = true;
            life.work.news.clear();
        });
    }

    /// What the next plan covers (taking the news).
    fn take_work(&self, folder: &FolderId) -> PlanScope {
        self.life(folder, |life| {
            let work = &mut life.work;
            if std::mem::take(&mut work.full) {
                work.news.clear();
                return PlanScope::All;
            }
            let mut paths = std::mem::take(&mut work.news);
            paths.extend(work.pending.iter().cloned());
            PlanScope::Paths(paths)
        })
        .unwrap_or(PlanScope::All)
    }

    /// What a plan found: the unsettled paths and what each peer lacks, among the checked
    /// paths (every path after a whole-folder pass).
    fn settle_work(&self, folder: &FolderId, planned: &Planned) {
        self.life(folder, |life| {
            let work = &mut life.work;
            match &planned.checked {
                None => {
                    work.pending = planned.pending.clone();
                    work.missing = planned.missing.clone();
                    work.planned_once = true;
                }
                Some(checked) => {
                    for path in checked {
                        work.pending.remove(path);
                        for lacks in work.missing.values_mut() {
                            lacks.remove(path);
                        }
                    }
                    work.pending.extend(planned.pending.iter().cloned());
                    for (peer, lacks) in &planned.missing {
                        work.missing.entry(*peer).or_default().extend(lacks.iter().cloned());
                    }
                }
            }
        });
    }

    /// These paths of `folder` were brought to the global version the last plan chose and
    /// committed: the next plan need not judge them again. Changes that reached them since
    /// are in the news, which the next plan covers anyway.
    fn settle_paths(&self, folder: &FolderId, paths: &[RelPath]) {
        self.life(folder, |life| {
            for path in paths {
                life.work.pending.remove(path);
            }
        });
    }

    /// New peer records for `folder` (these paths, or all of the peer's records when it
    /// sent its full index): whatever the runner planned before is stale.
    pub(crate) fn peer_news(&self, folder: &FolderId, paths: &[RelPath], replaced_all: bool) {
        if replaced_all {
            self.plan_everything(folder);
        } else {
            self.note_changed(folder, paths);
        }
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

    /// What each folder's runner is doing, with the last whole-folder error; `Starting`
    /// for a folder whose first scan by this daemon has not finished.
    pub fn folder_states(&self) -> BTreeMap<FolderId, (FolderState, Option<String>)> {
        let mut states = self.folder_states.lock().map(|m| m.clone()).unwrap_or_default();
        for folder in self.first_scans.borrow().iter() {
            states.insert(folder.clone(), (FolderState::Starting, None));
        }
        states
    }

    /// True while this daemon's first full scan of `folder` has not finished.
    pub fn first_scan_pending(&self, folder: &FolderId) -> bool {
        self.first_scans.borrow().contains(folder)
    }

    /// `folder` was added (or moved) while the daemon runs: it is `Starting` until its first
    /// scan is done.
    pub fn expect_first_scan(&self, folder: &FolderId) {
        self.first_scans.send_modify(|set| {
            set.insert(folder.clone());
        });
    }

    fn first_scan_finished(&self, folder: &FolderId) {
        self.first_scans.send_if_modified(|set| set.remove(folder));
    }

    /// Waits until this daemon's first scan of `folder` has finished (at once when it has,
    /// or when the folder is not configured).
    pub async fn first_scan_done(&self, folder: &FolderId) {
        let mut pending = self.first_scans.subscribe();
        // the sender lives in `self`, so the channel cannot close while this waits
        let _ = pending.wait_for(|set| !set.contains(folder)).await;
    }

    fn life<T>(&self, folder: &FolderId, f: impl FnOnce(&mut FolderLife) -> T) -> Option<T> {
        let mut lives = self.lives.lock().ok()?;
        Some(f(lives.entry(folder.clone()).or_default()))
    }

    /// Records whether `folder` is in sync with every peer now; leaving that state
    /// remembers when it was last true.
    fn set_in_sync(&self, folder: &FolderId, in_sync: bool) {
        self.life(folder, |life| {
            if life.in_sync && !in_sync {
                life.synced_at = Some(now_secs());
            }
            life.in_sync = in_sync;
        });
    }

    /// When `folder` was last in sync with every peer (now, when it is), as far as this
    /// daemon knows.
    pub fn synced_at(&self, folder: &FolderId) -> Option<u64> {
        self.life(folder, |life| if life.in_sync { Some(now_secs()) } else { life.synced_at })
            .flatten()
    }

    /// Watching `folder` failed, or works again (`None`).
    fn set_watch_failed(&self, folder: &FolderId, error: Option<String>) {
        self.life(folder, |life| life.watch_failed = error);
    }

    /// Change notifications for `folder` were lost (a full rescan follows).
    fn note_overflow(&self, folder: &FolderId) {
        self.life(folder, |life| life.overflow_at = Some(now_secs()));
    }

    /// Warnings about `folder` that do not stop it syncing: a failed watch, lost events.
    pub fn warnings(&self, folder: &FolderId) -> Vec<String> {
        let life = self.life(folder, |life| life.clone()).unwrap_or_default();
        let mut out = Vec::new();
        if let Some(error) = life.watch_failed {
            out.push(error);
        }
        if let Some(at) = life.overflow_at.filter(|at| now_secs().saturating_sub(*at) < 3600) {
            out.push(format!(
                "change notifications were lost at {at} (Unix time); a full rescan ran"
            ));
        }
        out
    }

    /// The counts of the folder's latest scan: new, changed, deleted.
    pub fn last_scan(&self, folder: &FolderId) -> (u64, u64, u64) {
        self.life(folder, |life| life.last_scan).unwrap_or_default()
    }

    fn round_started(&self, folder: &FolderId) {
        self.life(folder, |life| life.started += 1);
    }

    fn round_finished(&self, folder: &FolderId) {
        self.life(folder, |life| life.finished += 1);
        self.rounds.send_modify(|n| *n += 1);
    }

    /// Asks the runner of `folder` for a round (scan, plan, apply) and waits until one that
    /// started after this call has finished.
    pub async fn request_round(&self, folder: &FolderId) {
        let mut done = self.rounds.subscribe();
        let asked = self
            .life(folder, |life| {
                life.full_requested = true;
                life.started
            })
            .unwrap_or(0);
        self.notify_folder(folder);
        loop {
            if self.life(folder, |life| life.finished > asked).unwrap_or(true) {
                return;
            }
            if done.changed().await.is_err() {
                return;
            }
        }
    }

    /// Per-file problems of `folder`, by path.
    pub fn problems(&self, folder: &FolderId) -> BTreeMap<String, Problem> {
        let map = self.problems.lock().ok();
        map.and_then(|m| m.get(folder).cloned()).unwrap_or_default()
    }

    /// Replaces the scanner's problems of `folder` with the latest scan's findings: all of
    /// them after a full scan, those under the scanned `paths` after a targeted one.
    fn set_scan_problems(
        &self,
        folder: &FolderId,
        issues: &[crate::scan::ScanIssue],
        paths: Option<&[RelPath]>,
    ) {
        let Ok(mut map) = self.problems.lock() else { return };
        let problems = map.entry(folder.clone()).or_default();
        let old = std::mem::take(problems);
        let rescanned =
            |path: &str| paths.is_none_or(|paths| paths.iter().any(|p| at_or_under(path, p)));
        let mut kept: BTreeMap<String, Problem> = old
            .iter()
            .filter(|(path, p)| !p.from_scan || !rescanned(path))
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let now = now_secs();
        for issue in issues {
            let before = old.get(&issue.path).filter(|p| p.from_scan && p.error == issue.error);
            kept.insert(
                issue.path.clone(),
                Problem {
                    error: issue.error.clone(),
                    since: before.map_or(now, |p| p.since),
                    attempts: 1,
                    retry_at: Instant::now(),
                    from_scan: true,
                },
            );
        }
        *problems = kept;
    }

    /// A step on `path` failed: remember it and back off. True when this is news (first
    /// failure or a different error), which is worth a log entry.
    pub(crate) fn step_failed(&self, folder: &FolderId, path: &RelPath, error: &str) -> bool {
        let Ok(mut map) = self.problems.lock() else { return true };
        let problems = map.entry(folder.clone()).or_default();
        let previous = problems.get(path.as_str()).filter(|p| !p.from_scan);
        let attempts = previous.map_or(1, |p| p.attempts.saturating_add(1));
        let news = previous.is_none_or(|p| p.error != error);
        let since = previous.filter(|p| p.error == error).map_or_else(now_secs, |p| p.since);
        let delay = FIRST_RETRY.saturating_mul(1 << (attempts - 1).min(16)).min(MAX_RETRY);
        problems.insert(
            path.to_string(),
            Problem {
                error: error.to_string(),
                since,
                attempts,
                retry_at: Instant::now() + delay,
                from_scan: false,
            },
        );
        news
    }

    /// A step on `path` succeeded: its problem is gone.
    pub(crate) fn step_succeeded(&self, folder: &FolderId, path: &RelPath) {
        if let Ok(mut map) = self.problems.lock()
            && let Some(problems) = map.get_mut(folder)
            && problems.get(path.as_str()).is_some_and(|p| !p.from_scan)
        {
            problems.remove(path.as_str());
        }
    }

    /// True while a failed step on `path` waits for its retry time.
    pub(crate) fn backing_off(&self, folder: &FolderId, path: &RelPath) -> bool {
        let Ok(map) = self.problems.lock() else { return false };
        let problem = map.get(folder).and_then(|p| p.get(path.as_str()));
        problem.is_some_and(|p| !p.from_scan && p.retry_at > Instant::now())
    }

    /// Drops step problems on paths the latest plan no longer touches (the cause went away
    /// with the need, e.g. the peer deleted the file).
    fn retain_step_problems(&self, folder: &FolderId, planned: &BTreeSet<&str>) {
        if let Ok(mut map) = self.problems.lock()
            && let Some(problems) = map.get_mut(folder)
        {
            problems.retain(|path, p| p.from_scan || planned.contains(path.as_str()));
        }
    }

    /// When the next failed step of `folder` may be retried.
    fn next_retry(&self, folder: &FolderId) -> Option<Instant> {
        let map = self.problems.lock().ok()?;
        map.get(folder)?.values().filter(|p| !p.from_scan).map(|p| p.retry_at).min()
    }

    /// Forgets a folder's runtime state (it was removed from the configuration).
    pub fn forget_folder(&self, folder: &FolderId) {
        if let Ok(mut map) = self.problems.lock() {
            map.remove(folder);
        }
        if let Ok(mut map) = self.lives.lock() {
            map.remove(folder);
        }
        if let Ok(mut map) = self.folder_states.lock() {
            map.remove(folder);
        }
        self.first_scan_finished(folder);
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
///
/// With `watching` off (a one-shot `tandem sync`), the folder is scanned whole once and then
/// only where a step found the disk changed: a one-shot syncs the state it started from, and
/// a watcher would only read back the events of its own writes (a tenth of the receiver's
/// CPU for many small files). A file changed under a pending write is still never
/// overwritten (`FolderFs` checks it first); other changes made meanwhile are found by the
/// next run.
pub async fn run_folder(inner: Arc<Inner>, folder: FolderId, rescan: Duration, watching: bool) {
    let wakeup = inner.wakeup(&folder);
    let mut watch = watching.then(|| start_watch(&inner, &folder, wakeup.clone())).flatten();
    // the first round scans everything: changes made before the watch began are unseen
    let mut full = true;
    loop {
        if watch.is_none() && watching {
            watch = start_watch(&inner, &folder, wakeup.clone());
        }
        let requested = inner.life(&folder, |life| std::mem::take(&mut life.full_requested));
        let scope = match &watch {
            None if !watching && !full && requested != Some(true) => Scope::Nothing,
            // without a watch, only a full scan finds local changes
            None => Scope::All,
            Some(w) => {
                let dirty = w.take();
                if dirty.lost {
                    inner.note_overflow(&folder);
                }
                if full || dirty.full || requested == Some(true) {
                    Scope::All
                } else if dirty.paths.is_empty() {
                    Scope::Nothing // woken by peers: the executor checks each path it touches
                } else {
                    Scope::Paths(dirty.paths.into_iter().collect())
                }
            }
        };
        full = false;
        inner.round_started(&folder);
        match sync_folder_once(&inner, &folder, scope).await {
            Ok(()) => {
                inner.set_state(&folder, FolderState::Idle, None);
                check_in_sync(&inner, &folder).await;
            }
            Err(e) => {
                tracing::warn!("folder {folder}: {e:#}");
                inner.set_state(&folder, FolderState::Error, Some(e.to_string()));
                inner.set_in_sync(&folder, false);
            }
        }
        inner.round_finished(&folder);
        // without a watch, local changes are only found by rescanning: do it more often
        let rescan =
            if watch.is_some() || !watching { rescan } else { rescan.min(UNWATCHED_RESCAN) };
        let retry =
            inner.next_retry(&folder).map(|at| at.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = wakeup.notified() => tokio::time::sleep(DEBOUNCE).await,
            () = tokio::time::sleep(rescan) => full = true,
            () = tokio::time::sleep(retry.unwrap_or(rescan)), if retry.is_some() => {}
        }
    }
}

/// The rescan interval of a folder that cannot be watched.
const UNWATCHED_RESCAN: Duration = Duration::from_secs(60);

/// After a clean round: is the folder in sync with every peer it is shared with (all
/// connected, all sent their index, none needs anything)? Remembered for `status --check
/// --max-lag`, and persisted when it changes so the answer survives the daemon.
async fn check_in_sync(inner: &Arc<Inner>, folder: &FolderId) {
    let folder2 = folder.clone();
    let result = blocking(inner, move |inner| {
        let Ok(cfg) = inner.config().folder(&folder2).cloned() else { return Ok(false) };
        let connected = inner.connected_peers();
        if !cfg.share.iter().all(|p| connected.contains(p)) {
            return Ok(false);
        }
        let reached: Vec<_> = inner
            .reached()
            .into_iter()
            .filter(|(id, _)| connected.contains(id))
            .map(|(id, s)| (id, s.shared, s.received_index))
            .collect();
        if !cfg
            .share
            .iter()
            .all(|p| reached.iter().any(|(id, shared, _)| id == p && shared.contains(&folder2)))
        {
            return Ok(false);
        }
        folder_in_sync(inner, &folder2, &reached)
    })
    .await;
    let in_sync = matches!(result, Ok(Ok(true)));
    let was = inner.life(folder, |life| life.in_sync).unwrap_or(false);
    inner.set_in_sync(folder, in_sync);
    if in_sync != was {
        persist_synced_at(inner, folder);
    }
}

/// Writes when `folder` was last in sync to the index (the daemon is the index's writer).
pub fn persist_synced_at(inner: &Inner, folder: &FolderId) {
    let Some(at) = inner.synced_at(folder) else { return };
    let result = inner.index.write().and_then(|mut batch| {
        batch.set_synced_at(folder.as_str(), at)?;
        batch.commit()
    });
    if let Err(e) = result {
        tracing::warn!("folder {folder}: {e}");
    }
}

/// How long to let a burst of filesystem events settle before rescanning (an editor's
/// save is several events).
const DEBOUNCE: Duration = Duration::from_millis(30);

/// Watches the folder so local edits wake its runner at once (the periodic rescan stays
/// the safety net, and the only mechanism if watching fails).
fn start_watch(inner: &Inner, folder: &FolderId, wakeup: Arc<Notify>) -> Option<Watching> {
    let root = inner.config().folder(folder).ok()?.path.clone();
    let name = folder.clone();
    let dirty = Arc::new(Mutex::new(Dirty::default()));
    let (dirty2, root2) = (dirty.clone(), root.clone());
    let on_change = move |change: Change| {
        let mut d = dirty2.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match change {
            Change::Lost => {
                tracing::warn!(
                    "folder {name}: change notifications were lost; rescanning everything"
                );
                (d.lost, d.full) = (true, true);
            }
            Change::Paths(paths) => {
                for abs in paths {
                    match crate::scan::walk::relative(&root2, &abs) {
                        Ok(rel) => {
                            d.paths.insert(rel);
                        }
                        Err(_) if abs == root2 => {} // the root's own metadata
                        // a name the index cannot hold: the full scan reports it
                        Err(_) => d.full = true,
                    }
                }
                if d.paths.len() > MAX_DIRTY {
                    d.full = true;
                    d.paths.clear();
                }
            }
        }
        drop(d);
        wakeup.notify_one();
    };
    match crate::scan::watch::watch(&root, on_change, inner.faults.watch_limit) {
        Ok(watch) => {
            inner.set_watch_failed(folder, None);
            Some(Watching { _watch: watch, dirty })
        }
        Err(e) => {
            let was = inner.life(folder, |life| life.watch_failed.is_some()).unwrap_or(false);
            if !was {
                tracing::warn!("folder {folder}: {e}");
            }
            inner.set_watch_failed(
                folder,
                Some(format!(
                    "{e}; local changes are found by a rescan every {} s",
                    UNWATCHED_RESCAN.as_secs()
                )),
            );
            None
        }
    }
}

/// A live watch, and what it saw since the last look.
struct Watching {
    _watch: crate::scan::watch::FolderWatcher,
    dirty: Arc<Mutex<Dirty>>,
}

impl Watching {
    fn take(&self) -> Dirty {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Changed paths the watch reported, waiting for the next round.
#[derive(Debug, Default)]
struct Dirty {
    paths: BTreeSet<RelPath>,
    /// Only a full scan will do (events lost, too many paths, an unrepresentable name).
    full: bool,
    /// Events were lost (reported in `status`).
    lost: bool,
}

/// Changed paths past which one full scan is cheaper than targeted ones.
const MAX_DIRTY: usize = 10_000;

/// What a round scans before planning.
#[derive(Debug)]
pub enum Scope {
    /// Nothing: the watch saw no local change (peer news woke the runner).
    Nothing,
    /// The whole folder.
    All,
    /// These paths and everything below them.
    Paths(Vec<RelPath>),
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

/// This daemon's first scan of one folder (the daemon does this for every folder before it
/// talks to peers, so the first index it announces matches the disk; and for a folder added
/// while it runs). The folder is `Starting` until it ends, failed or not: then its state is
/// `Scanning` (the runner's first round, which rescans with the watch up, comes next) or
/// `Error`.
pub async fn initial_scan(inner: &Arc<Inner>, folder: &FolderId) -> Result<(), FolderError> {
    let result = first_scan(inner, folder).await;
    match &result {
        Ok(()) => inner.set_state(folder, FolderState::Scanning, None),
        Err(e) => inner.set_state(folder, FolderState::Error, Some(e.to_string())),
    }
    inner.first_scan_finished(folder);
    result
}

async fn first_scan(inner: &Arc<Inner>, folder: &FolderId) -> Result<(), FolderError> {
    let cfg = inner.config().folder(folder).cloned().map_err(|_| FolderError::Gone)?;
    if inner.faults.first_scan_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.faults.first_scan_delay_ms)).await;
    }
    inner.set_state(folder, FolderState::Scanning, None);
    scan_scope(inner, &cfg, Scope::All).await
}

/// One scan of `scope` and up to `MAX_ROUNDS` plan-and-apply rounds, then an index
/// compaction if it pays (`Index::maybe_compact`: many rows written, writes settled, most of
/// the file free).
pub async fn sync_folder_once(
    inner: &Arc<Inner>,
    folder: &FolderId,
    scope: Scope,
) -> Result<(), FolderError> {
    let result = sync_rounds(inner, folder, scope).await;
    let compacted = blocking(inner, |inner| inner.index.maybe_compact()).await;
    if let Ok(Err(e)) = compacted {
        tracing::warn!("folder {folder}: compacting the index: {e}");
    }
    result
}

async fn sync_rounds(
    inner: &Arc<Inner>,
    folder: &FolderId,
    scope: Scope,
) -> Result<(), FolderError> {
    let cfg = inner.config().folder(folder).cloned().map_err(|_| FolderError::Gone)?;
    let mut scope = scope;
    for round in 0..MAX_ROUNDS {
        match std::mem::replace(&mut scope, Scope::Nothing) {
            Scope::Nothing => {}
            scope => {
                inner.set_state(folder, FolderState::Scanning, None);
                scan_scope(inner, &cfg, scope).await?;
            }
        }
        inner.set_state(folder, FolderState::Syncing, None);
        let seen = inner.news(folder);
        let work = inner.take_work(folder);
        let planned = blocking(inner, {
            let cfg = cfg.clone();
            move |inner| plan_folder(inner, &cfg, work)
        })
        .await
        .and_then(|r| r.map_err(FolderError::from));
        let planned = match planned {
            Ok(planned) => planned,
            Err(e) => {
                inner.plan_everything(folder); // what was taken is not lost
                return Err(e);
            }
        };
        inner.settle_work(folder, &planned);
        inner.set_clean(folder, seen, planned.plan.steps.is_empty());
        let touched: BTreeSet<&str> =
            planned.plan.steps.iter().map(|s| s.path().as_str()).collect();
        inner.retain_step_problems(folder, &touched);
        if round == 0 {
            for (path, reason) in &planned.plan.deferred {
                tracing::info!("folder {folder}: {path} not synced: {reason}");
            }
        }
        if planned.plan.steps.is_empty() {
            return Ok(());
        }
        let Planned { plan, local, sources, .. } = planned;
        let outcome = executor::execute(inner, &cfg, plan, local, sources).await;
        inner.settle_paths(folder, &outcome.settled);
        if outcome.committed > 0 {
            inner.local_changed();
        }
        if outcome.committed == 0 && !outcome.rescan {
            return Ok(());
        }
        if outcome.rescan {
            scope = Scope::All;
        }
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

async fn scan_scope(
    inner: &Arc<Inner>,
    cfg: &FolderConfig,
    scope: Scope,
) -> Result<(), FolderError> {
    let cfg_id = cfg.id.clone();
    let cfg = cfg.clone();
    let paths = match &scope {
        Scope::Paths(paths) => Some(paths.clone()),
        _ => None,
    };
    let summary = blocking(inner, move |inner| {
        let target = ScanTarget {
            folder: cfg.id.as_str(),
            root: &cfg.path,
            device: inner.short,
            skip_dir: inner.home.canonical(),
            mode: cfg.mode,
            peers: cfg.share.iter().map(ToString::to_string).collect(),
            now_secs: inner.version_clock(),
        };
        match &scope {
            Scope::Paths(paths) => scan_paths(&inner.index, &target, paths),
            _ => scan_folder(&inner.index, &target),
        }
    })
    .await??;
    let before = inner.problems(&cfg_id);
    for issue in &summary.issues {
        if before.get(&issue.path).is_none_or(|p| p.error != issue.error) {
            tracing::warn!("folder {cfg_id}: {}: {}", issue.path, issue.error);
        }
    }
    inner.set_scan_problems(&cfg_id, &summary.issues, paths.as_deref());
    if summary.changed_overflow {
        inner.plan_everything(&cfg_id);
    } else {
        inner.note_changed(&cfg_id, &summary.changed_paths);
    }
    inner.life(&cfg_id, |life| {
        life.last_scan = (summary.new, summary.changed, summary.deleted);
    });
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
    /// The paths this plan judged (`None`: every path).
    checked: Option<BTreeSet<RelPath>>,
    /// Among them, those whose need is not settled.
    pending: BTreeSet<RelPath>,
    /// Among them, per peer, those where it lacks the global version.
    missing: BTreeMap<DeviceId, BTreeSet<RelPath>>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Paths per slice when a folder's records are read in slices.
const SLICE: usize = 4096;

/// Plans `scope`. A whole-folder plan runs in two passes so memory stays bounded by what
/// needs doing, not by the folder's size: the folder is read in path-ordered slices to find
/// the paths whose need is not settled (and what each peer lacks); then only those paths'
/// records are loaded and planned. An incremental plan loads just the given paths. Either
/// way the plan is the one a whole-folder plan would make, except that chunk-reuse hints
/// come only from the planned paths (the puller's chunk table covers the rest).
fn plan_folder(inner: &Inner, cfg: &FolderConfig, scope: PlanScope) -> Result<Planned, StoreError> {
    let folder = cfg.id.as_str();
    let peer_names: Vec<String> = cfg.share.iter().map(ToString::to_string).collect();
    let mut pending: BTreeSet<RelPath> = BTreeSet::new();
    let mut missing: BTreeMap<DeviceId, BTreeSet<RelPath>> = BTreeMap::new();
    let checked = match scope {
        PlanScope::All => {
            inner.index.for_each_slice(folder, &peer_names, SLICE, |slice| {
                let local: Records =
                    slice.local.into_iter().map(|l| (l.record.path.clone(), l.record)).collect();
                let peers: Vec<(DeviceId, Records)> = cfg
                    .share
                    .iter()
                    .copied()
                    .zip(slice.peers)
                    .map(|(id, records)| {
                        (id, records.into_iter().map(|r| (r.path.clone(), r)).collect())
                    })
                    .collect();
                judge(cfg.mode, &local, &peers, &mut pending, &mut missing);
            })?;
            None
        }
        PlanScope::Paths(paths) => {
            let mut snap = inner.index.snapshot()?;
            let (local, peers) =
                load_paths(&mut snap, cfg, &peer_names, with_ancestors(paths.iter().cloned()))?;
            let records: Records =
                local.iter().map(|(p, l)| (p.clone(), l.record.clone())).collect();
            judge(cfg.mode, &records, &peers, &mut pending, &mut missing);
            Some(paths)
        }
    };
    // the planner checks that a path's parent is a directory (ancestors come along) and
    // decides about a directory from what lies below it (its subtree comes along)
    // one consistent view, no older than the first pass's, for the plan's per-path reads
    let mut snap = inner.index.snapshot()?;
    let wanted = with_subtrees(&mut snap, folder, &peer_names, &pending)?;
    let (local, peers) =
        load_paths(&mut snap, cfg, &peer_names, with_ancestors(wanted.into_iter()))?;
    drop(snap);
    let local_records: Records = local.iter().map(|(p, l)| (p.clone(), l.record.clone())).collect();
    let peer_refs: Vec<&Records> = peers.iter().map(|(_, r)| r).collect();
    let global = GlobalState::build(cfg.mode, &local_records, &peer_refs);
    let config = PlanConfig {
        mode: cfg.mode,
        local_id: inner.short,
        now_secs: inner.version_clock(),
        case_insensitive: false,
    };
    let plan = plan(&local_records, &global, &config);
    let sources = pull_sources(&plan, &peers);
    Ok(Planned { plan, local, sources, checked, pending, missing })
}

/// Local records by path, as the executor checks them against the disk.
type LocalMap = BTreeMap<RelPath, LocalRecord>;

/// `paths`, and everything below those that are directories here or at a peer.
fn with_subtrees(
    snap: &mut Snapshot,
    folder: &str,
    peer_names: &[String],
    paths: &BTreeSet<RelPath>,
) -> Result<BTreeSet<RelPath>, StoreError> {
    let mut wanted = paths.clone();
    // directories whose subtree is in `wanted` already: their pending descendants are
    // skipped (a first sync has every directory pending; reading each subtree again under
    // every ancestor made planning O(files × depth))
    let mut loaded: BTreeSet<RelPath> = BTreeSet::new();
    for path in paths {
        if path.ancestors().any(|a| loaded.contains(&a)) {
            continue;
        }
        let dir = |kind: EntryKind| kind == EntryKind::Dir;
        let mut is_dir = snap.record(folder, path)?.is_some_and(|l| dir(l.record.kind));
        for name in peer_names {
            is_dir = is_dir || snap.peer_record(folder, name, path)?.is_some_and(|r| dir(r.kind));
        }
        if !is_dir {
            continue;
        }
        loaded.insert(path.clone());
        for local in snap.records_under(folder, path)? {
            wanted.insert(local.record.path);
        }
        for name in peer_names {
            for record in snap.peer_records_under(folder, name, path)? {
                wanted.insert(record.path);
            }
        }
    }
    Ok(wanted)
}

/// `paths` and all their ancestors.
fn with_ancestors(paths: impl Iterator<Item = RelPath>) -> BTreeSet<RelPath> {
    let mut wanted = BTreeSet::new();
    for path in paths {
        let mut at = path.parent();
        while let Some(parent) = at {
            if !wanted.insert(parent.clone()) {
                break;
            }
            at = parent.parent();
        }
        wanted.insert(path);
    }
    wanted
}

/// The local and peer records of `paths`.
fn load_paths(
    snap: &mut Snapshot,
    cfg: &FolderConfig,
    peer_names: &[String],
    paths: BTreeSet<RelPath>,
) -> Result<(LocalMap, Vec<(DeviceId, Records)>), StoreError> {
    let folder = cfg.id.as_str();
    let mut local = BTreeMap::new();
    let mut peers: Vec<(DeviceId, Records)> =
        cfg.share.iter().map(|p| (*p, Records::new())).collect();
    for path in paths {
        for ((_, records), name) in peers.iter_mut().zip(peer_names) {
            if let Some(r) = snap.peer_record(folder, name, &path)? {
                records.insert(path.clone(), r);
            }
        }
        if let Some(l) = snap.record(folder, &path)? {
            local.insert(path, l);
        }
    }
    Ok((local, peers))
}

/// For every path in `local` and `peers`: is this device's need settled, and which peers
/// lack the global version?
fn judge(
    mode: FolderMode,
    local: &Records,
    peers: &[(DeviceId, Records)],
    pending: &mut BTreeSet<RelPath>,
    missing: &mut BTreeMap<DeviceId, BTreeSet<RelPath>>,
) {
    let refs: Vec<&Records> = peers.iter().map(|(_, r)| r).collect();
    let global = GlobalState::build(mode, local, &refs);
    let paths: BTreeSet<&RelPath> = local.keys().chain(global.iter().map(|r| r.path())).collect();
    for path in paths {
        let settled = |n: Need| matches!(n, Need::InSync | Need::Ahead);
        if !settled(need(mode, local.get(path), global.get(path))) {
            pending.insert(path.clone());
        }
        for (peer, records) in peers {
            if !settled(need(FolderMode::SendReceive, records.get(path), global.get(path))) {
                missing.entry(*peer).or_default().insert(path.clone());
            }
        }
    }
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
/// its index and needs nothing from us — as of the last plan, which saw the latest peer
/// records (the runner re-plans whenever they change), so no records are read here.
pub fn folder_in_sync(
    inner: &Inner,
    folder: &FolderId,
    connected: &[(DeviceId, Vec<FolderId>, Vec<FolderId>)],
) -> Result<bool, StoreError> {
    if inner.config().folder(folder).is_err() {
        return Ok(true);
    }
    if !inner.is_clean(folder) {
        return Ok(false);
    }
    for (peer, shared, received) in connected {
        if !shared.contains(folder) {
            continue;
        }
        if !received.contains(folder) || !inner.peer_complete(folder, peer) {
            return Ok(false);
        }
    }
    Ok(true)
}
