//! `dabs`: the command-line entry point.

mod addr;
mod bench;
mod bench_decider;
mod bench_delivery;
mod bench_dns;
mod bench_service;
mod calc;
mod client;
mod codec_demo;
mod demo;
mod drain;
mod failover_demo;
mod farm;
mod job;
mod jobs;
mod logging;
mod mp_tools;
mod out;
mod policy;
mod ramp;
mod serve;
mod status;
mod trace;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dabs",
    version,
    about = "Distributed application balancing system: farms, nodes and their tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as one JSON object per line (what is logged: RUST_LOG, e.g.
    /// `info` or `dabs_node=debug`; default warnings). Node processes started here follow it.
    #[arg(long, global = true, value_enum, default_value_t = logging::LogFormat::Text)]
    log_format: logging::LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// The main job: a 3-node farm, a crowd of calculator clients, one node killed half-way.
    Demo {
        /// Another demonstration: `ramp` (balancing under a rising load).
        #[command(subcommand)]
        which: Option<DemoCommand>,
        /// Also print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Calculator clients (thin and fat, half each).
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// How long the clients run, in seconds.
        #[arg(long, default_value_t = 12)]
        seconds: u64,
    },
    /// Run one server's runtime environment.
    Node {
        /// The node's configuration file (TOML; see docs/node.example.toml).
        #[arg(long)]
        config: std::path::PathBuf,
    },
    /// The farm as a table, from the members' announcements on the group.
    Status {
        /// The farm's group address, IP:PORT (or HOST:PORT).
        #[arg(long, value_parser = addr::parse_socket_addr)]
        farm: std::net::SocketAddr,
        /// The interface the farm's multicast runs on (its IPv4 address or a host name).
        #[arg(long, default_value = "127.0.0.1", value_parser = addr::parse_ipv4)]
        interface: std::net::Ipv4Addr,
        /// How long to listen, ms (a member announces every 250 ms by default).
        #[arg(long, default_value_t = 1200)]
        listen_ms: u64,
        /// Print one JSON object (farm, group, members) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Trace a node's MP traffic, decoded, from inside its endpoint.
    Trace {
        /// The node's operator URL (http://IP:PORT), as `dabs farm up` prints it.
        #[arg(long)]
        node: String,
        /// Only this session number.
        #[arg(long)]
        session: Option<u8>,
        /// Only traffic of the portion with this virtual address.
        #[arg(long)]
        va: Option<String>,
        /// Only this command: a number, or a system command name in any case (`echo`).
        #[arg(long)]
        command: Option<String>,
        /// One JSON object per datagram.
        #[arg(long)]
        json: bool,
        /// The operator token (`dabs farm up` prints it as `token …`); default: $DABS_TOKEN.
        #[arg(long)]
        token: Option<String>,
    },
    /// Application policies: list them, show one, or swap one live (`dabs policy --node URL
    /// calc fewest_clients`): least_loaded, fastest_response, fewest_clients, fewest_pending,
    /// closest, highest_throughput, app_figure:FIGURE.
    Policy {
        /// A node's operator URL (http://IP:PORT), as `dabs farm up` prints it.
        #[arg(long)]
        node: String,
        /// The application (default: all of them).
        app: Option<String>,
        /// The new policy.
        policy: Option<String>,
        /// Print JSON (an array of the applications' views).
        #[arg(long)]
        json: bool,
        /// The operator token, needed to change a policy; default: $DABS_TOKEN.
        #[arg(long)]
        token: Option<String>,
    },
    /// Drain a node: no new clients, its clients told (authenticated) to move. `--undo` reverses.
    Drain {
        /// The node's MP address, IP:PORT (or HOST:PORT).
        #[arg(value_parser = addr::parse_socket_addr)]
        node: std::net::SocketAddr,
        /// The farm's shared secret, hex.
        #[arg(long)]
        secret: String,
        /// Take new clients again.
        #[arg(long)]
        undo: bool,
    },
    /// Benchmarks that need a running farm.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Local farms.
    Farm {
        #[command(subcommand)]
        command: FarmCommand,
    },
    /// The calculator client: `dabs calc --farm GROUP:PORT 7 / 2`.
    Calc {
        /// The farm's group address (or one node's MP address), IP:PORT or HOST:PORT.
        #[arg(long, value_parser = addr::parse_socket_addr)]
        farm: std::net::SocketAddr,
        /// Run integer operations here (a fat client) instead of on the server.
        #[arg(long)]
        fat: bool,
        /// Encrypt the session (Noise NN key exchange, ChaCha20-Poly1305); fail rather than
        /// calculate in clear if the farm does not agree.
        #[arg(long)]
        encrypt: bool,
        /// The farm's public key (64 hex digits, as `dabs farm up` prints it): encrypt with
        /// Noise NK against it and refuse any server that cannot prove it holds the farm's key.
        #[arg(long, value_parser = parse_farm_key)]
        farm_key: Option<[u8; 32]>,
        /// Speak MP over TCP to the node at --farm (its MP port), where UDP is blocked.
        #[arg(long)]
        tcp: bool,
        /// First operand.
        #[arg(allow_hyphen_values = true)]
        a: String,
        /// Operator: + - x (or *) / %
        op: String,
        /// Second operand.
        #[arg(allow_hyphen_values = true)]
        b: String,
    },
    /// A client portion delivered in parts (R-CL): fetch and verify its modules, fall back
    /// through UDP, TCP and the WebSocket until a channel works, run `IntegerOps` where the
    /// farm places it for this device: `dabs client calc --farm IP:PORT --ops http://IP:PORT 6 x 7`.
    Client(client::ClientArgs),
    /// Jobs (seed 002): submit a WebAssembly module with its inputs, follow it, fetch results.
    Job {
        /// A node's operator URL (http://IP:PORT), as `dabs farm up` prints it; default:
        /// $DABS_NODE.
        #[arg(long, global = true)]
        node: Option<String>,
        /// The operator token, where the farm requires one; default: $DABS_TOKEN.
        #[arg(long, global = true)]
        token: Option<String>,
        /// Print the node's JSON answers.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: job::JobCommand,
    },
    /// MP protocol tools.
    Mp {
        #[command(subcommand)]
        command: MpCommand,
    },
    /// Print a shell completion script: `dabs completions bash > /etc/bash_completion.d/dabs`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page dabs(1) (roff), or with `--dir` write it and one per subcommand.
    Man {
        /// Write dabs.1, dabs-status.1, … into this directory instead.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum DemoCommand {
    /// A rising load on the slow calculator: spawns, moves, latency per phase.
    Ramp {
        /// Also print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Run without a farm secret, so starving portions cannot hand clients on (to compare).
        #[arg(long)]
        no_client_moves: bool,
    },
    /// Jobs (seed 002): one job of many tasks on a 3-node farm; a compute server is killed
    /// half-way; the summary counts tasks lost and run twice.
    Jobs {
        /// Also print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Tasks in the job.
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
    },
    /// A server whose mandatory service stops pushes its clients away, then calls them back.
    Failover {
        /// Also print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
        /// Clients on the failing node.
        #[arg(long, default_value_t = 1000)]
        clients: usize,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// A client delivered in parts (R-CL): bootstrap time, one IntegerOps call natively, in the
    /// client's sandbox and over the network, and (as root) the fallback time per channel.
    Delivery {
        /// Deliveries timed (fallback runs at most 10 per case).
        #[arg(long, default_value_t = 30)]
        rounds: usize,
        /// IntegerOps calls timed per placement.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Skip the fallback cases (they need root and network namespaces).
        #[arg(long)]
        no_fallback: bool,
        /// Print one JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The load a 3-node local farm sustains: thin calculator clients calling back to back.
    Load {
        /// Concurrent clients (each its own endpoint and session).
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The DNS front: time from a load change to the new answer, and with `--dnsperf S`
    /// dnsperf's queries per second against it and NSD side by side (scripts/bench-dns).
    Dns {
        /// Rounds of placing a client and timing the answer's move.
        #[arg(long, default_value_t = 40)]
        rounds: usize,
        /// Seconds per dnsperf run (0: no dnsperf runs).
        #[arg(long, default_value_t = 0)]
        dnsperf: u64,
        /// The fixed query rate at which latency percentiles are taken.
        #[arg(long, default_value_t = 5000)]
        fixed_qps: u32,
        /// Print one JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Decider failover on a 3-node local farm: the decider killed or stopped, time until a
    /// new open through the group is answered.
    Decider {
        /// Rounds per case (each starts a fresh farm).
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// Also run every case with the registry in the etcd at URL (`http://HOST:PORT`;
        /// `scripts/bench-decider-etcd` starts one), beside multicast.
        #[arg(long, value_name = "URL")]
        etcd: Option<String>,
        /// Print one JSON array of the cases instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Outage of the farm's service address when its holder's host fails, against keepalived
    /// (VRRP) in the same network namespaces (needs root; `scripts/bench-service` installs
    /// keepalived).
    Service {
        /// Rounds per holder (each makes fresh hosts).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Measure the farm alone.
        #[arg(long)]
        no_keepalived: bool,
        /// Print one JSON array of the cases instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The job service's tasks per second and submit-to-start latency, empty and 1 ms tasks,
    /// 1 and 8 submitters, beside Ray's and Dask's local clusters (`scripts/bench-jobs-peers`
    /// installs them in a venv of its own on first use).
    Jobs {
        /// Tasks per case with empty tasks (1 ms cases run a quarter of them).
        #[arg(long, default_value_t = 2000)]
        tasks: usize,
        /// Measure dabs alone.
        #[arg(long)]
        no_peers: bool,
        /// Also print one JSON array of the rows.
        #[arg(long)]
        json: bool,
    },
    /// Open-session latency through the farm group: portion running vs. to be started.
    Open {
        /// Opens measured per case.
        #[arg(long, default_value_t = 300)]
        samples: usize,
        /// Print one JSON array of the cases instead of the table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FarmCommand {
    /// Start a local farm of node processes on loopback; Ctrl-C stops it.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Directory for configs and data (default: a new temporary one).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
        /// The farm's shared secret, hex (default: a new random one, printed).
        #[arg(long)]
        secret: Option<String>,
        /// The operator token the nodes' interfaces ask for (default: $DABS_TOKEN, else a new
        /// random one); printed as `token …` and written to farm.json.
        #[arg(long)]
        token: Option<String>,
        /// Also run application NAME, its server portion the program COMMAND (words separated
        /// by spaces; a relative path is taken from here): `--app kv=target/debug/kv-portion`.
        /// Repeatable.
        #[arg(long = "app", value_name = "NAME=COMMAND", value_parser = farm::parse_app_arg)]
        apps: Vec<farm::AppArg>,
        /// Put each node on a host of its own: a network namespace on a bridge, address
        /// 10.88.0.N, MP port 47000, operator port 8080 (needs root, iproute2). The farm meets
        /// by multicast over the bridge and by seeds; the namespaces go when the farm stops.
        #[arg(long)]
        hosts: bool,
        /// Keep membership and the decider in the etcd at URL (`http://HOST:PORT`) instead of
        /// multicast announcements; needs a dabs built with `--features etcd`.
        #[arg(long, value_name = "URL")]
        etcd: Option<String>,
    },
}

#[derive(Subcommand)]
enum MpCommand {
    /// Show the codec carrying a message through shuffling, duplication and corruption.
    Demo,
    /// Decode hex datagrams (one per line on stdin) to JSON objects (one per line).
    Decode,
    /// Encode JSON objects (one per line on stdin) to hex datagrams (one per line).
    Encode,
    /// Run a standalone endpoint: opens sessions for any application, answers ECHO.
    Serve {
        /// Address to bind, IP:PORT or HOST:PORT (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:0", value_parser = addr::parse_socket_addr)]
        bind: std::net::SocketAddr,
        /// Originate messages without the CRC byte.
        #[arg(long)]
        no_crc: bool,
    },
}

/// `DABS_TOKEN`, the operator token for commands that call a node's guarded routes.
fn env_token() -> Option<String> {
    std::env::var("DABS_TOKEN").ok().filter(|t| !t.trim().is_empty())
}

fn main() -> ExitCode {
    out::quiet_on_closed_pipe();
    let cli = Cli::parse();
    // A demo's output is its own progress and summary: the log of the demo and of its nodes
    // goes to a file it names.
    let log_file = matches!(cli.command, Command::Demo { .. }).then(logging::demo_log_path);
    if let Err(e) = logging::init(cli.log_format, log_file.as_deref()) {
        eprintln!("dabs: {e}");
        return ExitCode::FAILURE;
    }
    if let Some(path) = &log_file {
        println!("log (the farm's warnings and other messages) in {}", path.display());
    }
    match cli.command {
        Command::Demo { which: Some(DemoCommand::Ramp { json, no_client_moves }), .. } => {
            ramp::run(json, !no_client_moves)
        }
        Command::Demo { which: Some(DemoCommand::Jobs { json, tasks }), .. } => jobs::demo::run(json, tasks),
        Command::Demo { which: Some(DemoCommand::Failover { json, clients }), .. } => {
            failover_demo::run(json, clients)
        }
        Command::Demo { which: None, json, clients, seconds } => demo::run(json, clients, seconds),
        Command::Node { config } => farm::run_node(&config),
        Command::Status { farm, interface, listen_ms, json } => status::run(farm, interface, listen_ms, json),
        Command::Drain { node, secret, undo } => drain::run(node, &secret, undo),
        Command::Policy { node, app, policy, json, token } => {
            policy::run(&node, app.as_deref(), policy.as_deref(), json, token.or_else(env_token).as_deref())
        }
        Command::Job { node, token, json, command } => {
            match node.or_else(|| std::env::var("DABS_NODE").ok().filter(|n| !n.is_empty())) {
                Some(node) => job::run(&node, token.or_else(env_token).as_deref(), json, command),
                None => {
                    eprintln!(
                        "dabs job: which node? --node http://IP:PORT (as `dabs farm up` prints it) or $DABS_NODE"
                    );
                    ExitCode::from(2)
                }
            }
        }
        Command::Trace { node, session, va, command, json, token } => {
            trace::run(&node, session, va.as_deref(), command, json, token.or_else(env_token).as_deref())
        }
        Command::Bench { command: BenchCommand::Load { clients, seconds, json } } => {
            bench::farm_load(clients, seconds, json)
        }
        Command::Bench { command: BenchCommand::Dns { rounds, dnsperf, fixed_qps, json } } => {
            bench_dns::run(rounds, dnsperf, fixed_qps, json)
        }
        Command::Bench { command: BenchCommand::Decider { rounds, etcd, json } } => {
            bench_decider::run(rounds, etcd, json)
        }
        Command::Bench { command: BenchCommand::Service { rounds, no_keepalived, json } } => {
            bench_service::run(rounds, no_keepalived, json)
        }
        Command::Bench { command: BenchCommand::Jobs { tasks, no_peers, json } } => {
            jobs::bench::run(tasks, !no_peers, json)
        }
        Command::Bench { command: BenchCommand::Delivery { rounds, calls, no_fallback, json } } => {
            bench_delivery::run(rounds, calls, no_fallback, json)
        }
        Command::Bench { command: BenchCommand::Open { samples, json } } => {
            bench::open_latency(samples, json)
        }
        Command::Farm { command: FarmCommand::Up { nodes, dir, secret, token, apps, hosts, etcd } } => {
            farm::farm_up(nodes, dir, secret, token.or_else(env_token), &apps, hosts, etcd)
        }
        Command::Calc { farm, fat, encrypt, farm_key, tcp, a, op, b } => {
            calc::run(farm, &a, &op, &b, fat, calc::Security { tcp, encrypt, secret: None, farm_key })
        }
        Command::Client(args) => client::run(args),
        Command::Mp { command: MpCommand::Demo } => codec_demo::codec_demo(),
        Command::Mp { command: MpCommand::Decode } => mp_tools::decode_stdin(),
        Command::Mp { command: MpCommand::Encode } => mp_tools::encode_stdin(),
        Command::Mp { command: MpCommand::Serve { bind, no_crc } } => serve::run(bind, no_crc),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "dabs", &mut script);
            out::finish("dabs completions", std::io::Write::write_all(&mut std::io::stdout().lock(), &script))
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            let rendered = clap_mangen::Man::new(Cli::command()).render(&mut page);
            let written =
                rendered.and_then(|()| std::io::Write::write_all(&mut std::io::stdout().lock(), &page));
            out::finish("dabs man", written)
        }
        Command::Man { dir: Some(dir) } => match clap_mangen::generate_to(Cli::command(), &dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("dabs man: cannot write the pages into {}: {e}", dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// A farm public key on the command line: 32 bytes as 64 hex digits.
fn parse_farm_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{} bytes; a farm key is 32 (64 hex digits)", bytes.len()))
}
