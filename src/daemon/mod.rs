//! The daemon: `tandem serve` (run until SIGINT/SIGTERM) and `tandem sync` (run until every
//! shared folder is in sync with every reachable peer). The composition root: it opens the
//! index, binds the endpoint, dials peers with backoff, accepts connections, and runs one
//! runner per folder.
//!
//! Start-up order matters to anyone watching: the control socket is bound first, before
//! the start-up scan of every folder (which can take minutes), so `status` reaches the
//! daemon and hears that it is starting instead of judging a half-filled index on its own
//! and calling it in sync. Peers are accepted and dialed, and runners started, only after
//! every folder was scanned, so the first index a peer sees matches the disk. Until then
//! requests that act on folders wait for the start-up (`scan`, `override`, `revert`) and a
//! config reload is deferred to its end (see `reload`).

pub mod control;
mod reload;
pub mod status;

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_proto::model::{DeviceId, FolderId, FolderMode};
use tandem_proto::wire::CloseCode;

use crate::config::{Config, ConfigError, FolderConfig, PeerConfig};
use crate::daemon::control::Reply;
use crate::home::Home;
use crate::identity::{Identity, IdentityError};
use crate::net::tls::TrustedPeers;
use crate::net::{ConnectError, Endpoint, peer_device};
use crate::store::{Index, StoreError};
use crate::sync::{Inner, folder_in_sync, initial_scan, run_folder, session};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Temp files untouched this long belong to abandoned transfers and are removed at start.
const STALE_TEMP: Duration = Duration::from_secs(24 * 3600);
/// Longest reconnect delay.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Config problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Identity problem.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Index problem.
    #[error("index {path}: {source}")]
    Store {
        /// The index file.
        path: String,
        /// The cause.
        source: StoreError,
    },
    /// Transport problem.
    #[error(transparent)]
    Net(#[from] ConnectError),
    /// The listen address is not usable.
    #[error("listen address {0:?} is not IP:PORT")]
    Listen(String),
    /// `sync` did not finish in time.
    #[error("not in sync after {0} s: {1}")]
    Timeout(u64, String),
    /// `sync` found no peer to talk to.
    #[error("no configured peer is reachable")]
    NoPeer,
}

/// How the daemon runs.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Until a signal.
    Serve,
    /// Until in sync, or the timeout.
    Once {
        /// Give up after this long.
        timeout: Duration,
        /// Show a progress line on stderr (a terminal).
        progress: bool,
    },
}

/// What a run moved, for the summary line.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// Verified chunk bytes received from peers.
    pub network: u64,
    /// Chunk bytes copied from local files.
    pub reused: u64,
    /// Chunk bytes found in partial temp files.
    pub resumed: u64,
    /// Chunks rejected for a bad hash.
    pub rejected: u64,
    /// Bytes of peers' records received (control streams).
    pub index: u64,
}

