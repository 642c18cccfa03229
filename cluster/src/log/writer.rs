//! The writer thread: group commit, the group index, segment roll and release.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::{debug, error, info};

use super::index::{GroupIndex, Loc};
use super::recovery::{Recovered, SegmentInfo};
use super::segment::{self, Kind};
use super::{Counters, Done, FsyncMode, LogConfig, LogError, Msg, Op, MAGIC};

pub type Groups = Arc<Mutex<HashMap<u32, GroupIndex>>>;

/// How long a round waits for more records once the queue is empty (fsync mode only).
const LINGER: std::time::Duration = std::time::Duration::from_micros(300);

/// A record of the current round, to fold into the group index once durable.
struct Written {
    group: u32,
    kind: Kind,
    index: u64,
    /// Kept for bookkeeping records only (entries are read back from disk).
    payload: Vec<u8>,
    loc: Loc,
}

pub struct Writer {
    config: LogConfig,
    counters: Arc<Counters>,
    closed: Arc<AtomicBool>,
    file: File,
    /// Bytes in the active segment.
    len: u64,
    /// The active segment is the last one.
    segments: Vec<SegmentInfo>,
    released: HashMap<u32, u64>,
    groups: Groups,
    buf: Vec<u8>,
    written: Vec<Written>,
    dones: Vec<Done>,
}

