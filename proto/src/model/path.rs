//! `RelPath`: the only way a name from a peer (or from the disk) becomes a path.
//!
//! A `RelPath` is a relative, `/`-separated UTF-8 path with no `.`/`..`/empty components, no
//! NUL, control characters or backslashes, components of at most 255 bytes and at most 4096
//! bytes in all. Because the writer accepts only `&RelPath`, a hostile name is refused once,
//! here, and can never reach the filesystem. Case-insensitive and Unicode-normalization
//! collisions are detected through [`RelPath::fold_key`].

use std::fmt;

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Longest component, in bytes (Linux NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// Longest path, in bytes (Linux PATH_MAX).
pub const MAX_PATH: usize = 4096;

/// A validated relative path inside a folder root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelPath(String);

/// Why a name was refused as a path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The empty path names the root itself, which is not an entry.
    #[error("empty path")]
    Empty,
    /// The path starts with `/`.
    #[error("absolute path {0:?}")]
    Absolute(String),
    /// A `..` component would climb out of the folder.
    #[error("path {0:?} contains '..'")]
    ParentComponent(String),
    /// A `.` component, or an empty one (`a//b`, trailing `/`).
    #[error("path {0:?} has an empty or '.' component")]
    EmptyComponent(String),
    /// NUL, a control character or a backslash.
    #[error("path {path:?} contains forbidden character {ch:?}")]
    ForbiddenCharacter {
        /// The path.
        path: String,
        /// The character.
        ch: char,
    },
    /// A component longer than 255 bytes.
    #[error("path {0:?} has a component longer than 255 bytes")]
    ComponentTooLong(String),
    /// A path longer than 4096 bytes.
    #[error("path of {0} bytes is longer than 4096 bytes")]
    TooLong(usize),
}

impl RelPath {
    /// Validates `text` as a relative path.
    pub fn new(text: impl Into<String>) -> Result<Self, PathError> {
        let text = text.into();
        validate(&text)?;
        Ok(Self(text))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Number of components.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The parent directory, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<Self> {
        self.0.rfind('/').map(|idx| Self(self.0[..idx].to_string()))
    }

    /// Every proper ancestor, outermost first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = Self> + '_ {
        self.0.match_indices('/').map(|(idx, _)| Self(self.0[..idx].to_string()))
    }

    /// A child of this directory.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        Self::new(format!("{}/{name}", self.0))
    }

    /// A sibling with another last component.
    pub fn with_file_name(&self, name: &str) -> Result<Self, PathError> {
        match self.parent() {
            Some(parent) => parent.join(name),
            None => Self::new(name),
        }
    }

    /// True when `self` is a proper ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &Self) -> bool {
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0.as_bytes()[self.0.len()] == b'/'
    }

    /// The key under which names collide on case-insensitive or normalizing filesystems:
    /// Unicode NFC, then lowercase. Two different paths with the same key must be reported,
    /// never written over each other.
    pub fn fold_key(&self) -> String {
        self.0.nfc().collect::<String>().to_lowercase()
    }
}

fn validate(text: &str) -> Result<(), PathError> {
    if text.is_empty() {
        return Err(PathError::Empty);
    }
    if text.len() > MAX_PATH {
        return Err(PathError::TooLong(text.len()));
    }
    if text.starts_with('/') {
        return Err(PathError::Absolute(text.to_string()));
    }
    if let Some(ch) = text.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(PathError::ForbiddenCharacter { path: text.to_string(), ch });
    }
    for component in text.split('/') {
        match component {
            ".." => return Err(PathError::ParentComponent(text.to_string())),
            "" | "." => return Err(PathError::EmptyComponent(text.to_string())),
            c if c.len() > MAX_COMPONENT => {
                return Err(PathError::ComponentTooLong(text.to_string()));
            }
            _ => {}
        }
    }
    Ok(())
}

impl TryFrom<String> for RelPath {
    type Error = PathError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

impl From<RelPath> for String {
    fn from(path: RelPath) -> Self {
        path.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_refused(text: &str) {
        assert!(RelPath::new(text).is_err(), "{text:?} was accepted");
    }

    #[test]
    fn hostile_names_are_refused() {
        for text in [
            "",
            "/etc/passwd",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            "a\nb",
            "a\u{7f}",
            "a\\..\\b",
        ] {
            check_refused(text);
        }
        check_refused(&"x".repeat(256));
        check_refused(&format!("{}/y", "x".repeat(256)));
        check_refused(&vec!["abcdefgh"; 500].join("/"));
    }

    #[test]
    fn ordinary_names_are_accepted() {
        for text in
            ["a", "a/b/c.txt", ".hidden", "...", "a..b", "spaces are fine", "日本語/ファイル"]
        {
            assert_eq!(RelPath::new(text).map(|p| p.to_string()), Ok(text.to_string()));
        }
        assert!(RelPath::new("x".repeat(255)).is_ok());
    }

    #[test]
    fn navigation() {
        let p = RelPath::new("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), "c.txt");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        let ancestors: Vec<String> = p.ancestors().map(String::from).collect();
        assert_eq!(ancestors, ["a", "a/b"]);
        assert!(RelPath::new("a").unwrap().is_ancestor_of(&p));
        assert!(!RelPath::new("a/b/c").unwrap().is_ancestor_of(&p));
        assert_eq!(p.with_file_name("d").unwrap().as_str(), "a/b/d");
        assert_eq!(p.depth(), 3);
    }

    #[test]
    fn fold_key_joins_case_and_normalization_twins() {
        let nfc = RelPath::new("caf\u{e9}").unwrap();
        let nfd = RelPath::new("cafe\u{301}").unwrap();
        let upper = RelPath::new("CAF\u{c9}").unwrap();
        assert_ne!(nfc, nfd);
        assert_eq!(nfc.fold_key(), nfd.fold_key());
        assert_eq!(nfc.fold_key(), upper.fold_key());
    }

    #[test]
    fn decoding_refuses_hostile_names() {
        let bytes = crate::codec::encode(&"../x".to_string());
        assert!(crate::codec::decode::<RelPath>(&bytes).is_err());
    }
}
