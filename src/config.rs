//! `config.toml` ⇄ a validated [`Config`]: this device's name and listen address, the trusted
//! peers, and the folders with their modes and sharing.
//!
//! Every mutation validates before it writes (no duplicate ids, no folder inside another,
//! only existing directories), and the file is replaced atomically, so a failed command
//! leaves the previous config intact.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tandem_proto::model::{DeviceId, FolderId, FolderMode};

use crate::home::{Home, write_atomic};

/// Default QUIC listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:22000";

/// Why a config could not be loaded, changed or saved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No config yet.
    #[error("no config at {0}: run `tandem init` first")]
    Missing(PathBuf),
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not valid TOML for a config.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A requested change is not allowed.
    #[error("{0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// This device.
    pub device: DeviceConfig,
    /// Trusted peers.
    #[serde(default, rename = "peer", skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerConfig>,
    /// Synced folders.
    #[serde(default, rename = "folder", skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<FolderConfig>,
}

/// This device's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// A human-readable name shown to peers.
    pub name: String,
    /// Where to listen for QUIC (UDP).
    pub listen: String,
    /// Seconds between full rescans of every folder while serving.
    #[serde(default = "default_rescan_secs")]
    pub rescan_secs: u64,
    /// Days that deleted and replaced files stay in each folder's `.tandem/trash/`.
    #[serde(default = "default_trash_days")]
    pub trash_days: u64,
}

fn default_trash_days() -> u64 {
    14
}

fn default_rescan_secs() -> u64 {
    3600
}

/// A trusted peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// Its device id.
    #[serde(with = "as_text")]
    pub id: DeviceId,
    /// Where to reach it (`host:port`).
    pub addr: String,
    /// A human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A synced folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderConfig {
    /// The id shared by every device syncing this folder.
    pub id: FolderId,
    /// Absolute path of the root.
    pub path: PathBuf,
    /// Exchange mode.
    #[serde(with = "as_text", default)]
    pub mode: FolderMode,
    /// Devices this folder is shared with.
    #[serde(default, with = "as_text_vec", skip_serializing_if = "Vec::is_empty")]
    pub share: Vec<DeviceId>,
}

impl Config {
    /// A fresh config for a new device.
    pub fn new(name: String, listen: String) -> Self {
        let device = DeviceConfig {
            name,
            listen,
            rescan_secs: default_rescan_secs(),
            trash_days: default_trash_days(),
        };
        Self { device, peers: Vec::new(), folders: Vec::new() }
    }

    /// Loads `config.toml` from `home`.
    pub fn load(home: &Home) -> Result<Self, ConfigError> {
        let path = home.config_path();
        let text = fs::read_to_string(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ConfigError::Missing(path.clone()),
            _ => ConfigError::Io { path: path.clone(), source },
        })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path, message: e.message().to_string() })
    }

    /// Saves atomically to `home`.
    pub fn save(&self, home: &Home) -> Result<(), ConfigError> {
        let text = toml::to_string_pretty(self).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let path = home.config_path();
        write_atomic(&path, text.as_bytes(), 0o600)
            .map_err(|source| ConfigError::Io { path, source })
    }

    /// The folder with `id`.
    pub fn folder(&self, id: &FolderId) -> Result<&FolderConfig, ConfigError> {
        self.folders
            .iter()
            .find(|f| &f.id == id)
            .ok_or_else(|| ConfigError::Invalid(format!("no folder with id {id:?}")))
    }

    fn folder_mut(&mut self, id: &FolderId) -> Result<&mut FolderConfig, ConfigError> {
        self.folders
            .iter_mut()
            .find(|f| &f.id == id)
            .ok_or_else(|| ConfigError::Invalid(format!("no folder with id {id:?}")))
    }

    /// Trusts a peer, or updates its address and name.
    pub fn add_peer(&mut self, peer: PeerConfig, own_id: DeviceId) -> Result<(), ConfigError> {
        if peer.id == own_id {
            return Err(ConfigError::Invalid("that is this device's own id".into()));
        }
        validate_addr(&peer.addr)?;
        match self.peers.iter_mut().find(|p| p.id == peer.id) {
            Some(existing) => *existing = peer,
            None => self.peers.push(peer),
        }
        Ok(())
    }

    /// Stops trusting a peer and unshares every folder with it.
    pub fn remove_peer(&mut self, id: &DeviceId) -> Result<(), ConfigError> {
        let before = self.peers.len();
        self.peers.retain(|p| &p.id != id);
        if self.peers.len() == before {
            return Err(ConfigError::Invalid(format!("no peer with id {id}")));
        }
        for folder in &mut self.folders {
            folder.share.retain(|d| d != id);
        }
        Ok(())
    }

    /// Adds a folder after checking its id is new and its path is an existing directory that
    /// neither contains nor lies inside another folder.
    pub fn add_folder(
        &mut self,
        id: FolderId,
        path: &Path,
        mode: FolderMode,
    ) -> Result<(), ConfigError> {
        if self.folders.iter().any(|f| f.id == id) {
            return Err(ConfigError::Invalid(format!("a folder with id {id:?} already exists")));
        }
        let path = existing_dir(path)?;
        for other in &self.folders {
            if path.starts_with(&other.path) || other.path.starts_with(&path) {
                return Err(ConfigError::Invalid(format!(
                    "{} overlaps folder {:?} at {} (folders may not nest)",
                    path.display(),
                    other.id.as_str(),
                    other.path.display()
                )));
            }
        }
        self.folders.push(FolderConfig { id, path, mode, share: Vec::new() });
        Ok(())
    }

    /// Shares a folder with a trusted peer.
    pub fn share_folder(&mut self, id: &FolderId, device: DeviceId) -> Result<(), ConfigError> {
        if !self.peers.iter().any(|p| p.id == device) {
            return Err(ConfigError::Invalid(format!(
                "device {device} is not a trusted peer: add it with `tandem peer add` first"
            )));
        }
        let folder = self.folder_mut(id)?;
        if !folder.share.contains(&device) {
            folder.share.push(device);
        }
        Ok(())
    }

    /// Changes a folder's mode.
    pub fn set_mode(&mut self, id: &FolderId, mode: FolderMode) -> Result<(), ConfigError> {
        self.folder_mut(id)?.mode = mode;
        Ok(())
    }

    /// Stops syncing a folder (its files stay on disk).
    pub fn remove_folder(&mut self, id: &FolderId) -> Result<FolderConfig, ConfigError> {
        let idx = self
            .folders
            .iter()
            .position(|f| &f.id == id)
            .ok_or_else(|| ConfigError::Invalid(format!("no folder with id {id:?}")))?;
        Ok(self.folders.remove(idx))
    }
}

