//! The wire format pinned down: golden bytes for every message (matching `PROTOCOL.md`'s
//! layouts), committed fixtures decoded forever after, round-trip and never-panic
//! properties, the fuzz seed corpora replayed, and the hash that ties `message.rs` to the
//! spec.
//!
//! A failing golden or fixture test means the bytes on the wire changed: that breaks every
//! deployed peer, so change `PROTOCOL.md` (and the protocol version) rather than the test.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::check;
use crate::codec;
use crate::model::{
    ChunkRef, Counter, DeviceId, EntryKind, FileRecord, FolderId, Hash, RelPath, ShortId,
    VersionVector,
};
use crate::wire::{
    ChunkEdit, ChunkOp, Close, CloseCode, ClusterConfig, DeltaOp, DeltaRequest, EditBatch,
    EditedRecord, ErrorCode, FolderShare, FrameDecoder, FrameError, Hello, IndexBatch, MAX_FRAME,
    Message, NewChunk, Request, Resend, Response, ResponseBody, decode_frame, encode_frame,
};

// ---------------------------------------------------------------------------------------
// Sample values, shared by the golden tests and the fixtures.

const DEV: u64 = 0x0123_4567_89ab_cdef;

fn folder() -> FolderId {
    FolderId::new("docs").unwrap()
}

fn path(text: &str) -> RelPath {
    RelPath::new(text).unwrap()
}

fn vv(pairs: &[(u64, u64)]) -> VersionVector {
    VersionVector::from_counters(
        pairs.iter().map(|&(id, value)| Counter { id: ShortId::new(id), value }),
    )
}

fn hello() -> Message {
    Message::Hello(Hello {
        protocol_version: 1,
        device_name: "laptop".into(),
        client_version: "tandem 0.1.0".into(),
    })
}

fn cluster_config() -> Message {
    Message::ClusterConfig(ClusterConfig {
        folders: vec![FolderShare {
            id: folder(),
            index_id: 0x0102_0304_0506_0708,
            seen_index_id: 0,
            seen_sequence: 300,
        }],
    })
}

fn file_record() -> FileRecord {
    FileRecord {
        path: path("a/b.txt"),
        kind: EntryKind::File,
        size: 5,
        mtime_ns: 1_700_000_000_123_456_789,
        mode: 0o644,
        symlink_target: None,
        hash: Hash::from_bytes([0xAA; 32]),
        chunks: vec![ChunkRef { offset: 0, len: 5, hash: Hash::from_bytes([0xBB; 32]) }],
        version: vv(&[(DEV, 1_700_000_000)]),
        sequence: 7,
        deleted: false,
        modified_by: ShortId::new(DEV),
    }
}

fn index() -> Message {
    Message::Index(IndexBatch { folder: folder(), records: vec![file_record()], first: true })
}

fn index_update() -> Message {
    let symlink = FileRecord {
        path: path("l"),
        kind: EntryKind::Symlink,
        size: 0,
        mtime_ns: -1,
        mode: 0o777,
        symlink_target: Some("a/b.txt".into()),
        hash: Hash::from_bytes([0xCC; 32]),
        chunks: Vec::new(),
        version: vv(&[(1, 2), (300, 5)]),
        sequence: 8,
        deleted: false,
        modified_by: ShortId::new(300),
    };
    let tombstone = FileRecord {
        path: path("d"),
        kind: EntryKind::Dir,
        size: 0,
        mtime_ns: 0,
        mode: 0,
        symlink_target: None,
        hash: Hash::ZERO,
        chunks: Vec::new(),
        version: vv(&[(1, 3)]),
        sequence: 9,
        deleted: true,
        modified_by: ShortId::new(1),
    };
    Message::IndexUpdate(IndexBatch {
        folder: folder(),
        records: vec![symlink, tombstone],
        first: false,
    })
}

fn index_edits() -> Message {
    let record = FileRecord { chunks: Vec::new(), ..file_record() };
    let edit = ChunkEdit {
        base_sequence: 5,
        base_hash: Hash::from_bytes([0xDD; 32]),
        ops: vec![
            ChunkOp::Keep { start: 0, count: 3 },
            ChunkOp::Add(vec![NewChunk { len: 5, hash: Hash::from_bytes([0xBB; 32]) }]),
        ],
    };
    Message::IndexEdits(EditBatch {
        folder: folder(),
        records: vec![EditedRecord { record, edit: Some(edit) }],
    })
}

