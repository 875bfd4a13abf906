//! Unit tests of the planner: ordering, local reuse, conflict copies, kind changes, folder
//! modes and name collisions, each through the `check`-style helpers below.

use crate::model::{
    ChunkRef, Counter, EntryKind, FileRecord, FolderMode, Hash, RelPath, ShortId, VersionVector,
};
use crate::rules::{Action, GlobalState, Plan, PlanConfig, Reason, Records, plan};

const ME: ShortId = ShortId::new(1);
const PEER: ShortId = ShortId::new(2);

fn vv(pairs: &[(ShortId, u64)]) -> VersionVector {
    VersionVector::from_counters(pairs.iter().map(|&(id, value)| Counter { id, value }))
}

fn entry(
    path: &str,
    kind: EntryKind,
    content: &str,
    by: ShortId,
    version: &[(ShortId, u64)],
) -> FileRecord {
    let live_file = kind == EntryKind::File;
    let hash = if live_file { Hash::of(content.as_bytes()) } else { Hash::ZERO };
    let chunks = content
        .split(' ')
        .filter(|c| live_file && !c.is_empty())
        .enumerate()
        .map(|(idx, c)| ChunkRef {
            offset: idx as u64 * 100,
            len: 100,
            hash: Hash::of(c.as_bytes()),
        })
        .collect();
    FileRecord {
        path: RelPath::new(path).unwrap(),
        kind,
        size: content.len() as u64,
        mtime_ns: version.iter().map(|&(_, v)| v as i64).max().unwrap_or(0),
        mode: 0o644,
        symlink_target: None,
        hash,
        chunks,
        version: vv(version),
        sequence: 0,
        deleted: false,
        modified_by: by,
    }
}

fn file(path: &str, content: &str, by: ShortId, version: &[(ShortId, u64)]) -> FileRecord {
    entry(path, EntryKind::File, content, by, version)
}

fn dir(path: &str, by: ShortId, version: &[(ShortId, u64)]) -> FileRecord {
    entry(path, EntryKind::Dir, "", by, version)
}

fn gone(mut record: FileRecord, version: &[(ShortId, u64)]) -> FileRecord {
    record.deleted = true;
    record.hash = Hash::ZERO;
    record.size = 0;
    record.chunks.clear();
    record.version = vv(version);
    record.modified_by = PEER;
    record
}

fn records(list: &[FileRecord]) -> Records {
    list.iter().map(|r| (r.path.clone(), r.clone())).collect()
}

fn plan_for(
    mode: FolderMode,
    local: &[FileRecord],
    peer: &[FileRecord],
    case_insensitive: bool,
) -> Plan {
    let (local, peer) = (records(local), records(peer));
    let global = GlobalState::build(mode, &local, &[&peer]);
    let config = PlanConfig { mode, local_id: ME, now_secs: 1_000, case_insensitive };
    plan(&local, &global, &config)
}

/// The plan's actions in order, one short line each.
fn check(local: &[FileRecord], peer: &[FileRecord], expected: &[&str]) -> Plan {
    let plan = plan_for(FolderMode::SendReceive, local, peer, false);
    let got: Vec<String> = plan.steps.iter().map(|s| describe(&s.action)).collect();
    assert_eq!(got, expected, "{plan:#?}");
    plan
}

fn describe(action: &Action) -> String {
    match action {
        Action::RenameToConflict { from, to } => format!("conflict {from} -> {to}"),
        Action::MakeDir { path, .. } => format!("mkdir {path}"),
        Action::KeepDir { path } => format!("keep {path}"),
        Action::Pull { record, reuse } => format!("pull {} reusing {}", record.path, reuse.len()),
        Action::CopyLocal { from, record } => format!("copy {from} -> {}", record.path),
        Action::Rename { from, record } => format!("rename {from} -> {}", record.path),
        Action::MakeSymlink { path, .. } => format!("symlink {path}"),
        Action::SetMetadata { path, .. } => format!("chmod {path}"),
        Action::Record { path } => format!("record {path}"),
        Action::Delete { path, kind } => format!("delete {kind} {path}"),
    }
}

