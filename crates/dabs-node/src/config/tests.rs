//! Reading, validation and writing, through the public API; typed errors in `tests_errors`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::read::line_column;
use super::*;
use crate::health::Check;
use crate::zones::Thresholds;

pub(super) const EXAMPLE: &str = include_str!("../../../../docs/node.example.toml");

pub(super) const MINIMAL: &str = r#"
[farm]
name = "demo"
group = "239.255.77.1:47000"

[node]
name = "node-1"
bind = "127.0.0.1:47101"
data_dir = "/var/lib/dabs/node-1"
"#;

pub(super) fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::parse(text, Path::new("/etc/dabs/node.toml"))
}

/// Asserts `text` is refused at `line` with a message containing every one of `needles`.
#[track_caller]
pub(super) fn refused(text: &str, line: Option<usize>, needles: &[&str]) -> ConfigError {
    let err = parse(text).expect_err("config should be refused");
    let at = err.location();
    assert_eq!(at.line, line, "wrong line for: {err}");
    assert_eq!(at.column.is_some(), line.is_some(), "column without line: {err}");
    let shown = err.to_string();
    for needle in needles {
        assert!(shown.contains(needle), "{needle:?} not in: {err}");
    }
    assert_eq!(at.file, Path::new("/etc/dabs/node.toml"));
    assert!(shown.starts_with(&format!("{at}: ")), "location first: {err}");
    err
}

/// MINIMAL with `line` added just below `header` (appended with the header if absent).
pub(super) fn with(header: &str, line: &str) -> String {
    let header = format!("{header}\n");
    match MINIMAL.find(&header) {
        Some(at) => {
            let at = at + header.len();
            format!("{}{line}\n{}", &MINIMAL[..at], &MINIMAL[at..])
        }
        None => format!("{MINIMAL}\n{header}{line}\n"),
    }
}

#[test]
fn example_file_parses() {
    let path = Path::new("/work/main/docs/node.example.toml");
    let c = NodeConfig::parse(EXAMPLE, path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.farm.name, "demo");
    assert_eq!(c.farm.group, "239.255.77.1:47000".parse().unwrap());
    assert_eq!(c.node.name, "node-1");
    assert_eq!(c.node.bind, "127.0.0.1:47101".parse().unwrap());
    assert_eq!(c.node.data_dir, Path::new("/work/main/docs/data/node-1"));
    let calc = c.app("calc").expect("calc app");
    assert!(calc.start_at_init);
    assert!(c.timeouts.contains_key(DEFAULT_TIMEOUT_KEY));
    assert!(c.latency.low_water < c.latency.max_message_latency);
}

#[test]
fn example_health_and_failover_sections() {
    let c = parse(EXAMPLE).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = c.health.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["mp", "database", "orders-db", "log-shipper"]);
    assert_eq!(c.health.services[2].check, Check::Tcp("127.0.0.1:5432".parse().unwrap()));
    assert!(c.health.services[2].mandatory);
    assert_eq!(c.health.services[3].weight, 30);
    assert_eq!(c.failover.thresholds, Thresholds { failover: 10, connection: 25, returning: 40 });
    assert_eq!(c.failover.first, ["10.0.0.7"]);
    let gold = c.failover.thresholds_for(Some("gold"));
    assert_eq!(gold, Thresholds { failover: 5, connection: 10, returning: 40 });
    assert_eq!(c.failover.return_batch, 50);
}

