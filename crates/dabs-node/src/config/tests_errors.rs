//! Each way a file is refused produces its own [`ConfigError`] variant, with the key, the value
//! and the limits in its fields (the messages are checked in `tests`).

use std::path::Path;

use super::tests::{MINIMAL, parse, refused, with};
use super::{ConfigError as E, NodeConfig, SecretError};

/// `text` is refused at `line`; returns the error for matching.
#[track_caller]
fn err(text: &str, line: usize) -> E {
    refused(text, Some(line), &[])
}

fn service(body: &str) -> String {
    format!("{MINIMAL}\n[[health.service]]\n{body}\n")
}

#[test]
fn reading_and_layout_errors() {
    let missing = Path::new("/nonexistent/dabs/node.toml");
    assert!(matches!(NodeConfig::load(missing), Err(E::Read { .. })));
    assert!(matches!(err("[farm\nname = 1", 1), E::Syntax { .. }));
    let no_node = parse(&MINIMAL[..MINIMAL.find("[node]").unwrap()]).unwrap_err();
    assert!(matches!(&no_node, E::MissingSection { section, .. } if section == "node"), "{no_node:?}");
    let e = err(&MINIMAL.replace("bind = \"127.0.0.1:47101\"\n", ""), 6);
    assert!(matches!(&e, E::MissingKey { key, .. } if key == "node.bind"), "{e:?}");
    let e = err(&with("[node]", "lease = 3000"), 7);
    assert!(matches!(&e, E::UnknownKey { key, .. } if key == "node.lease"), "{e:?}");
    let e = err(&with("[node]", "announce_interval_ms = \"250\""), 7);
    assert!(matches!(&e, E::WrongType { key, .. } if key == "node.announce_interval_ms"), "{e:?}");
}

#[test]
fn names() {
    let e = err(&MINIMAL.replace("\"demo\"", "\"de mo\""), 3);
    assert!(
        matches!(&e, E::InvalidName { key, name, bad: Some(' '), .. } if key == "farm.name" && name == "de mo")
    );
    let e = err(&MINIMAL.replace("\"node-1\"", "\"\""), 7);
    assert!(matches!(&e, E::InvalidName { key, bad: None, .. } if key == "node.name"), "{e:?}");
}

#[test]
fn ranges() {
    let e = err(&with("[failover]", "failover_threshold = 101"), 12);
    assert!(
        matches!(&e, E::OutOfRange { key, value: 101, min: 0, max: 100, .. } if key == "failover.failover_threshold"),
        "{e:?}"
    );
    let e = err(&with("[balance]", "spawn_cooldown_ms = 5"), 12);
    assert!(matches!(&e, E::OutOfRange { value: 5, min: 10, max: 600_000, .. }), "{e:?}");
    let e = err(&with("[balance]", "retire_idle_after_ms = 86400001"), 12);
    assert!(
        matches!(&e, E::OutOfRange { key, value: 86_400_001, min: 0, max: 86_400_000, .. } if key == "balance.retire_idle_after_ms"),
        "{e:?}"
    );
    let e = err(&with("[timeouts]", "db = 0"), 12);
    assert!(
        matches!(&e, E::MsOutOfRange { key, value: 0, min: 1, max: 600_000, .. } if key == "timeouts.db")
    );
    let e = err(&with("[health]", "check_timeout_ms = 9"), 12);
    assert!(matches!(&e, E::MsOutOfRange { value: 9, min: 10, .. }), "{e:?}");
    let e = err(&with("[[app]]", "name = \"calc\"\nmax_cpu_percent = 0.0"), 13);
    assert!(
        matches!(&e, E::PercentOutOfRange { key, value, .. } if key == "app[0].max_cpu_percent" && *value == 0.0)
    );
    let e = err(&with("[balance]", "local_headroom_cpu_percent = 101.0"), 12);
    assert!(matches!(&e, E::PercentOutOfRange { key, .. } if key == "balance.local_headroom_cpu_percent"));
}

