//! Local farms of real node processes: `dabs node`, `dabs farm up`, and the helpers the demo
//! shares with them.

use dabs_node::Node;
use dabs_node::config::NodeConfig;
use dabs_node::ready::ReadyLine;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Raises the soft limit on open files to the hard one: a node keeps up to 4,096 MP stream
/// connections beside its database and HTTP clients, past the usual soft limit of 1,024.
fn raise_open_files() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("cannot raise the open-file limit to {}", lim.rlim_max);
            }
        }
    }
}

/// Runs `dabs node --config FILE` until SIGTERM or Ctrl-C.
pub fn run_node(config: &Path) -> ExitCode {
    let config = match NodeConfig::load_for(config, Some(&BUILT_IN_APPS)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dabs node: {e}");
            return ExitCode::from(2);
        }
    };
    raise_open_files();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dabs node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = crate::serve::StopSignals::install();
        let name = config.node.name.clone();
        let group = config.farm.group;
        let operator = config.node.operator;
        let access = dabs_ops::Access::from_config(&config);
        let factories = match factories(&config) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("dabs node: {e}");
                return ExitCode::from(2);
            }
        };
        let node = match Node::start(config, factories).await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("dabs node: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut operator_task = None;
        let operator = match operator {
            Some(addr) => match dabs_ops::serve(node.handle(), addr, access).await {
                Ok((bound, task)) => {
                    operator_task = Some(task);
                    Some(bound)
                }
                Err(e) => {
                    eprintln!("dabs node: cannot serve the operator interface at {addr}: {e}");
                    node.stop().await;
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        println!("{}", ReadyLine { name, mp: node.mp_addr(), group, operator, dns: node.dns_addr() });
        use std::io::Write;
        let _ = std::io::stdout().flush();
        stop.wait().await;
        // The interface holds the node: it goes first, so the node's stop releases everything.
        if let Some(task) = operator_task {
            task.abort();
            let _ = task.await;
        }
        node.stop().await;
        ExitCode::SUCCESS
    })
}

/// The applications `dabs node` has built in; any other needs a `command` in its record.
pub const BUILT_IN_APPS: [&str; 2] = [dabs_calc::APP, dabs_calc::SLOW_APP];

/// The node's portion factories: the built-in applications, and a program for each
/// application record that names a `command` (which takes the place of a built-in one).
fn factories(
    config: &NodeConfig,
) -> Result<Vec<std::sync::Arc<dyn dabs_farm_proto::portion::PortionFactory>>, dabs_sdk::process::ProcessError>
{
    use std::sync::Arc;
    let mut factories: Vec<Arc<dyn dabs_farm_proto::portion::PortionFactory>> = Vec::new();
    for app in config.apps.iter().filter(|a| !a.command.is_empty()) {
        factories.push(Arc::new(dabs_sdk::process::ProcessFactory::new(
            &app.name,
            &app.command,
            &config.node.name,
        )?));
    }
    let slow: Arc<dyn dabs_farm_proto::portion::PortionFactory> =
        Arc::new(dabs_calc::SlowCalcFactory { work: Duration::from_millis(2) });
    for built_in in [dabs_calc::factory(), slow] {
        if !factories.iter().any(|f| f.app() == built_in.app()) {
            factories.push(built_in);
        }
    }
    Ok(factories)
}

/// `--app NAME=COMMAND` of `dabs farm up`: an application whose portion is a program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppArg {
    /// The application's name.
    pub name: String,
    /// The program (an absolute path when it was given as a path) and its arguments.
    pub command: Vec<String>,
}

impl AppArg {
    /// Its `[[app]]` record: one portion, started with the farm on its first node, so every
    /// client meets the same one (an example's state lives in its portion).
    fn record(&self) -> String {
        // A JSON string is a TOML basic string: the same escapes.
        let quoted = |s: &String| serde_json::Value::String(s.clone()).to_string();
        let command = self.command.iter().map(quoted).collect::<Vec<_>>().join(", ");
        format!(
            "\n[[app]]\nname = {}\ncommand = [{command}]\nstart_at_init = true\nsubgroup = [\"node-1\"]\n",
            quoted(&self.name)
        )
    }
}