#[test]
fn bad_health_and_failover_keys_are_refused_with_their_line() {
    refused(
        &with("[failover]", "failover_threshold = 101"),
        Some(12),
        &["failover.failover_threshold", "0..=100"],
    );
    refused(&with("[failover]", "first = [\"not-an-ip\"]"), Some(12), &["failover.first[0]", "IP:PORT"]);
    refused(&with("[failover]", "batch = 0"), Some(12), &["failover.batch", "1..=100000"]);
    let both = "[[health.service]]\nname = \"x\"\ntcp = \"127.0.0.1:1\"\ncommand = [\"true\"]\n";
    refused(&format!("{MINIMAL}\n{both}"), Some(12), &["health.service[0]", "exactly one of tcp"]);
    let builtin = "[[health.service]]\nname = \"mp\"\ntcp = \"127.0.0.1:1\"\n";
    refused(&format!("{MINIMAL}\n{builtin}"), Some(12), &["already a service", "built in"]);
    let weight = "[[health.service]]\nname = \"y\"\ncommand = [\"true\"]\nweight = 200\n";
    refused(&format!("{MINIMAL}\n{weight}"), Some(14), &["health.service[0].weight", "0..=100"]);
}

#[test]
fn defaults_fill_in() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.farm.interface, Ipv4Addr::LOCALHOST);
    assert!(c.farm.seeds.is_empty());
    assert_eq!(c.farm.secret, None);
    assert_eq!(c.node.operator, None);
    assert_eq!(c.node.announce_interval, Duration::from_millis(250));
    assert_eq!(c.node.lease, Duration::from_millis(1500));
    assert!(c.node.accept_encryption, "encryption is accepted unless turned off");
    assert!(!c.node.tcp, "MP over TCP is off unless turned on");
    assert_eq!(c.timeouts, BTreeMap::from([("default".to_string(), Duration::from_millis(100))]));
    assert_eq!(c.timeout_for("db"), Duration::from_millis(100));
    assert_eq!(c.latency.max_message_latency, Duration::from_millis(200));
    assert_eq!(c.latency.low_water, Duration::from_millis(100));
    assert!(c.apps.is_empty());

    let c = parse(&format!("{MINIMAL}\n[timeouts]\ndb = 250\n[[app]]\nname = \"calc\"\n")).unwrap();
    assert_eq!(c.timeout_for("db"), Duration::from_millis(250));
    assert_eq!(c.timeout_for("lock"), Duration::from_millis(100));
    assert_eq!(c.apps, vec![AppConfig::new("calc")]);
    let app = c.app("calc").unwrap();
    assert!(!app.start_at_init);
    assert_eq!(app.min_free_memory_mb, 0);
    assert_eq!(app.max_cpu_percent, 100.0);
    assert_eq!(app.max_sessions_per_portion, 1000);
    assert!(app.allows_node("anything"));
    assert!(c.app("nope").is_none());
}

#[test]
fn relative_paths_resolve_against_the_config_dir() {
    let text = MINIMAL.replace("/var/lib/dabs/node-1", "data/node-1");
    let c = parse(&text).unwrap();
    assert_eq!(c.node.data_dir, Path::new("/etc/dabs/data/node-1"));
    // A bare file name means the current directory; the result is still absolute.
    let c = NodeConfig::parse(&text, Path::new("node.toml")).unwrap();
    assert!(c.node.data_dir.is_absolute());
    assert!(c.node.data_dir.ends_with("data/node-1"));
}