fn delta_request() -> Message {
    let Message::Request(request) = request() else { unreachable!() };
    let have = vec![NewChunk { len: 4096, hash: Hash::from_bytes([0xEE; 32]) }];
    Message::DeltaRequest(DeltaRequest { request, have })
}

fn response_delta() -> Message {
    let ops = vec![DeltaOp::Have(0), DeltaOp::Bytes(b"new".to_vec())];
    Message::Response(Response { id: 42, body: ResponseBody::Delta(ops) })
}

fn resend() -> Message {
    Message::Resend(Resend { folder: folder(), paths: vec![path("a/b.txt")] })
}

fn request() -> Message {
    Message::Request(Request {
        id: 42,
        folder: folder(),
        path: path("a/b.txt"),
        offset: 65_536,
        size: 4 << 20,
        hash: Hash::from_bytes([0xBB; 32]),
    })
}

fn response_data() -> Message {
    Message::Response(Response { id: 42, body: ResponseBody::Data(b"hello".to_vec()) })
}

fn response_error() -> Message {
    Message::Response(Response { id: 43, body: ResponseBody::Error(ErrorCode::Busy) })
}

fn close() -> Message {
    Message::Close(Close { code: CloseCode::Duplicate, reason: "dup".into() })
}

/// Concatenates byte pieces, so a 32-byte hash can be written `&[0xAA; 32]`.
fn cat(pieces: &[&[u8]]) -> Vec<u8> {
    pieces.concat()
}

// ---------------------------------------------------------------------------------------
// bincode 2 as configured by `proto::codec`: every rule PROTOCOL.md states.

fn check_encoding<T>(value: T, expected: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = codec::encode(&value);
    assert_eq!(bytes, expected, "encoding of {value:?}");
    assert_eq!(codec::decode::<T>(expected).unwrap(), value, "decoding of {expected:02X?}");
}

fn check_refused<T: serde::de::DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
    let decoded = codec::decode::<T>(bytes);
    assert!(decoded.is_err(), "{bytes:02X?} decoded to {decoded:?}");
}

