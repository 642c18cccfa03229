//! The shared write-ahead log: segments, record framing, group commit, recovery, release.
//!
//! # On disk
//! `<dir>/<segment id, 20 digits>.wal`, each starting with [`MAGIC`]. A record is
//! `[len: u32][crc32: u32][tag: u32][index: u64][payload]`, little endian, where `len`
//! counts tag, index and payload and the CRC covers the same bytes. The tag holds the group
//! (bits 0..28), the record's kind (bits 28..31) and the end-of-write flag (bit 31).
//!
//! # Writing
//! [`SharedLog::write`] puts one group's changes ([`Op`]s: entries with the caller's indices,
//! truncations, purges, votes, committed positions) on a bounded queue as one message. The
//! writer thread takes everything queued (up to `max_batch_bytes`), writes the round with one
//! `write`, syncs once, records where each entry lies, and only then runs each message's
//! [`Done`]. A write or sync error stops the log for good: the round's `Done`s get the error
//! and every later write fails with [`LogError::Closed`] — nothing is reported durable that
//! is not.
//!
//! # Recovery
//! Segments are scanned in order and each group's entry locations, purge point, vote and
//! committed position rebuilt. The records of one `write` are kept all or none. A torn or
//! corrupt tail of the last segment is truncated at the last good record and reported. Damage
//! anywhere else is an error: starting would silently drop acknowledged records.
//!
//! # Release
//! A purge lets the writer delete closed segments whose every entry is purged.

mod index;
mod recovery;
mod segment;
mod writer;

use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use recovery::{RecoveryReport, Truncation};

/// First bytes of every segment file.
/// 004: a shard's entry holds the batches proposed together (`protocol::ShardEntry`); 003 (a
/// batch's points compressed, one batch an entry), 002 (record kinds and Raft indices) and
/// 001 (the log before Raft) are refused by name.
pub const MAGIC: &[u8; 8] = b"PBWAL004";
/// Bytes of a record's frame before the payload.
pub const RECORD_HEADER: usize = 4 + 4 + 4 + 8;
/// The largest payload accepted; also what recovery believes before allocating.
pub const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncMode {
    /// `fdatasync` before acknowledging (the default).
    Always,
    /// No sync at all: benchmarks and tests only; a crash may lose acknowledged records.
    Never,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub dir: PathBuf,
    /// Roll to a new segment past this many bytes.
    pub segment_bytes: u64,
    pub fsync: FsyncMode,
    /// Sleep after each sync, to see how a design behaves on slow disks.
    pub simulated_fsync_delay: Option<Duration>,
    /// Pending append calls; when full, `append` fails with [`LogError::Full`].
    pub queue_capacity: usize,
    /// Bytes written per group-commit round, at most (a round always takes one message).
    pub max_batch_bytes: usize,
}

impl LogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            fsync: FsyncMode::Always,
            simulated_fsync_delay: None,
            queue_capacity: 4096,
            max_batch_bytes: 8 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("write-ahead log: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write-ahead log: {path} is damaged at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("write-ahead log: closed")]
    Closed,
    #[error("write-ahead log: record of {bytes} bytes is over the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
}

/// A snapshot of the log's counters.
#[derive(Clone, Debug, Default)]
pub struct LogStats {
    pub appended_records: u64,
    pub appended_bytes: u64,
    pub syncs: u64,
    pub sync_seconds_total: f64,
    pub last_sync_micros: u64,
    pub queue_depth: u64,
    pub segments: u64,
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
    last_sync_micros: AtomicU64,
    queue_depth: AtomicU64,
    segments: AtomicU64,
    errors: AtomicU64,
}

/// One change to a group's log, for a Raft log store. Indices are the caller's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Entry {
        index: u64,
        /// Shared with the entry's other users (the log store's cache, replication), not
        /// copied: the writer only reads it.
        payload: Arc<[u8]>,
    },
    /// Forget entries at `from` and above.
    Truncate {
        from: u64,
    },
    /// Forget entries up to `upto` (a snapshot covers them); `payload` describes the last
    /// purged entry and comes back from [`SharedLog::group`].
    Purge {
        upto: u64,
        payload: Vec<u8>,
    },
    Vote(Vec<u8>),
    Committed(Vec<u8>),
}

/// Called on the writer thread once a [`SharedLog::write`] is durable (or has failed).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// What the log holds for one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub purged: Option<(u64, Vec<u8>)>,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
}

enum Msg {
    /// The permit is the message's place in the bounded queue, freed when the writer takes it.
    Write(
        u32,
        Vec<Op>,
        Option<Done>,
        tokio::sync::OwnedSemaphorePermit,
    ),
    Shutdown(mpsc::Sender<Result<(), String>>),
}

