//! Scanning segments at open: replay, torn-tail repair, the state the writer continues from.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use super::index::{GroupIndex, Loc};
use super::segment::{self, Kind};
use super::{LogError, MAGIC, MAX_PAYLOAD, RECORD_HEADER};

#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub truncated: Option<Truncation>,
}

/// What was cut from the end of the last segment, and why.
#[derive(Clone, Debug)]
pub struct Truncation {
    pub path: PathBuf,
    pub offset: u64,
    pub dropped_bytes: u64,
    pub reason: String,
}

/// A scanned segment: for each group, the highest index it holds.
pub struct SegmentInfo {
    pub id: u64,
    pub max_index: HashMap<u32, u64>,
}

pub struct Recovered {
    pub report: RecoveryReport,
    pub segments: Vec<SegmentInfo>,
    /// Every group's entries, purge point, vote and committed position.
    pub groups: HashMap<u32, GroupIndex>,
    /// Byte length of the last segment after any repair.
    pub last_len: u64,
}

enum Scan {
    /// Clean end of file.
    End,
    /// Damage at `offset`: the file's good part ends there.
    Damaged { offset: u64, reason: String },
}

fn list(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, LogError> {
    let mut out = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|source| LogError::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    for e in entries {
        let e = e.map_err(|source| LogError::Io {
            op: "list",
            path: dir.to_path_buf(),
            source,
        })?;
        let p = e.path();
        if let Some(id) = segment::id_of(&p) {
            out.insert(id, p);
        }
    }
    Ok(out)
}

pub fn recover(dir: &Path) -> Result<Recovered, LogError> {
    let files = list(dir)?;
    let mut out = Recovered {
        report: RecoveryReport {
            segments: files.len(),
            ..Default::default()
        },
        segments: Vec::new(),
        groups: HashMap::new(),
        last_len: 0,
    };
    let count = files.len();
    for (n, (id, path)) in files.into_iter().enumerate() {
        let is_last = n + 1 == count;
        let mut info = SegmentInfo {
            id,
            max_index: HashMap::new(),
        };
        let file = File::open(&path).map_err(|source| LogError::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        let file_len = file
            .metadata()
            .map_err(|source| LogError::Io {
                op: "stat",
                path: path.clone(),
                source,
            })?
            .len();
        // The records of one write are kept only once its closing record is seen: a write cut
        // short by a crash is dropped whole.
        let mut unit: Vec<(u32, Kind, u64, Vec<u8>, Loc)> = Vec::new();
        let mut good_len = 0u64; // end of the last complete unit
        let mut scan = scan_segment(
            BufReader::with_capacity(1 << 20, file),
            &path,
            |group, kind, index, payload, unit_end, end_offset| {
                let loc = Loc {
                    segment: id,
                    offset: end_offset - payload.len() as u64,
                    len: payload.len() as u32,
                };
                // An entry's payload stays on disk; only bookkeeping records keep theirs.
                let payload = if kind == Kind::Entry {
                    Vec::new()
                } else {
                    payload.to_vec()
                };
                unit.push((group, kind, index, payload, loc));
                if !unit_end {
                    return Ok(());
                }
                for (group, kind, index, payload, loc) in unit.drain(..) {
                    let g = out.groups.entry(group).or_default();
                    g.record(kind, index, &payload, loc, true)
                        .map_err(|reason| LogError::Corrupt {
                            path: path.clone(),
                            offset: end_offset,
                            reason: format!("group {group}: {reason}"),
                        })?;
                    out.report.records += 1;
                    if kind == Kind::Entry {
                        info.max_index.insert(group, index);
                    }
                }
                good_len = end_offset;
                Ok(())
            },
        )?;
        if good_len == 0 {
            good_len = MAGIC.len() as u64;
        }
        if matches!(scan, Scan::End) && !unit.is_empty() {
            scan = Scan::Damaged {
                offset: good_len,
                reason: format!(
                    "a write of {} record(s) ends without its closing record",
                    unit.len()
                ),
            };
        }
        if let Scan::Damaged { offset, reason } = scan {
            if !is_last {
                return Err(LogError::Corrupt {
                    path,
                    offset,
                    reason: format!("{reason}; later segments exist, so this is not a torn tail"),
                });
            }
            let header_torn = offset == 0;
            let keep = if header_torn { 0 } else { good_len };
            repair(&path, keep)?;
            out.report.truncated = Some(Truncation {
                path: path.clone(),
                offset: keep,
                dropped_bytes: file_len.saturating_sub(keep),
                reason,
            });
            good_len = keep.max(MAGIC.len() as u64);
        }
        if is_last {
            out.last_len = good_len;
        }
        out.segments.push(info);
    }
    Ok(out)
}

/// Cuts the last segment back to its good part (re-writing the header if even that was torn).
fn repair(path: &Path, good_len: u64) -> Result<(), LogError> {
    let io = |op| {
        let path = path.to_path_buf();
        move |source| LogError::Io { op, path, source }
    };
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open for repair"))?;
    if good_len < MAGIC.len() as u64 {
        // The header itself was torn (a crash while creating the segment).
        f.set_len(0).map_err(io("truncate"))?;
        use std::io::Write;
        let mut f = f;
        f.write_all(MAGIC).map_err(io("rewrite header"))?;
        f.sync_all().map_err(io("fsync"))?;
        return Ok(());
    }
    f.set_len(good_len).map_err(io("truncate"))?;
    f.sync_all().map_err(io("fsync"))?;
    Ok(())
}

/// Reads records until a clean end or damage; `good_len` ends after the last good record.
/// Calls `each(group, kind, index, payload, unit_end, end_offset)` for every intact record.
fn scan_segment(
    mut r: impl Read,
    path: &Path,
    mut each: impl FnMut(u32, Kind, u64, &[u8], bool, u64) -> Result<(), LogError>,
) -> Result<Scan, LogError> {
    let mut magic = [0u8; 8];
    let got = read_full(&mut r, &mut magic, path)?;
    if got < magic.len() {
        if magic[..got] == MAGIC[..got] {
            return Ok(Scan::Damaged {
                offset: 0,
                reason: format!("segment header torn after {got} bytes"),
            });
        }
        return Err(LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "not a Pulseboard log segment (bad header)".into(),
        });
    }
    if &magic != MAGIC {
        let reason = if magic[..5] == MAGIC[..5] {
            format!(
                "written by an older Pulseboard (format {}); this version reads {}: start from an empty data directory",
                String::from_utf8_lossy(&magic),
                String::from_utf8_lossy(MAGIC)
            )
        } else {
            "not a Pulseboard log segment (bad header)".into()
        };
        return Err(LogError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason,
        });
    }
    let mut offset = MAGIC.len() as u64;
    let mut head = [0u8; 8];
    let mut body = Vec::new();
    loop {
        let got = read_full(&mut r, &mut head, path)?;
        if got == 0 {
            return Ok(Scan::End);
        }
        if got < head.len() {
            return Ok(Scan::Damaged {
                offset,
                reason: format!("record header torn ({got} of 8 bytes)"),
            });
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if !(RECORD_HEADER - 8..=RECORD_HEADER - 8 + MAX_PAYLOAD).contains(&len) {
            return Ok(Scan::Damaged {
                offset,
                reason: format!("impossible record length {len}"),
            });
        }
        body.resize(len, 0);
        let got = read_full(&mut r, &mut body, path)?;
        if got < len {
            return Ok(Scan::Damaged {
                offset,
                reason: format!("record torn ({got} of {len} bytes)"),
            });
        }
        if crc32fast::hash(&body) != crc {
            return Ok(Scan::Damaged {
                offset,
                reason: "record checksum mismatch".into(),
            });
        }
        let tagged = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
        let group = tagged & segment::GROUP_MASK;
        let Some(kind) = Kind::from_bits((tagged & !segment::UNIT_END) >> segment::KIND_SHIFT)
        else {
            return Ok(Scan::Damaged {
                offset,
                reason: format!("unknown record kind in tag {tagged:#x}"),
            });
        };
        let mut ix = [0u8; 8];
        ix.copy_from_slice(&body[4..12]);
        let index = u64::from_le_bytes(ix);
        offset += 8 + len as u64;
        each(
            group,
            kind,
            index,
            &body[12..],
            tagged & segment::UNIT_END != 0,
            offset,
        )?;
    }
}

/// Like `read_exact`, but returns how many bytes were read before end of file.
fn read_full(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<usize, LogError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(LogError::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    Ok(n)
}