impl Writer {
    pub fn new(
        config: LogConfig,
        recovered: Recovered,
        counters: Arc<Counters>,
        closed: Arc<AtomicBool>,
        groups: Groups,
    ) -> Result<Self, LogError> {
        let mut released = HashMap::new();
        for (g, ix) in &recovered.groups {
            if let Some((p, _)) = &ix.purged {
                let r = released.entry(*g).or_insert(0);
                *r = (*r).max(*p);
            }
        }
        {
            let mut shared = groups.lock().unwrap_or_else(|p| p.into_inner());
            *shared = recovered.groups;
            for (g, r) in &released {
                if let Some(ix) = shared.get_mut(g) {
                    ix.forget_upto(*r);
                }
            }
        }
        let mut segments = recovered.segments;
        let (file, len) =
            match segments.last() {
                Some(last) => {
                    let p = segment::path(&config.dir, last.id);
                    let f = OpenOptions::new().append(true).open(&p).map_err(|source| {
                        LogError::Io {
                            op: "open for append",
                            path: p,
                            source,
                        }
                    })?;
                    (f, recovered.last_len.max(MAGIC.len() as u64))
                }
                None => {
                    segments.push(SegmentInfo {
                        id: 1,
                        max_index: HashMap::new(),
                    });
                    (segment::create(&config.dir, 1)?, MAGIC.len() as u64)
                }
            };
        counters
            .segments
            .store(segments.len() as u64, Ordering::Relaxed);
        let mut w = Self {
            config,
            counters,
            closed,
            file,
            len,
            segments,
            released,
            groups,
            buf: Vec::with_capacity(1 << 20),
            written: Vec::new(),
            dones: Vec::new(),
        };
        // Segments already purged can go right away.
        w.delete_released();
        Ok(w)
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        let mut pending_shutdown = None;
        loop {
            let first = match rx.recv() {
                Ok(m) => m,
                Err(_) => return, // every sender is gone
            };
            let mut next = Some(first);
            let mut lingered = false;
            // Whether the round moves some group's purge point (segments may be freed).
            let mut purged = false;
            // Drain what is queued into one round, up to the byte cap.
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Write(group, ops, done, _slot) => {
                        self.counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
                        let last = ops.len().saturating_sub(1);
                        for (n, op) in ops.into_iter().enumerate() {
                            let end = n == last;
                            let (kind, index, payload) = match op {
                                Op::Entry { index, payload } => {
                                    self.encode(group, Kind::Entry, index, &payload, end);
                                    continue;
                                }
                                Op::Truncate { from } => (Kind::Truncate, from, Vec::new()),
                                Op::Purge { upto, payload } => {
                                    let r = self.released.entry(group).or_insert(0);
                                    *r = (*r).max(upto);
                                    purged = true;
                                    (Kind::Purge, upto, payload)
                                }
                                Op::Vote(payload) => (Kind::Vote, 0, payload),
                                Op::Committed(payload) => (Kind::Committed, 0, payload),
                            };
                            self.encode(group, kind, index, &payload, end);
                        }
                        if let Some(done) = done {
                            self.dones.push(done);
                        }
                    }
                    Msg::Shutdown(ack) => {
                        pending_shutdown = Some(ack);
                        break;
                    }
                }
                if self.buf.len() >= self.config.max_batch_bytes {
                    break;
                }
                next = rx.try_recv().ok();
                if next.is_none() && !lingered && self.config.fsync == FsyncMode::Always {
                    // Many Raft groups append for one request, each from its own task, a few
                    // microseconds apart: wait a moment for the stragglers so one fsync covers
                    // them all, instead of one round (and one fsync) per wave.
                    lingered = true;
                    next = rx.recv_timeout(LINGER).ok();
                }
            }
            if !self.written.is_empty() {
                if let Err(e) = self.commit() {
                    error!(cause = %e, "write-ahead log failed; refusing further writes");
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.closed.store(true, Ordering::Release);
                    self.written.clear();
                    for done in self.dones.drain(..) {
                        done(Err(e.to_string()));
                    }
                    self.buf.clear();
                    if let Some(ack) = pending_shutdown.take() {
                        let _ = ack.send(Err(e.to_string()));
                    }
                    self.drain_after_failure(&rx);
                    return;
                }
                self.publish();
                // The purge records are durable: free what they release now, not at the
                // next roll (an idle node would keep its old segments until then).
                if purged {
                    self.delete_released();
                }
                for done in self.dones.drain(..) {
                    done(Ok(()));
                }
            }
            // A full segment rolls; so does one whose entries were all purged (a snapshot
            // covers them), once it holds an eighth of a segment: a node at rest (after a
            // clean stop, or a quiet one) then keeps no log beyond its snapshots, instead of
            // up to a whole segment of entries no one will read.
            let released =
                purged && self.len >= self.config.segment_bytes / 8 && self.active_released();
            if self.len >= self.config.segment_bytes || released {
                if let Err(e) = self.roll() {
                    error!(cause = %e, "write-ahead log could not start a new segment");
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.closed.store(true, Ordering::Release);
                    self.drain_after_failure(&rx);
                    return;
                }
            }
            if let Some(ack) = pending_shutdown.take() {
                let result = self.file.sync_all().map_err(|e| e.to_string());
                let _ = ack.send(result);
                return;
            }
        }
    }

    /// After a failure: answer shutdown requests, drop appends (their waiters see it).
    fn drain_after_failure(&mut self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Write(_, _, done, _slot) => {
                    self.counters.queue_depth.fetch_sub(1, Ordering::Relaxed);
                    if let Some(done) = done {
                        done(Err("the log had failed earlier".into()));
                    }
                }
                Msg::Shutdown(ack) => {
                    let _ = ack.send(Err("the log had failed earlier".into()));
                    return;
                }
            }
        }
    }

    /// Frames one record into the round's buffer.
    fn encode(&mut self, group: u32, kind: Kind, index: u64, payload: &[u8], unit_end: bool) {
        let at = segment::encode_record(&mut self.buf, group, kind, index, payload, unit_end);
        let loc = Loc {
            segment: self.active_id(),
            offset: self.len + at as u64,
            len: payload.len() as u32,
        };
        // The index keeps the small records' payloads (vote, commit, purge point); entries
        // are read back from the segment.
        let payload = if kind == Kind::Entry {
            Vec::new()
        } else {
            payload.to_vec()
        };
        self.written.push(Written {
            group,
            kind,
            index,
            payload,
            loc,
        });
    }

    /// Folds the durable round into the shared group index, so readers find it.
    fn publish(&mut self) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for w in self.written.drain(..) {
            let g = groups.entry(w.group).or_default();
            // Unchecked: the writer trusts its callers' order; recovery checks.
            let _ = g.record(w.kind, w.index, &w.payload, w.loc, false);
        }
        for (g, r) in &self.released {
            if let Some(ix) = groups.get_mut(g) {
                if ix.entries.first_key_value().is_some_and(|(i, _)| i <= r) {
                    ix.forget_upto(*r);
                }
            }
        }
    }

    fn commit(&mut self) -> Result<(), LogError> {
        let path = segment::path(&self.config.dir, self.active_id());
        self.file
            .write_all(&self.buf)
            .map_err(|source| LogError::Io {
                op: "write",
                path: path.clone(),
                source,
            })?;
        if self.config.fsync == FsyncMode::Always {
            let t = Instant::now();
            self.file.sync_data().map_err(|source| LogError::Io {
                op: "fdatasync",
                path,
                source,
            })?;
            if let Some(d) = self.config.simulated_fsync_delay {
                std::thread::sleep(d);
            }
            let took = t.elapsed();
            self.counters.syncs.fetch_add(1, Ordering::Relaxed);
            self.counters
                .sync_nanos
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            self.counters
                .last_sync_micros
                .store(took.as_micros() as u64, Ordering::Relaxed);
        }
        self.len += self.buf.len() as u64;
        self.counters
            .appended_bytes
            .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
        self.counters
            .appended_records
            .fetch_add(self.written.len() as u64, Ordering::Relaxed);
        let active = self.segments.len() - 1;
        for w in &self.written {
            if w.kind == Kind::Entry {
                self.segments[active].max_index.insert(w.group, w.index);
            }
        }
        self.buf.clear();
        if self.buf.capacity() > 4 * self.config.max_batch_bytes {
            self.buf.shrink_to(self.config.max_batch_bytes);
        }
        Ok(())
    }

    fn active_id(&self) -> u64 {
        self.segments.last().map_or(1, |s| s.id)
    }

    fn roll(&mut self) -> Result<(), LogError> {
        let id = self.active_id() + 1;
        self.file.sync_all().map_err(|source| LogError::Io {
            op: "fsync",
            path: segment::path(&self.config.dir, self.active_id()),
            source,
        })?;
        self.file = segment::create(&self.config.dir, id)?;
        self.len = MAGIC.len() as u64;
        self.segments.push(SegmentInfo {
            id,
            max_index: HashMap::new(),
        });
        self.checkpoint()?;
        self.delete_released();
        self.counters
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Repeats every group's vote, purge point and committed position at the head of a new
    /// segment, so deleting older segments never loses them.
    fn checkpoint(&mut self) -> Result<(), LogError> {
        let mut records = Vec::new();
        {
            let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            for (g, ix) in groups.iter() {
                if let Some(v) = &ix.vote {
                    records.push((*g, Kind::Vote, 0, v.clone()));
                }
                if let Some((i, p)) = &ix.purged {
                    records.push((*g, Kind::Purge, *i, p.clone()));
                }
                if let Some(c) = &ix.committed {
                    records.push((*g, Kind::Committed, 0, c.clone()));
                }
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        for (g, kind, index, payload) in records {
            self.encode(g, kind, index, &payload, true);
        }
        self.commit()?;
        self.publish();
        Ok(())
    }

    /// Whether every record of `s` is released (its groups purged past its entries).
    fn covered(&self, s: &SegmentInfo) -> bool {
        s.max_index
            .iter()
            .all(|(g, i)| self.released.get(g).is_some_and(|r| r >= i))
    }

    /// Whether the active segment holds entries and every one of them is released.
    fn active_released(&self) -> bool {
        self.segments
            .last()
            .is_some_and(|s| !s.max_index.is_empty() && self.covered(s))
    }

    /// Deletes closed segments (never the active one) whose records are all released. Only a
    /// prefix is deleted, so the remaining segments stay contiguous for every group.
    fn delete_released(&mut self) {
        let closed = self.segments.len().saturating_sub(1);
        let n = self.segments[..closed]
            .iter()
            .take_while(|s| self.covered(s))
            .count();
        let released = &self.released;
        if n == 0 {
            if let Some(first) = self.segments[..closed].first() {
                let held: Vec<_> = first
                    .max_index
                    .iter()
                    .filter(|(g, i)| released.get(*g).is_none_or(|r| r < *i))
                    .map(|(g, i)| (*g, *i, released.get(g).copied()))
                    .collect();
                debug!(
                    segment = first.id,
                    ?held,
                    "oldest segment still needed by (group, last index, released up to)"
                );
            }
            return;
        }
        for s in self.segments.drain(..n) {
            let p = segment::path(&self.config.dir, s.id);
            match std::fs::remove_file(&p) {
                Ok(()) => info!(path = %p.display(), "released log segment"),
                Err(e) => {
                    error!(path = %p.display(), cause = %e, "could not delete a released log segment")
                }
            }
        }
        let _ = segment::sync_dir(Path::new(&self.config.dir));
        self.counters
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
    }
}
