//! An openraft log store for one group of the node's [`SharedLog`].
//!
//! Entries are encoded with `protocol::codec` and appended with the group's own indices, so
//! every group on the node shares one group commit. Recent entries stay in memory (appended
//! ones until durable, durable ones until applied — up to [`CACHE_BYTES`] of memory per
//! group, their encoding and what they hold besides — and then [`APPLIED_CACHE_BYTES`] of
//! the newest applied): the state machine and
//! replication read them back right after they are written, and an entry whose
//! data is shared (`ShardBatch` points sit behind an `Arc`) clones cheaply. Older ones are
//! read back from the segment files, which only a lagging follower's replication asks for.

use super::EncodedEntry;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig,
    StorageError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::log::{Op, SharedLog};

/// Memory of applied entries (their encoding and their points) a group keeps, for
/// replication to a follower a little behind (one further behind is sent entries read back
/// from disk): about two thousand points.
pub const APPLIED_CACHE_BYTES: usize = 256 << 10;
/// Memory of durable entries a group keeps even before they are applied; past it the oldest
/// leave memory and apply reads them back from disk (a state machine far behind must not
/// make its log hold everything it has yet to apply): about seventy thousand points.
pub const CACHE_BYTES: usize = 8 << 20;

struct Cache<E> {
    /// Entries not yet durable, the durable ones not yet applied, and the most recent applied
    /// ones, with the memory each holds (its encoding and its points).
    entries: BTreeMap<u64, (E, usize)>,
    bytes: usize,
    /// Of `bytes`, what the applied entries hold: kept as entries come, go and are applied
    /// (summing it on every trim cost a follower of many small entries a tenth of its time).
    applied_bytes: usize,
    /// Highest index known durable.
    durable: Option<u64>,
    /// Highest index the state machine reported applied (see [`AppliedMark`]).
    applied: Option<u64>,
    /// Highest index in the log (after truncations), durable or not.
    last: Option<u64>,
    /// The committed position to write with the next append (see `save_committed`).
    committed: Option<Vec<u8>>,
}

impl<E> Cache<E> {
    fn is_applied(&self, index: u64) -> bool {
        self.applied.is_some_and(|a| index <= a)
    }

    fn insert(&mut self, index: u64, entry: E, size: usize) {
        let applied = self.is_applied(index);
        self.bytes += size;
        self.applied_bytes += if applied { size } else { 0 };
        if let Some((_, old)) = self.entries.insert(index, (entry, size)) {
            self.bytes -= old;
            self.applied_bytes -= if applied { old } else { 0 };
        }
    }

    /// Accounts for `removed`, entries taken out of `entries`.
    fn removed(&mut self, removed: &BTreeMap<u64, (E, usize)>) {
        for (&index, (_, size)) in removed {
            self.bytes -= size;
            if self.is_applied(index) {
                self.applied_bytes -= size;
            }
        }
    }

    fn set_applied(&mut self, index: u64) {
        let from = match self.applied {
            Some(a) if a >= index => return,
            Some(a) => a + 1,
            None => 0,
        };
        self.applied_bytes += self
            .entries
            .range(from..=index)
            .map(|(_, (_, size))| size)
            .sum::<usize>();
        self.applied = Some(index);
    }

    /// Drops the oldest durable entries while the applied ones exceed `APPLIED_CACHE_BYTES`
    /// or all of them `CACHE_BYTES`. An entry not yet durable stays: it exists nowhere else.
    fn trim(&mut self) {
        while let Some((&first, _)) = self.entries.first_key_value() {
            if self.durable.is_none_or(|d| first > d) {
                break;
            }
            let applied = self.is_applied(first);
            if !(applied && self.applied_bytes > APPLIED_CACHE_BYTES || self.bytes > CACHE_BYTES) {
                break;
            }
            if let Some((_, size)) = self.entries.remove(&first) {
                self.bytes -= size;
                if applied {
                    self.applied_bytes -= size;
                }
            }
        }
    }
}

/// A group's state machine reports through this how far it has applied, so the group's log
/// store drops from memory the entries no one is about to read (see `APPLIED_CACHE_BYTES`).
pub struct AppliedMark<E>(Arc<Mutex<Cache<E>>>);

impl<E> AppliedMark<E> {
    pub fn set(&self, index: u64) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        c.set_applied(index);
        c.trim();
    }
}

/// One group's Raft log. Cloning gives a reader over the same log.
pub struct LogStore<C: RaftTypeConfig> {
    group: u32,
    log: Arc<SharedLog>,
    cache: Arc<Mutex<Cache<C::Entry>>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            group: self.group,
            log: self.log.clone(),
            cache: self.cache.clone(),
        }
    }
}