#[test]
fn directories_are_created_before_their_children_and_removed_after_them() {
    let old = [dir("old", ME, &[(ME, 1)]), file("old/x", "x1", ME, &[(ME, 1)])];
    let peer = [
        gone(old[0].clone(), &[(ME, 1), (PEER, 2)]),
        gone(old[1].clone(), &[(ME, 1), (PEER, 2)]),
        dir("new", PEER, &[(PEER, 2)]),
        dir("new/sub", PEER, &[(PEER, 2)]),
        file("new/sub/f", "f1", PEER, &[(PEER, 2)]),
    ];
    check(
        &old,
        &peer,
        &[
            "mkdir new",
            "mkdir new/sub",
            "pull new/sub/f reusing 0",
            "delete file old/x",
            "delete dir old",
        ],
    );
}

#[test]
fn a_renamed_directory_moves_local_files_instead_of_downloading_them() {
    let local = [dir("d", ME, &[(ME, 1)]), file("d/x", "x y", ME, &[(ME, 1)])];
    let peer = [
        gone(local[0].clone(), &[(ME, 1), (PEER, 2)]),
        gone(local[1].clone(), &[(ME, 1), (PEER, 2)]),
        dir("e", PEER, &[(PEER, 2)]),
        file("e/x", "x y", PEER, &[(PEER, 2)]),
    ];
    let plan = check(&local, &peer, &["mkdir e", "rename d/x -> e/x", "delete dir d"]);
    let commits: Vec<(String, bool)> =
        plan.steps[1].commit.iter().map(|r| (r.path.to_string(), r.deleted)).collect();
    assert_eq!(commits, [("e/x".to_string(), false), ("d/x".to_string(), true)]);
}

#[test]
fn content_already_present_is_copied_locally_and_chunks_are_reused() {
    let local = [file("keep", "a b", ME, &[(ME, 1)]), file("edit", "c d", ME, &[(ME, 1)])];
    let peer = [
        local[0].clone(),
        file("edit", "c e", PEER, &[(ME, 1), (PEER, 2)]),
        file("twin", "a b", PEER, &[(PEER, 2)]),
    ];
    let plan = check(&local, &peer, &["pull edit reusing 1", "copy keep -> twin"]);
    let Action::Pull { reuse, .. } = &plan.steps[0].action else { unreachable!() };
    assert_eq!((reuse[0].index, reuse[0].from.as_str(), reuse[0].offset), (0, "edit", 0));
}

#[test]
fn a_losing_local_edit_is_kept_as_a_conflict_copy_before_the_winner_arrives() {
    let mine = file("notes.txt", "mine", ME, &[(ME, 5)]);
    let theirs = file("notes.txt", "theirs", PEER, &[(PEER, 9)]);
    let plan = check(
        std::slice::from_ref(&mine),
        std::slice::from_ref(&theirs),
        &[
            "conflict notes.txt -> notes.sync-conflict-19700101-000000-AAAAAAA.txt",
            "pull notes.txt reusing 0",
        ],
    );
    let copy = &plan.steps[0].commit[0];
    assert_eq!((copy.hash, copy.modified_by), (mine.hash, ME));
    assert_eq!(plan.steps[0].reason, Reason::ConcurrentNewerMtime);
    let taken = &plan.steps[1].commit[0];
    assert!(taken.version.dominates(&mine.version) && taken.version.dominates(&theirs.version));
    assert_eq!(taken.modified_by, PEER, "the taken record keeps the winner's origin");
}

#[test]
fn no_second_conflict_copy_is_made_of_content_a_copy_already_has() {
    // The existing copy is pulled (reusing the local file's chunk) and no new one is made.
    let mine = file("n.txt", "mine", ME, &[(ME, 5)]);
    let copy = file("n.sync-conflict-20200101-000000-ZZZZZZZ.txt", "mine", PEER, &[(PEER, 3)]);
    let theirs = file("n.txt", "theirs", PEER, &[(PEER, 9)]);
    check(
        &[mine],
        &[theirs, copy],
        &["pull n.sync-conflict-20200101-000000-ZZZZZZZ.txt reusing 1", "pull n.txt reusing 0"],
    );
}

#[test]
fn a_local_file_losing_to_a_directory_is_kept_as_a_copy_and_the_directory_made() {
    let mine = file("p", "data", ME, &[(ME, 5)]);
    let theirs = dir("p", PEER, &[(PEER, 1)]);
    check(
        &[mine],
        &[theirs],
        &["conflict p -> p.sync-conflict-19700101-000000-AAAAAAA", "mkdir p"],
    );
}

