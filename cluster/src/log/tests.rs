use std::fs;
use std::path::Path;
use std::sync::mpsc;

use proptest::prelude::*;

use super::*;

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        ..LogConfig::new(dir)
    }
}

fn open(cfg: LogConfig) -> (SharedLog, RecoveryReport) {
    SharedLog::open(cfg).expect("open")
}

fn payload(g: u32, n: u64) -> Vec<u8> {
    format!("group {g} value {n} {}", "x".repeat((n % 50) as usize)).into_bytes()
}

/// Runs an async log call from a plain test.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    });
    RT.block_on(f)
}

/// Writes `ops` to `group` and waits until they are durable.
fn write_durably(log: &SharedLog, group: u32, ops: Vec<Op>) {
    let (tx, rx) = mpsc::channel();
    block_on(log.write(
        group,
        ops,
        Some(Box::new(move |r| {
            let _ = tx.send(r);
        })),
    ))
    .expect("write");
    rx.recv().expect("done").expect("durable");
}

/// One durable write per `(group, index)`, each a single entry.
fn write_entries(log: &SharedLog, records: &[(u32, u64)]) {
    for &(g, i) in records {
        write_durably(
            log,
            g,
            vec![Op::Entry {
                index: i,
                payload: payload(g, i).into(),
            }],
        );
    }
}

/// Entries of groups 0..4, as `(group, index)` in write order per group.
fn all_entries(log: &SharedLog) -> Vec<(u32, u64, Vec<u8>)> {
    let mut out = Vec::new();
    for g in 0..4 {
        for (i, p) in log.read(g, ..).expect("read") {
            out.push((g, i, p));
        }
    }
    out
}

/// `n` records spread over `groups` groups, each group's indices contiguous from 1.
fn spread(n: u64, groups: u32) -> Vec<(u32, u64)> {
    (0..n)
        .map(|k| ((k % groups as u64) as u32, k / groups as u64 + 1))
        .collect()
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn entries_come_back_across_groups_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(config(dir.path()));
    let records = spread(300, 3);
    write_entries(&log, &records);
    assert!(log.stats().segments > 2, "small segments must roll");
    assert!(log.stats().syncs >= 1);
    let before = all_entries(&log);
    assert_eq!(before.len(), 300);
    for (g, i, p) in &before {
        assert_eq!(p, &payload(*g, *i));
    }
    log.shutdown().unwrap();

    let (log, report) = open(config(dir.path()));
    assert!(report.truncated.is_none());
    assert_eq!(all_entries(&log), before);
    assert_eq!(log.group(1).first, Some(1));
    assert_eq!(log.group(1).last, Some(100));
    assert_eq!(log.read(2, 40..43).unwrap().len(), 3);
}

#[test]
fn purges_release_covered_segments_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(config(dir.path()));
    write_entries(&log, &spread(200, 2));
    let before = segments(dir.path()).len();
    for g in 0..2 {
        write_durably(
            &log,
            g,
            vec![Op::Purge {
                upto: 100,
                payload: b"last purged".to_vec(),
            }],
        );
    }
    // Purges free the segments they cover at once, not at the next roll (an idle node
    // would keep them).
    let after = segments(dir.path()).len();
    assert!(
        after < before,
        "released segments are deleted ({before} → {after})"
    );
    write_entries(&log, &(101..=160).map(|i| (0, i)).collect::<Vec<_>>());
    log.shutdown().unwrap();

    let (log, _) = open(config(dir.path()));
    let g0 = log.group(0);
    assert_eq!((g0.first, g0.last), (Some(101), Some(160)));
    assert_eq!(g0.purged, Some((100, b"last purged".to_vec())));
    let g1 = log.group(1);
    assert_eq!(
        (g1.first, g1.last),
        (None, None),
        "all of group 1 was purged"
    );
    assert_eq!(g1.purged.map(|p| p.0), Some(100));
    assert_eq!(log.read(0, ..).unwrap().len(), 60);
}

