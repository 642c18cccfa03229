//! Shard snapshots on disk: `<dir>/shard-<n>.snap`, written to a temporary file, fsynced,
//! renamed over the old one and the directory fsynced — so a crash leaves either the old or
//! the new snapshot, never half of one. The file is `MAGIC`, a CRC32 of the body, the body
//! length, then the body (the codec's encoding of the shard state).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::state::{ShardState, Snapshot};

/// 02: adds the idempotency keys of applied requests. 03: adds the Raft group's bookkeeping.
const MAGIC: &[u8; 8] = b"PBSNAP03";
const HEADER: usize = 8 + 4 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("snapshot {path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("snapshot encode: {0}")]
    Encode(String),
}

pub fn path(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format!("shard-{shard:04}.snap"))
}

/// A snapshot written to its temporary file but not yet durable or in place: `commit` does
/// the blocking part (fsync, rename, fsync of the directory), off the shard actor.
pub struct Pending {
    file: File,
    tmp: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    pub bytes: u64,
}

/// Counts and checksums what passes through to the file.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { op, path, source }
}

/// Streams `state` into `shard`'s temporary snapshot file: the encoding goes to the file as
/// it is produced, so a snapshot never sits whole in memory (every shard snapshots in the same
/// round; holding their encodings at once doubled a loaded node's memory for a moment). The
/// header (magic, CRC, length) is written last, over a zeroed placeholder.
pub fn write_tmp(dir: &Path, shard: u32, state: &mut ShardState) -> Result<Pending, SnapshotError> {
    let tmp = dir.join(format!("shard-{shard:04}.snap.tmp"));
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    f.write_all(&[0u8; HEADER]).map_err(io_err("write", &tmp))?;
    let mut body = Summing {
        inner: BufWriter::with_capacity(256 << 10, f),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    protocol::codec::encode_to_writer(&state.to_snapshot(), &mut body).map_err(|e| match e {
        protocol::codec::CodecError::Encode(m) => SnapshotError::Encode(m),
        other => SnapshotError::Encode(other.to_string()),
    })?;
    let Summing { inner, crc, len } = body;
    let mut f = inner
        .into_inner()
        .map_err(|e| io_err("write", &tmp)(e.into_error()))?;
    let crc = crc.finalize();
    let mut head = [0u8; HEADER];
    head[..8].copy_from_slice(MAGIC);
    head[8..12].copy_from_slice(&crc.to_le_bytes());
    head[12..20].copy_from_slice(&len.to_le_bytes());
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.write_all(&head))
        .map_err(io_err("write", &tmp))?;
    Ok(Pending {
        file: f,
        tmp,
        final_path: path(dir, shard),
        dir: dir.to_path_buf(),
        bytes: HEADER as u64 + len,
    })
}

impl Pending {
    /// Makes the snapshot durable and puts it in place of the old one.
    pub fn commit(self) -> Result<u64, SnapshotError> {
        self.file.sync_all().map_err(io_err("fsync", &self.tmp))?;
        drop(self.file);
        fs::rename(&self.tmp, &self.final_path).map_err(io_err("rename", &self.final_path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync dir", &self.dir))?;
        Ok(self.bytes)
    }
}

/// [`write_tmp`] and [`Pending::commit`] in one call.
pub fn write(dir: &Path, shard: u32, state: &mut ShardState) -> Result<u64, SnapshotError> {
    write_tmp(dir, shard, state)?.commit()
}

/// The file's bytes, or `None` when there is no file.
fn read_file(p: &Path) -> Result<Option<Vec<u8>>, SnapshotError> {
    match fs::read(p) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotError::Io {
            op: "read",
            path: p.to_path_buf(),
            source,
        }),
    }
}

/// Reads the snapshot of `shard`, if there is one. A damaged snapshot is an error, not an
/// empty shard: the log it allowed to be released is gone, so starting empty would lose data.
pub fn read(dir: &Path, shard: u32) -> Result<Option<ShardState>, SnapshotError> {
    let p = path(dir, shard);
    let Some(bytes) = read_file(&p)? else {
        return Ok(None);
    };
    decode(&bytes, shard)
        .map(Some)
        .map_err(|reason| SnapshotError::Corrupt { path: p, reason })
}

/// The leading fields of a snapshot body, readable without decoding the rest.
#[derive(serde::Deserialize)]
struct Head {
    shard: u32,
    _applied_index: u64,
    raft_meta: Vec<u8>,
}

/// A snapshot file's bytes and the Raft bookkeeping it holds.
pub type RawSnapshot = (Vec<u8>, Vec<u8>);

/// Reads `shard`'s snapshot file whole (checksum verified) and its Raft bookkeeping, without
/// decoding the series.
pub fn read_raw(dir: &Path, shard: u32) -> Result<Option<RawSnapshot>, SnapshotError> {
    let p = path(dir, shard);
    let Some(bytes) = read_file(&p)? else {
        return Ok(None);
    };
    let body = check(&bytes).map_err(|reason| SnapshotError::Corrupt {
        path: p.clone(),
        reason,
    })?;
    let head: Head = protocol::codec::decode_prefix(body).map_err(|e| SnapshotError::Corrupt {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    if head.shard != shard {
        return Err(SnapshotError::Corrupt {
            path: p,
            reason: format!("holds shard {}, expected {shard}", head.shard),
        });
    }
    let meta = head.raft_meta;
    Ok(Some((bytes, meta)))
}

/// Decodes a snapshot file's bytes (from disk, or received from the shard's leader).
pub fn decode(bytes: &[u8], shard: u32) -> Result<ShardState, String> {
    let body = check(bytes)?;
    let snap: Snapshot = protocol::codec::decode(body).map_err(|e| e.to_string())?;
    if snap.shard != shard {
        return Err(format!("holds shard {}, expected {shard}", snap.shard));
    }
    Ok(ShardState::from_snapshot(snap))
}

/// Verifies magic, length and checksum; returns the body.
fn check(bytes: &[u8]) -> Result<&[u8], String> {
    let corrupt = |reason: String| reason;
    if bytes.len() >= 8 && bytes[..6] == MAGIC[..6] && &bytes[..8] != MAGIC {
        return Err(format!(
            "written by an older Pulseboard (format {}); this version reads {}: start from an empty data directory",
            String::from_utf8_lossy(&bytes[..8]),
            String::from_utf8_lossy(MAGIC)
        ));
    }
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(corrupt(
            "not a Pulseboard shard snapshot (bad magic)".into(),
        ));
    }
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[12..20]);
    let len = u64::from_le_bytes(len);
    let body = &bytes[HEADER..];
    if body.len() as u64 != len {
        return Err(corrupt(format!(
            "body is {} bytes, header says {len}",
            body.len()
        )));
    }
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::state::Layout;

    #[test]
    fn write_read_and_detect_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path(), 1).expect("read").is_none());
        let mut state = ShardState::new(1, Layout::default());
        write(dir.path(), 1, &mut state).expect("write");
        assert!(read(dir.path(), 1).expect("read").is_some());
        let p = path(dir.path(), 1);
        let mut bytes = fs::read(&p).expect("read file");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xFF;
        fs::write(&p, &bytes).expect("write file");
        let err = read(dir.path(), 1)
            .err()
            .expect("damaged snapshot must fail");
        assert!(err.to_string().contains("checksum"), "{err}");
        fs::write(&p, b"hello").expect("write file");
        assert!(read(dir.path(), 1).is_err());
    }
}
