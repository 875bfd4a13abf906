//! The home directory: where a device keeps its config, key, certificate, index and control
//! socket, and the one helper that writes files there atomically with private permissions.
//!
//! Every state file is written as temp file + fsync + rename + directory fsync, so a crash
//! leaves either the old or the new file, never half of one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The layout of a tandem home directory.
#[derive(Clone, Debug)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The home at `dir` (made absolute against the current directory).
    pub fn new(dir: &Path) -> io::Result<Self> {
        let dir =
            if dir.is_absolute() { dir.to_path_buf() } else { std::env::current_dir()?.join(dir) };
        Ok(Self { dir })
    }

    /// The platform default: `$XDG_CONFIG_HOME/tandem`, else `~/.config/tandem`.
    pub fn default_dir() -> Option<PathBuf> {
        let from_env = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        from_env("XDG_CONFIG_HOME")
            .or_else(|| from_env("HOME").map(|h| h.join(".config")))
            .map(|base| base.join("tandem"))
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// The private key (PEM, mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The self-signed certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The redb index.
    pub fn index_path(&self) -> PathBuf {
        self.dir.join("index.redb")
    }

    /// Creates the directory (mode 0700) if it is missing.
    pub fn create(&self) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)
    }

    /// The home's canonical path, if it exists: used to keep a home that lies inside a
    /// synced folder out of that folder's scan.
    pub fn canonical(&self) -> Option<PathBuf> {
        self.dir.canonicalize().ok()
    }
}

/// Writes `bytes` to `path` atomically with permission bits `mode`: a temp file beside it,
/// fsync, rename over the target, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file =
            OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left behind");
    }
}
