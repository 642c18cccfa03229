//! Three Raft members in one process behind a simulated network that sits between openraft's
//! RPCs and the members: a plan drawn from a seed loses requests, loses responses (the
//! callee acted, the caller does not know), duplicates requests and delays each one (so they
//! overtake each other), and cuts links. The chaos suite's relay works under QUIC, whose
//! retransmission hides a lost, doubled or reordered datagram from Raft; what reaches Raft is
//! this: an append-entries that timed out and was sent again while the first was still on
//! its way, a vote answered but never heard. Each member keeps the real shared log with
//! fsync on (`LogStore` over `SharedLog`), so a run repeats its faults (the seed, printed on
//! failure), not its timing. More seeds: `PULSEBOARD_SIM_SEEDS=50 cargo test -p cluster sim_`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Raft;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::cluster_tests::config;
use super::tests::{open_log, Stored, Sum, SumMachine, TestConfig};
use super::{LogStore, Member};

const GROUP: u32 = 9;

/// What happens to one RPC.
enum Fate {
    /// The link is cut: the caller hears nothing.
    Cut,
    /// The request is lost on the way.
    RequestLost,
    /// The callee acts on the request, its answer is lost.
    ResponseLost,
    /// Delivered (after the delay), and maybe a copy later.
    Delivered,
}

struct Plan {
    rng: StdRng,
    /// Links cut one way, (from, to).
    cut: HashSet<(u64, u64)>,
    lose_request: f64,
    lose_response: f64,
    duplicate: f64,
    max_delay_ms: u64,
    /// What the plan did: requests lost, responses lost, requests doubled.
    counts: [u64; 3],
}

impl Plan {
    fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            cut: HashSet::new(),
            lose_request: 0.05,
            lose_response: 0.05,
            duplicate: 0.1,
            max_delay_ms: 20,
            counts: [0; 3],
        }
    }

    /// The RPC's fate, its delay, and the delay of its copy if it is doubled.
    fn draw(&mut self, from: u64, to: u64) -> (Fate, Duration, Option<Duration>) {
        let delay = Duration::from_millis(self.rng.random_range(0..=self.max_delay_ms));
        let copy = self
            .rng
            .random_bool(self.duplicate)
            .then(|| Duration::from_millis(self.rng.random_range(0..=3 * self.max_delay_ms)));
        let p: f64 = self.rng.random();
        let fate = if self.cut.contains(&(from, to)) {
            Fate::Cut
        } else if p < self.lose_request {
            self.counts[0] += 1;
            Fate::RequestLost
        } else if p < self.lose_request + self.lose_response {
            self.counts[1] += 1;
            Fate::ResponseLost
        } else {
            Fate::Delivered
        };
        let copy = copy.filter(|_| !matches!(fate, Fate::Cut));
        self.counts[2] += copy.is_some() as u64;
        (fate, delay, copy)
    }
}

#[derive(Default)]
struct Net {
    /// The running members; a stopped one is absent (unreachable).
    rafts: RwLock<HashMap<u64, Raft<TestConfig>>>,
    plan: Mutex<Option<Plan>>,
}

impl Net {
    fn raft(&self, id: u64) -> Option<Raft<TestConfig>> {
        self.rafts.read().expect("rafts").get(&id).cloned()
    }

    fn cut_off(&self, id: u64, members: &[u64]) {
        let mut plan = self.plan.lock().expect("plan");
        let plan = plan.as_mut().expect("a plan");
        for &m in members.iter().filter(|&&m| m != id) {
            plan.cut.insert((id, m));
            plan.cut.insert((m, id));
        }
    }

    fn heal(&self) {
        if let Some(plan) = self.plan.lock().expect("plan").as_mut() {
            plan.cut.clear();
        }
    }