/// Checks that an address looks like `host:port` with a valid port.
pub fn validate_addr(addr: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::Invalid(format!("address {addr:?} is not HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

fn existing_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    let meta = fs::metadata(path).map_err(|e| {
        ConfigError::Invalid(format!("folder path {}: {}", path.display(), io_reason(&e)))
    })?;
    if !meta.is_dir() {
        return Err(ConfigError::Invalid(format!(
            "folder path {} is not a directory",
            path.display()
        )));
    }
    path.canonicalize().map_err(|e| {
        ConfigError::Invalid(format!("folder path {}: {}", path.display(), io_reason(&e)))
    })
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    }
}

/// Serde through `Display`/`FromStr`, for ids and modes that read well in TOML.
mod as_text {
    use super::*;

    pub(super) fn serialize<T: fmt::Display, S: Serializer>(
        v: &T,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// [`as_text`] for lists.
mod as_text_vec {
    use super::*;

    pub(super) fn serialize<T: fmt::Display, S: Serializer>(
        v: &[T],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr,
        T::Err: fmt::Display,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(seed: &[u8]) -> DeviceId {
        DeviceId::from_public_key_info(seed)
    }

    #[test]
    fn config_round_trips_through_toml_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(&dir.path().join("home")).unwrap();
        home.create().unwrap();
        let mut config = Config::new("laptop".into(), DEFAULT_LISTEN.into());
        config
            .add_peer(
                PeerConfig { id: device(b"p"), addr: "127.0.0.1:22001".into(), name: None },
                device(b"me"),
            )
            .unwrap();
        config
            .add_folder(FolderId::new("docs").unwrap(), dir.path(), FolderMode::SendOnly)
            .unwrap();
        config.share_folder(&FolderId::new("docs").unwrap(), device(b"p")).unwrap();
        config.save(&home).unwrap();
        assert_eq!(Config::load(&home).unwrap(), config);
    }

    #[test]
    fn folders_may_not_nest_or_repeat() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("inner");
        fs::create_dir(&inner).unwrap();
        let mut config = Config::new("x".into(), DEFAULT_LISTEN.into());
        config
            .add_folder(FolderId::new("outer").unwrap(), dir.path(), FolderMode::SendReceive)
            .unwrap();
        assert!(
            config
                .add_folder(FolderId::new("inner").unwrap(), &inner, FolderMode::SendReceive)
                .is_err()
        );
        assert!(
            config
                .add_folder(FolderId::new("outer").unwrap(), &inner, FolderMode::SendReceive)
                .is_err()
        );
        assert!(
            config
                .add_folder(
                    FolderId::new("gone").unwrap(),
                    &dir.path().join("nope"),
                    FolderMode::SendReceive
                )
                .is_err()
        );
    }

    #[test]
    fn sharing_needs_a_trusted_peer_and_removing_a_peer_unshares() {
        let dir = tempfile::tempdir().unwrap();
        let docs = FolderId::new("docs").unwrap();
        let mut config = Config::new("x".into(), DEFAULT_LISTEN.into());
        config.add_folder(docs.clone(), dir.path(), FolderMode::SendReceive).unwrap();
        assert!(config.share_folder(&docs, device(b"p")).is_err());
        config
            .add_peer(
                PeerConfig { id: device(b"p"), addr: "h:1".into(), name: None },
                device(b"me"),
            )
            .unwrap();
        config.share_folder(&docs, device(b"p")).unwrap();
        config.remove_peer(&device(b"p")).unwrap();
        assert!(config.folder(&docs).unwrap().share.is_empty());
    }

    #[test]
    fn addresses_are_checked() {
        assert!(validate_addr("127.0.0.1:22000").is_ok());
        assert!(validate_addr("[::1]:22000").is_ok());
        assert!(validate_addr("host").is_err());
        assert!(validate_addr("host:99999").is_err());
    }
}
