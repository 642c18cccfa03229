use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::mpsc;

use proptest::prelude::*;

use super::*;

/// Sends every applied record to a channel.
struct Sink(mpsc::Sender<(u32, u64, u32)>);
impl Apply<u32> for Sink {
    fn apply(&mut self, group: u32, index: u64, value: u32) {
        let _ = self.0.send((group, index, value));
    }
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        ..LogConfig::new(dir)
    }
}

type Replayed = Vec<(u32, u64, Vec<u8>)>;
type Opened = (
    SharedLog<u32>,
    RecoveryReport,
    Replayed,
    mpsc::Receiver<(u32, u64, u32)>,
);

fn open(cfg: LogConfig, applied: &HashMap<u32, u64>) -> Opened {
    let (tx, rx) = mpsc::channel();
    let mut replayed = Vec::new();
    let (log, report) = SharedLog::open(
        cfg,
        applied,
        |g, i, p| {
            replayed.push((g, i, p.to_vec()));
            Ok(())
        },
        Sink(tx),
    )
    .expect("open");
    (log, report, replayed, rx)
}

fn payload(g: u32, n: u32) -> Vec<u8> {
    format!("group {g} value {n} {}", "x".repeat((n % 50) as usize)).into_bytes()
}

/// Appends in rounds of 16 records, waiting for each round to apply, so that many
/// group-commit rounds (and segment rolls) happen.
fn write(
    log: &SharedLog<u32>,
    rx: &mpsc::Receiver<(u32, u64, u32)>,
    records: &[(u32, u32)],
) -> Vec<(u32, u64, u32)> {
    let mut out = Vec::new();
    for chunk in records.chunks(16) {
        for &(g, n) in chunk {
            log.append(g, payload(g, n), n).expect("append");
        }
        out.extend((0..chunk.len()).map(|_| rx.recv().expect("applied")));
    }
    out
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
fn append_apply_reopen_replay_across_groups_and_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, replayed, rx) = open(config(dir.path()), &HashMap::new());
    assert!(replayed.is_empty());
    let records: Vec<(u32, u32)> = (0..300).map(|n| (n % 3, n)).collect();
    let applied = write(&log, &rx, &records);
    // Applied in log order, with contiguous per-group indices from 1.
    let mut next = HashMap::new();
    for ((g, i, v), (g2, n)) in applied.iter().zip(&records) {
        assert_eq!((*g, *v), (*g2, *n));
        let want = next.entry(*g).or_insert(1u64);
        assert_eq!(*i, *want);
        *want += 1;
    }
    assert!(log.stats().segments > 2, "small segments must roll");
    assert!(log.stats().syncs >= 1);
    log.shutdown().unwrap();

    let (log, report, replayed, rx) = open(config(dir.path()), &HashMap::new());
    assert!(report.truncated.is_none());
    assert_eq!(report.replayed, 300);
    for ((g, i, p), (g2, i2, v)) in replayed.iter().zip(&applied) {
        assert_eq!((g, i), (g2, i2));
        assert_eq!(p, &payload(*g, *v));
    }
    // Indices continue after reopen.
    let more = write(&log, &rx, &[(1, 1000)]);
    assert_eq!(more[0].1, 101);
}

#[test]
fn applied_skips_replay_and_release_deletes_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _, rx) = open(config(dir.path()), &HashMap::new());
    let records: Vec<(u32, u32)> = (0..200).map(|n| (n % 2, n)).collect();
    write(&log, &rx, &records);
    let before = segments(dir.path()).len();
    log.release(0, 100);
    log.release(1, 100);
    // Releases take effect at the next roll.
    write(
        &log,
        &rx,
        &(0..60).map(|n| (0, 1000 + n)).collect::<Vec<_>>(),
    );
    let after = segments(dir.path()).len();
    assert!(
        after < before,
        "released segments are deleted ({before} → {after})"
    );
    log.shutdown().unwrap();

    let applied: HashMap<u32, u64> = [(0, 160), (1, 100)].into();
    let (log, report, replayed, rx) = open(config(dir.path()), &applied);
    assert_eq!(report.replayed, 0);
    assert!(replayed.is_empty());
    // Every segment was released: indices still continue from the applied map.
    let dir2 = tempfile::tempdir().unwrap();
    let (log2, _, _, rx2) = open(config(dir2.path()), &[(7u32, 41u64)].into());
    assert_eq!(write(&log2, &rx2, &[(7, 1)])[0].1, 42);
    assert_eq!(write(&log, &rx, &[(0, 1)])[0].1, 161);
}

#[test]
fn torn_and_corrupt_tails_are_truncated_and_reported() {
    for damage in ["garbage", "cut", "flip"] {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _, rx) = open(LogConfig::new(dir.path()), &HashMap::new());
        write(&log, &rx, &(0..20).map(|n| (n % 4, n)).collect::<Vec<_>>());
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
        let (log, report, replayed, rx) = open(LogConfig::new(dir.path()), &HashMap::new());
        let t = report
            .truncated
            .as_ref()
            .unwrap_or_else(|| panic!("{damage}: no truncation reported"));
        assert!(t.dropped_bytes > 0, "{damage}");
        assert_eq!(replayed.len(), expect, "{damage}: earlier records intact");
        // The log continues cleanly after the repair, and the repair is durable.
        write(&log, &rx, &[(0, 99)]);
        log.shutdown().unwrap();
        let (_, report, replayed, _) = open(LogConfig::new(dir.path()), &HashMap::new());
        assert!(report.truncated.is_none(), "{damage}: repaired for good");
        assert_eq!(replayed.len(), expect + 1);
    }
}

