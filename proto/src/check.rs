//! Robustness checks shared by the fuzz targets (`fuzz/`) and the normal test suite.
//!
//! Each `check_*` function takes arbitrary bytes, feeds them to a decoder that faces peer or
//! disk input, and asserts the properties that must hold for any input: no panic, and a
//! value that decodes re-encodes to the same meaning. The fuzz targets are three-line shims
//! over these, and proptests run them on stable so CI exercises them without a fuzzer.

use std::mem::discriminant;

use crate::codec;
use crate::model::{ChunkRef, DeviceId, FileRecord, Hash, RelPath, VersionVector};
use crate::wire::{
    ChunkEdit, FrameDecoder, FrameError, MAX_EDITED_CHUNKS, Message, decode_frame, encode_frame,
};

/// Any text either is refused as a path or is a path whose invariants hold.
pub fn check_rel_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(path) = RelPath::new(text) {
        assert!(!path.as_str().starts_with('/'));
        assert!(path.components().all(|c| !c.is_empty() && c != "." && c != ".."));
        assert!(!path.as_str().contains('\0'));
        let decoded: RelPath =
            codec::decode(&codec::encode(&path)).expect("a valid path round-trips");
        assert_eq!(decoded, path);
    }
}

/// Any bytes either fail to decode as a record or decode to one that round-trips.
pub fn check_record_decode(data: &[u8]) {
    if let Ok(record) = codec::decode::<FileRecord>(data) {
        let again: FileRecord = codec::decode(&codec::encode(&record)).expect("re-decode");
        assert_eq!(again, record);
    }
}

/// Any bytes either fail to decode as a chunk-list edit, or decode to one that applies to a
/// base list (as long as the first byte says) without panicking: refused, or a list of at
/// most [`MAX_EDITED_CHUNKS`] chunks, contiguous from offset 0, of base and added chunks.
pub fn check_edit_apply(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let mut offset = 0;
    let base: Vec<ChunkRef> = (0..n)
        .map(|i| {
            let chunk = ChunkRef { offset, len: u32::from(i) + 1, hash: Hash::of(&[i]) };
            offset += u64::from(chunk.len);
            chunk
        })
        .collect();
    let Ok(edit) = codec::decode::<ChunkEdit>(rest) else { return };
    let Ok(list) = edit.apply(&base) else { return };
    assert!(list.len() <= MAX_EDITED_CHUNKS);
    let mut at = 0u64;
    for chunk in &list {
        assert_eq!(chunk.offset, at, "offsets are the lengths before each chunk");
        at = at.saturating_add(u64::from(chunk.len));
    }
    let added = edit.added();
    let kept = list.len() - added;
    assert!(kept == 0 || !base.is_empty(), "kept chunks from an empty base");
}

/// Any bytes either fail to decode as a version vector or decode to a normalized one.
pub fn check_version_decode(data: &[u8]) {
    if let Ok(vector) = codec::decode::<VersionVector>(data) {
        let counters = vector.counters();
        assert!(counters.windows(2).all(|w| w[0].id < w[1].id), "sorted and unique");
        assert!(counters.iter().all(|c| c.value > 0), "no zero counters");
    }
}

/// Any text either is refused as a device id or parses to an id that prints back the same.
pub fn check_device_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = text.parse::<DeviceId>() {
        assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
    }
}

/// Any bytes, split into pieces at any points, decode to the same messages (and the same
/// first error) as when fed at once, without a panic; every decoded message re-encodes to a
/// frame no longer than its input's share that decodes to the same message.
///
/// `data[0]` picks the piece size (1 to 16 bytes); the rest is the stream.
pub fn check_frame_decode(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else { return };
    let whole = decode_stream([stream]);
    let pieces = decode_stream(stream.chunks(usize::from(split % 16) + 1));
    assert_eq!(pieces.0, whole.0, "splitting the stream changed the messages");
    assert_eq!(
        pieces.1.as_ref().map(discriminant),
        whole.1.as_ref().map(discriminant),
        "splitting the stream changed the error: {:?} vs {:?}",
        pieces.1,
        whole.1
    );
    for message in &whole.0 {
        let frame = encode_frame(message).expect("a decoded message fits in a frame");
        assert!(frame.len() <= stream.len(), "re-encoding grew the frame");
        assert_eq!(&decode_frame(&frame).expect("a re-encoded frame decodes"), message);
    }
}

/// Feeds `pieces` to a [`FrameDecoder`]: the messages until the first error, and that error
/// (a leftover partial frame at the end is [`FrameError::Truncated`]).
fn decode_stream<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Message>, Option<FrameError>) {
    let mut decoder = FrameDecoder::default();
    let mut messages = Vec::new();
    for piece in pieces {
        if let Err(err) = decoder.push(piece) {
            return (messages, Some(err));
        }
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(err) => return (messages, Some(err)),
            }
        }
    }
    (messages, decoder.finish().err())
}

/// Any bytes either fail to decode as a message body or decode to a message whose
/// encoding is no longer than the input, decodes to the same message, and is canonical
/// (encoding that again gives the same bytes).
pub fn check_message_roundtrip(data: &[u8]) {
    let Ok(message) = codec::decode::<Message>(data) else { return };
    let bytes = codec::encode(&message);
    assert!(bytes.len() <= data.len(), "re-encoding grew the message");
    let again: Message = codec::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(again, message);
    assert_eq!(codec::encode(&again), bytes, "the encoding is not canonical");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn edit_apply_check_holds_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            check_edit_apply(&data);
        }
    }

    proptest! {
        #[test]
        fn rel_path_check_holds_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_rel_path(&data);
        }

        #[test]
        fn rel_path_check_holds_for_path_like_text(text in "[a-z./\\\\\0 ]{0,40}") {
            check_rel_path(text.as_bytes());
        }

        #[test]
        fn record_decode_check_holds_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            check_record_decode(&data);
        }

        #[test]
        fn version_decode_check_holds_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            check_version_decode(&data);
        }

        #[test]
        fn frame_decode_check_holds_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            check_frame_decode(&data);
        }

        #[test]
        fn message_roundtrip_check_holds_for_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            check_message_roundtrip(&data);
        }

        #[test]
        fn device_id_check_holds_for_any_text(text in "[A-Z2-7a-z-]{0,70}") {
            check_device_id(text.as_bytes());
        }
    }
}
