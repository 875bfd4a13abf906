//! The folder walk: walkdir over the root without following symlinks, pruning what
//! `.tandemignore` excludes, tandem's own temp files and state, and a tandem home that lies
//! inside the folder.
//!
//! Names that are not valid UTF-8 or that `RelPath` refuses are reported, not recorded; a
//! directory that cannot be read is reported and its subtree marked unknown, so the scanner
//! never mistakes "could not look" for "deleted".

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use tandem_proto::model::RelPath;
use walkdir::WalkDir;

/// The ignore file in a folder root (gitignore syntax).
pub const IGNORE_FILE: &str = ".tandemignore";
/// Prefix of tandem's temp files; they are never scanned.
pub const TEMP_PREFIX: &str = ".tandem-tmp-";
/// tandem's per-folder state directory in the root (trash, markers); never scanned.
pub const STATE_DIR: &str = ".tandem";

/// One thing the walk found.
pub enum WalkItem {
    /// An entry to record, with its `lstat` metadata.
    Entry {
        /// Relative path.
        path: RelPath,
        /// Absolute path.
        abs: PathBuf,
        /// Metadata from `lstat`.
        meta: Metadata,
    },
    /// Something that could not be recorded.
    Problem {
        /// The path, lossily converted for display.
        path: String,
        /// Why.
        error: String,
        /// The path is a directory whose contents are unknown.
        unknown_subtree: Option<RelPath>,
    },
}

/// What to leave out of a walk.
pub struct Filter {
    root: PathBuf,
    ignore: Gitignore,
    skip_dir: Option<PathBuf>,
}

impl Filter {
    /// Reads `.tandemignore` in `root`; `skip_dir` (the tandem home) is left out if inside.
    pub fn new(root: &Path, skip_dir: Option<PathBuf>) -> Result<Self, ignore::Error> {
        let mut builder = GitignoreBuilder::new(root);
        let ignore_path = root.join(IGNORE_FILE);
        if ignore_path.is_file()
            && let Some(err) = builder.add(&ignore_path)
        {
            return Err(err);
        }
        Ok(Self { root: root.to_path_buf(), ignore: builder.build()?, skip_dir })
    }

    /// True when a path is excluded from sync (and must not be treated as deleted).
    pub fn excludes(&self, path: &RelPath, is_dir: bool) -> bool {
        let name = path.file_name();
        name.starts_with(TEMP_PREFIX)
            || path.as_str() == STATE_DIR
            || path.as_str().starts_with(".tandem/")
            || self.ignore.matched_path_or_any_parents(path.as_str(), is_dir).is_ignore()
            || self.skip_dir.as_deref().is_some_and(|skip| skip == self.root.join(path.as_str()))
    }
}

/// Walks `root`, calling `visit` for every entry and problem, in directory order.
pub fn walk(root: &Path, filter: &Filter, visit: impl FnMut(WalkItem)) {
    walk_from(root, root, 1, filter, visit);
}

/// Walks the entry `start` under `root` and, when it is a directory, everything below it
/// (a targeted rescan). A `start` that does not exist yields nothing.
pub fn walk_under(root: &Path, start: &Path, filter: &Filter, visit: impl FnMut(WalkItem)) {
    if std::fs::symlink_metadata(start).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
        return;
    }
    walk_from(root, start, 0, filter, visit);
}

fn walk_from(
    root: &Path,
    start: &Path,
    min_depth: usize,
    filter: &Filter,
    mut visit: impl FnMut(WalkItem),
) {
    let walker = WalkDir::new(start).follow_links(false).min_depth(min_depth).into_iter();
    for next in walker.filter_entry(|e| !excluded(root, filter, e)) {
        match next {
            Ok(entry) => visit(entry_item(root, &entry)),
            Err(err) => visit(error_item(root, &err)),
        }
    }
}

fn excluded(root: &Path, filter: &Filter, entry: &walkdir::DirEntry) -> bool {
    match relative(root, entry.path()) {
        Ok(path) => filter.excludes(&path, entry.file_type().is_dir()),
        Err(_) => false, // reported when visited
    }
}

fn entry_item(root: &Path, entry: &walkdir::DirEntry) -> WalkItem {
    let display =
        || entry.path().strip_prefix(root).unwrap_or(entry.path()).to_string_lossy().into_owned();
    let path = match relative(root, entry.path()) {
        Ok(path) => path,
        Err(error) => return WalkItem::Problem { path: display(), error, unknown_subtree: None },
    };
    match entry.metadata() {
        Ok(meta) => WalkItem::Entry { path, abs: entry.path().to_path_buf(), meta },
        Err(err) => WalkItem::Problem {
            path: display(),
            error: err.to_string(),
            unknown_subtree: Some(path),
        },
    }
}

fn error_item(root: &Path, err: &walkdir::Error) -> WalkItem {
    let path =
        err.path().map(|p| p.strip_prefix(root).unwrap_or(p).to_path_buf()).unwrap_or_default();
    let unknown_subtree = err.path().and_then(|p| relative(root, p).ok());
    let error = match err.io_error() {
        Some(io) => io.to_string(),
        None => err.to_string(),
    };
    WalkItem::Problem { path: path.to_string_lossy().into_owned(), error, unknown_subtree }
}

/// The root-relative `RelPath` of an absolute path under `root`.
pub fn relative(root: &Path, abs: &Path) -> Result<RelPath, String> {
    let rel = abs.strip_prefix(root).map_err(|_| "outside the folder root".to_string())?;
    let text = rel.to_str().ok_or_else(|| "name is not valid UTF-8: not synced".to_string())?;
    RelPath::new(text).map_err(|e| format!("unsupported name: {e}"))
}
