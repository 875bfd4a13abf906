//! The conflict rule: which of several concurrent versions wins, and what the loser's copy
//! is called.
//!
//! Two implementations that order concurrent versions differently never converge, so the
//! order is written down once, here, as [`winner_order`], and the copy names are a pure
//! function of their inputs ([`conflict_name`]) with a parser for the CLI
//! ([`parse_conflict_name`]). Dates are computed with our own civil-calendar conversion:
//! the core reads no clock and needs no date library.

use std::cmp::Ordering;

use crate::model::{EntryKind, FileRecord, MAX_COMPONENT, PathError, RelPath, ShortId};
use crate::rules::Reason;

/// The marker between a conflict copy's stem and its timestamp.
const MARKER: &str = ".sync-conflict-";
/// Bytes a conflict suffix adds: marker, `YYYYMMDD-HHMMSS-` and the 7-character short id.
const SUFFIX_LEN: usize = MARKER.len() + 8 + 1 + 6 + 1 + 7;
/// An extension longer than this is treated as part of the stem when a name must be cut.
const MAX_KEPT_EXT: usize = 32;
/// The last second whose date still has a four-digit year (9999-12-31 23:59:59).
const MAX_NAMED_SECS: u64 = 253_402_300_799;

/// The strict total order on causally maximal, pairwise concurrent versions of one path.
///
/// `Greater` means `a` wins. Keys are compared lexicographically, first difference decides:
///
/// 1. not deleted beats deleted (a modification beats a concurrent delete);
/// 2. a directory beats a file or symlink (the file is kept as a conflict copy, and a
///    directory is never renamed, so its children stay where they are);
/// 3. larger `mtime_ns`;
/// 4. larger `modified_by` short id (as an unsigned 64-bit integer);
/// 5. larger content hash (bytes compared in order);
/// 6. then kind (`File` < `Dir` < `Symlink`), size, symlink target (`None` first, then
///    bytewise), and permission bits, so that two records compare equal only when they have
///    the same content and metadata.
///
/// The order is applied only among records no other record dominates (a version that has
/// seen another always replaces it, whatever its key) and whose content no other has seen
/// and replaced: see [`crate::rules::resolve`] for the whole rule.
pub fn winner_order(a: &FileRecord, b: &FileRecord) -> Ordering {
    decisive_key(a, b).0
}

/// Which key of [`winner_order`] separates `winner` from `loser`, as an explanation.
pub fn winner_reason(winner: &FileRecord, loser: &FileRecord) -> Reason {
    decisive_key(winner, loser).1
}

fn decisive_key(a: &FileRecord, b: &FileRecord) -> (Ordering, Reason) {
    let is_dir = |r: &FileRecord| !r.deleted && r.kind == EntryKind::Dir;
    let steps = [
        ((!a.deleted).cmp(&!b.deleted), Reason::ModifyBeatsDelete),
        (is_dir(a).cmp(&is_dir(b)), Reason::DirectoryBeatsFile),
        (a.mtime_ns.cmp(&b.mtime_ns), Reason::ConcurrentNewerMtime),
        (a.modified_by.cmp(&b.modified_by), Reason::ConcurrentDeviceTieBreak),
    ];
    if let Some(step) = steps.into_iter().find(|(ord, _)| ord.is_ne()) {
        return step;
    }
    let rest = a
        .hash
        .cmp(&b.hash)
        .then(a.kind.cmp(&b.kind))
        .then(a.size.cmp(&b.size))
        .then(a.symlink_target.cmp(&b.symlink_target))
        .then(a.mode.cmp(&b.mode));
    (rest, Reason::ConcurrentContentTieBreak)
}

/// A conflict copy's name, taken apart by [`parse_conflict_name`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConflictCopy {
    /// The name the copy was made from (`notes.txt` for `notes.sync-conflict-…-X.txt`).
    pub original: String,
    /// The copy's timestamp, in seconds since the Unix epoch (UTC).
    pub time_secs: u64,
    /// The 7-character short id of the device whose version the copy holds.
    pub device: String,
}

