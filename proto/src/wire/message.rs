//! The protocol messages (version 1). Changing anything here changes the protocol: update
//! `proto/PROTOCOL.md` and its recorded hash of this file in the same change.
//!
//! Records travel as [`FileRecord`]s; decoding one validates its path through `RelPath`, so
//! a hostile name fails the whole frame before any code sees it.

use serde::{Deserialize, Serialize};

use crate::model::{FileRecord, FolderId, Hash, RelPath};
use crate::wire::edit::ChunkEdit;

/// The highest protocol version this implementation speaks. Version 2 adds
/// [`Message::IndexEdits`], [`Message::Resend`] and [`Message::DeltaRequest`]; a connection
/// whose peer speaks only 1 uses none of them (PROTOCOL.md §9.2).
pub const PROTOCOL_VERSION: u32 = 2;

/// The first protocol version with [`Message::IndexEdits`], [`Message::Resend`] and
/// [`Message::DeltaRequest`].
pub const EDITS_VERSION: u32 = 2;

/// Most pieces a [`DeltaRequest`] may say the requester has.
pub const MAX_HAVE: usize = 4096;

/// Piece sizes of a delta (PROTOCOL.md §10.1): FastCDC 2020, normalization level 1, with
/// these minimum, average and maximum sizes, cutting a chunk from its first byte.
pub const PIECE_SIZES: (u32, u32, u32) = (1 << 10, 4 << 10, 16 << 10);

/// The TLS ALPN protocol id.
pub const ALPN: &[u8] = b"tandem/1";

/// Most records in one [`IndexBatch`].
pub const MAX_INDEX_BATCH: usize = 1000;

/// Largest `size` of one [`Request`], in bytes (4 MiB, the largest chunk).
pub const MAX_REQUEST: u32 = 4 << 20;

/// Most requests one peer may have in flight; further ones are answered [`ErrorCode::Busy`].
pub const MAX_IN_FLIGHT: usize = 64;

/// One protocol message. The variant order is the on-wire tag: never reorder, only append.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message on the control stream, both ways.
    Hello(Hello),
    /// The folders shared with the peer and where incremental exchange resumes.
    ClusterConfig(ClusterConfig),
    /// Records of a folder, replacing everything the receiver held from the sender for it
    /// when `first` is set (the first batch of a full exchange), else added to it.
    Index(IndexBatch),
    /// Records that changed since the last batch.
    IndexUpdate(IndexBatch),
    /// A request for bytes of a file (on its own stream).
    Request(Request),
    /// The answer to a request (on the request's stream).
    Response(Response),
    /// Keep-alive; no answer.
    Ping,
    /// The sender is closing the connection.
    Close(Close),
    /// (v2) Records of a folder, some of whose chunk lists are edits of the receiver's own
    /// records; otherwise as `Index`/`IndexUpdate` with `first` unset.
    IndexEdits(EditBatch),
    /// (v2) The receiver could not rebuild these records' chunk lists: send them in full.
    Resend(Resend),
    /// (v2) A request for a chunk as a delta against pieces the requester has (on its own
    /// stream, answered by a [`Response`] whose body is [`ResponseBody::Delta`]).
    DeltaRequest(DeltaRequest),
}

/// Opening message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The highest protocol version the sender speaks.
    pub protocol_version: u32,
    /// The sender's device name (informational).
    pub device_name: String,
    /// The sender's software, e.g. `tandem 0.1.0` (informational).
    pub client_version: String,
}

/// The folders the sender shares with the receiver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// One entry per shared folder.
    pub folders: Vec<FolderShare>,
}

/// One shared folder in a [`ClusterConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderShare {
    /// The folder.
    pub id: FolderId,
    /// The sender's current index id for this folder.
    pub index_id: u64,
    /// The receiver's index id that the sender's copy of the receiver's records came from
    /// (0 if none).
    pub seen_index_id: u64,
    /// The highest sequence of the receiver's records that the sender holds (0 if none).
    /// The receiver sends only later records when `seen_index_id` is its current index id,
    /// else everything.
    pub seen_sequence: u64,
}

