//! Bytes on the wire: the messages two peers exchange and how they are framed.
//!
//! Everything a second implementation needs is here and in `proto/PROTOCOL.md`, which is
//! normative. Decoding never panics and never allocates more than [`frame::MAX_FRAME`]
//! bytes for one frame, whatever a peer sends.

pub mod edit;
pub mod frame;
pub mod message;

#[cfg(test)]
mod tests;

pub use edit::{ChunkEdit, ChunkOp, EditError, MAX_EDITED_CHUNKS, NewChunk};
pub use frame::{FrameDecoder, FrameError, MAX_FRAME, decode_frame, encode_frame};
pub use message::{
    ALPN, Close, CloseCode, ClusterConfig, DeltaOp, DeltaRequest, EDITS_VERSION, EditBatch,
    EditedRecord, ErrorCode, FolderShare, Hello, IndexBatch, MAX_HAVE, MAX_IN_FLIGHT,
    MAX_INDEX_BATCH, MAX_REQUEST, Message, PIECE_SIZES, PROTOCOL_VERSION, Request, Resend,
    Response, ResponseBody,
};