/// Runs the daemon.
pub async fn run(home: &Home, mode: Mode) -> Result<RunStats, DaemonError> {
    let config = Config::load(home)?;
    let identity = Identity::load(home)?;
    let index_path = home.index_path();
    let index = Index::open(&index_path)
        .map_err(|source| DaemonError::Store { path: index_path.display().to_string(), source })?;
    let listen: SocketAddr = config
        .device
        .listen
        .parse()
        .map_err(|_| DaemonError::Listen(config.device.listen.clone()))?;
    let trusted = TrustedPeers::new(config.peers.iter().map(|p| p.id));
    let endpoint = Arc::new(Endpoint::bind(
        listen,
        identity.cert_der()?,
        identity.key_der(),
        trusted.clone(),
    )?);
    let rescan = Duration::from_secs(config.device.rescan_secs.max(1));
    // every configured folder is `Starting` from here until its start-up scan ends
    let inner = Arc::new(Inner::new(index, identity.device_id(), home.clone(), config.clone()));
    let attempted: Attempts = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let sup = Arc::new(Supervisor {
        inner: inner.clone(),
        endpoint: endpoint.clone(),
        trusted,
        rescan,
        watch: matches!(mode, Mode::Serve),
        attempted: attempted.clone(),
        tasks: std::sync::Mutex::new(Tasks::default()),
        reloading: tokio::sync::Mutex::new(()),
        startup: tokio::sync::watch::Sender::new(Startup::default()),
    });
    let mut tasks = tokio::task::JoinSet::new();
    // the control socket answers before the start-up scan, saying the daemon is starting
    match control::bind(home) {
        Ok(listener) => {
            tasks.spawn(control_loop(sup.clone(), listener));
        }
        Err(e) => tracing::warn!(
            "no control socket at {}: {e} (commands will not reach this daemon)",
            control::socket_path(home).display()
        ),
    }
    tracing::info!("starting: scanning {} folders before talking to peers", config.folders.len());
    for folder in &config.folders {
        announce_after_receive_only(&inner.index, folder);
        if let Err(e) = initial_scan(&inner, &folder.id).await {
            tracing::warn!("folder {}: {e}", folder.id);
        }
    }
    tasks.spawn(accept_loop(inner.clone(), endpoint.clone()));
    // readiness, for people and test harnesses reading the log: start-up is done
    tracing::info!(
        "device {} listening on {}",
        identity.device_id(),
        endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default()
    );
    for peer in &config.peers {
        sup.start_dialer(peer.clone());
    }
    for folder in &config.folders {
        sup.start_runner(folder.clone(), false);
    }
    if sup.finish_startup() {
        // a config change saved during start-up: applied now, on the finished state
        if let Err(e) = sup.reload().await {
            tracing::warn!("config: applying the change made during start-up: {e}");
        }
    }
    let result = match mode {
        Mode::Serve => {
            wait_for_signal().await;
            Ok(())
        }
        Mode::Once { timeout, progress } => {
            let bar = progress.then(progress_bar);
            let result = wait_in_sync(&inner, &config, &attempted, timeout, bar.as_ref()).await;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            result
        }
    };
    control::remove(home);
    // peers hear our last index updates before we go: after a one-shot sync the serving
    // side knows this device has what it took (else its status, and the edit bases of its
    // next updates to us, would lag one version behind)
    inner.close_sessions(Duration::from_secs(3)).await;
    endpoint.close(CloseCode::Shutdown.as_u32(), "shutdown");
    sup.stop_all();
    tasks.abort_all();
    if let (Mode::Once { .. }, Ok(())) = (mode, &result) {
        mark_synced(&inner);
    }
    for folder in &inner.config().folders {
        crate::sync::persist_synced_at(&inner, &folder.id);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let stats = &inner.stats;
    result.map(|()| RunStats {
        network: load(&stats.network),
        reused: load(&stats.reused),
        resumed: load(&stats.resumed),
        rejected: load(&stats.rejected),
        index: load(&stats.index),
    })
}

/// A one-shot `sync` that succeeded: every folder was in sync with every reachable peer now.
fn mark_synced(inner: &Inner) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let result = inner.index.write().and_then(|mut batch| {
        for folder in &inner.config().folders {
            batch.set_synced_at(folder.id.as_str(), now)?;
        }
        batch.commit()
    });
    if let Err(e) = result {
        tracing::warn!("recording the sync time: {e}");
    }
}

/// Where the daemon's start-up stands (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
struct Startup {
    /// Every folder's start-up scan has ended, and peers, dialers and runners are running.
    done: bool,
    /// A config reload was asked for before that: it is applied once start-up is done.
    reload_pending: bool,
}

/// The tasks a running daemon can start and stop as its configuration changes.
#[derive(Default)]
struct Tasks {
    /// Per peer: the address dialed and the dial loop.
    dialers: BTreeMap<DeviceId, (String, tokio::task::JoinHandle<()>)>,
    /// Per folder: its runner.
    runners: BTreeMap<FolderId, tokio::task::JoinHandle<()>>,
}