#[test]
fn unsigned_integers_are_varints_with_tags_251_to_253() {
    check_encoding(0u64, &[0x00]);
    check_encoding(250u64, &[0xFA]);
    check_encoding(251u64, &[0xFB, 0xFB, 0x00]);
    check_encoding(300u64, &[0xFB, 0x2C, 0x01]);
    check_encoding(65_535u64, &[0xFB, 0xFF, 0xFF]);
    check_encoding(65_536u64, &[0xFC, 0x00, 0x00, 0x01, 0x00]);
    check_encoding(u64::from(u32::MAX), &[0xFC, 0xFF, 0xFF, 0xFF, 0xFF]);
    check_encoding(1u64 << 32, &[0xFD, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00]);
    check_encoding(u64::MAX, &[0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    check_encoding(420u32, &[0xFB, 0xA4, 0x01]);
    check_encoding(u32::MAX, &[0xFC, 0xFF, 0xFF, 0xFF, 0xFF]);
    check_encoding(
        u128::from(u64::MAX) + 1,
        &cat(&[&[0xFE], &[0, 0, 0, 0, 0, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0]]),
    );
}

#[test]
fn varint_tags_wider_than_the_field_and_tag_255_are_refused() {
    check_refused::<u32>(&[0xFD, 0, 0, 0, 0, 0, 0, 0, 0]);
    check_refused::<u64>(&cat(&[&[0xFE], &[0; 16]]));
    check_refused::<u64>(&[0xFF]);
    check_refused::<u64>(&[0xFB, 0x01]);
}

#[test]
fn longer_than_needed_varints_are_accepted_by_this_decoder() {
    // PROTOCOL.md: encoders must use the shortest form; tandem's decoder tolerates others.
    assert_eq!(codec::decode::<u64>(&[0xFB, 0x05, 0x00]).unwrap(), 5);
    assert_eq!(codec::decode::<u64>(&[0xFC, 0x05, 0x00, 0x00, 0x00]).unwrap(), 5);
}

#[test]
fn signed_integers_are_zigzag_varints() {
    check_encoding(0i64, &[0x00]);
    check_encoding(-1i64, &[0x01]);
    check_encoding(1i64, &[0x02]);
    check_encoding(-2i64, &[0x03]);
    check_encoding(125i64, &[0xFA]);
    check_encoding(-126i64, &[0xFB, 0xFB, 0x00]);
    check_encoding(i64::MAX, &[0xFD, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    check_encoding(i64::MIN, &[0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
}

#[test]
fn bools_options_strings_and_sequences_have_their_documented_layout() {
    check_encoding(false, &[0x00]);
    check_encoding(true, &[0x01]);
    check_refused::<bool>(&[0x02]);
    check_encoding(None::<String>, &[0x00]);
    check_encoding(Some("ab".to_string()), &[0x01, 0x02, b'a', b'b']);
    check_refused::<Option<String>>(&[0x02, 0x00]);
    check_encoding(String::new(), &[0x00]);
    check_encoding("é".to_string(), &[0x02, 0xC3, 0xA9]);
    check_refused::<String>(&[0x01, 0xFF]);
    check_encoding(vec![1u8, 2, 255], &[0x03, 0x01, 0x02, 0xFF]);
    check_encoding(vec![300u64], &[0x01, 0xFB, 0x2C, 0x01]);
    check_encoding([7u8; 32], &[7u8; 32]);
}

#[test]
fn enums_are_a_varint_variant_index_then_the_fields() {
    check_encoding(EntryKind::File, &[0x00]);
    check_encoding(EntryKind::Dir, &[0x01]);
    check_encoding(EntryKind::Symlink, &[0x02]);
    check_refused::<EntryKind>(&[0x03]);
    let codes = [
        ErrorCode::NotShared,
        ErrorCode::NoSuchFile,
        ErrorCode::Changed,
        ErrorCode::Invalid,
        ErrorCode::Io,
        ErrorCode::Busy,
    ];
    for (tag, code) in (0u8..).zip(codes) {
        check_encoding(code, &[tag]);
    }
    check_refused::<ErrorCode>(&[0x06]);
    let closes = [
        CloseCode::Shutdown,
        CloseCode::ProtocolError,
        CloseCode::VersionMismatch,
        CloseCode::Duplicate,
    ];
    for (tag, code) in (0u8..).zip(closes) {
        check_encoding(code, &[tag]);
        assert_eq!(code.as_u32(), u32::from(tag), "QUIC close code of {code:?}");
    }
    check_refused::<CloseCode>(&[0x04]);
}

#[test]
fn trailing_bytes_are_refused() {
    check_refused::<u64>(&[0x01, 0x00]);
    check_refused::<Message>(&[0x06, 0x06]);
}

#[test]
fn model_values_have_their_documented_layout() {
    check_encoding(ShortId::new(DEV), &[0xFD, 0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01]);
    check_encoding(Hash::from_bytes([0x11; 32]), &[0x11; 32]);
    check_encoding(folder(), b"\x04docs");
    check_encoding(path("a/b"), b"\x03a/b");
    check_encoding(
        ChunkRef { offset: 1, len: 2, hash: Hash::from_bytes([0x22; 32]) },
        &cat(&[&[0x01, 0x02], &[0x22; 32]]),
    );
    check_encoding(vv(&[(1, 2), (300, 5)]), &[0x02, 0x01, 0x02, 0xFB, 0x2C, 0x01, 0x05]);
    check_encoding(VersionVector::new(), &[0x00]);
}

/// The device id text form, computed step by step as PROTOCOL.md section 3.1 says.
fn spec_device_id_text(bytes: &[u8; 32]) -> String {
    let data = data_encoding::BASE32_NOPAD.encode(bytes);
    let mut key = [0u8; 32];
    key[..28].copy_from_slice(b"tandem device id checksum v1");
    let digest = blake3::keyed_hash(&key, data.as_bytes());
    let check = data_encoding::BASE32_NOPAD.encode(&digest.as_bytes()[..3]);
    let text = format!("{data}{}", &check[..4]);
    let groups: Vec<&str> = (0..8).map(|g| &text[g * 7..g * 7 + 7]).collect();
    groups.join("-")
}

#[test]
fn device_ids_have_the_documented_text_form_and_short_id() {
    let spki = b"a SubjectPublicKeyInfo";
    let id = DeviceId::from_public_key_info(spki);
    assert_eq!(id.as_bytes(), blake3::hash(spki).as_bytes());
    for bytes in [*id.as_bytes(), [0; 32], [0xFF; 32]] {
        let id = DeviceId::from_bytes(bytes);
        let text = spec_device_id_text(&bytes);
        assert_eq!(id.to_string(), text);
        assert_eq!(text.to_lowercase().replace('-', " ").parse::<DeviceId>(), Ok(id));
        let short = u64::from_be_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(id.short(), ShortId::new(short));
        assert_eq!(id.short().to_string(), text[..7]);
    }
    // [0xFF; 32] ends in base32 '7' + 'Q' (1 bit used): 'R' sets an unused bit.
    let data = data_encoding::BASE32_NOPAD.encode(&[0xFF; 32]);
    assert!(data.ends_with('Q'));
    let mut key = [0u8; 32];
    key[..28].copy_from_slice(b"tandem device id checksum v1");
    let bad = format!("{}R", &data[..51]);
    let check = data_encoding::BASE32_NOPAD
        .encode(&blake3::keyed_hash(&key, bad.as_bytes()).as_bytes()[..3]);
    assert!(format!("{bad}{}", &check[..4]).parse::<DeviceId>().is_err());
}

#[test]
fn decoding_normalizes_version_vectors() {
    // Unsorted, a duplicate id and a zero counter: sorted, maximum kept, zero dropped.
    let bytes = [0x04, 0x02, 0x01, 0x01, 0x07, 0x01, 0x03, 0x05, 0x00];
    assert_eq!(codec::decode::<VersionVector>(&bytes).unwrap(), vv(&[(1, 7), (2, 1)]));
}

#[test]
fn hostile_names_fail_the_whole_message() {
    for bad in ["", "/etc/passwd", "../x", "a//b", "a/./b", "a\0b", "a\u{7f}", "a\u{9f}", "a\\b"] {
        let mut request = codec::encode(&request());
        // Tag 04, id 2A, folder 04 "docs", then the path's length and bytes.
        let rest = request.split_off(7);
        let tail = &rest[1 + 7..];
        let bytes = cat(&[&request, &codec::encode(&bad.to_string()), tail]);
        check_refused::<Message>(&bytes);
    }
    for bad in ["", ".x", "a/b", "é", &"x".repeat(65)] {
        let bytes = cat(&[&[0x01, 0x01], &codec::encode(&bad.to_string()), &[0, 0, 0]]);
        check_refused::<Message>(&bytes);
    }
    let good = cat(&[&[0x01, 0x01], &codec::encode(&"x".to_string()), &[0, 0, 0]]);
    assert!(codec::decode::<Message>(&good).is_ok());
}

// ---------------------------------------------------------------------------------------
// Golden bytes of every message: the byte layouts in PROTOCOL.md, field by field.

fn golden() -> Vec<(&'static str, Message, Vec<u8>)> {
    vec![
        ("hello", hello(), cat(&[&[0x00, 0x01, 0x06], b"laptop", &[0x0C], b"tandem 0.1.0"])),
        (
            "cluster_config",
            cluster_config(),
            cat(&[
                &[0x01, 0x01],                                           // ClusterConfig, 1 folder
                b"\x04docs",                                             // id
                &[0xFD, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01], // index_id
                &[0x00],                                                 // seen_index_id
                &[0xFB, 0x2C, 0x01],                                     // seen_sequence 300
            ]),
        ),
        ("index", index(), cat(&[&[0x02], b"\x04docs", &[0x01], &file_record_bytes(), &[0x01]])),
        ("index_update", index_update(), index_update_bytes()),
        (
            "request",
            request(),
            cat(&[
                &[0x04, 0x2A],                   // Request, id 42
                b"\x04docs",                     // folder
                b"\x07a/b.txt",                  // path
                &[0xFC, 0x00, 0x00, 0x01, 0x00], // offset 65536
                &[0xFC, 0x00, 0x00, 0x40, 0x00], // size 4 MiB
                &[0xBB; 32],                     // hash
            ]),
        ),
        ("response_data", response_data(), cat(&[&[0x05, 0x2A, 0x00, 0x05], b"hello"])),
        ("response_error", response_error(), vec![0x05, 0x2B, 0x01, 0x05]),
        ("ping", Message::Ping, vec![0x06]),
        ("close", close(), cat(&[&[0x07, 0x03, 0x03], b"dup"])),
        (
            "index_edits",
            index_edits(),
            cat(&[
                &[0x08],
                b"\x04docs",
                &[0x01],                    // 1 record
                &file_record_bytes()[..55], // path … hash
                &[0x00],                    // no chunks
                &file_record_bytes()[90..], // version … modified_by
                &[0x01, 0x05],              // Some(edit), base_sequence 5
                &[0xDD; 32],                // base_hash
                &[0x02, 0x00, 0x00, 0x03],  // 2 ops: Keep start 0, count 3
                &[0x01, 0x01, 0x05],        // Add 1 chunk, len 5
                &[0xBB; 32],                //   its hash
            ]),
        ),
        ("resend", resend(), cat(&[&[0x09], b"\x04docs", &[0x01], b"\x07a/b.txt"])),
        (
            "delta_request",
            delta_request(),
            cat(&[
                &[0x0A],                         // DeltaRequest
                &codec::encode(&request())[1..], // the Request's fields (no tag)
                &[0x01, 0xFB, 0x00, 0x10],       // 1 piece held: len 4096
                &[0xEE; 32],                     //   its hash
            ]),
        ),
        (
            "response_delta",
            response_delta(),
            cat(&[&[0x05, 0x2A, 0x02, 0x02, 0x00, 0x00, 0x01, 0x03], b"new"]),
        ),
    ]
}

/// Messages that protocol version 2 added: their fixtures live in `fixtures/wire-v2`.
const V2_MESSAGES: [&str; 4] = ["index_edits", "resend", "delta_request", "response_delta"];

fn file_record_bytes() -> Vec<u8> {
    cat(&[
        b"\x07a/b.txt",                                          // path
        &[0x00],                                                 // kind File
        &[0x05],                                                 // size
        &[0xFD, 0x2A, 0x9A, 0x0B, 0x7B, 0xFC, 0x39, 0x2F, 0x2F], // mtime_ns, zigzag
        &[0xFB, 0xA4, 0x01],                                     // mode 0o644
        &[0x00],                                                 // symlink_target None
        &[0xAA; 32],                                             // hash
        &[0x01, 0x00, 0x05],                                     // 1 chunk: offset 0, len 5
        &[0xBB; 32],                                             //   chunk hash
        &[0x01],                                                 // version: 1 counter
        &[0xFD, 0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01], //   id
        &[0xFC, 0x00, 0xF1, 0x53, 0x65],                         //   value 1,700,000,000
        &[0x07],                                                 // sequence
        &[0x00],                                                 // deleted false
        &[0xFD, 0xEF, 0xCD, 0xAB, 0x89, 0x67, 0x45, 0x23, 0x01], // modified_by
    ])
}

fn index_update_bytes() -> Vec<u8> {
    cat(&[
        &[0x03],
        b"\x04docs",
        &[0x02], // 2 records
        // symlink "l"
        b"\x01l",
        &[0x02, 0x00, 0x01],                         // Symlink, size 0, mtime -1
        &[0xFB, 0xFF, 0x01],                         // mode 0o777
        b"\x01\x07a/b.txt",                          // Some(target)
        &[0xCC; 32],                                 // hash
        &[0x00],                                     // no chunks
        &[0x02, 0x01, 0x02, 0xFB, 0x2C, 0x01, 0x05], // version {1: 2, 300: 5}
        &[0x08, 0x00, 0xFB, 0x2C, 0x01],             // sequence 8, live, modified_by 300
        // tombstone of directory "d"
        b"\x01d",
        &[0x01, 0x00, 0x00, 0x00, 0x00], // Dir, size 0, mtime 0, mode 0, no target
        &[0x00; 32],                     // hash zero
        &[0x00],                         // no chunks
        &[0x01, 0x01, 0x03],             // version {1: 3}
        &[0x09, 0x01, 0x01],             // sequence 9, deleted, modified_by 1
        &[0x00],                         // first false
    ])
}

#[test]
fn every_message_has_its_golden_bytes() {
    for (name, message, expected) in golden() {
        assert_eq!(codec::encode(&message), expected, "{name}");
        assert_eq!(codec::decode::<Message>(&expected).unwrap(), message, "{name}");
    }
}

#[test]
fn a_frame_is_a_big_endian_length_then_the_body() {
    assert_eq!(encode_frame(&Message::Ping).unwrap(), [0x00, 0x00, 0x00, 0x01, 0x06]);
    let frame = encode_frame(&hello()).unwrap();
    assert_eq!(frame[..4], [0x00, 0x00, 0x00, 0x16]);
    assert_eq!(frame.len(), 4 + 0x16);
}

// ---------------------------------------------------------------------------------------
// Frame errors.

#[test]
fn frame_errors_are_the_documented_ones() {
    let too_large = ((MAX_FRAME + 1) as u32).to_be_bytes();
    assert!(matches!(decode_frame(&too_large), Err(FrameError::TooLarge(_))));
    let mut at_limit = FrameDecoder::default();
    at_limit.push(&(MAX_FRAME as u32).to_be_bytes()).unwrap();
    assert_eq!(at_limit.wanted(), MAX_FRAME);
    assert!(matches!(decode_frame(&[0, 0, 0, 0]), Err(FrameError::Empty)));
    assert!(matches!(decode_frame(&[0, 0, 0, 1, 0x08]), Err(FrameError::Malformed(_))));
    assert!(matches!(decode_frame(&[0, 0, 0, 2, 0x06, 0x06]), Err(FrameError::Malformed(_))));
    assert!(matches!(decode_frame(&[0, 0, 0, 2, 0x06]), Err(FrameError::Truncated(5))));
    assert!(matches!(decode_frame(&[0, 0]), Err(FrameError::Truncated(2))));
}

#[test]
fn a_string_longer_than_the_frame_limit_is_refused_before_it_is_allocated() {
    // Close, code 0, a reason claiming 20 MiB (past MAX_FRAME, within codec::MAX_ENCODED).
    let body = cat(&[&[0x07, 0x00, 0xFC], &(20u32 << 20).to_le_bytes()]);
    let frame = cat(&[&(body.len() as u32).to_be_bytes(), &body]);
    let err = decode_frame(&frame).unwrap_err().to_string();
    assert!(err.contains("LimitExceeded"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Committed fixtures: frames written once by an earlier tandem, decoded forever after.

fn fixtures_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/wire-v{version}"))
}

/// Writes the fixtures that do not exist yet (never overwrites one): run once with
/// `TANDEM_WRITE_MISSING_FIXTURES=1` when a message is added.
fn write_missing_fixtures() {
    for (name, message, _) in golden() {
        let dir = fixtures_dir(if V2_MESSAGES.contains(&name) { 2 } else { 1 });
        let file = dir.join(format!("{name}.bin"));
        if !file.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&file, encode_frame(&message).unwrap()).unwrap();
        }
    }
}

#[test]
fn committed_fixtures_decode_to_their_messages() {
    if std::env::var_os("TANDEM_WRITE_MISSING_FIXTURES").is_some() {
        write_missing_fixtures();
    }
    let expected = golden();
    let mut seen = 0;
    let files = [1, 2].into_iter().flat_map(|v| std::fs::read_dir(fixtures_dir(v)).unwrap());
    for entry in files {
        let file = entry.unwrap().path();
        let name = file.file_stem().unwrap().to_str().unwrap().to_string();
        let (_, message, _) = expected
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("fixture {name} has no expected value"));
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(&decode_frame(&bytes).unwrap(), message, "fixture {name}");
        seen += 1;
    }
    assert_eq!(seen, expected.len(), "a message has no fixture: see write_missing_fixtures");
}

// ---------------------------------------------------------------------------------------
// The hash that ties message.rs to PROTOCOL.md (rust-analyzer's trick).

#[test]
fn protocol_md_records_the_hash_of_message_rs() {
    let actual = blake3::hash(include_bytes!("message.rs")).to_hex();
    let spec = include_str!("../../PROTOCOL.md");
    let line = format!("message.rs BLAKE3: {actual}");
    assert!(
        spec.contains(&line),
        "proto/src/wire/message.rs changed: update proto/PROTOCOL.md to describe the new \
         messages, then set its hash line to `{line}`"
    );
}

// ---------------------------------------------------------------------------------------
// Fuzz seed corpora, replayed on stable.

#[test]
fn every_fuzz_seed_passes_its_check() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    let mut n_seeds = 0;
    for target in std::fs::read_dir(&seeds).unwrap() {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_str().unwrap().to_string();
        let check: fn(&[u8]) = match name.as_str() {
            "rel_path" => check::check_rel_path,
            "record_decode" => check::check_record_decode,
            "edit_apply" => check::check_edit_apply,
            "version_decode" => check::check_version_decode,
            "device_id" => check::check_device_id,
            "frame_decode" => check::check_frame_decode,
            "message_roundtrip" => check::check_message_roundtrip,
            other => panic!("fuzz/seeds/{other} names no fuzz target"),
        };
        for seed in std::fs::read_dir(&target).unwrap() {
            check(&std::fs::read(seed.unwrap().path()).unwrap());
            n_seeds += 1;
        }
    }
    assert!(n_seeds >= 6, "only {n_seeds} seeds found in {}", seeds.display());
}

// ---------------------------------------------------------------------------------------
// Properties.

fn arb_rel_path() -> impl Strategy<Value = RelPath> {
    "[a-zA-Z0-9 ._é-]{1,12}(/[a-zA-Z0-9 ._-]{1,12}){0,3}"
        .prop_filter_map("valid path", |text| RelPath::new(text).ok())
}

fn arb_folder_id() -> impl Strategy<Value = FolderId> {
    "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,63}".prop_map(|text| FolderId::new(text).unwrap())
}

fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash::from_bytes)
}

fn arb_version() -> impl Strategy<Value = VersionVector> {
    proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5).prop_map(|pairs| vv(&pairs))
}

fn arb_entry_kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![Just(EntryKind::File), Just(EntryKind::Dir), Just(EntryKind::Symlink)]
}