/// Parses `NAME=PROGRAM ARG...`; a program given as a relative path is made absolute, since
/// the nodes read their configs from another folder.
pub fn parse_app_arg(text: &str) -> Result<AppArg, String> {
    let (name, command) =
        text.split_once('=').ok_or("expected NAME=COMMAND, e.g. kv=target/debug/kv-portion")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{name:?} is not an application name (A-Z a-z 0-9 _ -)"));
    }
    let mut command: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
    let program = command.first_mut().ok_or("the command is empty: name the program to run")?;
    if program.contains('/') && Path::new(program.as_str()).is_relative() {
        let here = std::env::current_dir().map_err(|e| format!("cannot read the current folder: {e}"))?;
        *program = here.join(&*program).to_string_lossy().into_owned();
    }
    Ok(AppArg { name: name.into(), command })
}

/// One node process of a local farm.
pub struct FarmNode {
    /// Its name.
    pub name: String,
    /// Its MP address.
    pub mp: SocketAddr,
    /// Its operator interface, `http://IP:PORT`.
    pub operator: Option<String>,
    /// Its DNS front (UDP and TCP).
    pub dns: Option<SocketAddr>,
    /// Its process.
    pub child: Child,
}

/// A local farm: node processes on loopback sharing a multicast group.
pub struct LocalFarm {
    /// The farm's group address.
    pub group: SocketAddrV4,
    /// The nodes, in start order.
    pub nodes: Vec<FarmNode>,
    /// Where configs and data live.
    pub dir: PathBuf,
    /// The farm secret (hex) every node's configuration holds, if any.
    pub secret: Option<String>,
    /// The operator token every node's interface asks for (in `DIR/operator.token`).
    pub token: String,
    /// The hosts its nodes run on (`--hosts`), removed after the nodes stop.
    pub hosts: Option<dabs_netns::Hosts>,
}

/// The file in a local farm's directory that holds its operator token (only its owner may
/// read it); each node's config names it as `[operator] token_file`.
const TOKEN_FILE: &str = "operator.token";

/// A new random operator token: 32 bytes from the thread's CSPRNG, hex.
fn new_token() -> String {
    (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// Writes `text` to `path`, readable by its owner only (it holds the operator token).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| {
            // `mode` applies only to a new file: one left by an earlier farm in --dir is narrowed too.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(text.as_bytes())
        })
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A group address and port unlikely to collide with another local farm.
fn pick_group() -> SocketAddrV4 {
    let a: u8 = rand::random_range(1..=254);
    let b: u8 = rand::random_range(1..=254);
    SocketAddrV4::new(std::net::Ipv4Addr::new(239, 255, a, b), rand::random_range(40_000..60_000))
}

/// A farm whose membership and decider live in etcd (`--etcd`).
#[derive(Clone, Debug)]
pub struct EtcdFarm {
    /// The etcd client URL, `http://HOST:PORT`.
    pub url: String,
    /// The farm's name: its keys' prefix in etcd (`/dabs/NAME/`), so farms sharing an etcd
    /// stay apart.
    pub farm: String,
}

/// The MP port of every node on a host of its own (`--hosts`): what the seed lists name.
pub const HOST_MP_PORT: u16 = 47000;

/// The configuration `dabs farm up` writes for node `i`: on loopback; with `on_host`, on host
/// `i` (`dabs_netns::Hosts`):
/// its address for MP, the group and its operator (port 8080), and a seed (node-1's is node-2,
/// every other's node-1) so the farm also forms where the network drops multicast. Every node
/// accepts MP over TCP too (and over the WebSocket on its operator port), so clients on every
/// return channel can be tried against a local farm.
fn node_config_text(
    farm: &str,
    group: SocketAddrV4,
    i: usize,
    secret: Option<&str>,
    app_extra: &str,
    on_host: bool,
    etcd: Option<&EtcdFarm>,
) -> String {
    let mut secret = secret.map(|s| format!("secret = \"{s}\"\n")).unwrap_or_default();
    if let Some(e) = etcd {
        secret.push_str(&format!("registry = \"etcd\"\netcd = [\"{}\"]\n", e.url));
    }
    let (ip, port, operator, seeds) = if on_host {
        let seed = dabs_netns::Hosts::addr(if i == 1 { 2 } else { 1 });
        let me = dabs_netns::Hosts::addr(i);
        (me.to_string(), HOST_MP_PORT, format!("{me}:8080"), format!("seeds = [\"{seed}:{HOST_MP_PORT}\"]\n"))
    } else {
        ("127.0.0.1".to_owned(), 0, "127.0.0.1:0".to_owned(), String::new())
    };
    format!(
        "# Generated by `dabs farm up`.\n[farm]\nname = \"{farm}\"\ngroup = \"{group}\"\ninterface = \"{ip}\"\n{seeds}{secret}\n\
         [node]\nname = \"node-{i}\"\nbind = \"{ip}:{port}\"\noperator = \"{operator}\"\ndata_dir = \"node-{i}\"\ntcp = true\n\n\
         [[app]]\nname = \"calc\"\n{app_extra}"
    )
}