/// Owns the daemon's long-running tasks and applies configuration changes to them.
struct Supervisor {
    inner: Arc<Inner>,
    endpoint: Arc<Endpoint>,
    trusted: TrustedPeers,
    rescan: Duration,
    /// Folders are watched (`serve`); a one-shot `sync` does not watch (see `run_folder`).
    watch: bool,
    attempted: Attempts,
    tasks: std::sync::Mutex<Tasks>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Start-up progress; requests wait on it.
    startup: tokio::sync::watch::Sender<Startup>,
}

impl Supervisor {
    /// True until the start-up (every folder's first scan, then peers and runners) is done.
    fn starting(&self) -> bool {
        !self.startup.borrow().done
    }

    /// Marks the start-up done; true when a reload was deferred to this moment.
    fn finish_startup(&self) -> bool {
        let mut pending = false;
        self.startup.send_modify(|s| {
            s.done = true;
            pending = std::mem::take(&mut s.reload_pending);
        });
        pending
    }

    /// Defers a reload to the end of the start-up; false when start-up is already done
    /// (the caller reloads now). Checked and recorded in one step, so a reload is never
    /// lost between the two.
    fn defer_reload(&self) -> bool {
        let mut deferred = false;
        self.startup.send_if_modified(|s| {
            if !s.done {
                s.reload_pending = true;
                deferred = true;
            }
            false
        });
        deferred
    }

    /// Waits up to `limit` for the start-up to be done; else says what it is still doing.
    async fn wait_started(&self, limit: Duration) -> Result<(), String> {
        let mut startup = self.startup.subscribe();
        // the sender lives in `self`, so the channel cannot close while this waits
        match tokio::time::timeout(limit, startup.wait_for(|s| s.done)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{} (waited {} s)", self.starting_reason(), limit.as_secs())),
        }
    }