#[test]
fn round_trip_through_to_toml() {
    let example = NodeConfig::parse(EXAMPLE, Path::new("/work/main/docs/node.example.toml")).unwrap();
    let mut full = example.clone();
    full.farm.seeds = vec!["10.0.0.2:47101".parse().unwrap(), "[::1]:47102".parse().unwrap()];
    full.farm.secret = Some((0u8..32).collect());
    full.node.operator = Some("127.0.0.1:8101".parse().unwrap());
    full.node.accept_encryption = false;
    full.node.data_dir = PathBuf::from("/srv/dabs \"quoted\" \\ dir");
    full.timeouts.insert("odd key.with dot".to_string(), Duration::from_millis(7));
    let mut app = AppConfig::new("second_app");
    app.max_cpu_percent = 12.345;
    app.subgroup = vec!["node-2".into(), "node-3".into()];
    full.apps.push(app);
    for (config, dir) in [(example, "/work/main/docs"), (full, "/somewhere/else")] {
        let text = config.to_toml();
        let back = NodeConfig::parse(&text, &Path::new(dir).join("gen.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, config, "\n{text}");
    }
}

#[test]
fn load_reads_files_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.hex"), format!("{}\n", "ab".repeat(16))).unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, with("[farm]", "secret_file = \"secret.hex\"")).unwrap();
    let c = NodeConfig::load(&path).unwrap();
    assert_eq!(c.farm.secret, Some(vec![0xab; 16]));

    let text = with("[farm]", "secret_file = \"missing.hex\"");
    let err = NodeConfig::parse(&text, &path).unwrap_err();
    assert_eq!(err.location().line, Some(3));
    assert!(matches!(err, ConfigError::SecretFileUnreadable { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains(":3:15: farm.secret_file: cannot read ") && shown.contains("missing.hex"),
        "{err}"
    );

    std::fs::write(dir.path().join("short.hex"), "abcd").unwrap();
    let err = NodeConfig::parse(&with("[farm]", "secret_file = \"short.hex\""), &path).unwrap_err();
    assert_eq!(err.location().line, Some(3));
    assert!(
        matches!(&err, ConfigError::BadSecretFile { source: SecretError::TooShort { digits: 4 }, path, .. }
            if path.ends_with("short.hex")),
        "{err:?}"
    );
    assert!(err.to_string().contains("too short"), "{err}");
}

#[test]
fn unreadable_file_has_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let err = NodeConfig::load(&path).unwrap_err();
    let at = err.location();
    assert_eq!((at.file.as_path(), at.line, at.column), (path.as_path(), None, None));
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    let prefix = format!("{}: cannot read the configuration file: ", path.display());
    assert!(err.to_string().starts_with(&prefix), "{err}");
}

#[test]
fn display_shows_file_line_column() {
    let err = refused(&with("[farm]", "grup = 1"), Some(3), &["farm.grup"]);
    assert_eq!(err.location().column, Some(1));
    assert!(err.to_string().starts_with("/etc/dabs/node.toml:3:1: farm.grup: unknown key `grup`"), "{err}");
}

