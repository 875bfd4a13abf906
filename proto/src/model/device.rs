//! Device identity: `DeviceId` is the BLAKE3 hash of a certificate's SubjectPublicKeyInfo.
//!
//! Users read, paste and compare ids, so the text form carries a checksum: 52 base32
//! characters of the 32-byte hash followed by 4 check characters, shown as 8 groups of 7
//! joined by dashes. Parsing ignores case, dashes and spaces, and a typo is caught by the
//! checksum instead of silently naming another device. The first 8 bytes, as a big-endian
//! u64, are the [`ShortId`] used inside version vectors.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};

/// Number of characters in the canonical text form, without dashes.
const TEXT_LEN: usize = 56;
/// Characters of base32 that encode the 32 hash bytes.
const DATA_LEN: usize = 52;
/// Characters in one dash-separated group.
const GROUP_LEN: usize = 7;

/// A device's identity: BLAKE3 of its certificate's SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId([u8; 32]);

/// Why a text device id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// The id has the wrong number of characters once dashes and spaces are removed.
    #[error("device id has {found} characters, expected {TEXT_LEN} (8 groups of 7)")]
    Length {
        /// Characters found.
        found: usize,
    },
    /// A character outside the base32 alphabet A–Z, 2–7.
    #[error("device id contains {ch:?}, which is not a base32 character (A-Z, 2-7)")]
    Character {
        /// The offending character.
        ch: char,
    },
    /// The check characters do not match: most likely a typo.
    #[error("device id checksum does not match: check the id for a typo")]
    Checksum,
}

impl DeviceId {
    /// The id of the device whose certificate has this DER-encoded SubjectPublicKeyInfo.
    pub fn from_public_key_info(spki_der: &[u8]) -> Self {
        Self(*blake3::hash(spki_der).as_bytes())
    }

    /// An id from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The short id used in version vectors: the first 8 bytes as a big-endian u64.
    pub fn short(&self) -> ShortId {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        ShortId(u64::from_be_bytes(first))
    }

    fn check_chars(data: &str) -> String {
        let digest = blake3::keyed_hash(&check_key(), data.as_bytes());
        BASE32_NOPAD.encode(&digest.as_bytes()[..3])[..TEXT_LEN - DATA_LEN].to_string()
    }
}

fn check_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    let label = b"tandem device id checksum v1";
    key[..label.len()].copy_from_slice(label);
    key
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = BASE32_NOPAD.encode(&self.0);
        let text = format!("{data}{}", Self::check_chars(&data));
        for (idx, group) in text.as_bytes().chunks(GROUP_LEN).enumerate() {
            if idx > 0 {
                f.write_str("-")?;
            }
            // base32 output is ASCII, so every chunk is valid UTF-8.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let clean: String = text
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if let Some(ch) = clean.chars().find(|c| !matches!(c, 'A'..='Z' | '2'..='7')) {
            return Err(DeviceIdError::Character { ch });
        }
        if clean.len() != TEXT_LEN {
            return Err(DeviceIdError::Length { found: clean.len() });
        }
        let (data, check) = clean.split_at(DATA_LEN);
        if Self::check_chars(data) != check {
            return Err(DeviceIdError::Checksum);
        }
        let bytes = BASE32_NOPAD.decode(data.as_bytes()).map_err(|_| DeviceIdError::Checksum)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| DeviceIdError::Checksum)?;
        Ok(Self(bytes))
    }
}

/// The 64-bit device id used inside version vectors and conflict-copy names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShortId(u64);

impl ShortId {
    /// A short id from its integer value.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The integer value.
    pub const fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ShortId {
    /// The first 7 characters of the device id's text form (e.g. `ABCD123`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = BASE32_NOPAD.encode(&self.0.to_be_bytes());
        f.write_str(&text[..GROUP_LEN])
    }
}

impl fmt::Debug for ShortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeviceId {
        DeviceId::from_public_key_info(b"some public key info")
    }

    #[test]
    fn text_form_round_trips_and_has_eight_groups_of_seven() {
        let id = sample();
        let text = id.to_string();
        let groups: Vec<&str> = text.split('-').collect();
        assert_eq!(groups.len(), 8);
        assert!(groups.iter().all(|g| g.len() == 7));
        assert_eq!(text.parse::<DeviceId>(), Ok(id));
    }

    #[test]
    fn parsing_tolerates_case_dashes_and_spaces() {
        let id = sample();
        let messy = id.to_string().to_lowercase().replace('-', " ");
        assert_eq!(messy.parse::<DeviceId>(), Ok(id));
        let no_dashes = id.to_string().replace('-', "");
        assert_eq!(no_dashes.parse::<DeviceId>(), Ok(id));
    }

    #[test]
    fn a_single_typo_is_caught() {
        let text = sample().to_string().replace('-', "");
        for pos in 0..text.len() {
            let mut chars: Vec<char> = text.chars().collect();
            chars[pos] = if chars[pos] == 'A' { 'B' } else { 'A' };
            let typo: String = chars.into_iter().collect();
            assert!(typo.parse::<DeviceId>().is_err(), "typo at {pos} accepted");
        }
    }

    #[test]
    fn wrong_length_and_bad_characters_are_explained() {
        assert_eq!("ABC".parse::<DeviceId>(), Err(DeviceIdError::Length { found: 3 }));
        assert_eq!("ABC1".parse::<DeviceId>(), Err(DeviceIdError::Character { ch: '1' }));
    }

    #[test]
    fn short_id_text_is_the_first_group_of_the_device_id() {
        let id = sample();
        let text = id.to_string();
        assert_eq!(id.short().to_string(), text[..7]);
    }
}
