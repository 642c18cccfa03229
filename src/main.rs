//! The `pulseboard` command line. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pulseboard::config::Config;
use pulseboard::meta::{create_user_command, MetaStore, Role};

/// mimalloc, not glibc's allocator: ingest allocates every point's strings on the HTTP tasks
/// and frees them on other threads (the log's writer, the shard actors), which glibc's
/// per-arena bookkeeping makes expensive (a sixth of a node's CPU went to freeing points).
/// Built with `no_thp`: mimalloc otherwise asks for transparent huge pages on its arenas, and
/// each thread's heap touching its own 2 MiB page made an idle node 67 MiB resident instead
/// of 39 (and a loaded one ~27 MiB more), for no measurable speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "pulseboard",
    version,
    about = "Real-time analytics dashboards in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node.
    Serve(ServeArgs),
    /// Start a node with generated live streams (ad clicks, players online, servers) and a
    /// ready-made dashboard; prints the URL and login.
    Demo(ServeArgs),
    /// Drive a running node with generated points and report rate and latency.
    Load(pulseboard::load::LoadArgs),
    /// Manage users directly in a node's data directory.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage the cluster through a running node's API (admin).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Add a node started with `serve --await-join` (and this cluster's secret): it joins
    /// through the node the command talks to. (A node can also join by itself: start it
    /// with `--join <a member's QUIC address>`.)
    Add {
        /// The new node's QUIC address, as the cluster's nodes can reach it.
        quic_addr: SocketAddr,
        #[command(flatten)]
        remote: pulseboard::remote::Remote,
    },
    /// Show the nodes, the metadata leader and every shard's leader and replicas.
    Show {
        #[command(flatten)]
        remote: pulseboard::remote::Remote,
    },
    /// Remove a node from every Raft group (a learner takes its vote where there is one);
    /// stop it afterwards.
    Remove {
        /// The node's id (see `pulseboard cluster show`).
        node: u64,
        #[command(flatten)]
        remote: pulseboard::remote::Remote,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "PULSEBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "PULSEBOARD_HTTP")]
    http: Option<SocketAddr>,
    /// QUIC listen address for node-to-node traffic [default: 127.0.0.1:8081].
    #[arg(long, env = "PULSEBOARD_QUIC")]
    quic: Option<SocketAddr>,
    /// Data directory [default: ./pulseboard-data].
    #[arg(long, env = "PULSEBOARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The QUIC address other nodes reach this one at, if not the listen address.
    #[arg(long, env = "PULSEBOARD_ADVERTISE")]
    advertise: Option<SocketAddr>,
    /// QUIC address of a node of the cluster to join.
    #[arg(long, env = "PULSEBOARD_JOIN")]
    join: Option<SocketAddr>,
    /// Found no cluster: wait until a member adds this node (`pulseboard cluster add
    /// <this node's QUIC address>`, or `POST /api/v1/cluster/nodes`).
    #[arg(long, env = "PULSEBOARD_AWAIT_JOIN", conflicts_with = "join")]
    await_join: bool,
    /// The secret shared by the cluster's nodes [default: generated on first start into
    /// <data-dir>/cluster.secret].
    #[arg(long, env = "PULSEBOARD_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Hand shard leadership to the nodes the shard map names, spreading leaders over the
    /// nodes (true), or leave leaders where elections put them (false) [default: true].
    #[arg(long, env = "PULSEBOARD_BALANCE_LEADERS")]
    balance_leaders: Option<bool>,
    /// Virtual shards, fixed when the data directory is created [default: 16].
    #[arg(long, env = "PULSEBOARD_SHARDS")]
    shards: Option<u32>,
    /// Acknowledge before fsync (benchmarks only: a crash may lose acknowledged points).
    #[arg(long, env = "PULSEBOARD_NO_FSYNC")]
    no_fsync: bool,
    /// Extra delay after each fsync, to measure behaviour on slow disks (e.g. 5ms).
    #[arg(long, env = "PULSEBOARD_SIMULATED_FSYNC_DELAY")]
    simulated_fsync_delay: Option<String>,
    /// Password of the `admin` user created on first start (else one is generated and logged).
    #[arg(long, env = "PULSEBOARD_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user through the node on this data directory (running, or when it next starts):
    /// the command is left in the node's inbox and replicated to the whole cluster.
    Add {
        #[arg(long, env = "PULSEBOARD_DATA_DIR", default_value = "./pulseboard-data")]
        data_dir: PathBuf,
        #[arg(long)]
        username: String,
        /// Read from PULSEBOARD_USER_PASSWORD if not given.
        #[arg(long, env = "PULSEBOARD_USER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "viewer")]
        role: Role,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // openraft narrates every election, and logs every unreachable peer as an error, many
    // times a second during a failure; what it cannot recover from reaches our code (a
    // fatal Raft error fails writes with 503, logged). `PULSEBOARD_LOG=openraft=info` shows it.
    let directives = std::env::var("PULSEBOARD_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(format!("openraft=off,{directives}"))
                .unwrap_or_else(|_| "info,openraft=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args, false)),
        Command::Demo(args) => runtime.block_on(serve(args, true)),
        Command::Load(args) => runtime.block_on(pulseboard::load::run(args)),
        Command::Cluster { command } => runtime.block_on(cluster(command)),
        Command::User { command } => match command {
            UserCommand::Add {
                data_dir,
                username,
                password,
                role,
            } => {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("create {}", data_dir.display()))?;
                let store = MetaStore::open(&data_dir.join("meta.sqlite"))?;
                let (id, cmd) = runtime.block_on(create_user_command(
                    &username,
                    &password,
                    role,
                    pulseboard::now_ms(),
                ))?;
                // The node proposes it to the cluster's metadata group and records the outcome.
                let queued = store.inbox_push(&cmd, pulseboard::now_ms())?;
                let started = std::time::Instant::now();
                let outcome = loop {
                    if let Some(o) = store.inbox_outcome(queued)? {
                        break Some(o);
                    }
                    if started.elapsed() > std::time::Duration::from_secs(15) {
                        break None;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                };
                let user = serde_json::json!({
                    "id": id, "username": username, "role": role,
                });
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(e)) => anyhow::bail!("user {username:?} not added: {e}"),
                    None => {
                        eprintln!(
                            "queued: the node on {} adds the user when it runs (none answered within 15 s)",
                            data_dir.display()
                        );
                    }
                }
                println!("{}", serde_json::to_string(&user)?);
                Ok(())
            }
        },
    }
}

