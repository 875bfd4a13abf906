//! What a running daemon reports about itself through the control socket: its pid, each
//! peer's connection, and per folder the runner's state, per-file problems, warnings and
//! when it was last in sync. Read-only commands (`status`) combine it with the index, which
//! they read directly (read-only). The snapshot is made on request, so an idle daemon
//! writes nothing. It is available from the daemon's first moments: while the daemon is
//! still starting (scanning its folders before it talks to peers) it says so, because what
//! the index holds then is half a picture that a reader must not take for the folder.

use serde::{Deserialize, Serialize};

use crate::sync::Inner;

/// What a running daemon reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// When it started (Unix seconds).
    pub started: u64,
    /// Its start-up (the first scan of every folder, then accepting and dialing peers) is
    /// not done yet. Absent from an older daemon's reply: it answered only once started.
    #[serde(default)]
    pub starting: bool,
    /// Every configured peer's connection.
    pub peers: Vec<PeerStatus>,
    /// Per folder: the runner's state, problems and warnings.
    pub folders: Vec<FolderStatus>,
}

impl DaemonStatus {
    /// True when `device_id` (text) is connected.
    pub fn is_connected(&self, device_id: &str) -> bool {
        self.peers.iter().any(|p| p.device_id == device_id && p.connected)
    }
}

/// One peer's connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Device id (text).
    pub device_id: String,
    /// Connected now.
    pub connected: bool,
    /// Unix seconds: connected since, or last seen; 0 when never seen since the start.
    pub since: u64,
}

/// One folder's runner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderStatus {
    /// Folder id.
    pub id: String,
    /// Runner state: `starting` (this daemon's first scan of the folder, at start-up or since
    /// it was added, has not finished), `idle`, `scanning`, `syncing` or `error`.
    pub state: String,
    /// The last whole-folder error, if the state is `error`.
    pub error: Option<String>,
    /// Paths that cannot be synced right now, and why.
    pub problems: Vec<PathProblem>,
    /// Conditions that do not stop syncing (a failed watch, lost notifications).
    pub warnings: Vec<String>,
    /// When the folder was last in sync with every peer (Unix seconds; now when it is).
    pub synced_at: Option<u64>,
}

/// A per-file problem.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathProblem {
    /// The path inside the folder.
    pub path: String,
    /// Why it cannot be synced.
    pub error: String,
    /// When it was first seen (Unix seconds).
    pub since: u64,
    /// Attempts so far.
    pub attempts: u32,
}

/// The daemon's current status; `starting` while its start-up is not done.
pub(crate) fn snapshot(inner: &Inner, starting: bool) -> DaemonStatus {
    let config = inner.config();
    let states = inner.folder_states();
    let links = inner.peer_links();
    let peers = config
        .peers
        .iter()
        .map(|p| {
            let link = links.get(&p.id).copied().unwrap_or_default();
            let connected = link.connected && inner.connection(&p.id).is_some();
            PeerStatus { device_id: p.id.to_string(), connected, since: link.since }
        })
        .collect();
    let folders = config
        .folders
        .iter()
        .map(|f| {
            let (state, error) = states.get(&f.id).cloned().unwrap_or_default();
            let problems = inner
                .problems(&f.id)
                .into_iter()
                .map(|(path, p)| PathProblem {
                    path,
                    error: p.error,
                    since: p.since,
                    attempts: p.attempts,
                })
                .collect();
            FolderStatus {
                id: f.id.to_string(),
                state: state.as_str().to_string(),
                error,
                problems,
                warnings: inner.warnings(&f.id),
                synced_at: inner.synced_at(&f.id),
            }
        })
        .collect();
    DaemonStatus { pid: std::process::id(), started: inner.started, starting, peers, folders }
}
