//! Writing: every field survives `to_toml` and `parse`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Registry;
use super::tests::{MINIMAL, parse};
use super::{
    AppConfig, BalanceConfig, DnsConfig, FarmConfig, LatencyLimits, NodeConfig, NodeSection, OperatorAccess,
    OperatorToken,
};
use crate::health::{Check, HealthConfig, Service};
use crate::policy::{Policy, SubFarm};
use crate::zones::{ClientClass, FailoverPolicy, Thresholds};

/// A configuration in which every field differs from its default. The struct literals list
/// every field, so a new field cannot be left out of the round trip unnoticed.
fn everything_set() -> NodeConfig {
    let ms = Duration::from_millis;
    let mut services = HealthConfig::default().services; // the built-in mp and database
    services.push(Service {
        name: "orders-db".into(),
        check: Check::Tcp("[::1]:5432".parse().unwrap()),
        mandatory: true,
        weight: 0,
    });
    services.push(Service {
        name: "shipper".into(),
        check: Check::Command(vec!["sh".into(), "-c".into(), "exit \"$X\" # ' \\".into()]),
        mandatory: false,
        weight: 100,
    });
    let health = HealthConfig {
        interval: ms(300),
        check_timeout: ms(700),
        queue_limit: 99,
        include_cpu: true,
        services,
    };
    NodeConfig {
        vipa: None,
        jobs: super::JobsConfig {
            compute: false,
            threads: 3,
            balancer: false,
            criterion: crate::jobs::Criterion::Fastest,
            max_fuel: 5_000,
            memory_mb: 16,
        },
        service: Some(super::ServiceAddress {
            ip: "10.1.2.100".parse().unwrap(),
            prefix: 24,
            interface: "eth1".into(),
        }),
        farm: FarmConfig {
            name: "farm_2".into(),
            group: "239.1.2.3:4000".parse().unwrap(),
            interface: "10.1.2.3".parse().unwrap(),
            seeds: vec!["10.0.0.2:47101".parse().unwrap(), "[::1]:47102".parse().unwrap()],
            secret: Some((0u8..32).collect()),
            // etcd only in a build that has it: the round trip must hold in both.
            registry: if cfg!(feature = "etcd") {
                Registry::Etcd { endpoints: vec!["http://10.0.0.5:2379".into(), "http://[::1]:2379".into()] }
            } else {
                Registry::Multicast
            },
        },
        node: NodeSection {
            name: "node-9".into(),
            bind: "[::]:47000".parse().unwrap(),
            data_dir: PathBuf::from("/srv/dabs \"quoted\" \\ dir/ünï"),
            operator: Some("127.0.0.1:8101".parse().unwrap()),
            announce_interval: ms(100),
            lease: ms(60_000),
            max_portions: 9,
            accept_encryption: false,
            tcp: true,
        },
        timeouts: BTreeMap::from([
            ("default".to_string(), ms(1)),
            ("db".to_string(), ms(600_000)),
            ("odd key.with \"dot\"".to_string(), ms(7)),
        ]),
        latency: LatencyLimits { max_message_latency: ms(900), low_water: ms(0) },
        apps: vec![
            AppConfig {
                name: "calc".into(),
                start_at_init: true,
                subgroup: vec!["node-2".into(), "node-3".into()],
                min_free_memory_mb: i64::MAX as u64,
                max_cpu_percent: 12.345,
                max_sessions_per_portion: 1_000_000,
                max_workers: Some(3),
                command: Vec::new(),
                policy: Policy::Closest,
                collect_interval: ms(10_000),
            },
            AppConfig::new("bare"),
            AppConfig {
                command: vec!["/usr/bin/python3".into(), "portion.py".into(), "--flag=\"x\"".into()],
                max_sessions_per_portion: 254,
                ..AppConfig::new("program")
            },
        ],
        balance: BalanceConfig {
            prefer_local: false,
            local_headroom_cpu_percent: 0.5,
            max_local_portions: u32::MAX,
            spawn_cooldown: ms(10),
            retire_idle_after: ms(0),
        },
        health,
        failover: FailoverPolicy {
            thresholds: Thresholds { failover: 0, connection: 100, returning: 99 },
            classes: vec![
                ClientClass {
                    name: "gold".into(),
                    thresholds: Thresholds { failover: 5, connection: 6, returning: 7 },
                },
                ClientClass {
                    name: "tin".into(),
                    thresholds: Thresholds { failover: 50, connection: 20, returning: 10 },
                },
            ],
            first: vec!["10.0.0.7".into(), "[::1]:9".into()],
            device_groups: vec!["kiosk".into(), "with space".into()],
            batch: 1,
            batch_interval: ms(60_000),
            return_batch: 100_000,
            return_interval: ms(1),
        },
        operator: OperatorAccess {
            token: Some(OperatorToken::new("tok3n-with/odd+chars_\"'=").unwrap()),
            open_reads: Some(false),
        },
        dns: DnsConfig {
            enabled: false,
            bind: Some("[::1]:5353".parse().unwrap()),
            zone: "mail.example.".into(),
            ttl_s: 3600,
        },
        subfarms: vec![
            SubFarm { name: "east".into(), nodes: vec!["node-2".into()], policy: Policy::FewestPending },
            SubFarm {
                name: "west".into(),
                nodes: vec!["node-3".into(), "node-4".into()],
                policy: Policy::AppFigure("mailbox".into()),
            },
        ],
    }
}

#[test]
fn every_field_round_trips() {
    let full = everything_set();
    let minimal = parse(MINIMAL).unwrap();
    assert_ne!(full.farm, minimal.farm);
    assert_ne!(full.balance, BalanceConfig::default());
    assert_ne!(full.latency, LatencyLimits::default());
    assert_ne!(full.failover, FailoverPolicy::default());
    assert_ne!(full.jobs, super::JobsConfig::default());
    let text = full.to_toml();
    let back =
        NodeConfig::parse(&text, Path::new("/elsewhere/gen.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, full, "\n{text}");
    assert_eq!(back.to_toml(), text, "writing is stable");
}

#[test]
fn defaults_are_written_out() {
    let text = parse(MINIMAL).unwrap().to_toml();
    for key in
        ["interface = \"127.0.0.1\"", "seeds = []", "lease_ms = 1500", "default = 100", "low_water_ms = 100"]
    {
        assert!(text.contains(key), "{key:?} missing from\n{text}");
    }
    // No secret, no operator, no built-in services, no empty arrays of tables.
    for absent in ["secret", "operator", "\"mp\"", "[[", "service", "class", "app"] {
        assert!(!text.contains(absent), "{absent:?} in\n{text}");
    }
}

#[test]
fn written_sections_keep_their_order() {
    let text = everything_set().to_toml();
    let headers: Vec<&str> = text.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(
        headers,
        [
            "[farm]",
            "[node]",
            "[timeouts]",
            "[latency]",
            "[balance]",
            "[health]",
            "[[health.service]]",
            "[[health.service]]",
            "[failover]",
            "[[failover.class]]",
            "[[failover.class]]",
            "[operator]",
            "[dns]",
            "[service]",
            "[jobs]",
            "[[subfarm]]",
            "[[subfarm]]",
            "[[app]]",
            "[[app]]",
            "[[app]]",
        ]
    );
}
