//! An etcd server of a test's own: Debian's `etcd` on free loopback ports, with its data in
//! the test's directory, killed on drop (also when the test fails).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd, one member, on loopback.
pub struct EtcdServer {
    child: Child,
    /// Its client URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    l.local_addr().expect("bound").port()
}

impl EtcdServer {
    /// Starts etcd with its data under `dir` and waits until it answers `/health`. Its
    /// election and heartbeat are short (500 ms and 50 ms) so leases of 1 s are granted;
    /// etcd's defaults raise every lease to at least 2 s.
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, std::net::Ipv4Addr::LOCALHOST)
    }

    /// [`EtcdServer::start`] on address `ip` of the calling thread's network namespace (e.g.
    /// the switch's address on a test's bridge, from inside `run_in`).
    pub fn start_on(dir: &Path, ip: std::net::Ipv4Addr) -> Self {
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://{ip}:{client}");
        let peer_url = format!("http://{ip}:{peer}");
        let data = dir.join(format!("etcd-{client}"));
        let log = std::fs::File::create(dir.join("etcd.log")).expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", "dabs-test", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("dabs-test={peer_url}")])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}): install Debian's etcd-server (bash scripts/test does)")
            });
        let mut server = EtcdServer { child, url };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = crate::http::request("GET", &server.url, "/health", None);
            if matches!(&health, Ok((200, body)) if body.contains("true")) {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "etcd exited ({status}) before it was healthy; see {}",
                    dir.join("etcd.log").display()
                );
            }
            assert!(Instant::now() < deadline, "etcd not healthy in 20 s: {health:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