#[test]
fn bad_configs_point_at_the_line() {
    // MINIMAL: line 2 [farm], 3 name, 4 group, 6 [node], 7 name, 8 bind, 9 data_dir.
    refused(&MINIMAL.replace("bind = \"127.0.0.1:47101\"\n", ""), Some(6), &["node.bind", "missing"]);
    refused(&MINIMAL.replace("name = \"demo\"\n", ""), Some(2), &["farm.name", "missing"]);
    refused(&MINIMAL.replace("[node]", "[nodes]"), Some(6), &["nodes", "unknown key"]);
    refused(&MINIMAL[..MINIMAL.find("[node]").unwrap()], None, &["[node]", "missing"]);
    refused(&with("[node]", "lease = 3000"), Some(7), &["node.lease", "unknown key", "lease_ms"]);
    refused(&with("[[app]]", "name = \"calc\"\nstart_at_int = true"), Some(13), &["app[0].start_at_int"]);
    refused(
        &with("[node]", "announce_interval_ms = \"250\""),
        Some(7),
        &["node.announce_interval_ms", "string"],
    );
    refused(&with("[node]", "announce_interval_ms = -5"), Some(7), &["node.announce_interval_ms"]);
    refused(&with("[farm]", "seeds = \"127.0.0.1:1\""), Some(3), &["farm.seeds", "sequence"]);
    refused("[farm\nname = 1", Some(1), &["invalid TOML"]);
    refused(&with("[farm]", "name = \"again\""), Some(4), &["duplicate key", "`name`"]);
    refused(
        &MINIMAL.replace("239.255.77.1:47000", "10.0.0.1:47000"),
        Some(4),
        &["farm.group: 10.0.0.1:47000 is not a multicast address (expected 224.0.0.0/4)"],
    );
    refused(&MINIMAL.replace("239.255.77.1:47000", "239.255.77.1:0"), Some(4), &["farm.group", "port 0"]);
    refused(&MINIMAL.replace("239.255.77.1:47000", "239.255.77.1"), Some(4), &["farm.group", "IPv4"]);
    refused(&MINIMAL.replace("239.255.77.1:47000", "[ff02::1]:47000"), Some(4), &["farm.group", "IPv4"]);
    refused(
        &MINIMAL.replace("127.0.0.1:47101", "127.0.0.1:70000"),
        Some(8),
        &["node.bind", "IP address and port"],
    );
    refused(&with("[farm]", "interface = \"eth0\""), Some(3), &["farm.interface", "IPv4"]);
    refused(&with("[farm]", "seeds = [\n  \"127.0.0.1:1\",\n  \"nope\",\n]"), Some(5), &["farm.seeds[1]"]);
    refused(&with("[farm]", "seeds = [\"127.0.0.1:0\"]"), Some(3), &["farm.seeds[0]", "non-zero port"]);
    refused(&with("[node]", "operator = \"localhost:80\""), Some(7), &["node.operator"]);
    refused(&MINIMAL.replace("\"demo\"", "\"de mo\""), Some(3), &["farm.name", "' '"]);
    refused(&MINIMAL.replace("\"node-1\"", "\"\""), Some(7), &["node.name", "empty"]);
    refused(&with("[[app]]", "name = \"calc/1\""), Some(12), &["app[0].name", "'/'"]);
    refused(
        &with("[[app]]", "name = \"calc\"\nsubgroup = [\"node-1\", \"node 2\"]"),
        Some(13),
        &["app[0].subgroup[1]"],
    );
    refused(
        &with("[[app]]", "name = \"calc\"\nsubgroup = [\"n\", \"n\"]"),
        Some(13),
        &["app[0].subgroup[1]", "twice"],
    );
    refused(
        &with("[latency]", "max_message_latency_ms = 200\nlow_water_ms = 200"),
        Some(13),
        &["latency.low_water_ms", "max_message_latency_ms = 200"],
    );
    refused(&with("[latency]", "max_message_latency_ms = 80"), Some(12), &["latency.low_water_ms", "100"]);
    refused(
        &format!("{MINIMAL}\n[[app]]\nname = \"calc\"\n\n[[app]]\nname = \"calc\"\n"),
        Some(15),
        &["app[1].name", "duplicate", "\"calc\"", "line 12"],
    );
    refused(
        &with("[node]", "lease_ms = 500"),
        Some(7),
        &["node.lease_ms", "500", "2 * node.announce_interval_ms = 500"],
    );
    refused(&with("[node]", "lease_ms = 60001"), Some(7), &["node.lease_ms", "60000"]);
    refused(&with("[node]", "announce_interval_ms = 1000"), Some(7), &["node.lease_ms", "default 1500"]);
    refused(
        &with("[node]", "announce_interval_ms = 40"),
        Some(7),
        &["node.announce_interval_ms", "50..=5000"],
    );
    refused(&with("[farm]", "secret = \"xyz\""), Some(3), &["farm.secret", "not hex"]);
    refused(&with("[farm]", "secret = \"0011\""), Some(3), &["farm.secret", "too short"]);
    refused(&with("[farm]", "secret = \"001\""), Some(3), &["farm.secret", "odd"]);
    refused(
        &with("[farm]", &format!("secret = \"{}\"\nsecret_file = \"s.hex\"", "00".repeat(16))),
        Some(4),
        &["farm.secret_file", "at most one"],
    );
    refused(&with("[timeouts]", "db = 0"), Some(12), &["timeouts.db", "1..=600000"]);
    refused(&with("[timeouts]", "\"a b\" = 600001"), Some(12), &["timeouts.\"a b\""]);
    refused(&with("[timeouts]", "db = \"fast\""), Some(12), &["timeouts.db"]);
    refused(
        &with("[latency]", "max_message_latency_ms = 1.5"),
        Some(12),
        &["latency.max_message_latency_ms"],
    );
    refused(
        &with("[[app]]", "name = \"calc\"\nmax_cpu_percent = 0.0"),
        Some(13),
        &["app[0].max_cpu_percent"],
    );
    refused(
        &with("[[app]]", "name = \"calc\"\nmax_cpu_percent = nan"),
        Some(13),
        &["app[0].max_cpu_percent"],
    );
    refused(
        &with("[[app]]", "name = \"calc\"\nmax_sessions_per_portion = 0"),
        Some(13),
        &["max_sessions_per_portion"],
    );
    refused(
        &with("[[app]]", "name = \"calc\"\nmax_workers = 0"),
        Some(13),
        &["app[0].max_workers", "1..=1024"],
    );
    assert_eq!(
        parse(&with("[[app]]", "name = \"calc\"\nmax_workers = 6")).unwrap().apps[0].max_workers,
        Some(6)
    );
    refused(&with("[[app]]", "start_at_init = true"), Some(11), &["app[0].name", "missing"]);
    refused(&format!("{MINIMAL}app = 5\n"), Some(10), &["node.app"]);
    refused(&format!("app = 5\n{MINIMAL}"), Some(1), &["app", "sequence"]);
    refused("farm = 5\n", Some(1), &["farm", "a table"]);
    refused(&with("[node]", "accept_encryption = \"no\""), Some(7), &["node.accept_encryption", "bool"]);
    refused(&with("[node]", "tcp = \"yes\""), Some(7), &["node.tcp", "bool"]);
    assert!(parse(&with("[node]", "tcp = true")).unwrap().node.tcp);
    refused(
        &with("[farm]", "accept_encryption = false"),
        Some(3),
        &["farm.accept_encryption", "unknown key"],
    );
}

