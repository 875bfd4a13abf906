//! The control socket: `control.sock` in the home, a Unix stream socket of mode 0600 (only
//! the home's owner may steer the daemon). Commands that need the daemon — status, scan,
//! override, revert and every configuration change — send one JSON request line and read
//! one JSON reply line. Without a daemon the socket is absent (or refuses), and the
//! commands work on the index and config directly.
//!
//! A Unix socket rather than a TCP port: no port to pick or collide on, and file
//! permissions are the access control.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::daemon::status::DaemonStatus;
use crate::home::Home;

/// The socket's file name in the home.
pub const SOCKET: &str = "control.sock";
/// The longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// What a command asks of the daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The daemon's status.
    Status,
    /// Scan a folder (every folder when `None`) now and wait for the round to finish.
    Scan {
        /// The folder id.
        folder: Option<String>,
    },
    /// Re-read `config.toml` and apply every change (peers, folders, shares, modes).
    Reload,
    /// `override` a send-only folder.
    Override {
        /// The folder id.
        folder: String,
    },
    /// `revert` a receive-only folder.
    Revert {
        /// The folder id.
        folder: String,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// The status.
    Status(DaemonStatus),
    /// Done; what happened, for people.
    Done {
        /// A summary line (or lines).
        message: String,
    },
    /// Refused or failed, and why.
    Failed {
        /// The reason.
        error: String,
    },
}

/// Why talking to the daemon failed (it runs, but the exchange went wrong).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Socket IO failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The reply was not understood.
    #[error("control socket {path}: bad reply: {detail}")]
    BadReply {
        /// The socket.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// The socket's path for `home`.
pub fn socket_path(home: &Home) -> PathBuf {
    home.dir().join(SOCKET)
}

/// Sends `request` to the daemon of `home` and waits up to `timeout` for the reply.
/// `Ok(None)` when no daemon runs for this home.
pub fn request(
    home: &Home,
    request: &Request,
    timeout: Duration,
) -> Result<Option<Reply>, ControlError> {
    let path = socket_path(home);
    let io = |source| ControlError::Io { path: path.display().to_string(), source };
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| ControlError::BadReply {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    if reply.is_empty() {
        return Err(ControlError::BadReply {
            path: path.display().to_string(),
            detail: "the daemon closed the connection without answering".into(),
        });
    }
    serde_json::from_str(&reply).map(Some).map_err(|e| ControlError::BadReply {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Binds the socket in `home` with mode 0600. A socket left by a daemon that died is
/// replaced (the caller holds the index, so no other daemon runs for this home).
pub(crate) fn bind(home: &Home) -> std::io::Result<tokio::net::UnixListener> {
    let path = socket_path(home);
    let staging = home.dir().join(format!(".{SOCKET}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = std::os::unix::net::UnixListener::bind(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&staging, &path)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Removes the socket (the daemon is stopping).
pub(crate) fn remove(home: &Home) {
    let _ = std::fs::remove_file(socket_path(home));
}

/// Reads one request line from a connection (at most [`MAX_REQUEST`] bytes).
pub(crate) async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(stream).take(MAX_REQUEST);
    reader.read_line(&mut line).await.map_err(|e| e.to_string())?;
    if !line.ends_with('\n') {
        return Err(format!("request line missing or longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_str(&line).map_err(|e| format!("bad request: {e}"))
}

/// Writes one reply line.
pub(crate) async fn write_reply(stream: &mut tokio::net::UnixStream, reply: &Reply) {
    use tokio::io::AsyncWriteExt;
    let Ok(mut line) = serde_json::to_vec(reply) else { return };
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
}

/// True when `path` is a socket some process answers on.
pub fn answers(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}