#[test]
fn lease_and_latency() {
    let e = err(&with("[node]", "lease_ms = 500"), 7);
    let expected = E::LeaseOutOfRange {
        at: e.location().clone(),
        lease_ms: 500,
        twice_announce_ms: 500,
        max_ms: 60_000,
        defaulted: false,
    };
    assert_eq!(e.to_string(), expected.to_string());
    assert!(matches!(e, E::LeaseOutOfRange { lease_ms: 500, twice_announce_ms: 500, defaulted: false, .. }));
    let e = err(&with("[node]", "announce_interval_ms = 1000"), 7);
    assert!(
        matches!(e, E::LeaseOutOfRange { lease_ms: 1500, twice_announce_ms: 2000, defaulted: true, .. }),
        "{e:?}"
    );
    let e = err(&with("[latency]", "max_message_latency_ms = 80"), 12);
    assert!(
        matches!(e, E::LowWaterNotBelowMax { low_water_ms: 100, max_message_latency_ms: 80, .. }),
        "{e:?}"
    );
}

#[test]
fn addresses() {
    let group = |g: &str| err(&MINIMAL.replace("239.255.77.1:47000", g), 4);
    assert!(matches!(group("239.255.77.1"), E::GroupNotIpv4 { value, .. } if value == "239.255.77.1"));
    let e = group("10.0.0.1:47000");
    assert!(matches!(e, E::GroupNotMulticast { group, .. } if group.to_string() == "10.0.0.1:47000"));
    assert!(matches!(group("239.255.77.1:0"), E::GroupPortZero { .. }));
    let e = err(&with("[farm]", "interface = \"eth0\""), 3);
    assert!(
        matches!(&e, E::NotIpv4 { key, value, .. } if key == "farm.interface" && value == "eth0"),
        "{e:?}"
    );
    let e = err(&MINIMAL.replace("127.0.0.1:47101", "127.0.0.1:70000"), 8);
    assert!(matches!(&e, E::NotSocketAddr { key, .. } if key == "node.bind"), "{e:?}");
    let e = err(&with("[farm]", "seeds = [\"224.0.0.1:5\"]"), 3);
    assert!(matches!(&e, E::NotNodeAddr { key, .. } if key == "farm.seeds[0]"), "{e:?}");
    let service = |bind: &str, body: &str| {
        let text = format!("{}\n[service]\n{body}\n", MINIMAL.replace("127.0.0.1:47101", bind));
        super::tests::parse(&text).expect_err("a bad [service] is refused")
    };
    for (bind, body, needle) in [
        ("127.0.0.1:47101", "address = \"10.0.0.100\"\ninterface = \"eth0\"", "service.address"),
        ("127.0.0.1:47101", "address = \"10.0.0.100/33\"\ninterface = \"eth0\"", "with a prefix"),
        ("127.0.0.1:47101", "address = \"10.0.0.100/24\"\ninterface = \"\"", "service.interface"),
        ("127.0.0.1:0", "address = \"10.0.0.100/24\"\ninterface = \"eth0\"", "fixed port"),
    ] {
        let e = service(bind, body);
        assert!(matches!(&e, E::BadService { .. }) && e.to_string().contains(needle), "{body}: {e}");
        assert!(e.location().line.is_some(), "{e}");
    }
    let e = err(&with("[farm]", "registry = \"zookeeper\""), 3);
    assert!(matches!(&e, E::BadRegistry { value, .. } if value == "zookeeper"), "{e:?}");
    let e = err(&with("[farm]", "etcd = [\"http://127.0.0.1:2379\"]"), 3);
    assert!(matches!(&e, E::EtcdWithoutRegistry { .. }), "{e:?}");
    let e = err(&with("[farm]", "registry = \"etcd\""), 3);
    if cfg!(feature = "etcd") {
        assert!(matches!(&e, E::EtcdEndpointsMissing { .. }), "{e:?}");
        let e = err(&with("[farm]", "registry = \"etcd\"\netcd = [\"http://127.0.0.1:2379/v3\"]"), 4);
        assert!(matches!(&e, E::BadEtcdEndpoint { index: 0, .. }), "{e:?}");
    } else {
        assert!(e.to_string().contains("--features etcd"), "{e}");
    }
    let e = err(&with("[failover]", "first = [\"10.0.0.1\", \"x\"]"), 12);
    assert!(matches!(&e, E::NotClientAddr { index: 1, value, .. } if value == "x"), "{e:?}");
}