/// The name of a conflict copy of `name` (a last path component):
/// `<stem>.sync-conflict-<YYYYMMDD>-<HHMMSS>-<shortid><.ext>`, in UTC.
///
/// The extension is the part from the last dot, unless that dot starts the name (a dotfile
/// such as `.bashrc` has no extension) or ends it. A name that already is a conflict copy is
/// first turned back into its original, so copies of copies do not grow. The stem is cut
/// (at a character boundary) so the result fits in 255 bytes.
pub fn conflict_name(name: &str, time_secs: u64, device: ShortId) -> String {
    let original = parse_conflict_name(name).map_or_else(|| name.to_string(), |c| c.original);
    let (mut stem, mut ext) = split_extension(&original);
    if stem.len() + ext.len() + SUFFIX_LEN > MAX_COMPONENT && ext.len() > MAX_KEPT_EXT {
        (stem, ext) = (original.as_str(), "");
    }
    let stem = cut_at_char_boundary(stem, MAX_COMPONENT - SUFFIX_LEN - ext.len());
    format!("{stem}{MARKER}{}-{device}{ext}", format_timestamp(time_secs))
}

/// The conflict copy of `path` in the same directory (see [`conflict_name`]).
pub fn conflict_path(
    path: &RelPath,
    time_secs: u64,
    device: ShortId,
) -> Result<RelPath, PathError> {
    path.with_file_name(&conflict_name(path.file_name(), time_secs, device))
}

/// Takes a conflict copy's name apart, or `None` when `name` is not one.
pub fn parse_conflict_name(name: &str) -> Option<ConflictCopy> {
    let at = name.rfind(MARKER)?;
    let (stem, rest) = (&name[..at], &name[at + MARKER.len()..]);
    let stamp = rest.get(..15)?;
    let device = rest.get(16..23)?;
    let ext = rest.get(23..)?;
    let valid_device = device.bytes().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7'));
    if stem.is_empty() || rest.as_bytes().get(15) != Some(&b'-') || !valid_device {
        return None;
    }
    if !(ext.is_empty() || ext.starts_with('.')) {
        return None;
    }
    let time_secs = parse_timestamp(stamp)?;
    Some(ConflictCopy { original: format!("{stem}{ext}"), time_secs, device: device.to_string() })
}

/// Splits `name` into stem and extension (with its dot); see [`conflict_name`].
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(idx) if idx > 0 && idx + 1 < name.len() => name.split_at(idx),
        _ => (name, ""),
    }
}

fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `YYYYMMDD-HHMMSS` in UTC; times past year 9999 are clamped to its last second.
pub fn format_timestamp(time_secs: u64) -> String {
    let secs = time_secs.min(MAX_NAMED_SECS);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // `days` is at most 2,932,896 here, so the conversion cannot truncate.
    let (year, month, day) = civil_from_days(days as i64);
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    format!("{year:04}{month:02}{day:02}-{hour:02}{minute:02}{second:02}")
}