impl LocalFarm {
    /// Writes configs into `dir` and starts `n` node processes of this binary; returns once
    /// every node has printed its address.
    pub fn start(n: usize, dir: &Path, secret: Option<&str>) -> Result<Self, String> {
        Self::start_with(n, dir, secret, "start_at_init = true\n")
    }

    /// Like [`LocalFarm::start`], with extra keys for the calculator's `[[app]]` record.
    pub fn start_with(n: usize, dir: &Path, secret: Option<&str>, app_extra: &str) -> Result<Self, String> {
        Self::start_each(n, dir, secret, |_| app_extra.to_owned())
    }

    /// Like [`LocalFarm::start_with`], with extra configuration per node (`extra(i)`, i from 1).
    pub fn start_each(
        n: usize,
        dir: &Path,
        secret: Option<&str>,
        extra: impl Fn(usize) -> String,
    ) -> Result<Self, String> {
        Self::start_guarded(n, dir, secret, None, extra)
    }

    /// Like [`LocalFarm::start_each`], with the operator token (`None`: a new random one).
    pub fn start_guarded(
        n: usize,
        dir: &Path,
        secret: Option<&str>,
        token: Option<&str>,
        extra: impl Fn(usize) -> String,
    ) -> Result<Self, String> {
        Self::start_on(n, dir, secret, token, extra, None, None)
    }

    /// Like [`LocalFarm::start_guarded`], with node `i` on host `i` when `hosts` are given,
    /// and the registry in etcd when `etcd` is.
    pub fn start_on(
        n: usize,
        dir: &Path,
        secret: Option<&str>,
        token: Option<&str>,
        extra: impl Fn(usize) -> String,
        hosts: Option<dabs_netns::Hosts>,
        etcd: Option<&EtcdFarm>,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let token = match token {
            Some(t) => dabs_node::config::OperatorToken::new(t)
                .map_err(|e| format!("the operator token {e}"))?
                .expose()
                .to_owned(),
            None => new_token(),
        };
        write_private(&dir.join(TOKEN_FILE), &token)?;
        let group = pick_group();
        let mut farm = LocalFarm {
            group,
            nodes: Vec::new(),
            dir: dir.to_owned(),
            secret: secret.map(str::to_owned),
            token,
            hosts,
        };
        for i in 1..=n {
            let config = dir.join(format!("node-{i}.toml"));
            let text = format!(
                "{}\n[operator]\ntoken_file = \"{TOKEN_FILE}\"\n",
                node_config_text(
                    etcd.map_or("local", |e| e.farm.as_str()),
                    group,
                    i,
                    secret,
                    &extra(i),
                    farm.hosts.is_some(),
                    etcd
                )
            );
            std::fs::write(&config, text).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
            let netns = farm.hosts.as_ref().map(|h| h.host(i).name().to_owned());
            farm.nodes.push(spawn_node(&format!("node-{i}"), &config, netns.as_deref())?);
        }
        Ok(farm)
    }