#[test]
fn a_dominated_file_in_the_way_of_a_directory_is_cleared_first() {
    let mine = file("p", "data", ME, &[(ME, 1)]);
    let theirs = dir("p", PEER, &[(ME, 1), (PEER, 2)]);
    let child = file("p/c", "c", PEER, &[(PEER, 2)]);
    check(&[mine], &[theirs, child], &["delete file p", "mkdir p", "pull p/c reusing 0"]);
}

#[test]
fn a_directory_deleted_globally_is_kept_while_something_below_it_lives() {
    let local = [dir("d", ME, &[(ME, 1)]), file("d/x", "edited", ME, &[(ME, 1), (ME, 3)])];
    let peer = [
        gone(local[0].clone(), &[(ME, 1), (PEER, 2)]),
        gone(file("d/x", "", ME, &[]), &[(ME, 1), (PEER, 2)]),
    ];
    let plan = check(&local, &peer, &["keep d"]);
    assert_eq!(plan.steps[0].reason, Reason::DirectoryHasLiveChildren);
    assert!(plan.steps[0].commit[0].version.counter(ME) > 3);
}

#[test]
fn an_entry_waits_while_its_parent_is_not_a_directory() {
    let peer = [file("a/b", "x", PEER, &[(PEER, 1)])];
    let plan = check(&[], &peer, &[]);
    assert_eq!(plan.deferred, [(RelPath::new("a/b").unwrap(), Reason::ParentNotDirectory)]);
}

#[test]
fn send_only_reports_remote_changes_instead_of_applying_them() {
    let mine = file("f", "v1", ME, &[(ME, 1)]);
    let theirs = file("f", "v2", PEER, &[(ME, 1), (PEER, 2)]);
    let plan = plan_for(FolderMode::SendOnly, &[mine], &[theirs], false);
    assert!(plan.steps.is_empty());
    assert_eq!(plan.out_of_sync, [(RelPath::new("f").unwrap(), Reason::SendOnly)]);
}

#[test]
fn receive_only_lists_local_changes_and_leaves_them_alone() {
    let base = file("f", "v1", PEER, &[(PEER, 1)]);
    let mine = file("f", "mine", ME, &[(PEER, 1), (ME, 2)]);
    let plan = plan_for(FolderMode::ReceiveOnly, &[mine], &[base], false);
    assert!(plan.steps.is_empty());
    assert_eq!(plan.local_changes, [RelPath::new("f").unwrap()]);
}

#[test]
fn colliding_names_are_reported_and_only_one_is_written_on_a_case_insensitive_disk() {
    let peer = [file("Readme", "a", PEER, &[(PEER, 1)]), file("README", "b", PEER, &[(PEER, 1)])];
    let sensitive = plan_for(FolderMode::SendReceive, &[], &peer, false);
    assert_eq!(sensitive.steps.len(), 2);
    assert_eq!(sensitive.collisions.len(), 1);
    let folding = plan_for(FolderMode::SendReceive, &[], &peer, true);
    assert_eq!(folding.steps.len(), 1);
    assert_eq!(folding.deferred, [(RelPath::new("Readme").unwrap(), Reason::NameCollision)]);
}

#[test]
fn identical_content_is_adopted_without_any_transfer() {
    let mine = file("f", "same", ME, &[(ME, 1)]);
    let theirs = file("f", "same", PEER, &[(PEER, 2)]);
    let plan = plan_for(FolderMode::SendReceive, &[mine], &[theirs], false);
    let actions: Vec<String> = plan.steps.iter().map(|s| describe(&s.action)).collect();
    assert_eq!(actions, ["chmod f"]);
    assert_eq!(plan.steps[0].reason, Reason::IdenticalContentMerge);
    assert_eq!(plan.steps[0].commit[0].version, vv(&[(ME, 1), (PEER, 2)]));
}

#[test]
fn a_symlink_and_a_file_at_one_path_both_survive() {
    let mut link = entry("p", EntryKind::Symlink, "", ME, &[(ME, 5)]);
    link.symlink_target = Some("target".into());
    link.hash = Hash::of(b"target");
    let plain = file("p", "data", PEER, &[(PEER, 9)]);
    let copy = format!("conflict p -> p.sync-conflict-19700101-000000-{ME}");
    check(std::slice::from_ref(&link), std::slice::from_ref(&plain), &[&copy, "pull p reusing 0"]);
    let newer_link = FileRecord { mtime_ns: 99, ..link };
    let copy = format!("conflict p -> p.sync-conflict-19700101-000000-{PEER}");
    check(&[plain], &[newer_link], &[&copy, "symlink p"]);
}
