//! Version vectors: which changes of which devices a record has seen.
//!
//! A vector is a sorted list of (short id, counter) pairs with no zero counters, so two
//! vectors that mean the same thing have the same bytes. A local change sets our counter to
//! `max(counter + 1, now_secs)`: counters then stay comparable after an index is lost and
//! rebuilt, because the clock has moved past every counter we handed out before.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::model::ShortId;

/// One device's counter in a [`VersionVector`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counter {
    /// The device that made the changes.
    pub id: ShortId,
    /// How many (clock-adjusted) changes of that device this version has seen.
    pub value: u64,
}

/// How two version vectors relate causally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VectorOrdering {
    /// Both saw exactly the same changes.
    Equal,
    /// The left one saw everything the right one saw, and more.
    Greater,
    /// The right one saw everything the left one saw, and more.
    Lesser,
    /// Each saw a change the other did not: a conflict unless the contents agree.
    Concurrent,
}

/// A version vector: sorted by short id, no zero counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Vec<Counter>", into = "Vec<Counter>")]
pub struct VersionVector {
    counters: Vec<Counter>,
}

impl VersionVector {
    /// The empty vector: a version nobody has changed.
    pub fn new() -> Self {
        Self::default()
    }

    /// A vector from counters in any order; duplicates keep their maximum, zeros are dropped.
    pub fn from_counters(counters: impl IntoIterator<Item = Counter>) -> Self {
        let mut counters: Vec<Counter> = counters.into_iter().filter(|c| c.value > 0).collect();
        counters.sort_by(|a, b| a.id.cmp(&b.id).then(b.value.cmp(&a.value)));
        counters.dedup_by_key(|c| c.id);
        Self { counters }
    }

    /// The counters, sorted by short id.
    pub fn counters(&self) -> &[Counter] {
        &self.counters
    }

    /// True when no device has changed this version.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The counter of one device (0 when absent).
    pub fn counter(&self, id: ShortId) -> u64 {
        match self.counters.binary_search_by(|c| c.id.cmp(&id)) {
            Ok(idx) => self.counters[idx].value,
            Err(_) => 0,
        }
    }

    /// Records a local change by `id` at `now_secs`: the counter becomes
    /// `max(counter + 1, now_secs)`.
    pub fn bump(&mut self, id: ShortId, now_secs: u64) {
        match self.counters.binary_search_by(|c| c.id.cmp(&id)) {
            Ok(idx) => {
                let counter = &mut self.counters[idx];
                counter.value = counter.value.saturating_add(1).max(now_secs);
            }
            Err(idx) => {
                self.counters.insert(idx, Counter { id, value: now_secs.max(1) });
            }
        }
    }

    /// This vector after a local change by `id` at `now_secs` (see [`Self::bump`]).
    #[must_use]
    pub fn bumped(&self, id: ShortId, now_secs: u64) -> Self {
        let mut next = self.clone();
        next.bump(id, now_secs);
        next
    }

    /// The pointwise maximum: a version that has seen everything either one saw.
    #[must_use]
    pub fn merge(&self, other: &Self) -> Self {
        let mut out = Vec::with_capacity(self.counters.len().max(other.counters.len()));
        let (mut left, mut right) =
            (self.counters.iter().peekable(), other.counters.iter().peekable());
        loop {
            let next = match (left.peek(), right.peek()) {
                (None, None) => break,
                (Some(_), None) => left.next(),
                (None, Some(_)) => right.next(),
                (Some(l), Some(r)) => match l.id.cmp(&r.id) {
                    Ordering::Less => left.next(),
                    Ordering::Greater => right.next(),
                    Ordering::Equal => {
                        let value = l.value.max(r.value);
                        let id = l.id;
                        left.next();
                        right.next();
                        out.push(Counter { id, value });
                        continue;
                    }
                },
            };
            out.extend(next.copied());
        }
        Self { counters: out }
    }

    /// How this vector relates to `other`.
    pub fn compare(&self, other: &Self) -> VectorOrdering {
        let (mut greater, mut lesser) = (false, false);
        let (mut left, mut right) =
            (self.counters.iter().peekable(), other.counters.iter().peekable());
        loop {
            match (left.peek(), right.peek()) {
                (None, None) => break,
                (Some(_), None) => {
                    greater = true;
                    break;
                }
                (None, Some(_)) => {
                    lesser = true;
                    break;
                }
                (Some(l), Some(r)) => match l.id.cmp(&r.id) {
                    Ordering::Less => {
                        greater = true;
                        left.next();
                    }
                    Ordering::Greater => {
                        lesser = true;
                        right.next();
                    }
                    Ordering::Equal => {
                        match l.value.cmp(&r.value) {
                            Ordering::Less => lesser = true,
                            Ordering::Greater => greater = true,
                            Ordering::Equal => {}
                        }
                        left.next();
                        right.next();
                    }
                },
            }
            if greater && lesser {
                return VectorOrdering::Concurrent;
            }
        }
        match (greater, lesser) {
            (false, false) => VectorOrdering::Equal,
            (true, false) => VectorOrdering::Greater,
            (false, true) => VectorOrdering::Lesser,
            (true, true) => VectorOrdering::Concurrent,
        }
    }

    /// True when this version has seen everything `other` has (Greater or Equal).
    pub fn dominates(&self, other: &Self) -> bool {
        matches!(self.compare(other), VectorOrdering::Greater | VectorOrdering::Equal)
    }
}

impl From<Vec<Counter>> for VersionVector {
    fn from(counters: Vec<Counter>) -> Self {
        Self::from_counters(counters)
    }
}

impl From<VersionVector> for Vec<Counter> {
    fn from(vector: VersionVector) -> Self {
        vector.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ShortId = ShortId::new(1);
    const B: ShortId = ShortId::new(2);

    fn vv(pairs: &[(ShortId, u64)]) -> VersionVector {
        VersionVector::from_counters(pairs.iter().map(|&(id, value)| Counter { id, value }))
    }

    #[test]
    fn bump_takes_the_clock_when_it_is_ahead() {
        let mut v = VersionVector::new();
        v.bump(A, 1_000);
        assert_eq!(v.counter(A), 1_000);
        v.bump(A, 500);
        assert_eq!(v.counter(A), 1_001);
        v.bump(A, 0);
        assert_eq!(v.counter(A), 1_002);
    }

    #[test]
    fn compare_covers_all_four_cases() {
        let a1 = vv(&[(A, 1)]);
        let a2 = vv(&[(A, 2)]);
        let b1 = vv(&[(B, 1)]);
        assert_eq!(a1.compare(&a1), VectorOrdering::Equal);
        assert_eq!(a2.compare(&a1), VectorOrdering::Greater);
        assert_eq!(a1.compare(&a2), VectorOrdering::Lesser);
        assert_eq!(a1.compare(&b1), VectorOrdering::Concurrent);
        assert_eq!(VersionVector::new().compare(&a1), VectorOrdering::Lesser);
    }

    #[test]
    fn merge_dominates_both_inputs() {
        let x = vv(&[(A, 3), (B, 1)]);
        let y = vv(&[(A, 1), (B, 5)]);
        let m = x.merge(&y);
        assert_eq!(m, vv(&[(A, 3), (B, 5)]));
        assert!(m.dominates(&x) && m.dominates(&y));
    }

    #[test]
    fn from_counters_normalizes() {
        let v = vv(&[(B, 2), (A, 0), (B, 7), (A, 1)]);
        assert_eq!(v.counters(), &[Counter { id: A, value: 1 }, Counter { id: B, value: 7 }]);
    }
}
