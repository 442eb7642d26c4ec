//! Self-monitoring (R-FO-1): one health score, 0 (down) to 100 (idle), from the server's own
//! figures (requests waiting for a worker), the system's (memory, optionally CPU) and the
//! mandatory and dependent services declared in the config. The failover thresholds
//! ([`crate::zones`]) are read against it.

use std::net::SocketAddr;
use std::time::Duration;

/// How a declared service is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The node's MP listener: up while it has heard an announcement within the lease.
    Mp,
    /// The node's database: up while a write and a read-back succeed.
    Database,
    /// A TCP service: up while a connection to it opens within the check time-out.
    Tcp(SocketAddr),
    /// A command: up while it exits 0 within the check time-out.
    Command(Vec<String>),
}

/// One `[[health.service]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Its name, for the operator and the logs.
    pub name: String,
    /// How it is checked.
    pub check: Check,
    /// A mandatory service down makes the server's health 0.
    pub mandatory: bool,
    /// Health points a dependent (not mandatory) service costs while down.
    pub weight: u8,
}

/// The `[health]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// How often the services are checked and the score computed.
    pub interval: Duration,
    /// A check that takes longer counts as down.
    pub check_timeout: Duration,
    /// Requests waiting in one portion that mean no worker is available (health 0 on that
    /// count).
    pub queue_limit: u64,
    /// Count CPU use in the score. Off by default: a busy CPU is what a farm is for, and the
    /// statistics process already steers new clients by it; pushing clients away on CPU alone
    /// would move every node's clients at once on a shared host.
    pub include_cpu: bool,
    /// Declared services.
    pub services: Vec<Service>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(250),
            check_timeout: Duration::from_millis(500),
            queue_limit: 256,
            include_cpu: false,
            services: vec![
                Service { name: "mp".into(), check: Check::Mp, mandatory: true, weight: 100 },
                Service { name: "database".into(), check: Check::Database, mandatory: true, weight: 100 },
            ],
        }
    }
}

/// What the score is computed from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// Host CPU use, percent.
    pub cpu_percent: f32,
    /// Host memory, MiB.
    pub mem_total_mb: u64,
    /// Free host memory, MiB.
    pub mem_free_mb: u64,
    /// The longest queue of requests waiting in one of this node's portions.
    pub worst_queue_depth: u64,
    /// Each declared service and whether its last check found it up.
    pub services: Vec<(Service, bool)>,
}

/// The score and why it is not 100.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// 0 (down) ..= 100.
    pub score: u8,
    /// What lowered it, most important first.
    pub causes: Vec<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self { score: 100, causes: Vec::new() }
    }
}

/// The health score: the scarcest of workers, memory (and CPU when counted), less the weight
/// of each dependent service that is down; 0 while a mandatory service is down.
pub fn assess(r: &Reading, cfg: &HealthConfig) -> Health {
    let mut causes = Vec::new();
    let mut score = 100.0f64;
    let mut lower = |headroom: f64, what: String| {
        if headroom < score {
            score = headroom.max(0.0);
        }
        if headroom < 100.0 {
            causes.push(what);
        }
    };
    let limit = cfg.queue_limit.max(1) as f64;
    let workers = 100.0 * (1.0 - (r.worst_queue_depth as f64 / limit).min(1.0));
    if r.worst_queue_depth > 0 {
        lower(workers, format!("{} requests waiting for a worker (limit {})", r.worst_queue_depth, limit));
    }
    if r.mem_total_mb > 0 {
        let memory = 100.0 * r.mem_free_mb as f64 / r.mem_total_mb as f64;
        if memory < 50.0 {
            lower(memory * 2.0, format!("{} of {} MiB memory free", r.mem_free_mb, r.mem_total_mb));
        }
    }
    if cfg.include_cpu {
        lower(100.0 - f64::from(r.cpu_percent), format!("CPU {:.0} % busy", r.cpu_percent));
    }
    let mut score = score.round() as u8;
    for (service, up) in &r.services {
        if *up {
            continue;
        }
        if service.mandatory {
            score = 0;
            causes.insert(0, format!("mandatory service {} is down", service.name));
        } else {
            score = score.saturating_sub(service.weight);
            causes.push(format!("dependent service {} is down (-{})", service.name, service.weight));
        }
    }
    Health { score, causes }
}

/// Checks a TCP or command service; `Mp` and `Database` are checked by the node itself.
pub async fn probe(check: &Check, timeout: Duration) -> bool {
    match check {
        Check::Mp | Check::Database => true,
        Check::Tcp(addr) => {
            matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
        }
        Check::Command(argv) => {
            let Some((program, args)) = argv.split_first() else { return false };
            let child = tokio::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status();
            matches!(tokio::time::timeout(timeout, child).await, Ok(Ok(s)) if s.success())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, mandatory: bool, weight: u8) -> Service {
        Service { name: name.into(), check: Check::Mp, mandatory, weight }
    }

    fn idle() -> Reading {
        Reading { cpu_percent: 99.0, mem_total_mb: 1000, mem_free_mb: 900, ..Default::default() }
    }

    #[test]
    fn an_idle_server_is_fully_healthy_even_with_a_busy_cpu_by_default() {
        let h = assess(&idle(), &HealthConfig::default());
        assert_eq!(h, Health { score: 100, causes: vec![] });
        let with_cpu = HealthConfig { include_cpu: true, ..Default::default() };
        assert_eq!(assess(&idle(), &with_cpu).score, 1);
    }

    #[test]
    fn a_mandatory_service_down_is_zero() {
        let r = Reading { services: vec![(service("db", true, 0), false)], ..idle() };
        let h = assess(&r, &HealthConfig::default());
        assert_eq!(h.score, 0);
        assert_eq!(h.causes[0], "mandatory service db is down");
    }

    #[test]
    fn dependent_services_cost_their_weight() {
        let r = Reading {
            services: vec![(service("log", false, 30), false), (service("cache", false, 25), false)],
            ..idle()
        };
        assert_eq!(assess(&r, &HealthConfig::default()).score, 45);
        let up = Reading { services: vec![(service("log", false, 30), true)], ..idle() };
        assert_eq!(assess(&up, &HealthConfig::default()).score, 100);
    }

    #[test]
    fn waiting_requests_and_scarce_memory_lower_the_score() {
        let cfg = HealthConfig { queue_limit: 100, ..Default::default() };
        let queued = Reading { worst_queue_depth: 75, ..idle() };
        assert_eq!(assess(&queued, &cfg).score, 25);
        let full = Reading { worst_queue_depth: 500, ..idle() };
        assert_eq!(assess(&full, &cfg).score, 0);
        let low_memory = Reading { mem_free_mb: 100, ..idle() };
        assert_eq!(assess(&low_memory, &cfg).score, 20);
    }

    #[tokio::test]
    async fn probes_see_a_tcp_service_go_down() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_millis(500);
        assert!(probe(&Check::Tcp(addr), timeout).await);
        drop(listener);
        assert!(!probe(&Check::Tcp(addr), timeout).await);
        assert!(probe(&Check::Command(vec!["true".into()]), timeout).await);
        assert!(!probe(&Check::Command(vec!["false".into()]), timeout).await);
        assert!(!probe(&Check::Command(vec!["/nonexistent/dabs-check".into()]), timeout).await);
    }
}
