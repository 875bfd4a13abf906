//! What a running daemon does for control requests: status snapshots, scans on demand,
//! `override`/`revert` on its own index, and applying a changed `config.toml` without a
//! restart — peers are trusted or dropped and dialed, folders start or stop, and a peer
//! whose shares changed is reconnected so both sides exchange the new cluster config.
//!
//! The control socket answers during start-up too (see `daemon`), and no request acts on
//! the half-built state: `status` answers at once and says the daemon is starting; `scan`
//! waits for the start-up, then asks for a round (a scan that began before the request
//! might have missed what it is about); `override` and `revert` wait for the start-up and
//! for their folder's first scan (they rewrite versions of what the index holds), up to
//! [`START_WAIT`], then fail saying what the daemon is still scanning; a reload is
//! deferred to the end of the start-up and the reply says so — the CLI has saved
//! `config.toml` already, so refusing would leave the change unapplied until a restart,
//! and waiting could outlast the CLI's patience on a big folder.

use std::time::Duration;

use tandem_proto::model::FolderId;

use crate::config::{Config, FolderConfig};
use crate::daemon::control::{Reply, Request};
use crate::daemon::{Supervisor, announce_after_receive_only, status};
use crate::sync::{Inner, modes};

/// How long a `scan` request waits for its round (and, before it, for the start-up).
const SCAN_WAIT: Duration = Duration::from_secs(600);
/// How long `override`/`revert` wait for the start-up and their folder's first scan; less
/// than the CLI waits for the reply, so the user reads why instead of a timeout.
const START_WAIT: Duration = Duration::from_secs(240);

impl Supervisor {
    /// Answers one control request.
    pub(super) async fn handle(&self, request: Request) -> Reply {
        let result = match request {
            Request::Status => {
                return Reply::Status(status::snapshot(&self.inner, self.starting()));
            }
            Request::Scan { folder } => self.scan(folder).await,
            Request::Reload => self.reload_when_started().await,
            Request::Override { folder } => self.override_folder(&folder).await,
            Request::Revert { folder } => self.revert(&folder).await,
        };
        match result {
            Ok(message) => Reply::Done { message },
            Err(error) => Reply::Failed { error },
        }
    }

    fn folder(&self, id: &str) -> Result<FolderConfig, String> {
        let id = FolderId::new(id).map_err(|e| e.to_string())?;
        self.inner.config().folder(&id).cloned().map_err(|e| e.to_string())
    }

    async fn scan(&self, folder: Option<String>) -> Result<String, String> {
        let folders = match folder {
            Some(id) => vec![self.folder(&id)?],
            None => self.inner.config().folders,
        };
        // runners start at the end of the start-up: a round can be asked for only then
        self.wait_started(SCAN_WAIT).await?;
        let mut lines = Vec::new();
        for cfg in folders {
            if tokio::time::timeout(SCAN_WAIT, self.inner.request_round(&cfg.id)).await.is_err() {
                return Err(format!("folder {}: no round finished within {SCAN_WAIT:?}", cfg.id));
            }
            let (new, changed, deleted) = self.inner.last_scan(&cfg.id);
            let state = self.inner.folder_states().get(&cfg.id).cloned().unwrap_or_default();
            let mut line = format!(
                "{}: {new} new, {changed} changed, {deleted} deleted ({})",
                cfg.id,
                state.0.as_str()
            );
            if let Some(error) = state.1 {
                line.push_str(&format!(": {error}"));
            }
            let problems = self.inner.problems(&cfg.id).len();
            if problems > 0 {
                line.push_str(&format!("; {problems} paths with problems (see `tandem status`)"));
            }
            lines.push(line);
        }
        Ok(lines.join("\n"))
    }

