//! Faults, and running one against a cluster under the workload: how long until writes were
//! acknowledged again, how available the cluster was during the fault, and throughput before,
//! during and after.

use std::fmt;
use std::time::Duration;

use anyhow::Result;
use rand::seq::IndexedRandom;

use crate::cluster::Cluster;
use crate::relay::LinkFault;
use crate::workload::{Attempt, Workload};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// `kill -9` of the node leading the most shards; restarted after the hold.
    KillLeader,
    /// `kill -9` of a node leading the fewest shards; restarted after the hold.
    KillFollower,
    /// SIGSTOP of the busiest leader for longer than the election timeout, then SIGCONT.
    PauseLeader,
    /// The busiest leader cut off from every other node, both ways.
    PartitionLeader,
    /// The busiest leader's messages to the others dropped; it still hears them.
    OneWayPartition,
    /// Every link drops 10 %, delays 10–30 ms (reordering) and duplicates 5 % of packets.
    LossyLinks,
    /// Each node in turn stopped with SIGTERM and started again.
    RollingRestart,
    /// A follower killed, the tail of its newest log segment cut off, and restarted.
    TruncatedLog,
    /// A new node joins (taking over a share of the shards), then the node leading the
    /// fewest shards is removed (its shards move to the others) and stopped.
    Rebalance,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::PauseLeader,
        Fault::PartitionLeader,
        Fault::OneWayPartition,
        Fault::LossyLinks,
        Fault::RollingRestart,
        Fault::TruncatedLog,
        Fault::Rebalance,
    ];

    pub fn random() -> Fault {
        // Rolling restarts take long, and a rebalance needs a spare node: the random run keeps
        // to single faults.
        let pool: Vec<Fault> = Fault::ALL
            .into_iter()
            .filter(|f| !matches!(f, Fault::RollingRestart | Fault::Rebalance))
            .collect();
        *pool.choose(&mut rand::rng()).unwrap_or(&Fault::KillLeader)
    }

    /// Whether the fault takes a shard leader away (so failover time means something).
    pub fn hits_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::PauseLeader
                | Fault::PartitionLeader
                | Fault::OneWayPartition
        )
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillLeader => "kill -9 leader",
            Fault::KillFollower => "kill -9 follower",
            Fault::PauseLeader => "pause leader (SIGSTOP)",
            Fault::PartitionLeader => "partition leader",
            Fault::OneWayPartition => "one-way partition of leader",
            Fault::LossyLinks => "lossy links (drop, delay, dup)",
            Fault::RollingRestart => "rolling restart",
            Fault::TruncatedLog => "truncated log on follower",
            Fault::Rebalance => "a node joins, another leaves",
        })
    }
}

/// What one fault did, in seconds since the workload started.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub fault: Fault,
    pub victim: Option<usize>,
    /// Shards the victim led when the fault began.
    pub victim_led: usize,
    pub fault_at: f64,
    pub healed_at: f64,
    /// Fault → first acknowledged write sent after it (for faults that take a leader away).
    pub failover_ms: Option<f64>,
    /// Fault → every shard led by another node, as the others report it.
    pub reelected_ms: Option<f64>,
    /// Share of 250 ms slots during the fault in which some write was acknowledged.
    pub availability: f64,
    /// Acknowledged points per second: 5 s before, during, and 5 s after the fault.
    pub throughput: [f64; 3],
}

