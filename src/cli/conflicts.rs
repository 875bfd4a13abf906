//! `tandem conflicts`: every conflict copy in every folder, found on disk (so it works
//! whether or not a daemon holds the index), in the `--json` schema of CLI.md.

use serde::Serialize;
use tandem_proto::rules::parse_conflict_name;

use crate::cli::local::rfc3339;
use crate::cli::print_json;
use crate::config::{Config, FolderConfig};
use crate::home::Home;
use crate::scan::walk::{Filter, WalkItem, walk};

/// One conflict copy (CLI.md `conflicts --json`; fields may be added, never renamed).
#[derive(Debug, Serialize)]
pub(crate) struct ConflictJson {
    pub(crate) folder: String,
    pub(crate) path: String,
    pub(crate) original: String,
    pub(crate) device: String,
    pub(crate) size: u64,
    pub(crate) modified: String,
}

pub(super) fn conflicts(home: &Home, json: bool) -> anyhow::Result<()> {
    let config = Config::load(home)?;
    let mut rows = Vec::new();
    for folder in &config.folders {
        rows.extend(folder_conflicts(folder, home.canonical())?);
    }
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no conflicts");
    }
    for row in &rows {
        println!(
            "{}: {}  (conflict copy of {}, made by {}, {})",
            row.folder, row.path, row.original, row.device, row.modified
        );
    }
    Ok(())
}

/// The conflict copies in one folder, in path order.
pub(crate) fn folder_conflicts(
    folder: &FolderConfig,
    skip: Option<std::path::PathBuf>,
) -> anyhow::Result<Vec<ConflictJson>> {
    let filter = Filter::new(&folder.path, skip)?;
    let mut rows = Vec::new();
    walk(&folder.path, &filter, |item| {
        let WalkItem::Entry { path, meta, .. } = item else { return };
        let Some(copy) = parse_conflict_name(path.file_name()) else { return };
        let original = match path.parent() {
            Some(parent) => format!("{parent}/{}", copy.original),
            None => copy.original,
        };
        let mtime_ns = std::os::unix::fs::MetadataExt::mtime(&meta)
            .saturating_mul(1_000_000_000)
            .saturating_add(std::os::unix::fs::MetadataExt::mtime_nsec(&meta));
        rows.push(ConflictJson {
            folder: folder.id.to_string(),
            path: path.to_string(),
            original,
            device: copy.device,
            size: meta.len(),
            modified: rfc3339(mtime_ns),
        });
    });
    rows.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(rows)
}
