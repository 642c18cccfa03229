//! `pulseboard-chaos`: the full chaos suite against real release binaries.
//!
//! ```text
//! cargo build --release && cargo run --release -p chaos -- full
//! ```
//! runs every fault once, then 20 leader kills, then 50 random faults, on three nodes, and
//! writes `chaos-report/report.md` and `chaos-report/timeline.svg`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use chaos::scenario::Fault;
use chaos::workload::Options;

#[derive(Parser)]
#[command(version, about = "Pulseboard's chaos suite")]
struct Cli {
    /// The pulseboard binary [default: next to this one].
    #[arg(long, global = true)]
    bin: Option<PathBuf>,
    /// Where the report goes.
    #[arg(long, global = true, default_value = "chaos-report")]
    out: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Five faults (kill -9 leader, partitioned leader, paused leader, a follower's log tail
    /// cut, a node joining and another leaving), checked after each.
    Smoke,
    /// Only leader kills (for the failover figures).
    Kills {
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// One fault, again and again, checked after each (to chase one fault's bug).
    Repeat {
        fault: Fault,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Every fault once, then leader kills, then random faults.
    Full {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Leader kills after the tour of faults (for the failover figures).
        #[arg(long, default_value_t = 20)]
        kills: usize,
        /// Random faults at the end.
        #[arg(long, default_value_t = 50)]
        random: usize,
        /// Run the checker after this many faults (and always at the end).
        #[arg(long, default_value_t = 5)]
        check_every: usize,
    },
}

fn progress(o: &chaos::scenario::Outcome) {
    eprintln!(
        "{:>7.1} s  {}  victim {:?} (led {})  re-elected {}  failover {}  available {:.0} %",
        o.fault_at,
        o.fault,
        o.victim,
        o.victim_led,
        o.reelected_ms.map_or("-".into(), |f| format!("{f:.0} ms")),
        o.failover_ms.map_or("-".into(), |f| format!("{f:.0} ms")),
        o.availability * 100.0
    );
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let bin = match cli.bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .join("pulseboard"),
    };
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(async {
        match cli.command {
            Command::Smoke => chaos::smoke(&bin).await,
            Command::Kills { rounds } => {
                chaos::run_suite(
                    &bin,
                    chaos::Size { nodes: 3, spare: 0 },
                    rounds,
                    rounds,
                    Options::default(),
                    |_| (Fault::KillLeader, Duration::from_secs(2)),
                    progress,
                )
                .await
            }
            Command::Repeat { fault, rounds } => {
                chaos::run_suite(
                    &bin,
                    chaos::Size {
                        nodes: 3,
                        spare: usize::from(fault == Fault::Rebalance) * rounds,
                    },
                    rounds,
                    1,
                    Options::default(),
                    |_| (fault, Duration::from_secs(4)),
                    progress,
                )
                .await
            }
            Command::Full {
                nodes,
                kills,
                random,
                check_every,
            } => {
                let tour = Fault::ALL.len();
                let steps = tour + kills + random;
                chaos::run_suite(
                    &bin,
                    // The tour's rebalance joins one more node.
                    chaos::Size { nodes, spare: 1 },
                    steps,
                    check_every,
                    Options::default(),
                    |i| {
                        if i < tour {
                            (Fault::ALL[i], Duration::from_secs(4))
                        } else if i < tour + kills {
                            (Fault::KillLeader, Duration::from_secs(2))
                        } else {
                            let hold = Duration::from_millis(1000 + rand::random_range(0..4000));
                            (Fault::random(), hold)
                        }
                    },
                    progress,
                )
                .await
            }
        }
    })?;
    std::fs::create_dir_all(&cli.out)?;
    let md = report.markdown();
    std::fs::write(cli.out.join("report.md"), &md)?;
    std::fs::write(cli.out.join("timeline.svg"), report.svg())?;
    if !report.failed_logs.is_empty() {
        let dir = cli.out.join("logs");
        std::fs::create_dir_all(&dir)?;
        for (name, text) in &report.failed_logs {
            std::fs::write(dir.join(name), text)?;
        }
        println!("node logs at the failed checks: {}", dir.display());
    }
    println!("{md}");
    println!("report written to {}", cli.out.display());
    if !report.ok() {
        bail!("the checker found lost, duplicated or wrong points");
    }
    Ok(())
}
