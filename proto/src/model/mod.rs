//! Domain values every peer shares: device ids, version vectors, file records and paths.
//!
//! These types are the vocabulary of the rules and of the wire. Their invariants live behind
//! private fields and fallible constructors, so a value that exists is a valid one.

mod device;
mod folder;
mod path;
mod record;
mod version;

pub use device::{DeviceId, DeviceIdError, ShortId};
pub use folder::{FolderId, FolderIdError};
pub use path::{MAX_COMPONENT, MAX_PATH, PathError, RelPath};
pub use record::{
    ChunkListError, ChunkRef, EntryKind, FileRecord, FolderMode, FolderModeError, Hash,
    HashParseError, MAX_CHUNK,
};
pub use version::{Counter, VectorOrdering, VersionVector};
