//! Helpers around a farm client (`dabs_sdk::FarmClient`) in tests of a farm.

use dabs_net::Addr;
use dabs_sdk::FarmClient;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

/// Drains the node serving `client` with `dabs drain NODE --secret HEX` (`dabs` the binary's
/// path), asserts the command succeeded and waits (at most 3 s) until FAILOVER has moved the
/// client to another node; returns the drained node's address.
pub async fn drain_and_follow(dabs: &str, client: &FarmClient, secret: &str) -> SocketAddr {
    let Some(Addr::Udp(home)) = client.server().await else { panic!("the client has no server to drain") };
    let out = Command::new(dabs).args(["drain", &home.to_string(), "--secret", secret]).output().unwrap();
    assert!(out.status.success(), "dabs drain {home}: {}", String::from_utf8_lossy(&out.stderr));
    crate::eventually_async(
        "the client to move after the drain",
        Duration::from_secs(3),
        crate::POLL,
        async || matches!(client.server().await, Some(Addr::Udp(a)) if a != home),
    )
    .await;
    home
}

/// A client endpoint on a free loopback port whose first ACK time-out is 100 ms (a loss on
/// loopback is noticed quickly), giving up after `max_retries` re-attempts.
pub async fn endpoint(max_retries: u32) -> dabs_net::EndpointHandle {
    let config =
        dabs_net::Config { ack_timeout: Duration::from_millis(100), max_retries, ..Default::default() };
    dabs_net::spawn(
        "127.0.0.1:0".parse().expect("literal"),
        dabs_net::DriverOptions { config, ..Default::default() },
    )
    .await
    .expect("a loopback endpoint")
}