pub struct SharedLog {
    dir: PathBuf,
    groups: writer::Groups,
    tx: Sender<Msg>,
    /// Places in the queue (`LogConfig::queue_capacity`): a writer waits for one without
    /// blocking its thread, so a stalled disk holds back Raft appends, not the runtime.
    slots: Arc<tokio::sync::Semaphore>,
    closed: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl SharedLog {
    /// Recovers `config.dir` (see the module doc), then starts the writer thread.
    pub fn open(config: LogConfig) -> Result<(Self, RecoveryReport), LogError> {
        std::fs::create_dir_all(&config.dir).map_err(|source| LogError::Io {
            op: "create",
            path: config.dir.clone(),
            source,
        })?;
        let recovered = recovery::recover(&config.dir)?;
        let report = recovered.report.clone();
        let counters = Arc::new(Counters::default());
        let closed = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let slots = Arc::new(tokio::sync::Semaphore::new(config.queue_capacity.max(1)));
        let dir = config.dir.clone();
        let groups = writer::Groups::default();
        let writer = writer::Writer::new(
            config,
            recovered,
            counters.clone(),
            closed.clone(),
            groups.clone(),
        )?;
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| LogError::Io {
                op: "spawn writer thread",
                path: PathBuf::new(),
                source,
            })?;
        Ok((
            Self {
                dir,
                groups,
                tx,
                slots,
                closed,
                counters,
                thread: Some(thread),
            },
            report,
        ))
    }

    /// Enqueues changes to one group's log, in this order, in one group-commit round; `done`
    /// runs once they are durable. Waits (asynchronously) while the queue is full: the wait
    /// is for the disk, which is the point.
    pub async fn write(
        &self,
        group: u32,
        ops: Vec<Op>,
        done: Option<Done>,
    ) -> Result<(), LogError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        if group > segment::GROUP_MASK {
            return Err(LogError::TooLarge {
                bytes: group as usize,
                max: segment::GROUP_MASK as usize,
            });
        }
        let too_large = ops.iter().find_map(|op| {
            let len = match op {
                Op::Entry { payload, .. } => payload.len(),
                Op::Purge { payload, .. } | Op::Vote(payload) | Op::Committed(payload) => {
                    payload.len()
                }
                Op::Truncate { .. } => 0,
            };
            (len > MAX_PAYLOAD).then_some(len)
        });
        if let Some(bytes) = too_large {
            return Err(LogError::TooLarge {
                bytes,
                max: MAX_PAYLOAD,
            });
        }
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LogError::Closed)?;
        self.counters.queue_depth.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Msg::Write(group, ops, done, slot))
            .map_err(|_| {
                self.counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
                LogError::Closed
            })
    }

    /// What the log durably holds for `group`.
    pub fn group(&self, group: u32) -> GroupState {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ix) = groups.get(&group) else {
            return GroupState::default();
        };
        GroupState {
            first: ix.entries.first_key_value().map(|(i, _)| *i),
            last: ix.entries.last_key_value().map(|(i, _)| *i),
            purged: ix.purged.clone(),
            vote: ix.vote.clone(),
            committed: ix.committed.clone(),
        }
    }

    /// Reads back the durable entries of `group` in `range` (those it holds; missing ones are
    /// skipped), in index order.
    pub fn read(
        &self,
        group: u32,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let range = (
            clone_bound(range.start_bound()),
            clone_bound(range.end_bound()),
        );
        let locs: Vec<(u64, index::Loc)> = {
            let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            match groups.get(&group) {
                Some(ix) => ix.entries.range(range).map(|(i, l)| (*i, *l)).collect(),
                None => Vec::new(),
            }
        };
        let mut out = Vec::with_capacity(locs.len());
        let mut open: Option<(u64, std::fs::File)> = None;
        for (index, loc) in locs {
            let path = segment::path(&self.dir, loc.segment);
            if open.as_ref().is_none_or(|(id, _)| *id != loc.segment) {
                let f = std::fs::File::open(&path).map_err(|source| LogError::Io {
                    op: "open for read",
                    path: path.clone(),
                    source,
                })?;
                open = Some((loc.segment, f));
            }
            let Some((_, f)) = open.as_ref() else {
                continue;
            };
            let mut payload = vec![0; loc.len as usize];
            f.read_exact_at(&mut payload, loc.offset)
                .map_err(|source| LogError::Io {
                    op: "read",
                    path,
                    source,
                })?;
            out.push((index, payload));
        }
        Ok(out)
    }

    pub fn stats(&self) -> LogStats {
        let c = &self.counters;
        LogStats {
            appended_records: c.appended_records.load(Ordering::Relaxed),
            appended_bytes: c.appended_bytes.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            sync_seconds_total: c.sync_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            last_sync_micros: c.last_sync_micros.load(Ordering::Relaxed),
            queue_depth: c.queue_depth.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// Writes and syncs everything queued, then stops the writer thread.
    pub fn shutdown(mut self) -> Result<(), LogError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), LogError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let (ack_tx, ack_rx) = mpsc::channel();
        let result = if self.tx.send(Msg::Shutdown(ack_tx)).is_ok() {
            ack_rx.recv().unwrap_or(Ok(()))
        } else {
            Ok(())
        };
        let _ = thread.join();
        self.closed.store(true, Ordering::Release);
        result.map_err(|reason| LogError::Io {
            op: "final sync",
            path: PathBuf::new(),
            source: std::io::Error::other(reason),
        })
    }
}

fn clone_bound(b: Bound<&u64>) -> Bound<u64> {
    match b {
        Bound::Included(i) => Bound::Included(*i),
        Bound::Excluded(i) => Bound::Excluded(*i),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Drop for SharedLog {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests;
