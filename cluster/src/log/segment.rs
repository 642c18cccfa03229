//! Segment files: naming, creation, record encoding.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{LogError, MAGIC, RECORD_HEADER};

pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// The id of a segment file name, if it is one.
pub fn id_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".wal")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

/// Creates segment `id` with its header, durable (file and directory entry) on return.
pub fn create(dir: &Path, id: u64) -> Result<File, LogError> {
    let p = path(dir, id);
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&p)
        .map_err(io("create", &p))?;
    f.write_all(MAGIC).map_err(io("write header", &p))?;
    f.sync_all().map_err(io("fsync", &p))?;
    sync_dir(dir)?;
    Ok(f)
}

pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// The high bit of the group field marks the last record of an `append_many` unit.
pub const UNIT_END: u32 = 1 << 31;
/// Bits 28..31 of the group field hold the record's [`Kind`]; groups are below 2^28.
pub const KIND_SHIFT: u32 = 28;
pub const GROUP_MASK: u32 = (1 << KIND_SHIFT) - 1;

/// What a record is. Everything but `Entry` is bookkeeping for a Raft log store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A log entry at `index`.
    Entry = 0,
    /// Entries at `index` and above are gone (a Raft follower's conflicting suffix).
    Truncate = 1,
    /// Entries up to `index` are gone (covered by a snapshot); the payload is the caller's
    /// description of the last purged entry.
    Purge = 2,
    /// The group's vote (payload); `index` is unused.
    Vote = 3,
    /// The group's committed position (payload); `index` is unused.
    Committed = 4,
}

impl Kind {
    pub fn from_bits(bits: u32) -> Option<Kind> {
        Some(match bits {
            0 => Kind::Entry,
            1 => Kind::Truncate,
            2 => Kind::Purge,
            3 => Kind::Vote,
            4 => Kind::Committed,
            _ => return None,
        })
    }
}

/// Appends one framed record to `buf`; `unit_end` marks the last record of its unit.
/// Returns the offset of the payload within `buf`.
pub fn encode_record(
    buf: &mut Vec<u8>,
    group: u32,
    kind: Kind,
    index: u64,
    payload: &[u8],
    unit_end: bool,
) -> usize {
    let len = (RECORD_HEADER - 8 + payload.len()) as u32;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let mut tagged = group | ((kind as u32) << KIND_SHIFT);
    if unit_end {
        tagged |= UNIT_END;
    }
    buf.extend_from_slice(&tagged.to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    let payload_at = buf.len();
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    payload_at
}