fn parse_timestamp(stamp: &str) -> Option<u64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = stamp.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    let valid_date = (1..=12).contains(&month) && day >= 1 && day <= days_in_month(year, month);
    if stamp.as_bytes()[8] != b'-' || !valid_date || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Hash, VersionVector};

    const DEV: ShortId = ShortId::new(0x0123_4567_89ab_cdef);
    /// 2024-02-29 13:45:07 UTC.
    const LEAP_DAY: u64 = 1_709_214_307;

    fn check_name(name: &str, expected: &str) {
        let made = conflict_name(name, LEAP_DAY, DEV);
        assert_eq!(made, expected.replace("ID", &DEV.to_string()));
        let parsed = parse_conflict_name(&made).expect("a made name parses");
        let original = parse_conflict_name(name).map_or(name.to_string(), |c| c.original);
        assert_eq!(parsed.original, original);
        assert_eq!(parsed.time_secs, LEAP_DAY);
        assert_eq!(parsed.device, DEV.to_string());
    }

    #[test]
    fn conflict_names_keep_the_extension_last() {
        check_name("notes.txt", "notes.sync-conflict-20240229-134507-ID.txt");
        check_name("archive.tar.gz", "archive.tar.sync-conflict-20240229-134507-ID.gz");
    }

    #[test]
    fn dotfiles_and_names_without_extension_get_a_plain_suffix() {
        check_name(".bashrc", ".bashrc.sync-conflict-20240229-134507-ID");
        check_name("Makefile", "Makefile.sync-conflict-20240229-134507-ID");
        check_name("trailing.", "trailing..sync-conflict-20240229-134507-ID");
        check_name(".config.json", ".config.sync-conflict-20240229-134507-ID.json");
    }

    #[test]
    fn a_copy_of_a_copy_is_named_after_the_original() {
        let first = conflict_name("notes.txt", 0, ShortId::new(7));
        check_name(&first, "notes.sync-conflict-20240229-134507-ID.txt");
    }

    #[test]
    fn long_names_are_cut_to_fit_255_bytes() {
        let long = format!("{}.txt", "é".repeat(126));
        let made = conflict_name(&long, LEAP_DAY, DEV);
        assert!(made.len() <= MAX_COMPONENT, "{} bytes", made.len());
        assert!(made.ends_with(".txt"));
        let huge_ext = format!("a.{}", "x".repeat(250));
        assert!(conflict_name(&huge_ext, LEAP_DAY, DEV).len() <= MAX_COMPONENT);
    }

    #[test]
    fn ordinary_names_are_not_conflict_copies() {
        for name in [
            "notes.txt",
            "a.sync-conflict-.txt",
            "a.sync-conflict-20241301-000000-ABCDEFG.txt",
            "a.sync-conflict-20240230-000000-ABCDEFG.txt",
            "a.sync-conflict-20240101-000000-abcdefg.txt",
            "a.sync-conflict-20240101-000000-ABCDEFGtxt",
            ".sync-conflict-20240101-000000-ABCDEFG",
        ] {
            assert_eq!(parse_conflict_name(name), None, "{name}");
        }
    }

    #[test]
    fn civil_dates_round_trip_over_centuries() {
        for days in (-800_000..3_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(format_timestamp(951_782_400), "20000229-000000");
        assert_eq!(format_timestamp(u64::MAX), "99991231-235959");
    }

    fn record(
        deleted: bool,
        kind: EntryKind,
        mtime_ns: i64,
        by: u64,
        content: &[u8],
    ) -> FileRecord {
        FileRecord {
            path: RelPath::new("p").unwrap(),
            kind,
            size: content.len() as u64,
            mtime_ns,
            mode: 0o644,
            symlink_target: None,
            hash: Hash::of(content),
            chunks: Vec::new(),
            version: VersionVector::new(),
            sequence: 0,
            deleted,
            modified_by: ShortId::new(by),
        }
    }

    #[test]
    fn winner_key_is_live_then_dir_then_mtime_then_device_then_hash() {
        use EntryKind::{Dir, File};
        let check = |a: FileRecord, b: FileRecord, reason: Reason| {
            assert_eq!(winner_order(&a, &b), Ordering::Greater);
            assert_eq!(winner_order(&b, &a), Ordering::Less);
            assert_eq!(winner_reason(&a, &b), reason);
        };
        check(
            record(false, File, 0, 0, b"x"),
            record(true, Dir, 9, 9, b""),
            Reason::ModifyBeatsDelete,
        );
        check(
            record(false, Dir, 0, 0, b""),
            record(false, File, 9, 9, b"x"),
            Reason::DirectoryBeatsFile,
        );
        check(
            record(false, File, 2, 0, b"x"),
            record(false, File, 1, 9, b"y"),
            Reason::ConcurrentNewerMtime,
        );
        check(
            record(false, File, 1, 2, b"x"),
            record(false, File, 1, 1, b"y"),
            Reason::ConcurrentDeviceTieBreak,
        );
        let (x, y) = (record(false, File, 1, 1, b"x"), record(false, File, 1, 1, b"y"));
        let (hi, lo) = if x.hash > y.hash { (x, y) } else { (y, x) };
        check(hi, lo, Reason::ConcurrentContentTieBreak);
    }
}