fn arb_chunk() -> impl Strategy<Value = ChunkRef> {
    (any::<u64>(), any::<u32>(), arb_hash()).prop_map(|(offset, len, hash)| ChunkRef {
        offset,
        len,
        hash,
    })
}

fn arb_file_record() -> impl Strategy<Value = FileRecord> {
    let content = (
        arb_rel_path(),
        arb_entry_kind(),
        any::<u64>(),
        any::<i64>(),
        any::<u32>(),
        proptest::option::of(".{0,20}"),
        arb_hash(),
        proptest::collection::vec(arb_chunk(), 0..4),
    );
    let history = (arb_version(), any::<u64>(), any::<bool>(), any::<u64>());
    (content, history).prop_map(
        |(
            (path, kind, size, mtime_ns, mode, symlink_target, hash, chunks),
            (version, sequence, deleted, modified_by),
        )| FileRecord {
            path,
            kind,
            size,
            mtime_ns,
            mode,
            symlink_target,
            hash,
            chunks,
            version,
            sequence,
            deleted,
            modified_by: ShortId::new(modified_by),
        },
    )
}

fn arb_index_batch() -> impl Strategy<Value = IndexBatch> {
    (arb_folder_id(), proptest::collection::vec(arb_file_record(), 0..4), any::<bool>())
        .prop_map(|(folder, records, first)| IndexBatch { folder, records, first })
}