    /// Writes `farm.json`: the group, the secret (as the node configurations beside it hold it),
    /// the operator token, and each node's name, MP address, process id and operator URL.
    pub fn write_manifest(&self) -> Result<PathBuf, String> {
        let nodes: Vec<_> = self
            .nodes
            .iter()
            .map(|n| {
                json!({"name": n.name, "mp": n.mp.to_string(), "pid": n.child.id(), "operator": n.operator,
                    "dns": n.dns.map(|a| a.to_string())})
            })
            .collect();
        let path = self.dir.join("farm.json");
        let text = json!({
            "group": self.group.to_string(),
            "secret": self.secret,
            "farm_key": self.secret.as_deref().and_then(farm_public_key),
            "token": self.token,
            "nodes": nodes,
            "netns": self.hosts.as_ref().map(|h| json!({
                "switch": h.switch().name(),
                "hosts": (1..=self.nodes.len()).map(|i| h.host(i).name()).collect::<Vec<_>>(),
            })),
        })
        .to_string();
        // It holds the secret and the operator token: readable by its owner only.
        write_private(&path, &text)?;
        Ok(path)
    }

    /// Sends SIGKILL to node `index` (a crash).
    pub fn kill(&mut self, index: usize) {
        let _ = self.nodes[index].child.kill();
        let _ = self.nodes[index].child.wait();
    }

