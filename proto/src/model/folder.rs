//! `FolderId`: the name two devices use for the same shared folder.
//!
//! It travels on the wire and names files in the index, so it is restricted to a safe,
//! printable alphabet: ASCII letters, digits, `.`, `_` and `-`, 1 to 64 characters, not
//! starting with `.`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validated folder id.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FolderId(String);

/// Why a folder id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid folder id {0:?}: use 1-64 ASCII letters, digits, '.', '_' or '-', not starting with '.'"
)]
pub struct FolderIdError(pub String);

impl FolderId {
    /// Validates a folder id.
    pub fn new(text: impl Into<String>) -> Result<Self, FolderIdError> {
        let text = text.into();
        let valid = (1..=64).contains(&text.len())
            && !text.starts_with('.')
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if valid { Ok(Self(text)) } else { Err(FolderIdError(text)) }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FolderId {
    type Err = FolderIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::new(text)
    }
}

impl TryFrom<String> for FolderId {
    type Error = FolderIdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

impl From<FolderId> for String {
    fn from(id: FolderId) -> Self {
        id.0
    }
}

impl fmt::Display for FolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_ids_are_validated() {
        for good in ["docs", "my-photos_2024", "a.b", "X"] {
            assert!(FolderId::new(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "with space", "é", &"x".repeat(65)] {
            assert!(FolderId::new(bad).is_err(), "{bad}");
        }
    }
}