/// `pulseboard cluster …`: one API call, its JSON answer printed.
async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let (request, remote) = match &command {
        ClusterCommand::Show { remote } => (client.get(remote.endpoint("/api/v1/cluster")), remote),
        ClusterCommand::Add { quic_addr, remote } => (
            client
                .post(remote.endpoint("/api/v1/cluster/nodes"))
                .json(&serde_json::json!({ "quic_addr": quic_addr.to_string() })),
            remote,
        ),
        ClusterCommand::Remove { node, remote } => (
            client.delete(remote.endpoint(&format!("/api/v1/cluster/nodes/{node}"))),
            remote,
        ),
    };
    let token = remote.token(&client).await?;
    let resp = request
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("reach {}", remote.url))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "{status}: {}",
            body["detail"]["message"].as_str().unwrap_or("")
        );
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

/// Where the demo keeps its data unless told otherwise (apart from a real node's).
const DEMO_DATA_DIR: &str = "./pulseboard-demo-data";
/// The demo's admin password unless `PULSEBOARD_ADMIN_PASSWORD` says otherwise.
const DEMO_PASSWORD: &str = "pulseboard-demo";

async fn serve(mut args: ServeArgs, demo: bool) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if demo {
        config.data_dir = PathBuf::from(DEMO_DATA_DIR);
        if args.admin_password.is_none() {
            args.admin_password = Some(DEMO_PASSWORD.to_owned());
        }
    }
    if let Some(v) = args.http {
        config.http = v;
    }
    if let Some(v) = args.quic {
        config.quic = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.join {
        config.join = Some(v);
    }
    if args.await_join {
        config.await_join = true;
    }
    if let Some(v) = args.advertise {
        config.cluster.advertise = Some(v);
    }
    if let Some(v) = args.shards {
        config.storage.shards = v;
    }
    if let Some(v) = args.balance_leaders {
        config.cluster.balance_leaders = v;
    }
    if let Some(v) = args.cluster_secret.take() {
        config.cluster.secret = Some(v);
    }
    if args.no_fsync {
        config.storage.fsync = false;
    }
    if let Some(d) = &args.simulated_fsync_delay {
        let ms = protocol::time::parse_duration_ms(d)
            .map_err(|e| anyhow::anyhow!("--simulated-fsync-delay: {e}"))?;
        config.storage.simulated_fsync_delay = std::time::Duration::from_millis(ms as u64);
    }
    let data_dir = config.data_dir.clone();
    let started = pulseboard::server::start(config, args.admin_password.clone()).await?;
    if let Some(pw) = &started.generated_admin_password {
        tracing::warn!(
            username = "admin",
            password = %pw,
            "first start: generated the admin password (shown once; set PULSEBOARD_ADMIN_PASSWORD to choose it)"
        );
    }
    let addr = started.node.http_addr();
    println!(
        "pulseboard ready: http://{addr}  (data in {}; log in as admin)",
        data_dir.display()
    );
    let generator = if demo {
        let state = started.node.state();
        let id = pulseboard::demo::ensure_dashboard(&state).await?;
        let password = args.admin_password.as_deref().unwrap_or(DEMO_PASSWORD);
        println!();
        println!("  Pulseboard demo: live streams of ad clicks, players online and server metrics");
        println!("  Open   http://{addr}/#/d/{id}");
        println!(
            "  Login  admin / {password}   (the password set when {} was created)",
            data_dir.display()
        );
        println!("  Stop   Ctrl-C");
        println!();
        Some(tokio::spawn(pulseboard::demo::run(state)))
    } else {
        None
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(g) = generator {
        g.abort();
        let _ = g.await;
    }
    started.node.stop().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
