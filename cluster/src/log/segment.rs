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

/// Appends one framed record to `buf`; `unit_end` marks the last record of its unit.
pub fn encode_record(buf: &mut Vec<u8>, group: u32, index: u64, payload: &[u8], unit_end: bool) {
    let len = (RECORD_HEADER - 8 + payload.len()) as u32;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let tagged = if unit_end { group | UNIT_END } else { group };
    buf.extend_from_slice(&tagged.to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}