#[test]
fn encryption_can_be_refused() {
    let c = parse(&with("[node]", "accept_encryption = false")).unwrap();
    assert!(!c.node.accept_encryption);
    let back = NodeConfig::parse(&c.to_toml(), Path::new("/etc/dabs/gen.toml")).unwrap();
    assert_eq!(back, c, "written and read back");
}

#[test]
fn valid_edge_values_are_accepted() {
    let text = format!(
        "{}\n[[app]]\nname = \"x\"\nmax_cpu_percent = 100\nmax_sessions_per_portion = 1000000\n",
        // Off loopback a farm needs a secret.
        with("[farm]", "secret = \"000102030405060708090a0b0c0d0e0f\"").replace("127.0.0.1:47101", "[::]:0")
    );
    let c = parse(&with("[node]", "announce_interval_ms = 50\nlease_ms = 101")).unwrap();
    assert_eq!(c.node.lease, Duration::from_millis(101));
    let c = NodeConfig::parse(&text, Path::new("/n.toml")).unwrap();
    assert_eq!(c.node.bind, "[::]:0".parse().unwrap());
    assert_eq!(c.apps[0].max_cpu_percent, 100.0);
    assert_eq!(c.apps[0].max_sessions_per_portion, 1_000_000);
    let c = parse(&with("[latency]", "low_water_ms = 0")).unwrap();
    assert_eq!(c.latency.low_water, Duration::ZERO);
}

#[test]
fn line_column_counts_characters() {
    assert_eq!(line_column("ab\ncé\nx", 0), (1, 1));
    assert_eq!(line_column("ab\ncé\nx", 3), (2, 1));
    assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
    assert_eq!(line_column("ab\ncé\nx", 6), (2, 3));
    assert_eq!(line_column("ab", 99), (1, 3));
}

