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
