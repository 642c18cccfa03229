//! What the log knows about each group: where its entries are on disk, its purge point, its
//! vote and committed position. Built by recovery, kept current by the writer.

use std::collections::BTreeMap;

use super::segment::Kind;

/// Where an entry's payload lies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub segment: u64,
    /// Byte offset of the payload in the segment file.
    pub offset: u64,
    pub len: u32,
}

#[derive(Clone, Debug, Default)]
pub struct GroupIndex {
    pub entries: BTreeMap<u64, Loc>,
    /// The last purge: up to which index, and the caller's description of that entry.
    pub purged: Option<(u64, Vec<u8>)>,
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
}

impl GroupIndex {
    /// Folds one record in. Errors (only recovery checks) name an entry that does not follow
    /// the one before it: a segment is missing or out of order.
    pub fn record(
        &mut self,
        kind: Kind,
        index: u64,
        payload: &[u8],
        loc: Loc,
        check: bool,
    ) -> Result<(), String> {
        match kind {
            Kind::Entry => {
                if check {
                    if let Some((&last, _)) = self.entries.last_key_value() {
                        if index != last + 1 {
                            return Err(format!(
                                "index jumps from {last} to {index}; a segment is missing or out of order"
                            ));
                        }
                    }
                }
                self.entries.insert(index, loc);
            }
            Kind::Truncate => {
                self.entries.split_off(&index);
            }
            Kind::Purge => {
                self.forget_upto(index);
                if self.purged.as_ref().is_none_or(|(p, _)| *p <= index) {
                    self.purged = Some((index, payload.to_vec()));
                }
            }
            Kind::Vote => self.vote = Some(payload.to_vec()),
            Kind::Committed => self.committed = Some(payload.to_vec()),
        }
        Ok(())
    }

    /// Drops the locations of entries up to `index` (their segments may be deleted).
    pub fn forget_upto(&mut self, index: u64) {
        match index.checked_add(1) {
            Some(next) => self.entries = self.entries.split_off(&next),
            None => self.entries.clear(),
        }
    }
}