#[test]
fn a_farm_without_a_secret_stays_on_loopback() {
    assert!(parse(MINIMAL).unwrap().farm.secret.is_none(), "loopback alone: allowed");
    refused(
        &MINIMAL.replace("127.0.0.1:47101", "0.0.0.0:47101"),
        Some(8),
        &["farm.secret", "loopback", "0.0.0.0:47101"],
    );
    refused(&with("[farm]", "interface = \"10.0.0.1\""), Some(9), &["farm.secret", "loopback"]);
    refused(&with("[farm]", "seeds = [\"10.0.0.2:47101\"]"), Some(9), &["farm.secret"]);
    let c = parse(
        &with("[farm]", "secret = \"000102030405060708090a0b0c0d0e0f\"")
            .replace("127.0.0.1:47101", "0.0.0.0:1"),
    )
    .unwrap();
    assert!(!c.loopback_only() && c.farm.secret.is_some());
}

#[test]
fn portions_per_node_are_capped() {
    assert_eq!(parse(MINIMAL).unwrap().node.max_portions, DEFAULT_MAX_PORTIONS);
    let c = parse(&with("[node]", "max_portions = 3")).unwrap();
    assert_eq!(c.node.max_portions, 3);
    assert_eq!(NodeConfig::parse(&c.to_toml(), Path::new("/g.toml")).unwrap(), c, "written and read back");
    refused(&with("[node]", "max_portions = 0"), Some(7), &["node.max_portions", "65520"]);
    refused(&with("[node]", "max_portions = 65521"), Some(7), &["node.max_portions"]);
}

#[test]
fn an_app_record_may_name_a_program_to_run_as_its_portion() {
    let text = format!(
        "{MINIMAL}\n[[app]]\nname = \"kv\"\ncommand = [\"bin/kv-portion\", \"--verbose\"]\n\n\
         [[app]]\nname = \"py\"\ncommand = [\"python3\", \"p.py\"]\n"
    );
    let c = parse(&text).unwrap();
    // A relative path with a folder is taken from the file's folder; a bare name from PATH.
    assert_eq!(c.apps[0].command, vec!["/etc/dabs/bin/kv-portion".to_string(), "--verbose".into()]);
    assert_eq!(c.apps[1].command, vec!["python3".to_string(), "p.py".into()]);
    // A program's clients share one node socket: 254 sessions at most, and by default.
    assert_eq!(c.apps[0].max_sessions_per_portion, 254);
    refused(
        &format!("{MINIMAL}\n[[app]]\nname = \"kv\"\ncommand = [\"kv\"]\nmax_sessions_per_portion = 255\n"),
        Some(14),
        &["app[0].max_sessions_per_portion", "1..=254"],
    );
    refused(
        &format!("{MINIMAL}\n[[app]]\nname = \"kv\"\ncommand = []\n"),
        Some(13),
        &["app[0].command", "name the program"],
    );
    refused(
        &format!("{MINIMAL}\n[[app]]\nname = \"kv\"\ncommand = [\" \"]\n"),
        Some(13),
        &["app[0].command"],
    );
}

#[test]
fn with_the_built_in_apps_known_an_app_without_a_program_is_refused_at_its_name() {
    let text =
        format!("{MINIMAL}\n[[app]]\nname = \"calc\"\n\n[[app]]\nname = \"mystery\"\nstart_at_init = true\n");
    let path = Path::new("/etc/dabs/node.toml");
    NodeConfig::parse(&text, path).expect("without a list of built-ins any name is taken");
    let err = NodeConfig::parse_for(&text, path, Some(&["calc", "slowcalc"])).unwrap_err();
    assert_eq!(err.location().line, Some(15), "{err}");
    let shown = err.to_string();
    assert!(shown.contains("\"mystery\" is not built into this node (it has calc, slowcalc)"), "{shown}");
    assert!(shown.contains("no `command`"), "{shown}");
    let with_command = text.replace("start_at_init = true", "command = [\"mystery-portion\"]");
    NodeConfig::parse_for(&with_command, path, Some(&["calc"])).expect("a program makes it known");
}
