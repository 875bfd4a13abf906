//! What wins and what to do: pure functions of records, tested by simulation.
//!
//! Every other layer asks these rules; nothing else decides what wins. For one folder:
//!
//! 1. [`GlobalState::build`]: the global record of every path ([`resolve`], the rule two
//!    implementations must share), from the local index and each peer's announced records.
//! 2. [`plan()`]: an ordered [`Plan`] of [`Step`]s that bring the local folder to the global
//!    state, each with its [`Reason`] and the records to commit once it succeeded. What a
//!    device needs per path is [`need`]; send-only and receive-only effects are applied there.
//! 3. Around them, for the shell: [`scanned_record`] (the version the scanner records for a
//!    change found on disk, which also makes a crash between a step and its commit
//!    harmless), [`is_announced`] (what a receive-only device may send), [`taken_record`]
//!    (what the index holds after taking a version), and the conflict-copy names
//!    ([`conflict_name`], [`parse_conflict_name`]) for the CLI.
//!
//! Every decision carries its [`Reason`] as data, so the CLI can explain any path.

mod conflict;
mod global;
mod plan;

pub use conflict::{
    ConflictCopy, conflict_name, conflict_path, format_timestamp, parse_conflict_name,
    winner_order, winner_reason,
};
pub use global::{
    Collision, GlobalState, Need, Records, Resolution, is_announced, need, resolve, scanned_record,
    taken_record,
};
pub use plan::{Action, LocalChunk, Plan, PlanConfig, Step, plan};

/// Why the rules decided what they did: data, so any decision can be explained later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// One version has seen every other one (or there is only one): it is global.
    Dominates,
    /// Concurrent versions with identical content are one version: vectors merged, no copy.
    IdenticalContentMerge,
    /// Concurrent versions: a modification beats a delete, the file comes back.
    ModifyBeatsDelete,
    /// Concurrent versions: a directory beats a file or symlink, which is kept as a copy.
    DirectoryBeatsFile,
    /// Concurrent versions: the one with the later modification time wins.
    ConcurrentNewerMtime,
    /// Concurrent versions with equal mtimes: the larger device short id wins.
    ConcurrentDeviceTieBreak,
    /// Concurrent versions with equal mtime and device: the larger content hash wins.
    ConcurrentContentTieBreak,
    /// Concurrent versions, but the winner's author had seen the others' contents (they only
    /// live on in records that merged their history when taking a newer version).
    SawConcurrentContent,
    /// Concurrent versions, each of whose contents another one's author had seen and
    /// replaced: none is current, the path is deleted.
    AllContentsSeen,
    /// The global state removes a directory that still has live entries below it: it is
    /// kept, and re-announced so the other replicas keep it too.
    DirectoryHasLiveChildren,
    /// The entry's parent is not (yet) a directory here: the entry waits.
    ParentNotDirectory,
    /// The name collides with another one case-insensitively or after Unicode
    /// normalization; it is reported and not written.
    NameCollision,
    /// A conflict copy's name would be an invalid path (too long): the local version stays.
    ConflictNameInvalid,
    /// Receive-only folder: a local change, not announced, kept until reverted.
    LocalChange,
    /// Send-only folder: the global version differs and is not applied.
    SendOnly,
}

impl Reason {
    /// A short kebab-case name for logs and `--json` output.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Dominates => "dominates",
            Self::IdenticalContentMerge => "identical-content-merge",
            Self::ModifyBeatsDelete => "modify-beats-delete",
            Self::DirectoryBeatsFile => "directory-beats-file",
            Self::ConcurrentNewerMtime => "concurrent-winner-by-mtime",
            Self::ConcurrentDeviceTieBreak => "concurrent-winner-by-device",
            Self::ConcurrentContentTieBreak => "concurrent-winner-by-hash",
            Self::SawConcurrentContent => "saw-concurrent-content",
            Self::AllContentsSeen => "all-contents-seen",
            Self::DirectoryHasLiveChildren => "directory-has-live-children",
            Self::ParentNotDirectory => "parent-not-directory",
            Self::NameCollision => "name-collision",
            Self::ConflictNameInvalid => "conflict-name-invalid",
            Self::LocalChange => "receive-only-local-change",
            Self::SendOnly => "send-only",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