#[test]
fn secrets() {
    let secret = |s: &str| err(&with("[farm]", &format!("secret = \"{s}\"")), 3);
    assert!(matches!(
        secret("0g"),
        E::BadSecret { source: SecretError::NotHex { position: 2, found: 'g' }, .. }
    ));
    assert!(matches!(secret("001"), E::BadSecret { source: SecretError::OddLength { digits: 3 }, .. }));
    assert!(matches!(secret("0011"), E::BadSecret { source: SecretError::TooShort { digits: 4 }, .. }));
    let both = format!("secret = \"{}\"\nsecret_file = \"s.hex\"", "00".repeat(16));
    assert!(matches!(err(&with("[farm]", &both), 4), E::SecretTwice { .. }));
    // BadSecretFile and SecretFileUnreadable need files: see tests::load_reads_files_and_secret_files.
}

#[test]
fn records() {
    assert!(matches!(err(&MINIMAL.replace("/var/lib/dabs/node-1", ""), 9), E::EmptyDataDir { .. }));
    let apps = format!("{MINIMAL}\n[[app]]\nname = \"calc\"\n\n[[app]]\nname = \"calc\"\n");
    let e = err(&apps, 15);
    assert!(matches!(&e, E::DuplicateApp { index: 1, name, first_line: 12, .. } if name == "calc"), "{e:?}");
    let e = err(&with("[[app]]", "name = \"calc\"\nsubgroup = [\"n\", \"n\"]"), 13);
    assert!(
        matches!(&e, E::ListedTwice { key, name, .. } if key == "app[0].subgroup[1]" && name == "n"),
        "{e:?}"
    );
    let e = err(&service("name = \"database\"\ntcp = \"127.0.0.1:1\""), 12);
    assert!(matches!(&e, E::DuplicateService { index: 0, name, .. } if name == "database"), "{e:?}");
    assert!(matches!(err(&service("name = \"x\""), 12), E::ServiceCheck { index: 0, .. }));
    let both = service("name = \"x\"\ntcp = \"127.0.0.1:1\"\ncommand = [\"true\"]");
    assert!(matches!(err(&both, 12), E::ServiceCheck { index: 0, .. }));
    assert!(matches!(err(&service("name = \"x\"\ncommand = []"), 13), E::EmptyCommand { index: 0, .. }));
    let classes = format!("{MINIMAL}\n[[failover.class]]\nname = \"a\"\n[[failover.class]]\nname = \"a\"\n");
    let e = err(&classes, 14);
    assert!(matches!(&e, E::DuplicateClass { index: 1, name, .. } if name == "a"), "{e:?}");
}

#[test]
fn jobs_section() {
    let lines = MINIMAL.lines().count();
    let jobs = |body: &str| format!("{MINIMAL}\n[jobs]\n{body}\n");
    let e = err(&jobs("criterion = \"quickest\""), lines + 3);
    assert!(
        matches!(&e, E::BadPolicy { key, message, .. } if key == "jobs.criterion" && message.contains("least_busy")),
        "{e:?}"
    );
    let e = err(&jobs("threads = 0"), lines + 3);
    assert!(matches!(&e, E::OutOfRange { key, min: 1, .. } if key == "jobs.threads"), "{e:?}");
    let e = err(&jobs("memory_mb = 5000"), lines + 3);
    assert!(matches!(&e, E::OutOfRange { key, max: 4096, .. } if key == "jobs.memory_mb"), "{e:?}");
    let e = err(&jobs("workers = 2"), lines + 3);
    assert!(matches!(&e, E::UnknownKey { key, .. } if key == "jobs.workers"), "{e:?}");
    let ok = parse(&jobs("compute = false\ncriterion = \"fastest\"")).unwrap();
    assert!(!ok.jobs.compute && ok.jobs.criterion == crate::jobs::Criterion::Fastest && ok.jobs.balancer);
}