    /// Runs a version rewrite of folder `id`'s index (`override`, `revert`) off the async
    /// workers, then has the runner announce and carry it out at once.
    async fn rewrite<T: Send + 'static>(
        &self,
        id: &str,
        rewrite: impl FnOnce(&Inner, &FolderConfig) -> Result<T, modes::ModeError> + Send + 'static,
    ) -> Result<(FolderConfig, T), String> {
        let cfg = self.folder(id)?;
        let deadline = tokio::time::Instant::now() + START_WAIT;
        self.wait_started(START_WAIT).await?;
        let first_scan = self.inner.first_scan_done(&cfg.id);
        if tokio::time::timeout_at(deadline, first_scan).await.is_err() {
            return Err(format!(
                "folder {}: the daemon has not finished its first scan of it (waited {} s)",
                cfg.id,
                START_WAIT.as_secs()
            ));
        }
        let (inner, cfg2) = (self.inner.clone(), cfg.clone());
        let done = tokio::task::spawn_blocking(move || rewrite(&inner, &cfg2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        self.inner.local_changed();
        self.inner.plan_everything(&cfg.id);
        self.inner.notify_folder(&cfg.id);
        Ok((cfg, done))
    }

    async fn override_folder(&self, id: &str) -> Result<String, String> {
        let (cfg, count) = self
            .rewrite(id, |inner, cfg| {
                modes::override_folder(&inner.index, cfg, inner.short, inner.version_clock())
            })
            .await?;
        Ok(format!(
            "{}: {count} paths now carry this device's version; peers take them now",
            cfg.id
        ))
    }

    async fn revert(&self, id: &str) -> Result<String, String> {
        let (cfg, (retaken, removed)) =
            self.rewrite(id, |inner, cfg| modes::revert(&inner.index, cfg)).await?;
        Ok(format!(
            "{}: {retaken} local changes are being replaced by the global version, {removed} local additions moved to .tandem/trash/",
            cfg.id
        ))
    }

    /// A reload request: applied now, or deferred to the end of the start-up.
    async fn reload_when_started(&self) -> Result<String, String> {
        if self.defer_reload() {
            return Ok(format!(
                "{}: the change is applied when its start-up is done",
                self.starting_reason()
            ));
        }
        self.reload().await
    }

    /// Re-reads `config.toml` and applies the difference; says what changed.
    pub(super) async fn reload(&self) -> Result<String, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let new = Config::load(&self.inner.home).map_err(|e| e.to_string())?;
        let old = self.inner.config();
        let mut said = Vec::new();
        self.inner.set_config(new.clone());
        self.trusted.replace(new.peers.iter().map(|p| p.id));
        for peer in &old.peers {
            if !new.peers.iter().any(|p| p.id == peer.id) {
                self.stop_dialer(&peer.id);
                self.inner.drop_connection(&peer.id, "no longer trusted");
                said.push(format!("peer {} removed and disconnected", peer.id));
            }
        }
        for peer in &new.peers {
            match old.peers.iter().find(|p| p.id == peer.id) {
                None => {
                    self.start_dialer(peer.clone());
                    said.push(format!("peer {} trusted; dialing {}", peer.id, peer.addr));
                }
                Some(before) if before.addr != peer.addr => {
                    self.start_dialer(peer.clone());
                    said.push(format!("peer {} is now dialed at {}", peer.id, peer.addr));
                }
                Some(_) => {}
            }
        }
        for folder in &old.folders {
            if new.folder(&folder.id).is_err() {
                self.remove_folder(folder).await?;
                said.push(format!("folder {} removed (its files are untouched)", folder.id));
            }
        }
        for folder in &new.folders {
            let Some(before) = old.folders.iter().find(|f| f.id == folder.id) else {
                self.start_runner(folder.clone(), true);
                said.push(format!(
                    "folder {} added ({}) at {}",
                    folder.id,
                    folder.mode,
                    folder.path.display()
                ));
                continue;
            };
            if before.path != folder.path {
                self.stop_runner(&folder.id);
                self.inner.forget_folder(&folder.id);
                self.start_runner(folder.clone(), true);
                said.push(format!("folder {} now at {}", folder.id, folder.path.display()));
                continue;
            }
            if before.share != folder.share || before.mode != folder.mode {
                self.inner.plan_everything(&folder.id);
            }
            for peer in folder.share.iter().filter(|p| !before.share.contains(p)) {
                self.inner.drop_connection(peer, "configuration changed");
                said.push(format!("folder {} shared with {peer}", folder.id));
            }
            for peer in before.share.iter().filter(|p| !folder.share.contains(p)) {
                self.inner.drop_connection(peer, "configuration changed");
                said.push(format!("folder {} no longer shared with {peer}", folder.id));
            }
            if before.mode != folder.mode {
                let (inner, cfg) = (self.inner.clone(), folder.clone());
                tokio::task::spawn_blocking(move || {
                    announce_after_receive_only(&inner.index, &cfg)
                })
                .await
                .map_err(|e| e.to_string())?;
                self.inner.local_changed();
                self.inner.notify_folder(&folder.id);
                said.push(format!("folder {} is now {}", folder.id, folder.mode));
            }
        }
        if new.device.listen != old.device.listen {
            said.push(format!(
                "listen address {} takes effect at the next start",
                new.device.listen
            ));
        }
        if new.device.rescan_secs != old.device.rescan_secs {
            said.push("the rescan interval takes effect at the next start".to_string());
        }
        if said.is_empty() {
            said.push("no change to apply".to_string());
        }
        for line in &said {
            tracing::info!("config: {line}");
        }
        Ok(said.join("\n"))
    }

    async fn remove_folder(&self, folder: &FolderConfig) -> Result<(), String> {
        self.stop_runner(&folder.id);
        self.inner.forget_folder(&folder.id);
        for peer in &folder.share {
            self.inner.drop_connection(peer, "configuration changed");
        }
        let (inner, id) = (self.inner.clone(), folder.id.clone());
        tokio::task::spawn_blocking(move || {
            inner.index.write().and_then(|mut batch| {
                batch.remove_folder(id.as_str())?;
                batch.commit()
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }
}