/// A batch of records of one folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexBatch {
    /// The folder.
    pub folder: FolderId,
    /// At most [`MAX_INDEX_BATCH`] records, in sequence order.
    pub records: Vec<FileRecord>,
    /// First batch of a full exchange: forget what you held from me for this folder.
    pub first: bool,
}

/// (v2) A batch of records of one folder whose chunk lists may be edits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditBatch {
    /// The folder.
    pub folder: FolderId,
    /// At most [`MAX_INDEX_BATCH`] records, in sequence order.
    pub records: Vec<EditedRecord>,
}

/// (v2) A record whose chunk list may be told as an edit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditedRecord {
    /// The record; its `chunks` are empty when `edit` is set.
    pub record: FileRecord,
    /// The chunk list as an edit of the receiver's own record of the same path.
    pub edit: Option<ChunkEdit>,
}

/// (v2) Paths whose records the sender of this message needs again in full.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resend {
    /// The folder.
    pub folder: FolderId,
    /// At most [`MAX_INDEX_BATCH`] paths.
    pub paths: Vec<RelPath>,
}

/// A request for `size` bytes at `offset` of a file, expected to hash to `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the requester, echoed in the response.
    pub id: u64,
    /// The folder.
    pub folder: FolderId,
    /// The file.
    pub path: RelPath,
    /// Byte offset.
    pub offset: u64,
    /// Byte count, at most [`MAX_REQUEST`].
    pub size: u32,
    /// BLAKE3 of the expected bytes; the responder may refuse bytes that do not match.
    pub hash: Hash,
}

/// (v2) A request for the chunk of `request`, told as pieces the requester already has
/// (`have`, by length and hash) and the bytes of the others.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRequest {
    /// The chunk, as a plain [`Request`] would ask for it.
    pub request: Request,
    /// Pieces the requester holds, at most [`MAX_HAVE`]; [`DeltaOp::Have`] indexes them.
    pub have: Vec<crate::wire::NewChunk>,
}

/// (v2) One piece of a chunk sent as a delta, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// The requester's piece `have[n]`.
    Have(u32),
    /// Bytes the requester does not have.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// Data or an error.
    pub body: ResponseBody,
}

/// The data, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseBody {
    /// The requested bytes (encoded as one length-prefixed byte string, not element by
    /// element: the same bytes on the wire, ten times less CPU).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The request failed.
    Error(ErrorCode),
    /// (v2, only in answer to a [`DeltaRequest`]) the chunk as pieces the requester has and
    /// bytes it has not.
    Delta(Vec<DeltaOp>),
}

/// Why a request failed. The variant order is the on-wire tag: only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ErrorCode {
    /// The folder is not shared with the requester.
    #[error("folder not shared")]
    NotShared,
    /// No such file, or it is not a regular file.
    #[error("no such file")]
    NoSuchFile,
    /// The bytes there no longer match the requested hash (the file changed).
    #[error("content changed")]
    Changed,
    /// The request is malformed or too large.
    #[error("invalid request")]
    Invalid,
    /// Reading failed on the responder.
    #[error("read error")]
    Io,
    /// Too many requests in flight.
    #[error("busy")]
    Busy,
}

/// Why the sender closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// Machine-readable reason.
    pub code: CloseCode,
    /// Human-readable detail.
    pub reason: String,
}

/// Close reasons. The variant order is the on-wire tag: only append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseCode {
    /// Orderly shutdown.
    Shutdown,
    /// The peer broke the protocol.
    ProtocolError,
    /// No common protocol version.
    VersionMismatch,
    /// Another connection to the same device is kept instead.
    Duplicate,
}

impl CloseCode {
    /// The QUIC application close code for this reason.
    pub const fn as_u32(self) -> u32 {
        match self {
            Self::Shutdown => 0,
            Self::ProtocolError => 1,
            Self::VersionMismatch => 2,
            Self::Duplicate => 3,
        }
    }
}
