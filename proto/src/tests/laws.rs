//! Algebraic laws of the model and the rules, as proptest properties: vector merge and
//! compare behave like a join-semilattice and its order, the winner order is a strict total
//! order, and the global record does not depend on the order records arrive in.

use std::cmp::Ordering;

use proptest::prelude::*;

use crate::model::{
    Counter, EntryKind, FileRecord, Hash, RelPath, ShortId, VectorOrdering, VersionVector,
};
use crate::rules::{resolve, winner_order};

fn vector() -> impl Strategy<Value = VersionVector> {
    prop::collection::vec((0u64..4, 0u64..5), 0..5).prop_map(|pairs| {
        VersionVector::from_counters(
            pairs.into_iter().map(|(id, value)| Counter { id: ShortId::new(id), value }),
        )
    })
}

fn record() -> impl Strategy<Value = FileRecord> {
    (vector(), 0u8..3, any::<bool>(), any::<bool>(), 0i64..3, 0u64..4, 0u32..2).prop_map(
        |(version, content, deleted, dir, mtime_ns, by, mode)| {
            let kind = if dir { EntryKind::Dir } else { EntryKind::File };
            let live_file = !deleted && kind == EntryKind::File;
            FileRecord {
                path: RelPath::new("p").unwrap(),
                kind,
                size: if live_file { 1 } else { 0 },
                mtime_ns,
                mode: 0o644 + mode,
                symlink_target: None,
                hash: if live_file { Hash::of(&[content]) } else { Hash::ZERO },
                chunks: Vec::new(),
                version,
                sequence: 0,
                deleted,
                modified_by: ShortId::new(by),
            }
        },
    )
}

proptest! {
    #[test]
    fn merge_is_commutative_associative_and_idempotent(a in vector(), b in vector(), c in vector()) {
        prop_assert_eq!(a.merge(&b), b.merge(&a));
        prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
        prop_assert_eq!(a.merge(&a), a.clone());
    }

    #[test]
    fn merge_is_the_least_vector_dominating_both(a in vector(), b in vector(), c in vector()) {
        let m = a.merge(&b);
        prop_assert!(m.dominates(&a) && m.dominates(&b));
        if c.dominates(&a) && c.dominates(&b) {
            prop_assert!(c.dominates(&m));
        }
    }

    #[test]
    fn compare_is_antisymmetric_and_dominance_transitive(a in vector(), b in vector(), c in vector()) {
        let flipped = match a.compare(&b) {
            VectorOrdering::Greater => VectorOrdering::Lesser,
            VectorOrdering::Lesser => VectorOrdering::Greater,
            other => other,
        };
        prop_assert_eq!(b.compare(&a), flipped);
        prop_assert_eq!(a.compare(&b) == VectorOrdering::Equal, a == b);
        if a.dominates(&b) && b.dominates(&c) {
            prop_assert!(a.dominates(&c));
        }
    }

    #[test]
    fn winner_order_is_a_strict_total_order(a in record(), b in record(), c in record()) {
        prop_assert_eq!(winner_order(&a, &b), winner_order(&b, &a).reverse());
        if winner_order(&a, &b) == Ordering::Equal {
            prop_assert!(a.same_entry(&b));
        }
        if winner_order(&a, &b).is_gt() && winner_order(&b, &c).is_gt() {
            prop_assert!(winner_order(&a, &c).is_gt());
        }
    }

    #[test]
    fn the_global_record_does_not_depend_on_arrival_order(
        records in prop::collection::vec(record(), 1..6),
        seed in any::<u64>(),
    ) {
        let forward: Vec<&FileRecord> = records.iter().collect();
        let mut shuffled = forward.clone();
        crate::tests::sim::Rng::new(seed).shuffle(&mut shuffled);
        let (one, two) = (resolve(&forward).unwrap(), resolve(&shuffled).unwrap());
        prop_assert_eq!(&one.record, &two.record);
        prop_assert_eq!(one.reason, two.reason);
        // losers are a multiset: order them by every field (Debug abbreviates ids)
        let key = |r: &&FileRecord| {
            let counters: Vec<(ShortId, u64)> =
                r.version.counters().iter().map(|c| (c.id, c.value)).collect();
            (counters, r.hash, r.modified_by, format!("{r:?}"))
        };
        let (mut l1, mut l2) = (one.losers.clone(), two.losers.clone());
        l1.sort_by_key(key);
        l2.sort_by_key(key);
        prop_assert_eq!(l1, l2);
    }

    #[test]
    fn identical_contents_written_independently_never_make_a_conflict(
        base in record(),
        writes in prop::collection::vec((vector(), 0i64..3), 1..5),
    ) {
        // Each write: some history, then a change by its own device (ids 10, 11, ...).
        let records: Vec<FileRecord> = writes
            .into_iter()
            .enumerate()
            .map(|(idx, (seen, mtime_ns))| {
                let by = ShortId::new(10 + idx as u64);
                FileRecord { version: seen.bumped(by, 0), mtime_ns, modified_by: by, ..base.clone() }
            })
            .collect();
        let refs: Vec<&FileRecord> = records.iter().collect();
        let res = resolve(&refs).unwrap();
        prop_assert!(res.losers.is_empty());
        prop_assert!(res.record.same_content(&base));
        prop_assert!(records.iter().all(|r| res.record.version.dominates(&r.version)));
    }
}
