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

/// True for the names tandem gives its own temp files: `.tandem-tmp-<name>-<16 hex>` for a
/// download, `.tandem-tmp-link-<64 hex>` for a symlink. Other names that merely start with
/// the prefix belong to the user: never synced (the prefix is reserved) but never removed.
pub fn is_own_temp(name: &str) -> bool {
    let tag = name.strip_prefix(TEMP_PREFIX).and_then(|rest| rest.rsplit_once('-'));
    tag.is_some_and(|(_, tag)| {
        matches!(tag.len(), 16 | 64) && tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
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

/// Walks `root`, calling `visit` for every entry and problem, in directory order. A user's
/// entry whose name starts with the temp-file prefix is reported (after the walk) as not
/// synced.
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
    let mut reserved = Vec::new();
    let walker = WalkDir::new(start).follow_links(false).min_depth(min_depth).into_iter();
    let kept = walker.filter_entry(|e| {
        let excluded = excluded(root, filter, e);
        let name = e.file_name().to_string_lossy();
        if excluded && name.starts_with(TEMP_PREFIX) && !is_own_temp(&name) {
            reserved.push(e.path().strip_prefix(root).unwrap_or(e.path()).to_path_buf());
        }
        !excluded
    });
    for next in kept {
        match next {
            Ok(entry) => visit(entry_item(root, &entry)),
            Err(err) => visit(error_item(root, &err)),
        }
    }
    for path in reserved {
        visit(WalkItem::Problem {
            path: printable(&path),
            error: format!(
                "names starting with {TEMP_PREFIX} are reserved for tandem's temp files: not synced"
            ),
            unknown_subtree: None,
        });
    }
}

fn excluded(root: &Path, filter: &Filter, entry: &walkdir::DirEntry) -> bool {
    match relative(root, entry.path()) {
        Ok(path) => filter.excludes(&path, entry.file_type().is_dir()),
        Err(_) => false, // reported when visited
    }
}

fn entry_item(root: &Path, entry: &walkdir::DirEntry) -> WalkItem {
    let display = || printable(entry.path().strip_prefix(root).unwrap_or(entry.path()));
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
    WalkItem::Problem { path: printable(&path), error, unknown_subtree }
}

/// A path for reports: lossy UTF-8 with control characters escaped (`\n`, `\u{1b}`), so a
/// file's name can neither break a log line in two nor forge one.
fn printable(path: &Path) -> String {
    let text = path.to_string_lossy();
    if !text.chars().any(char::is_control) {
        return text.into_owned();
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

/// The root-relative `RelPath` of an absolute path under `root`.
pub fn relative(root: &Path, abs: &Path) -> Result<RelPath, String> {
    let rel = abs.strip_prefix(root).map_err(|_| "outside the folder root".to_string())?;
    let text = rel.to_str().ok_or_else(|| "name is not valid UTF-8: not synced".to_string())?;
    RelPath::new(text).map_err(|e| format!("unsupported name: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tandem_s_own_temp_names_count_as_its_temp_files() {
        assert!(is_own_temp(".tandem-tmp-report.txt-0123456789abcdef"));
        assert!(is_own_temp(".tandem-tmp-a-b-c-0123456789abcdef"));
        assert!(is_own_temp(&format!(".tandem-tmp-link-{}", "ab".repeat(32))));
        for user in [
            ".tandem-tmp-notes.txt",
            ".tandem-tmp-x-nothex0123456789",
            ".tandem-tmp-x-0123456789ABCDEF",
            ".tandem-tmp-x-0123456789abcde",
            "x.tandem-tmp-y-0123456789abcdef",
        ] {
            assert!(!is_own_temp(user), "{user}");
        }
    }

    #[test]
    fn reported_paths_show_control_characters_escaped() {
        assert_eq!(
            printable(Path::new("dir/new\nline\t\u{1b}[31m")),
            "dir/new\\nline\\t\\u{1b}[31m"
        );
        assert_eq!(printable(Path::new("plain/日本 name")), "plain/日本 name");
    }
}