    /// Stops every node with SIGTERM and waits up to 5 s for each, then kills stragglers.
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            if matches!(n.child.try_wait(), Ok(Some(_))) {
                continue; // reaped already: its pid may belong to someone else now
            }
            // SAFETY: kill(2) on a child pid we own and have not reaped; no memory is involved.
            unsafe {
                libc::kill(n.child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for n in &mut self.nodes {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = n.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

/// A farm that goes out of scope (an error part-way through starting it, a panic) takes its
/// node processes with it.
impl Drop for LocalFarm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_node(name: &str, config: &Path, netns: Option<&str>) -> Result<FarmNode, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut command = match netns {
        // `ip netns exec` becomes the node: its pid and signals are the node's.
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = command
        .arg("node")
        .arg("--config")
        .arg(config)
        .args(crate::logging::child_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(crate::logging::child_stderr())
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    // Keep draining so the node never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let ready = ReadyLine::parse(&first).map_err(|e| {
        format!("{name} did not start ({e}); see its messages {}", crate::logging::where_logged())
    })?;
    Ok(FarmNode { name: name.into(), mp: ready.mp, operator: ready.operator_url(), dns: ready.dns, child })
}

/// A fresh farm secret: 32 random bytes from the operating system's generator, as hex.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The farm's public key for a hex `secret`, as hex: what a client pins (`dabs calc
/// --farm-key`) to accept only servers holding the farm's static Noise key (docs/security.md).
pub fn farm_public_key(secret: &str) -> Option<String> {
    let bytes = hex::decode(secret).ok()?;
    let keys = dabs_farm_proto::keys::FarmKeys::derive(&bytes);
    let public = dabs_proto::static_public_key(keys.key(dabs_farm_proto::keys::Purpose::NoiseStatic));
    Some(hex::encode(public))
}

/// Runs `dabs farm up`: starts the farm, prints it, waits for Ctrl-C, stops it. Without
/// `--secret` it generates one (a farm's control plane is authenticated with it) and prints it;
/// likewise the operator token without `--token`.
pub fn farm_up(
    nodes: usize,
    dir: Option<PathBuf>,
    secret: Option<String>,
    token: Option<String>,
    apps: &[AppArg],
    on_hosts: bool,
    etcd: Option<String>,
) -> ExitCode {
    if nodes == 0 {
        eprintln!("dabs farm up: --nodes must be at least 1");
        return ExitCode::from(2);
    }
    // Ctrl-C and SIGTERM are caught from here on: one that comes while the nodes start or
    // just after farm.json appears must stop the farm, not kill this process and leave the
    // nodes and the lock behind.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stop = {
        let _in_runtime = rt.enter();
        crate::serve::StopSignals::install()
    };
    let secret = secret.unwrap_or_else(generate_secret);
    let secret = Some(secret);
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("dabs-farm-{}", std::process::id())));
    // Held until this process and every node it starts have exited.
    let _lock = match lock_dir(&dir) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("dabs farm up: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = format!("start_at_init = true\n{}", apps.iter().map(AppArg::record).collect::<String>());
    let hosts = match on_hosts.then(|| dabs_netns::Hosts::create(nodes)).transpose() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("dabs farm up --hosts: {e}");
            return ExitCode::FAILURE;
        }
    };
    let etcd = etcd.map(|url| EtcdFarm { url, farm: "local".into() });
    let started = LocalFarm::start_on(
        nodes,
        &dir,
        secret.as_deref(),
        token.as_deref(),
        |_| app.clone(),
        hosts,
        etcd.as_ref(),
    );
    let mut farm = match started {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dabs farm up: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("farm group {}", farm.group);
    // Every node's configuration holds it too; `dabs drain` needs it.
    println!("farm secret {}", secret.as_deref().unwrap_or_default());
    // Clients pin it to rule out a man in the middle (`dabs calc --farm-key`).
    if let Some(key) = secret.as_deref().and_then(farm_public_key) {
        println!("farm key {key}");
    }
    for n in &farm.nodes {
        let dns = n.dns.map_or_else(|| "-".to_owned(), |a| a.to_string());
        println!("{} mp {} operator {} dns {dns}", n.name, n.mp, n.operator.as_deref().unwrap_or("-"));
    }
    // The operator's: the interfaces ask for it to change settings or trace (docs/operator.md).
    println!("token {}", farm.token);
    if let Some(h) = &farm.hosts {
        // The hosts' network is reachable only from the switch's namespace.
        println!("reach {} (e.g. ip netns exec {} curl URL)", h.switch().name(), h.switch().name());
    }
    match farm.write_manifest() {
        Ok(p) => println!("manifest {}", p.display()),
        Err(e) => eprintln!("dabs farm up: {e}"),
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let all_died = rt.block_on(watch_nodes(&mut farm, stop));
    farm.stop();
    println!("farm stopped");
    if all_died { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The file in a farm's directory that `dabs farm up` keeps locked while the farm runs.
pub const LOCK_FILE: &str = "farm.lock";

/// Takes `DIR/farm.lock` with flock(2) (std's `File::try_lock`), or says who holds it. A lock
/// rather than a pid file: the kernel drops it when its holders exit, however they exit, so a
/// crash leaves no stale claim and no pid can be mistaken for a reused one. The descriptor is
/// left open across exec, so the node processes hold the lock too: a directory whose nodes
/// outlived a killed `farm up` is still in use.
fn lock_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(format!(
                "{} is in use by a running farm (`dabs farm up` pid {}, or the nodes it started, \
                 hold {LOCK_FILE}); stop that farm or give another --dir",
                dir.display(),
                holder.trim()
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock {}: {e}", path.display())),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    // SAFETY: fcntl(2) on a descriptor this function owns; it only clears FD_CLOEXEC.
    let inherited = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, 0) };
    if inherited != 0 {
        tracing::warn!(path = %path.display(), "the nodes do not share the farm's lock");
    }
    Ok(file)
}

/// Waits for Ctrl-C or SIGTERM, and says on stderr when a node process exits (which node, its
/// pid and exit status) while the farm runs. Returns true when every node has died (and stops
/// waiting then: there is no farm left).
async fn watch_nodes(farm: &mut LocalFarm, stop: crate::serve::StopSignals) -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = stop.wait();
    tokio::pin!(stop);
    // SIGCHLD says some child changed state; which one, `try_wait` tells.
    let mut children = match signal(SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("dabs farm up: cannot watch the nodes ({e}); a node that dies will not be reported");
            None
        }
    };
    let mut reported = vec![false; farm.nodes.len()];
    loop {
        // Checked first too: a node may have died before SIGCHLD was being watched.
        for (node, reported) in farm.nodes.iter_mut().zip(&mut reported) {
            if *reported {
                continue;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                *reported = true;
                eprintln!(
                    "dabs farm up: {} (pid {}, mp {}) exited: {status}",
                    node.name,
                    node.child.id(),
                    node.mp
                );
            }
        }
        if reported.iter().all(|r| *r) {
            eprintln!("dabs farm up: every node has exited; stopping");
            return true;
        }
        tokio::select! {
            _ = &mut stop => return false,
            Some(()) = async { match children.as_mut() { Some(c) => c.recv().await, None => None } } => {}
        }
    }
}
