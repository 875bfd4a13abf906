//! `tandem resolve <FOLDER> <PATH_OR_GLOB> --keep original|copy|newest|both`: end
//! conflicts, one or in bulk. It changes files on disk only — the loser goes to the
//! folder's trash, never away — so the result syncs like any edit (at once through a
//! running daemon's watcher, else at the next `sync`/`serve`).

use anyhow::Context;
use clap::{Args, ValueEnum};
use globset::Glob;
use tandem_proto::model::RelPath;

use crate::cli::conflicts::{ConflictJson, folder_conflicts};
use crate::config::Config;
use crate::home::Home;
use crate::sync::writer::FolderFs;

/// `tandem resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The folder.
    folder_id: String,
    /// The original path, or a glob over original paths (`*.txt`, `docs/**`).
    pattern: String,
    /// What to keep.
    #[arg(long, value_enum)]
    keep: Keep,
}

/// Which version survives at the original path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Keep {
    /// The file at the original path; the copy goes to the trash.
    Original,
    /// The copy's content, moved to the original path; the original goes to the trash.
    Copy,
    /// Whichever was modified last; the other goes to the trash.
    Newest,
    /// Both: the copy is renamed so it is no longer a conflict copy.
    Both,
}

pub(super) fn resolve(home: &Home, args: ResolveArgs) -> anyhow::Result<()> {
    let config = Config::load(home)?;
    let folder = config.folder(&super::setup::parse_folder_id(&args.folder_id)?)?.clone();
    let matcher = Glob::new(&args.pattern)
        .with_context(|| format!("bad pattern {:?}", args.pattern))?
        .compile_matcher();
    let rows: Vec<ConflictJson> = folder_conflicts(&folder, home.canonical())?
        .into_iter()
        .filter(|c| matcher.is_match(&c.original) || c.path == args.pattern)
        .collect();
    if rows.is_empty() {
        anyhow::bail!("no conflict copy of {:?} in folder {}", args.pattern, folder.id);
    }
    let fs = FolderFs::new(folder.path.clone());
    for row in &rows {
        let outcome =
            resolve_one(&fs, row, args.keep).with_context(|| format!("resolving {}", row.path))?;
        println!("{}: {outcome}", row.original);
    }
    Ok(())
}

fn resolve_one(fs: &FolderFs, row: &ConflictJson, keep: Keep) -> anyhow::Result<String> {
    let copy = RelPath::new(row.path.clone())?;
    let original = RelPath::new(row.original.clone())?;
    let original_exists = fs.stat(&original)?.is_some();
    let keep = match keep {
        Keep::Newest if !original_exists || modified(fs, &copy)? > modified(fs, &original)? => {
            Keep::Copy
        }
        Keep::Newest => Keep::Original,
        other => other,
    };
    match keep {
        Keep::Original => {
            let kept = fs.move_to_trash(&copy)?;
            Ok(format!("kept the original; the copy is in {}", kept.display()))
        }
        Keep::Copy => {
            let trashed = if original_exists { Some(fs.move_to_trash(&original)?) } else { None };
            std::fs::rename(fs.abs(&copy), fs.abs(&original))?;
            Ok(match trashed {
                Some(t) => {
                    format!("kept the copy's content; the previous original is in {}", t.display())
                }
                None => "kept the copy's content".to_string(),
            })
        }
        Keep::Both | Keep::Newest => {
            let renamed = free_name(fs, &original, &row.device)?;
            std::fs::rename(fs.abs(&copy), fs.abs(&renamed))?;
            Ok(format!("kept both; the copy is now {renamed}"))
        }
    }
}

fn modified(fs: &FolderFs, rel: &RelPath) -> anyhow::Result<std::time::SystemTime> {
    Ok(std::fs::symlink_metadata(fs.abs(rel))?.modified()?)
}

/// `<stem> (from <device>)<.ext>`, numbered if taken: no longer a conflict-copy name.
fn free_name(fs: &FolderFs, original: &RelPath, device: &str) -> anyhow::Result<RelPath> {
    let name = original.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(at) if at > 0 => name.split_at(at),
        _ => (name, ""),
    };
    for n in 1..1000 {
        let suffix = if n == 1 { String::new() } else { format!(" {n}") };
        let candidate = original.with_file_name(&format!("{stem} (from {device}{suffix}){ext}"))?;
        if fs.stat(&candidate)?.is_none() {
            return Ok(candidate);
        }
    }
    anyhow::bail!("no free name next to {original}")
}