fn arb_edit() -> impl Strategy<Value = Option<ChunkEdit>> {
    let op = prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(start, count)| ChunkOp::Keep { start, count }),
        proptest::collection::vec((any::<u32>(), arb_hash()), 0..3).prop_map(|chunks| {
            ChunkOp::Add(chunks.into_iter().map(|(len, hash)| NewChunk { len, hash }).collect())
        }),
    ];
    proptest::option::of(
        (any::<u64>(), arb_hash(), proptest::collection::vec(op, 0..4)).prop_map(
            |(base_sequence, base_hash, ops)| ChunkEdit { base_sequence, base_hash, ops },
        ),
    )
}

fn arb_error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::NotShared),
        Just(ErrorCode::NoSuchFile),
        Just(ErrorCode::Changed),
        Just(ErrorCode::Invalid),
        Just(ErrorCode::Io),
        Just(ErrorCode::Busy),
    ]
}

fn arb_close_code() -> impl Strategy<Value = CloseCode> {
    prop_oneof![
        Just(CloseCode::Shutdown),
        Just(CloseCode::ProtocolError),
        Just(CloseCode::VersionMismatch),
        Just(CloseCode::Duplicate),
    ]
}

fn arb_request() -> impl Strategy<Value = Request> {
    (any::<u64>(), arb_folder_id(), arb_rel_path(), any::<u64>(), any::<u32>(), arb_hash())
        .prop_map(|(id, folder, path, offset, size, hash)| Request {
            id,
            folder,
            path,
            offset,
            size,
            hash,
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    let share = (arb_folder_id(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(id, index_id, seen_index_id, seen_sequence)| FolderShare {
            id,
            index_id,
            seen_index_id,
            seen_sequence,
        },
    );
    let (request, request_again) = (arb_request(), arb_request());
    let op = prop_oneof![
        any::<u32>().prop_map(DeltaOp::Have),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(DeltaOp::Bytes),
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(ResponseBody::Data),
        arb_error_code().prop_map(ResponseBody::Error),
        proptest::collection::vec(op, 0..4).prop_map(ResponseBody::Delta),
    ];
    prop_oneof![
        (any::<u32>(), ".{0,20}", ".{0,20}").prop_map(
            |(protocol_version, device_name, client_version)| Message::Hello(Hello {
                protocol_version,
                device_name,
                client_version,
            })
        ),
        proptest::collection::vec(share, 0..4)
            .prop_map(|folders| Message::ClusterConfig(ClusterConfig { folders })),
        arb_index_batch().prop_map(Message::Index),
        arb_index_batch().prop_map(Message::IndexUpdate),
        request.prop_map(Message::Request),
        (any::<u64>(), body).prop_map(|(id, body)| Message::Response(Response { id, body })),
        Just(Message::Ping),
        (arb_close_code(), ".{0,20}")
            .prop_map(|(code, reason)| Message::Close(Close { code, reason })),
        (arb_folder_id(), proptest::collection::vec((arb_file_record(), arb_edit()), 0..3))
            .prop_map(|(folder, records)| Message::IndexEdits(EditBatch {
                folder,
                records: records
                    .into_iter()
                    .map(|(record, edit)| EditedRecord { record, edit })
                    .collect(),
            })),
        (arb_folder_id(), proptest::collection::vec(arb_rel_path(), 0..3))
            .prop_map(|(folder, paths)| Message::Resend(Resend { folder, paths })),
        (request_again, proptest::collection::vec((any::<u32>(), arb_hash()), 0..3)).prop_map(
            |(request, have)| Message::DeltaRequest(DeltaRequest {
                request,
                have: have.into_iter().map(|(len, hash)| NewChunk { len, hash }).collect(),
            })
        ),
    ]
}

/// A mutation of a valid frame: overwrite, insert or delete one byte, or truncate.
#[derive(Clone, Debug)]
enum Mutation {
    Overwrite(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite(at, byte)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len().max(1);
    match *mutation {
        Mutation::Overwrite(at, byte) => {
            if let Some(slot) = bytes.get_mut(at % len) {
                *slot = byte;
            }
        }
        Mutation::Insert(at, byte) => bytes.insert(at % (bytes.len() + 1), byte),
        Mutation::Delete(at) => {
            if !bytes.is_empty() {
                bytes.remove(at % len);
            }
        }
        Mutation::Truncate(at) => bytes.truncate(at % len),
    }
}

proptest! {
    #[test]
    fn every_message_round_trips_through_a_frame(message in arb_message()) {
        let frame = encode_frame(&message).unwrap();
        prop_assert_eq!(decode_frame(&frame).unwrap(), message.clone());
        check::check_message_roundtrip(&frame[4..]);
    }

    #[test]
    fn a_stream_of_messages_decodes_whatever_its_split(
        messages in proptest::collection::vec(arb_message(), 0..5),
        split in any::<u8>(),
    ) {
        let mut data = vec![split];
        for message in &messages {
            data.extend(encode_frame(message).unwrap());
        }
        check::check_frame_decode(&data);
        let mut decoder = FrameDecoder::default();
        decoder.push(&data[1..]).unwrap();
        for message in &messages {
            prop_assert_eq!(&decoder.next_message().unwrap().unwrap(), message);
        }
        prop_assert!(decoder.finish().is_ok());
    }

    #[test]
    fn decoding_random_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        check::check_message_roundtrip(&data);
        let mut framed = vec![data.first().copied().unwrap_or(0)];
        framed.extend((data.len() as u32).to_be_bytes());
        framed.extend(&data);
        check::check_frame_decode(&framed);
    }

    #[test]
    fn decoding_mutated_frames_never_panics(
        messages in proptest::collection::vec(arb_message(), 1..3),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        split in any::<u8>(),
    ) {
        let mut stream = Vec::new();
        for message in &messages {
            stream.extend(encode_frame(message).unwrap());
        }
        for m in &mutations {
            mutate(&mut stream, m);
        }
        let mut data = vec![split];
        data.extend(&stream);
        check::check_frame_decode(&data);
        if stream.len() > 4 {
            check::check_message_roundtrip(&stream[4..]);
        }
    }
}

#[test]
fn every_chunk_a_record_may_list_fits_one_request() {
    assert_eq!(crate::model::MAX_CHUNK, crate::wire::MAX_REQUEST);
}