    /// One RPC from `from` to `to` through the plan; `call` delivers it to the callee.
    async fn send<Req, Resp, E, F, Fut>(
        self: &Arc<Self>,
        from: u64,
        to: u64,
        req: Req,
        call: F,
    ) -> Result<Resp, RPCError<u64, Member, E>>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Raft<TestConfig>, Req) -> Fut + Send + Sync + Clone + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        let (fate, delay, copy) = self
            .plan
            .lock()
            .expect("plan")
            .as_mut()
            .expect("a plan")
            .draw(from, to);
        let lost = |what: &str| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
                "{what} from {from} to {to}"
            ))))
        };
        if let Some(later) = copy {
            let (net, req, call) = (self.clone(), req.clone(), call.clone());
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                if let Some(raft) = net.raft(to) {
                    let _ = call(raft, req).await;
                }
            });
        }
        tokio::time::sleep(delay).await;
        match fate {
            Fate::Cut => Err(lost("cut link")),
            Fate::RequestLost => Err(lost("request lost")),
            Fate::ResponseLost | Fate::Delivered => {
                let raft = self.raft(to).ok_or_else(|| lost("member down"))?;
                let answer = call(raft, req).await;
                if matches!(fate, Fate::ResponseLost) {
                    return Err(RPCError::Network(NetworkError::new(
                        &std::io::Error::other(format!("response lost from {to} to {from}")),
                    )));
                }
                answer.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
            }
        }
    }
}

struct SimFactory {
    from: u64,
    net: Arc<Net>,
}

struct SimClient {
    from: u64,
    to: u64,
    net: Arc<Net>,
}

impl RaftNetworkFactory<TestConfig> for SimFactory {
    type Network = SimClient;

    async fn new_client(&mut self, target: u64, _node: &Member) -> SimClient {
        SimClient {
            from: self.from,
            to: target,
            net: self.net.clone(),
        }
    }
}

impl RaftNetwork<TestConfig> for SimClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.net
            .send(self.from, self.to, rpc, |raft, rpc| async move {
                raft.append_entries(rpc).await
            })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TestConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, Member, RaftError<u64, InstallSnapshotError>>,
    > {
        self.net
            .send(self.from, self.to, rpc, |raft, rpc| async move {
                raft.install_snapshot(rpc).await
            })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, Member, RaftError<u64>>> {
        self.net
            .send(self.from, self.to, rpc, |raft, rpc| async move {
                raft.vote(rpc).await
            })
            .await
    }
}

struct Replica {
    state: Arc<Mutex<Sum>>,
    /// The machine's snapshot "on disk": it survives a restart.
    snapshot: Arc<Mutex<Stored>>,
    dir: tempfile::TempDir,
}

struct Sim {
    seed: u64,
    net: Arc<Net>,
    members: BTreeMap<u64, Replica>,
}

impl Sim {
    async fn new(seed: u64) -> Self {
        let net = Arc::new(Net::default());
        *net.plan.lock().expect("plan") = Some(Plan::new(seed));
        let mut sim = Self {
            seed,
            net,
            members: BTreeMap::new(),
        };
        for id in 1..=3 {
            let m = Replica {
                state: Default::default(),
                snapshot: Default::default(),
                dir: tempfile::tempdir().expect("dir"),
            };
            sim.members.insert(id, m);
            sim.start(id).await;
        }
        let all: BTreeMap<u64, Member> = (1..=3).map(|id| (id, Member::default())).collect();
        sim.raft(1).initialize(all).await.expect("initialize");
        sim
    }

    fn raft(&self, id: u64) -> Raft<TestConfig> {
        self.net.raft(id).expect("running")
    }

    /// Starts (or restarts) member `id` on its log and its last snapshot.
    async fn start(&mut self, id: u64) {
        let m = self.members.get_mut(&id).expect("member");
        let sm = SumMachine::restart(m.snapshot.clone());
        m.state = sm.state.clone();
        let raft = Raft::new(
            id,
            config(),
            SimFactory {
                from: id,
                net: self.net.clone(),
            },
            LogStore::new(open_log(m.dir.path()), GROUP),
            sm,
        )
        .await
        .expect("raft");
        self.net.rafts.write().expect("rafts").insert(id, raft);
    }