#[test]
fn a_segment_whose_entries_are_all_purged_is_freed_though_still_written() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(config(dir.path()));
    // Less than a segment (4 096 bytes), more than an eighth of one: nothing rolls by size.
    write_entries(&log, &(1..=20).map(|i| (0, i)).collect::<Vec<_>>());
    let written = segments(dir.path());
    assert_eq!(written.len(), 1);
    let size = |p: &std::path::PathBuf| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    assert!(size(&written[0]) > 4096 / 8, "{}", size(&written[0]));
    // Purged only in part: the segment stays.
    write_durably(
        &log,
        0,
        vec![Op::Purge {
            upto: 10,
            payload: b"p10".to_vec(),
        }],
    );
    assert_eq!(segments(dir.path()), written);
    // All purged (a snapshot covers every entry): it goes, and the new one is small (the
    // writer rolls right after answering the purge).
    write_durably(
        &log,
        0,
        vec![Op::Purge {
            upto: 20,
            payload: b"p20".to_vec(),
        }],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // The roll creates the new segment before it deletes the old one: wait for both.
    while segments(dir.path()).contains(&written[0]) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let left = segments(dir.path());
    assert_eq!(left.len(), 1);
    assert_ne!(left, written);
    assert!(size(&left[0]) < 4096 / 8, "{}", size(&left[0]));
    write_entries(&log, &[(0, 21)]);
    log.shutdown().unwrap();

    let (log, _) = open(config(dir.path()));
    let g0 = log.group(0);
    assert_eq!((g0.first, g0.last), (Some(21), Some(21)));
    assert_eq!(g0.purged, Some((20, b"p20".to_vec())));
}

#[test]
fn truncation_vote_and_committed_survive_segment_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(config(dir.path()));
    write_durably(&log, 5, vec![Op::Vote(b"vote 1".to_vec())]);
    write_entries(&log, &(1..=50).map(|i| (5, i)).collect::<Vec<_>>());
    write_durably(&log, 5, vec![Op::Truncate { from: 40 }]);
    write_durably(&log, 5, vec![Op::Committed(b"committed 39".to_vec())]);
    write_durably(
        &log,
        5,
        vec![Op::Purge {
            upto: 30,
            payload: vec![],
        }],
    );
    // Many more writes in another group roll segments; the ones holding the vote go.
    write_entries(&log, &(1..=200).map(|i| (6, i)).collect::<Vec<_>>());
    log.shutdown().unwrap();
    let (log, _) = open(config(dir.path()));
    let g = log.group(5);
    assert_eq!(g.vote, Some(b"vote 1".to_vec()));
    assert_eq!(g.committed, Some(b"committed 39".to_vec()));
    assert_eq!((g.first, g.last), (Some(31), Some(39)));
}

#[test]
fn torn_and_corrupt_tails_are_truncated_and_reported() {
    for damage in ["garbage", "cut", "flip"] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(LogConfig::new(dir.path()));
        write_entries(&log, &spread(20, 4));
        log.shutdown().unwrap();
        let seg = segments(dir.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let len = bytes.len();
        let expect = match damage {
            "garbage" => {
                bytes.extend_from_slice(&[0x5A; 33]);
                20
            }
            "cut" => {
                bytes.truncate(len - 7);
                19
            }
            _ => {
                bytes[len - 3] ^= 0x40;
                19
            }
        };
        fs::write(&seg, &bytes).unwrap();
        let (log, report) = open(LogConfig::new(dir.path()));
        let t = report
            .truncated
            .as_ref()
            .unwrap_or_else(|| panic!("{damage}: no truncation reported"));
        assert!(t.dropped_bytes > 0, "{damage}");
        assert_eq!(
            all_entries(&log).len(),
            expect,
            "{damage}: earlier records intact"
        );
        // The log continues cleanly after the repair, and the repair is durable (the cut
        // record was group 3's fifth).
        write_entries(&log, &[(0, 6)]);
        log.shutdown().unwrap();
        let (log, report) = open(LogConfig::new(dir.path()));
        assert!(report.truncated.is_none(), "{damage}: repaired for good");
        assert_eq!(all_entries(&log).len(), expect + 1);
    }
}