    /// What the start-up is still doing, for people: the folder being scanned (the first in
    /// configuration order whose start-up scan has not ended), or the last steps.
    fn starting_reason(&self) -> String {
        let config = self.inner.config();
        let mut pending = config.folders.iter().filter(|f| self.inner.first_scan_pending(&f.id));
        match (pending.next(), pending.count()) {
            (Some(f), 0) => format!("the daemon is still scanning folder {} at start-up", f.id),
            (Some(f), more) => format!(
                "the daemon is still scanning folder {} at start-up ({more} more folders after it)",
                f.id
            ),
            (None, _) => "the daemon is still starting".to_string(),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start_dialer(&self, peer: PeerConfig) {
        let task = tokio::spawn(dial_loop(
            self.inner.clone(),
            self.endpoint.clone(),
            peer.clone(),
            self.attempted.clone(),
        ));
        if let Some((_, old)) = self.tasks().dialers.insert(peer.id, (peer.addr, task)) {
            old.abort();
        }
    }

    fn stop_dialer(&self, peer: &DeviceId) {
        if let Some((_, task)) = self.tasks().dialers.remove(peer) {
            task.abort();
        }
    }

    /// Starts the runner of `folder`; a folder added to a running daemon is scanned first,
    /// then the peers it is shared with reconnect to learn of it.
    fn start_runner(&self, folder: FolderConfig, added: bool) {
        let (inner, rescan, id) = (self.inner.clone(), self.rescan, folder.id.clone());
        if added {
            // `Starting` from now, not from when the task gets to run
            inner.expect_first_scan(&id);
        }
        let watch = self.watch;
        let task = tokio::spawn(async move {
            if added {
                announce_after_receive_only(&inner.index, &folder);
                if let Err(e) = initial_scan(&inner, &folder.id).await {
                    tracing::warn!("folder {}: {e}", folder.id);
                }
                for peer in &folder.share {
                    inner.drop_connection(peer, "configuration changed");
                }
            }
            // a walk of the whole folder: on the blocking pool, not on an async worker
            let (inner2, folder2) = (inner.clone(), folder.clone());
            if let Err(e) =
                tokio::task::spawn_blocking(move || tidy_folder(&inner2, &folder2)).await
            {
                tracing::warn!("folder {}: tidying: {e}", folder.id);
            }
            run_folder(inner, folder.id, rescan, watch).await;
        });
        if let Some(old) = self.tasks().runners.insert(id, task) {
            old.abort();
        }
    }

    fn stop_runner(&self, folder: &FolderId) {
        if let Some(task) = self.tasks().runners.remove(folder) {
            task.abort();
        }
    }

    fn stop_all(&self) {
        let mut tasks = self.tasks();
        for (_, (_, task)) in std::mem::take(&mut tasks.dialers) {
            task.abort();
        }
        for (_, task) in std::mem::take(&mut tasks.runners) {
            task.abort();
        }
    }
}
/// A folder that ran receive-only held its local changes back; now that it runs in another
/// mode they must be announced, so every record gets a fresh sequence number (resent).
fn announce_after_receive_only(index: &Index, folder: &FolderConfig) {
    let id = folder.id.as_str();
    let result = (|| -> Result<(), StoreError> {
        let before = index.remembered_mode(id)?;
        let left = before.as_deref() == Some(FolderMode::ReceiveOnly.as_str())
            && folder.mode != FolderMode::ReceiveOnly;
        let mut batch = index.write()?;
        if left {
            let n = batch.resequence(id)?;
            tracing::info!("folder {id} left receive-only mode: announcing its {n} records");
        }
        batch.remember_mode(id, folder.mode.as_str())?;
        batch.commit()
    })();
    if let Err(e) = result {
        tracing::warn!("folder {id}: {e}");
    }
}

/// At a runner's start: temp files of transfers abandoned long ago go, and so do trash
/// entries past their retention.
fn tidy_folder(inner: &Inner, folder: &FolderConfig) {
    let fs = crate::sync::writer::FolderFs::new(folder.path.clone());
    let stale = fs.clean_stale_temps(STALE_TEMP);
    if stale > 0 {
        tracing::info!(
            "folder {}: removed {stale} temp files of transfers abandoned over a day ago",
            folder.id
        );
    }
    let days = inner.config().device.trash_days;
    let purged = fs.purge_trash(days);
    if purged > 0 {
        tracing::info!(
            "folder {}: removed {purged} files older than {days} days from the trash",
            folder.id
        );
    }
}

/// Answers the control socket: one request and one reply per connection.
async fn control_loop(sup: Arc<Supervisor>, listener: tokio::net::UnixListener) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control socket: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let sup = sup.clone();
        tokio::spawn(async move {
            let reply = match control::read_request(&mut stream).await {
                Ok(request) => sup.handle(request).await,
                Err(error) => Reply::Failed { error },
            };
            control::write_reply(&mut stream, &reply).await;
        });
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Accepts incoming connections and runs a session for each.
async fn accept_loop(inner: Arc<Inner>, endpoint: Arc<Endpoint>) {
    while let Some(incoming) = endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(e) => return tracing::debug!("incoming connection failed: {e}"),
            };
            match peer_device(&conn) {
                Ok(peer) => session::run(inner, conn, peer, false).await,
                Err(e) => tracing::warn!("{e}"),
            }
        });
    }
}

/// Keeps a connection to `peer` up, dialing with exponential backoff and jitter.
async fn dial_loop(
    inner: Arc<Inner>,
    endpoint: Arc<Endpoint>,
    peer: PeerConfig,
    attempted: Attempts,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        if let Some(secs) = inner.faults.redial_secs {
            backoff = Duration::from_secs(secs); // test fault: a duplicate every `secs`
        }
        if inner.connection(&peer.id).is_none() || inner.faults.redial_secs.is_some() {
            match dial(&endpoint, &peer).await {
                Ok(conn) => {
                    mark(&attempted, peer.id, true);
                    backoff = MIN_BACKOFF;
                    session::run(inner.clone(), conn, peer.id, true).await;
                }
                Err(e) => {
                    mark(&attempted, peer.id, false);
                    tracing::info!("cannot reach {} at {}: {e}", peer.id, peer.addr);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
    }
}

async fn dial(endpoint: &Endpoint, peer: &PeerConfig) -> Result<quinn::Connection, String> {
    let addrs: Vec<SocketAddr> = peer.addr.to_socket_addrs().map_err(|e| e.to_string())?.collect();
    let mut last = format!("{} resolves to no address", peer.addr);
    for addr in addrs {
        match tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(addr, peer.id)).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("no answer from {addr} within {} s", DIAL_TIMEOUT.as_secs()),
        }
    }
    Err(last)
}

