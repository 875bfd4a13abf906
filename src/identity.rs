//! This device's identity: an ECDSA P-256 key and a self-signed certificate (rcgen), and the
//! device id derived from them.
//!
//! The device id is BLAKE3 of the key's SubjectPublicKeyInfo, so it is computed from the key
//! alone and survives certificate renewal. There is no CA: peers pin each other's ids.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tandem_proto::model::DeviceId;

use crate::home::{Home, write_atomic};

/// Why the identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `init` found an identity already in place.
    #[error("an identity already exists at {0} (refusing to overwrite it)")]
    Exists(PathBuf),
    /// No identity yet.
    #[error("no identity at {0}: run `tandem init` first")]
    Missing(PathBuf),
    /// Reading or writing a key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Key generation or parsing failed.
    #[error("key or certificate: {0}")]
    Crypto(#[from] rcgen::Error),
    /// The certificate file is not valid PEM.
    #[error("certificate: {0}")]
    Pem(String),
}

/// A device's key pair and certificate.
pub struct Identity {
    key: KeyPair,
    cert_pem: String,
}

impl Identity {
    /// Generates a fresh key and certificate.
    pub fn generate() -> Result<Self, IdentityError> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["tandem".to_string()])?.self_signed(&key)?;
        Ok(Self { key, cert_pem: cert.pem() })
    }

    /// Generates and saves an identity in `home`, refusing to overwrite one.
    pub fn create(home: &Home) -> Result<Self, IdentityError> {
        for path in [home.key_path(), home.cert_path()] {
            if path.exists() {
                return Err(IdentityError::Exists(path));
            }
        }
        let identity = Self::generate()?;
        let io_err = |path: PathBuf| move |source| IdentityError::Io { path, source };
        home.create().map_err(io_err(home.dir().to_path_buf()))?;
        write_atomic(&home.key_path(), identity.key.serialize_pem().as_bytes(), 0o600)
            .map_err(io_err(home.key_path()))?;
        write_atomic(&home.cert_path(), identity.cert_pem.as_bytes(), 0o644)
            .map_err(io_err(home.cert_path()))?;
        Ok(identity)
    }

    /// Loads the identity saved in `home`.
    pub fn load(home: &Home) -> Result<Self, IdentityError> {
        let key_pem = read(&home.key_path())?;
        let cert_pem = read(&home.cert_path())?;
        Ok(Self { key: KeyPair::from_pem(&key_pem)?, cert_pem })
    }

    /// The device id: BLAKE3 of the public key's SubjectPublicKeyInfo.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_public_key_info(&self.key.subject_public_key_info())
    }

    /// The certificate in PEM form.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The certificate in DER form, for TLS.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, IdentityError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| IdentityError::Pem(e.to_string()))
    }

    /// The private key in DER (PKCS#8) form, for TLS.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => IdentityError::Missing(path.to_path_buf()),
        _ => IdentityError::Io { path: path.to_path_buf(), source },
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn create_then_load_gives_the_same_device_id_and_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path()).unwrap();
        let created = Identity::create(&home).unwrap();
        let loaded = Identity::load(&home).unwrap();
        assert_eq!(created.device_id(), loaded.device_id());
        let mode = fs::metadata(home.key_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(Identity::create(&home), Err(IdentityError::Exists(_))));
        assert_eq!(Identity::load(&home).unwrap().device_id(), created.device_id());
    }

    #[test]
    fn two_identities_differ() {
        let a = Identity::generate().unwrap().device_id();
        let b = Identity::generate().unwrap().device_id();
        assert_ne!(a, b);
    }
}