/// Runs `fault`, holding it for `hold`, then waits for every shard to have a running leader
/// and measures 5 s of recovery.
pub async fn run(
    cluster: &mut Cluster,
    workload: &Workload,
    fault: Fault,
    hold: Duration,
) -> Result<Outcome> {
    cluster.wait_settled(Duration::from_secs(60)).await?;
    let led = cluster.leaders().await?;
    // The victim is chosen before the clock starts: failover counts from the fault itself.
    let victim = match fault {
        Fault::KillLeader
        | Fault::PauseLeader
        | Fault::PartitionLeader
        | Fault::OneWayPartition => Some(cluster.busiest_leader().await?),
        Fault::KillFollower | Fault::TruncatedLog => Some(cluster.quietest().await?),
        Fault::LossyLinks | Fault::RollingRestart | Fault::Rebalance => None,
    };
    let v = victim.unwrap_or(0);
    let fault_at = workload.elapsed();
    let mut reelected_ms = None;
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            cluster.kill(v).await?;
            if fault == Fault::KillLeader {
                reelected_ms = watch(cluster, v, hold).await;
            } else {
                tokio::time::sleep(hold).await;
            }
            cluster.restart(v).await?;
        }
        Fault::PauseLeader => {
            cluster.pause(v)?;
            reelected_ms = watch(cluster, v, hold).await;
            cluster.resume(v)?;
        }
        Fault::PartitionLeader | Fault::OneWayPartition => {
            let others: Vec<usize> = (0..cluster.nodes.len()).filter(|&i| i != v).collect();
            if fault == Fault::PartitionLeader {
                cluster.faults.partition(&[v], &others);
            } else {
                for &o in &others {
                    cluster.faults.set(v, o, LinkFault::CUT);
                }
            }
            reelected_ms = watch(cluster, v, hold).await;
            cluster.faults.heal();
        }
        Fault::LossyLinks => {
            let n = cluster.nodes.len();
            for a in 0..n {
                for b in (0..n).filter(|&b| b != a) {
                    cluster.faults.set(
                        a,
                        b,
                        LinkFault {
                            drop: 0.10,
                            delay: Duration::from_millis(10),
                            jitter: Duration::from_millis(20),
                            duplicate: 0.05,
                            cut: false,
                        },
                    );
                }
            }
            tokio::time::sleep(hold).await;
            cluster.faults.heal();
        }
        Fault::RollingRestart => {
            for i in cluster.running() {
                cluster.stop(i).await?;
                cluster.restart(i).await?;
                cluster.wait_settled(Duration::from_secs(60)).await?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Fault::TruncatedLog => {
            cluster.kill(v).await?;
            cluster.truncate_log(v, 4096)?;
            tokio::time::sleep(hold).await;
            cluster.restart(v).await?;
        }
        Fault::Rebalance => {
            let joined = cluster.join().await?;
            cluster.wait_settled(Duration::from_secs(60)).await?;
            tokio::time::sleep(hold).await;
            let leaving = cluster.quietest().await?;
            let leaving = if leaving == joined {
                cluster
                    .running()
                    .into_iter()
                    .find(|&i| i != joined)
                    .unwrap_or(leaving)
            } else {
                leaving
            };
            cluster.remove(leaving).await?;
        }
    }
    cluster.wait_settled(Duration::from_secs(60)).await?;
    let healed_at = workload.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let attempts = workload.snapshot().attempts;
    Ok(Outcome {
        fault,
        victim,
        victim_led: victim.map_or(0, |v| led[v]),
        reelected_ms,
        fault_at,
        healed_at,
        failover_ms: fault
            .hits_leader()
            .then(|| failover_ms(&attempts, fault_at))
            .flatten(),
        availability: availability(&attempts, fault_at, healed_at),
        throughput: [
            throughput(&attempts, fault_at - 5.0, fault_at),
            throughput(&attempts, fault_at, healed_at),
            throughput(&attempts, healed_at, healed_at + 5.0),
        ],
    })
}

/// Holds a fault that took node `v`'s leaderships away for `hold`, watching the others
/// elect new leaders; returns how long that took, if it happened within the hold.
async fn watch(cluster: &Cluster, v: usize, hold: Duration) -> Option<f64> {
    let started = std::time::Instant::now();
    let r = cluster
        .wait_leaders(Some(v), hold)
        .await
        .ok()
        .map(|d| d.as_secs_f64() * 1000.0);
    tokio::time::sleep(hold.saturating_sub(started.elapsed())).await;
    r
}

fn done_at(a: &Attempt) -> f64 {
    a.at + a.latency_ms / 1000.0
}

/// From `from` to the first acknowledgement of a request sent after it.
pub fn failover_ms(attempts: &[Attempt], from: f64) -> Option<f64> {
    attempts
        .iter()
        .filter(|a| a.ok && a.at >= from)
        .map(|a| (done_at(a) - from) * 1000.0)
        .min_by(f64::total_cmp)
}

pub fn throughput(attempts: &[Attempt], from: f64, to: f64) -> f64 {
    if to <= from {
        return 0.0;
    }
    let points: u64 = attempts
        .iter()
        .filter(|a| a.ok && (from..to).contains(&done_at(a)))
        .map(|a| u64::from(a.points))
        .sum();
    points as f64 / (to - from)
}

pub fn availability(attempts: &[Attempt], from: f64, to: f64) -> f64 {
    let slots = (((to - from) / 0.25).ceil() as usize).max(1);
    let mut hit = vec![false; slots];
    for a in attempts.iter().filter(|a| a.ok) {
        let t = done_at(a);
        if (from..to).contains(&t) {
            if let Some(h) = hit.get_mut(((t - from) / 0.25) as usize) {
                *h = true;
            }
        }
    }
    hit.iter().filter(|h| **h).count() as f64 / slots as f64
}