/// Per peer: failed dial attempts so far (`u32::MAX` once a connection succeeded).
type Attempts = Arc<std::sync::Mutex<BTreeMap<DeviceId, u32>>>;

/// Dial failures after which `sync` stops waiting for a peer…
const UNREACHABLE_AFTER: u32 = 3;
/// …but never before this long (a peer that is just starting gets a chance).
const MIN_PATIENCE: Duration = Duration::from_secs(10);

fn mark(attempted: &std::sync::Mutex<BTreeMap<DeviceId, u32>>, peer: DeviceId, connected: bool) {
    if let Ok(mut map) = attempted.lock() {
        let count = map.entry(peer).or_default();
        *count = if connected { u32::MAX } else { count.saturating_add(1) };
    }
}

/// `delay` ± 25 %, so peers that lost each other do not redial in lockstep.
fn jitter(delay: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    let factor = 0.75 + (random % 1000) as f64 / 2000.0;
    delay.mul_f64(factor)
}

/// Waits until every folder is in sync with every reachable peer.
async fn wait_in_sync(
    inner: &Arc<Inner>,
    config: &Config,
    attempted: &std::sync::Mutex<BTreeMap<DeviceId, u32>>,
    timeout: Duration,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), DaemonError> {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(bar) = bar {
            bar.set_message(progress_message(inner, config));
        }
        let patient = started.elapsed() >= MIN_PATIENCE;
        let settled = |n: &u32| *n == u32::MAX || (*n >= UNREACHABLE_AFTER && patient);
        let reached: Vec<_> =
            inner.reached().into_iter().map(|(id, s)| (id, s.shared, s.received_index)).collect();
        // a peer is settled once a session with it exists (whoever dialed), or once it
        // failed to answer often enough
        let was_reached = |id: &DeviceId| reached.iter().any(|(r, ..)| r == id);
        let all_attempted = attempted
            .lock()
            .map(|m| {
                config.peers.iter().all(|p| was_reached(&p.id) || m.get(&p.id).is_some_and(settled))
            })
            .unwrap_or(false);
        let status = in_sync_status(inner, config, &reached);
        match status {
            Ok(()) if all_attempted && !reached.is_empty() => return Ok(()),
            Ok(()) if all_attempted || config.peers.is_empty() => return Err(DaemonError::NoPeer),
            _ => {}
        }
        if started.elapsed() >= timeout {
            let why = status.err().unwrap_or_else(|| "peers still connecting".to_string());
            return Err(DaemonError::Timeout(timeout.as_secs(), why));
        }
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn progress_message(inner: &Inner, config: &Config) -> String {
    let mib = |n: &std::sync::atomic::AtomicU64| {
        n.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1048576.0
    };
    let syncing: Vec<&str> =
        config.folders.iter().filter(|f| !inner.is_clean(&f.id)).map(|f| f.id.as_str()).collect();
    let state = if syncing.is_empty() {
        "waiting for peers".to_string()
    } else {
        format!("syncing {}", syncing.join(", "))
    };
    format!(
        "{state}; {:.1} MiB received, {:.1} MiB reused locally",
        mib(&inner.stats.network),
        mib(&inner.stats.reused)
    )
}

fn in_sync_status(
    inner: &Inner,
    config: &Config,
    connected: &[(DeviceId, Vec<FolderId>, Vec<FolderId>)],
) -> Result<(), String> {
    for folder in &config.folders {
        match folder_in_sync(inner, &folder.id, connected) {
            Ok(true) => {}
            Ok(false) => return Err(format!("folder {} is still syncing", folder.id)),
            Err(e) => return Err(format!("folder {}: {e}", folder.id)),
        }
    }
    Ok(())
}
