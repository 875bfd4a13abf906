//! The single owner of the byte encoding of wire messages and stored records.
//!
//! bincode 2 with a fixed configuration: little-endian, variable-length integers, and a hard
//! size limit so that decoding hostile bytes can never allocate more than [`MAX_ENCODED`].
//! Decoding refuses trailing bytes; encoding is canonical (decoding is lenient about
//! non-minimal varints and normalizes version vectors). No other module
//! calls bincode (the shell's `clippy.toml` bans it); change the format here or nowhere.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest encoded value accepted by [`decode`], in bytes.
pub const MAX_ENCODED: usize = 64 << 20;

type Config<const LIMIT: usize = MAX_ENCODED> = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<LIMIT>,
>;

const fn config<const LIMIT: usize>() -> Config<LIMIT> {
    bincode::config::standard().with_little_endian().with_variable_int_encoding().with_limit()
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// The value was decoded but bytes were left over.
    #[error("{0} trailing bytes after the encoded value")]
    TrailingBytes(usize),
}

/// Encodes a value. Encoding into memory cannot fail for our types; a value past the size
/// limit is a programming error caught here as an empty output rather than a panic.
#[allow(clippy::disallowed_methods)] // this module is the one owner of bincode
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config::<MAX_ENCODED>()).unwrap_or_default()
}

/// Encodes a value, reporting a value too large for the limit.
#[allow(clippy::disallowed_methods)] // this module is the one owner of bincode
pub fn try_encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config::<MAX_ENCODED>())
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes exactly one value from `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within::<T, MAX_ENCODED>(bytes)
}

/// Decodes exactly one value from `bytes`, with a size limit of `LIMIT` bytes instead of
/// [`MAX_ENCODED`]: the bytes read plus every length a string claims (bincode allocates a
/// string's buffer before reading it) stay within `LIMIT`. The frame decoder passes the
/// frame limit, so a few hostile bytes claiming a huge string cannot allocate past it.
#[allow(clippy::disallowed_methods)] // this module is the one owner of bincode
pub fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, config::<LIMIT>())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes_refused() {
        let bytes = encode(&(7u64, "x".to_string()));
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), (7, "x".to_string()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode::<(u64, String)>(&longer), Err(CodecError::TrailingBytes(1))));
    }

    #[test]
    fn absurd_lengths_do_not_allocate() {
        // A Vec<u8> claiming u64::MAX elements must be refused, not allocated.
        let bytes = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