#[test]
fn damage_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(config(dir.path()));
    write_entries(&log, &spread(200, 1));
    log.shutdown().unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let mut bytes = fs::read(&segs[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    fs::write(&segs[1], &bytes).unwrap();
    let err = SharedLog::open(config(dir.path()))
        .err()
        .expect("must refuse to start");
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    // A missing middle segment is caught too.
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(config(dir.path()));
    write_entries(&log, &spread(200, 1));
    log.shutdown().unwrap();
    fs::remove_file(&segments(dir.path())[1]).unwrap();
    let err = SharedLog::open(config(dir.path())).err().expect("gap");
    assert!(err.to_string().contains("jumps"), "{err}");
    // A foreign file with our naming is refused, not truncated.
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment::path(dir.path(), 1), b"hello world, not a log").unwrap();
    assert!(SharedLog::open(config(dir.path())).is_err());
    // A log written before Raft is refused by name, not misread.
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment::path(dir.path(), 1), b"PBWAL001").unwrap();
    let err = SharedLog::open(config(dir.path()))
        .err()
        .expect("old format");
    assert!(err.to_string().contains("older Pulseboard"), "{err}");
}

#[test]
fn oversized_records_and_groups_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(LogConfig::new(dir.path()));
    let big = Op::Entry {
        index: 1,
        payload: vec![0; MAX_PAYLOAD + 1].into(),
    };
    assert!(matches!(
        block_on(log.write(0, vec![big], None)),
        Err(LogError::TooLarge { .. })
    ));
    assert!(block_on(log.write(1 << 28, vec![], None)).is_err());
}

#[test]
fn a_torn_multi_record_write_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(LogConfig::new(dir.path()));
    let entries = |from: u64, to: u64| -> Vec<Op> {
        (from..=to)
            .map(|i| Op::Entry {
                index: i,
                payload: payload(0, i).into(),
            })
            .collect()
    };
    write_durably(&log, 0, entries(1, 2));
    write_durably(&log, 0, entries(3, 5));
    log.shutdown().unwrap();
    // Cut into the last record of the second write: its first two records are intact on disk
    // but must not come back without the third.
    let seg = segments(dir.path()).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..bytes.len() - 5]).unwrap();
    let (log, report) = open(LogConfig::new(dir.path()));
    let got: Vec<u64> = log.read(0, ..).unwrap().into_iter().map(|e| e.0).collect();
    assert_eq!(got, vec![1, 2]);
    assert!(report.truncated.is_some());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn recovery_keeps_exactly_a_prefix(
        groups in proptest::collection::vec(0u32..4, 1..120),
        cut in 0.0f64..1.0,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = open(config(dir.path()));
        let mut next = [1u64; 4];
        let mut written = Vec::new();
        for g in groups {
            written.push((g, next[g as usize]));
            next[g as usize] += 1;
        }
        write_entries(&log, &written);
        log.shutdown().unwrap();
        let segs = segments(dir.path());
        let last = segs.last().unwrap();
        let bytes = fs::read(last).unwrap();
        let keep = (bytes.len() as f64 * cut) as usize;
        fs::write(last, &bytes[..keep]).unwrap();
        let (log, _) = open(config(dir.path()));
        // What comes back is a prefix of what was written (per group, in order), and it is
        // stable across another reopen.
        let back = all_entries(&log);
        let mut seen = [0u64; 4];
        for (g, i, p) in &back {
            prop_assert_eq!(*i, seen[*g as usize] + 1);
            seen[*g as usize] = *i;
            prop_assert_eq!(p, &payload(*g, *i));
        }
        let n_back = back.len();
        let survivors: Vec<_> = written.iter().take(n_back).collect();
        for (g, i) in survivors {
            prop_assert!(seen[*g as usize] >= *i, "record ({}, {}) lost while later ones kept", g, i);
        }
        drop(log);
        let (log, _) = open(config(dir.path()));
        prop_assert_eq!(all_entries(&log).len(), n_back);
    }
}