    async fn stop(&mut self, id: u64) {
        let raft = self.net.rafts.write().expect("rafts").remove(&id);
        if let Some(raft) = raft {
            let _ = raft.shutdown().await;
        }
    }

    fn running(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .net
            .rafts
            .read()
            .expect("rafts")
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The member that leads with the highest term among the running ones, within 10 s.
    async fn leader(&self) -> u64 {
        for _ in 0..200 {
            let best = self
                .running()
                .into_iter()
                .filter_map(|id| {
                    let m = self.raft(id).metrics().borrow().clone();
                    (m.current_leader == Some(id)).then_some((m.current_term, id))
                })
                .max();
            if let Some((_, id)) = best {
                return id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("seed {}: no leader within 10 s", self.seed);
    }

    /// Writes `values` through whoever leads, `parallel` at a time, without retrying (a write
    /// whose answer was lost has an unknown fate and is not counted); returns those
    /// acknowledged and the highest log index acknowledged.
    async fn write(&self, values: std::ops::Range<u64>, parallel: usize) -> (Vec<u64>, u64) {
        let mut acked = Vec::new();
        let mut last = 0;
        let values: Vec<u64> = values.collect();
        for chunk in values.chunks(parallel) {
            let leader = self.raft(self.leader().await);
            let writes = chunk.iter().map(|&v| {
                let raft = leader.clone();
                async move {
                    let r = tokio::time::timeout(Duration::from_secs(2), raft.client_write(v));
                    (v, r.await)
                }
            });
            for (v, r) in futures_util::future::join_all(writes).await {
                if let Ok(Ok(r)) = r {
                    acked.push(v);
                    last = last.max(r.log_id.index);
                }
            }
        }
        (acked, last)
    }

    /// Heals every link, waits until every running member applied `index`, and checks that
    /// they applied the same values in the same order, each once, every acknowledged one
    /// among them.
    async fn settle_and_check(&self, index: u64, acked: &[u64]) -> Vec<u64> {
        self.net.heal();
        let seed = self.seed;
        for id in self.running() {
            self.raft(id)
                .wait(Some(Duration::from_secs(20)))
                .applied_index_at_least(Some(index), "caught up")
                .await
                .unwrap_or_else(|e| panic!("seed {seed}: member {id} did not catch up: {e}"));
        }
        let mut reference: Option<Vec<u64>> = None;
        for id in self.running() {
            let values = self.members[&id]
                .state
                .lock()
                .expect("state")
                .values
                .clone();
            let mut seen = HashSet::new();
            for v in &values {
                assert!(
                    seen.insert(*v),
                    "seed {seed}: member {id} applied {v} twice"
                );
            }
            for v in acked {
                assert!(
                    seen.contains(v),
                    "seed {seed}: member {id} lost acknowledged write {v}"
                );
            }
            match &reference {
                None => reference = Some(values),
                Some(r) => {
                    let n = r.len().min(values.len());
                    assert_eq!(
                        r[..n],
                        values[..n],
                        "seed {seed}: member {id} applied another order"
                    );
                }
            }
        }
        reference.unwrap_or_default()
    }

    /// Stops every member, and checks that the run met every kind of fault.
    async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
        let counts = self
            .net
            .plan
            .lock()
            .expect("plan")
            .as_ref()
            .expect("plan")
            .counts;
        eprintln!(
            "seed {}: requests lost {}, responses lost {}, requests doubled {}",
            self.seed, counts[0], counts[1], counts[2]
        );
        assert!(
            counts.iter().all(|&n| n > 0),
            "seed {}: {counts:?}",
            self.seed
        );
    }
}

fn seeds() -> std::ops::Range<u64> {
    let n = std::env::var("PULSEBOARD_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    1..1 + n
}

/// The leader is cut off (both ways), then stopped, while writes are in flight through it:
/// entries it appended but could not commit are replaced under the next leader, or committed
/// by it; either way no acknowledged write is lost or applied twice, and every member
/// applies the same sequence — under lost, doubled and reordered RPCs throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_leader_changes_in_the_middle_of_writes() {
    for seed in seeds() {
        let mut sim = Sim::new(seed).await;
        let members: Vec<u64> = sim.running();
        let (mut acked, mut last) = sim.write(0..60, 8).await;
        // Cut off mid-batch: a batch is sent, the link goes, the writes wait on a leader
        // that can no longer commit.
        let first = sim.leader().await;
        let raft = sim.raft(first);
        let in_flight = tokio::spawn(async move {
            let writes = (1000..1008).map(|v| {
                let raft = raft.clone();
                async move {
                    let r = tokio::time::timeout(Duration::from_secs(3), raft.client_write(v));
                    (v, r.await)
                }
            });
            futures_util::future::join_all(writes).await
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        sim.net.cut_off(first, &members);
        // The others elect a leader among themselves and take writes.
        let (a, l) = loop {
            let l = sim.leader().await;
            if l != first {
                break sim.write(60..120, 8).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        acked.extend(a);
        last = last.max(l);
        for (v, r) in in_flight.await.expect("in flight") {
            if let Ok(Ok(r)) = r {
                acked.push(v);
                last = last.max(r.log_id.index);
            }
        }
        sim.net.heal();
        // Then the new leader stops mid-batch, and comes back later.
        let second = sim.leader().await;
        let raft = sim.raft(second);
        let in_flight = tokio::spawn(async move {
            let writes = (2000..2008).map(|v| {
                let raft = raft.clone();
                async move { (v, raft.client_write(v).await) }
            });
            futures_util::future::join_all(writes).await
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        sim.stop(second).await;
        for (v, r) in in_flight.await.expect("in flight") {
            if let Ok(r) = r {
                acked.push(v);
                last = last.max(r.log_id.index);
            }
        }
        let (a, l) = sim.write(120..180, 8).await;
        acked.extend(a);
        last = last.max(l);
        sim.start(second).await;
        assert!(
            acked.len() >= 120,
            "seed {seed}: only {} writes acknowledged",
            acked.len()
        );
        let applied = sim.settle_and_check(last, &acked).await;
        let all: BTreeSet<u64> = applied.iter().copied().collect();
        assert_eq!(all.len(), applied.len(), "seed {seed}");
        sim.shutdown().await;
    }
}

/// A member cut off while the others write far past their snapshots (every 40 entries,
/// purged behind them) can only come back through a snapshot, sent in 64-byte chunks that
/// are lost, doubled and reordered on the way; it ends with the same state as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_lagging_member_catches_up_through_a_snapshot_in_chunks() {
    for seed in seeds() {
        let sim = Sim::new(seed).await;
        let members = sim.running();
        let (mut acked, _) = sim.write(0..20, 4).await;
        let leader = sim.leader().await;
        let lagging = *members.iter().find(|&&m| m != leader).expect("a follower");
        let before = sim.raft(lagging).metrics().borrow().last_log_index;
        sim.net.cut_off(lagging, &members);
        let (a, last) = sim.write(20..220, 8).await;
        acked.extend(a);
        assert!(
            acked.len() >= 150,
            "seed {seed}: only {} writes acknowledged",
            acked.len()
        );
        let applied = sim.settle_and_check(last, &acked).await;
        let caught_up = sim.members[&lagging]
            .state
            .lock()
            .expect("state")
            .values
            .clone();
        assert_eq!(
            caught_up, applied,
            "seed {seed}: the lagging member's state"
        );
        let m = sim.raft(lagging).metrics().borrow().clone();
        let before = before.unwrap_or(0);
        assert!(
            m.snapshot.is_some_and(|s| s.index > before + 40),
            "seed {seed}: the lagging member (log up to {before}) came back by a snapshot ({m:?})"
        );
        sim.shutdown().await;
    }
}