#[test]
fn damage_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _, rx) = open(config(dir.path()), &HashMap::new());
    write(&log, &rx, &(0..200).map(|n| (0, n)).collect::<Vec<_>>());
    log.shutdown().unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let mut bytes = fs::read(&segs[1]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    fs::write(&segs[1], &bytes).unwrap();
    let (tx, _rx) = mpsc::channel();
    let err = SharedLog::<u32>::open(
        config(dir.path()),
        &HashMap::new(),
        |_, _, _| Ok(()),
        Sink(tx),
    )
    .err()
    .expect("must refuse to start");
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
    // A missing middle segment is caught too.
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _, rx) = open(config(dir.path()), &HashMap::new());
    write(&log, &rx, &(0..200).map(|n| (0, n)).collect::<Vec<_>>());
    log.shutdown().unwrap();
    fs::remove_file(&segments(dir.path())[1]).unwrap();
    let (tx, _rx) = mpsc::channel();
    let err = SharedLog::<u32>::open(
        config(dir.path()),
        &HashMap::new(),
        |_, _, _| Ok(()),
        Sink(tx),
    )
    .err()
    .expect("gap");
    assert!(err.to_string().contains("jumps"), "{err}");
    // A foreign file with our naming is refused, not truncated.
    let dir = tempfile::tempdir().unwrap();
    fs::write(segment::path(dir.path(), 1), b"hello world, not a log").unwrap();
    let (tx, _rx) = mpsc::channel();
    assert!(SharedLog::<u32>::open(
        config(dir.path()),
        &HashMap::new(),
        |_, _, _| Ok(()),
        Sink(tx)
    )
    .is_err());
}

#[test]
fn a_full_queue_says_so_and_replay_errors_abort() {
    struct Slow;
    impl Apply<u32> for Slow {
        fn apply(&mut self, _: u32, _: u64, _: u32) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        queue_capacity: 1,
        ..LogConfig::new(dir.path())
    };
    let (log, _) = SharedLog::open(cfg, &HashMap::new(), |_, _, _| Ok(()), Slow).unwrap();
    let mut full = false;
    for n in 0..50 {
        if let Err(LogError::Full) = log.append(0, vec![1], n) {
            full = true;
            break;
        }
    }
    assert!(full);
    assert!(matches!(
        log.append(0, vec![0; MAX_PAYLOAD + 1], 0),
        Err(LogError::TooLarge { .. })
    ));
    log.shutdown().unwrap();
    let (tx, _rx) = mpsc::channel();
    let err = SharedLog::<u32>::open(
        LogConfig::new(dir.path()),
        &HashMap::new(),
        |_, _, _| Err("bad".into()),
        Sink(tx),
    )
    .err()
    .expect("replay error aborts");
    assert!(matches!(err, LogError::Replay { .. }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn recovery_keeps_exactly_a_prefix(
        groups in proptest::collection::vec(0u32..4, 1..120),
        cut in 0.0f64..1.0,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (log, _, _, rx) = open(config(dir.path()), &HashMap::new());
        let records: Vec<(u32, u32)> = groups.iter().enumerate().map(|(n, g)| (*g, n as u32)).collect();
        let written = write(&log, &rx, &records);
        log.shutdown().unwrap();
        let segs = segments(dir.path());
        let last = segs.last().unwrap();
        let bytes = fs::read(last).unwrap();
        let keep = (bytes.len() as f64 * cut) as usize;
        fs::write(last, &bytes[..keep]).unwrap();
        let (_, _, replayed, _) = open(config(dir.path()), &HashMap::new());
        // What comes back is a prefix of what was written, and everything from earlier
        // segments is in it.
        prop_assert!(replayed.len() <= written.len());
        for ((g, i, p), (g2, i2, v)) in replayed.iter().zip(&written) {
            prop_assert_eq!((g, i), (g2, i2));
            prop_assert_eq!(p, &payload(*g2, *v));
        }
        let in_earlier: usize = {
            let (_, _, r, _) = open(config(dir.path()), &HashMap::new());
            r.len()
        };
        prop_assert_eq!(in_earlier, replayed.len());
    }
}

#[test]
fn a_torn_multi_record_unit_is_dropped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _, _, rx) = open(LogConfig::new(dir.path()), &HashMap::new());
    log.append_many(vec![(0, payload(0, 1), 1), (1, payload(1, 2), 2)])
        .unwrap();
    log.append_many(vec![
        (0, payload(0, 3), 3),
        (1, payload(1, 4), 4),
        (2, payload(2, 5), 5),
    ])
    .unwrap();
    for _ in 0..5 {
        rx.recv().unwrap();
    }
    log.shutdown().unwrap();
    // Cut into the last record of the second unit: its first two records are intact on disk
    // but must not come back without the third.
    let seg = segments(dir.path()).pop().unwrap();
    let bytes = fs::read(&seg).unwrap();
    fs::write(&seg, &bytes[..bytes.len() - 5]).unwrap();
    let (_, report, replayed, _) = open(LogConfig::new(dir.path()), &HashMap::new());
    let got: Vec<(u32, u64)> = replayed.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(got, vec![(0, 1), (1, 1)]);
    assert!(report.truncated.is_some());
    // Groups at or above 2^31 are refused (the high bit marks unit ends).
    let (log, _, _, _) = open(LogConfig::new(dir.path()), &HashMap::new());
    assert!(log.append(1 << 31, vec![], 0).is_err());
}
