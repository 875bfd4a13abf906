//! The daemon's status file, `daemon.json` in the home: rewritten every second while a
//! daemon runs, removed when it stops. Read-only commands (`status`) learn from it whether a
//! daemon runs, which peers are connected and what each folder's runner is doing; the
//! index itself they read directly (read-only).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::home::{Home, write_atomic};
use crate::sync::Inner;

/// How old the file may be before the daemon counts as gone.
const STALE_SECS: u64 = 5;

/// What a running daemon reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// The daemon's process id.
    pub pid: u32,
    /// When this was written (Unix seconds).
    pub updated: u64,
    /// Device ids (text) of connected peers.
    pub connected: Vec<String>,
    /// Per folder id: state (`idle`, `scanning`, `syncing`, `error`) and the last error.
    pub folders: Vec<FolderStatus>,
}

/// One folder's runner state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderStatus {
    /// Folder id.
    pub id: String,
    /// Runner state.
    pub state: String,
    /// The last whole-folder error, if the state is `error`.
    pub error: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Writes the current status.
pub(crate) fn write(home: &Home, inner: &Inner) {
    let folders = inner
        .folder_states()
        .into_iter()
        .map(|(id, (state, error))| FolderStatus {
            id: id.to_string(),
            state: state.as_str().into(),
            error,
        })
        .collect();
    let status = DaemonStatus {
        pid: std::process::id(),
        updated: now_secs(),
        connected: inner.connected_peers().iter().map(ToString::to_string).collect(),
        folders,
    };
    if let Ok(json) = serde_json::to_vec_pretty(&status) {
        let _ = write_atomic(&home.dir().join("daemon.json"), &json, 0o600);
    }
}

/// Removes the status file (the daemon is stopping).
pub(crate) fn remove(home: &Home) {
    let _ = std::fs::remove_file(home.dir().join("daemon.json"));
}

/// The status of a running daemon, if one runs for this home.
pub fn read(home: &Home) -> Option<DaemonStatus> {
    let text = std::fs::read(home.dir().join("daemon.json")).ok()?;
    let status: DaemonStatus = serde_json::from_slice(&text).ok()?;
    let alive = std::path::Path::new(&format!("/proc/{}", status.pid)).exists();
    let fresh = now_secs().saturating_sub(status.updated) <= STALE_SECS;
    (alive && fresh).then_some(status)
}