fn err<C: RaftTypeConfig>(
    subject: ErrorSubject<C::NodeId>,
    verb: ErrorVerb,
    e: impl std::fmt::Display,
) -> StorageError<C::NodeId> {
    StorageError::from_io_error(subject, verb, io::Error::other(e.to_string()))
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone + EncodedEntry,
{
    pub fn new(log: Arc<SharedLog>, group: u32) -> Self {
        let last = log.group(group).last;
        Self {
            group,
            log,
            cache: Arc::new(Mutex::new(Cache {
                entries: BTreeMap::new(),
                bytes: 0,
                applied_bytes: 0,
                durable: last,
                applied: None,
                last,
                committed: None,
            })),
        }
    }

    /// The handle the group's state machine reports applied entries through.
    pub fn applied_mark(&self) -> AppliedMark<C::Entry> {
        AppliedMark(self.cache.clone())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache<C::Entry>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `ops` and waits until they are durable.
    async fn write_durably(&self, ops: Vec<Op>) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.log
            .write(
                self.group,
                ops,
                Some(Box::new(move |r| {
                    let _ = tx.send(r);
                })),
            )
            .await
            .map_err(|e| e.to_string())?;
        rx.await.map_err(|_| "the log stopped".to_string())?
    }

    fn read_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<C::Entry>, String> {
        let (disk_end, cached): (Option<u64>, Vec<C::Entry>) = {
            let c = self.cache();
            let Some(last) = c.last else {
                return Ok(Vec::new());
            };
            let end = end.map_or(last + 1, |e| e.min(last + 1));
            if start >= end {
                return Ok(Vec::new());
            }
            let first_cached = c.entries.first_key_value().map(|(i, _)| *i);
            let disk_end = first_cached.unwrap_or(end).min(end);
            let cached = c
                .entries
                .range(start.max(disk_end)..end)
                .map(|(_, (e, _))| e.clone())
                .collect();
            ((start < disk_end).then_some(disk_end), cached)
        };
        let mut out = Vec::new();
        if let Some(disk_end) = disk_end {
            for (index, bytes) in self
                .log
                .read(self.group, start..disk_end)
                .map_err(|e| e.to_string())?
            {
                let bytes: std::sync::Arc<[u8]> = bytes.into();
                let entry = C::Entry::decode(&bytes)
                    .map_err(|e| format!("entry {index} of group {}: {e}", self.group))?;
                // Read back to replicate to a lagging follower: sent as read.
                entry.keep(bytes);
                out.push(entry);
            }
        }
        out.extend(cached);
        Ok(out)
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone + EncodedEntry,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        self.read_entries(start, end)
            .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone + EncodedEntry,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let state = self.log.group(self.group);
        let last_purged_log_id: Option<LogId<C::NodeId>> = match &state.purged {
            Some((_, bytes)) => Some(
                protocol::codec::decode(bytes)
                    .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Read, e))?,
            ),
            None => None,
        };
        let last = self.cache().last;
        let last_log_id = match last {
            Some(i) if last_purged_log_id.as_ref().is_none_or(|p| p.index < i) => self
                .read_entries(i, Some(i + 1))
                .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Read, e))?
                .pop()
                .map(|e| e.get_log_id().clone()),
            _ => None,
        };
        Ok(LogState {
            last_log_id: last_log_id.or(last_purged_log_id.clone()),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let bytes = protocol::codec::encode(vote)
            .map_err(|e| err::<C>(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.write_durably(vec![Op::Vote(bytes)])
            .await
            .map_err(|e| err::<C>(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        match self.log.group(self.group).vote {
            Some(bytes) => protocol::codec::decode(&bytes)
                .map(Some)
                .map_err(|e| err::<C>(ErrorSubject::Vote, ErrorVerb::Read, e)),
            None => Ok(None),
        }
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // Written with the next append rather than on its own: a record of its own would cost
        // a group-commit round (an fsync) per commit. Losing the newest one in a crash only
        // means re-applying a little less at start, until the leader commits again.
        let bytes = protocol::codec::encode(&committed)
            .map_err(|e| err::<C>(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.cache().committed = Some(bytes);
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        match self.log.group(self.group).committed {
            Some(bytes) => protocol::codec::decode(&bytes)
                .map_err(|e| err::<C>(ErrorSubject::Store, ErrorVerb::Read, e)),
            None => Ok(None),
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut ops = Vec::new();
        let mut newest = None;
        {
            let mut c = self.cache();
            if let Some(committed) = c.committed.take() {
                ops.push(Op::Committed(committed));
            }
            for entry in entries {
                let index = entry.get_log_id().index;
                let payload = entry
                    .encoded()
                    .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Write, e))?;
                // What the entry holds in memory: its encoding and, for a batch, its
                // points (compressed in the encoding, not in memory).
                let size = payload.len() + entry.held_bytes();
                c.insert(index, entry, size);
                ops.push(Op::Entry { index, payload });
                c.last = Some(index);
                newest = Some(index);
            }
        }
        let Some(newest) = newest else {
            if let Some(Op::Committed(bytes)) = ops.pop() {
                self.cache().committed.get_or_insert(bytes);
            }
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let cache = self.cache.clone();
        self.log
            .write(
                self.group,
                ops,
                Some(Box::new(move |r| {
                    if r.is_ok() {
                        let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
                        c.durable = Some(c.durable.map_or(newest, |d| d.max(newest)));
                        c.trim();
                    }
                    callback.log_io_completed(r.map_err(io::Error::other));
                })),
            )
            .await
            .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        {
            let mut c = self.cache();
            let removed = c.entries.split_off(&log_id.index);
            c.removed(&removed);
            c.last = log_id.index.checked_sub(1);
            if c.durable.is_some_and(|d| d >= log_id.index) {
                c.durable = c.last;
            }
        }
        self.write_durably(vec![Op::Truncate { from: log_id.index }])
            .await
            .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        {
            let mut c = self.cache();
            let keep = c.entries.split_off(&(log_id.index + 1));
            let removed = std::mem::replace(&mut c.entries, keep);
            c.removed(&removed);
            if c.last.is_none_or(|l| l < log_id.index) {
                c.last = Some(log_id.index);
                c.durable = Some(log_id.index);
            }
        }
        let payload = protocol::codec::encode(&log_id)
            .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.write_durably(vec![Op::Purge {
            upto: log_id.index,
            payload,
        }])
        .await
        .map_err(|e| err::<C>(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn cache(entries: u64, size: usize) -> Cache<u64> {
        Cache {
            entries: (1..=entries).map(|i| (i, (i, size))).collect(),
            bytes: entries as usize * size,
            applied_bytes: 0,
            durable: None,
            applied: None,
            last: Some(entries),
            committed: None,
        }
    }

    /// What `applied_bytes` must be, summed afresh.
    fn applied_sum(c: &Cache<u64>) -> usize {
        let upto = c.applied.unwrap_or(0);
        c.entries.range(..=upto).map(|(_, (_, s))| s).sum()
    }

    #[test]
    fn the_applied_entries_bytes_are_kept_right_through_every_change() {
        let mut c = cache(0, 0);
        for i in 1..=300u64 {
            c.insert(i, i, 100 + i as usize);
            if i % 7 == 0 {
                c.set_applied(i - 3);
            }
            if i % 11 == 0 {
                c.durable = Some(i - 1);
                c.trim();
            }
            assert_eq!(c.applied_bytes, applied_sum(&c), "after {i}");
            assert_eq!(
                c.bytes,
                c.entries.values().map(|(_, s)| s).sum::<usize>(),
                "after {i}"
            );
        }
        // Truncation of the unapplied tail, a purge of an applied head, an entry written again.
        let tail = c.entries.split_off(&290);
        c.removed(&tail);
        assert_eq!(c.applied_bytes, applied_sum(&c));
        let keep = c.entries.split_off(&250);
        let head = std::mem::replace(&mut c.entries, keep);
        c.removed(&head);
        assert_eq!(c.applied_bytes, applied_sum(&c));
        c.insert(280, 0, 5);
        c.set_applied(285);
        c.insert(283, 0, 9);
        assert_eq!(c.applied_bytes, applied_sum(&c));
        assert_eq!(c.bytes, c.entries.values().map(|(_, s)| s).sum::<usize>());
    }

    #[test]
    fn trim_keeps_what_is_not_durable_or_not_applied() {
        let size = 16 << 10;
        let n = 2 * (CACHE_BYTES / size) as u64;
        let kept = (CACHE_BYTES / size) as u64;
        // Twice CACHE_BYTES cached, nothing durable: all of it stays (it exists nowhere else).
        let mut c = cache(n, size);
        c.trim();
        assert_eq!(c.entries.len() as u64, n);
        // All durable, none applied: down to CACHE_BYTES, oldest first.
        c.durable = Some(n);
        c.trim();
        assert_eq!(c.bytes, CACHE_BYTES);
        assert_eq!(
            c.entries.first_key_value().map(|e| *e.0),
            Some(n - kept + 1)
        );
        // Applied up to all but 112: those past the newest APPLIED_CACHE_BYTES go; the
        // unapplied stay.
        let applied = n - 112;
        let mark = AppliedMark(Arc::new(Mutex::new(c)));
        mark.set(applied);
        let c = mark.0.lock().expect("lock");
        assert!(c.entries.contains_key(&(applied + 1)));
        assert_eq!(c.entries.len(), 112 + APPLIED_CACHE_BYTES / size);
        let newest_applied = (APPLIED_CACHE_BYTES / size) as u64;
        assert_eq!(
            c.entries.first_key_value().map(|e| *e.0),
            Some(applied - newest_applied + 1)
        );
    }
}
