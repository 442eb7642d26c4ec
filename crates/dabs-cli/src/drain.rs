//! `dabs drain IP:PORT --secret HEX [--undo]`: the operator's failover. The node stops taking
//! new clients and tells its clients (authenticated `FAILOVER`) to move, in batches.

use dabs_farm_proto::shapes::OpenAsk;
use dabs_net::{Addr, DriverOptions};
use dabs_wire::SystemCommand;
use std::net::SocketAddr;
use std::process::ExitCode;

/// Sends the authenticated `DRAIN` (or its undo) to the node at `node`.
pub fn run(node: SocketAddr, secret_hex: &str, undo: bool) -> ExitCode {
    let secret = match hex::decode(secret_hex.trim()) {
        Ok(s) if s.len() >= 16 => s,
        Ok(_) => {
            eprintln!("dabs drain: --secret must be at least 16 bytes (32 hex digits)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("dabs drain: --secret is not hex: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        // Any local address of the node's family: a node on another host must be reachable
        // (bound to loopback, this tool could only drain nodes on its own host).
        let any: std::net::IpAddr = if node.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let ep = match dabs_net::spawn(SocketAddr::new(any, 0), DriverOptions::default()).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("dabs drain: {e}");
                return ExitCode::FAILURE;
            }
        };
        let ask = OpenAsk { node: Some("operator".into()), ..Default::default() };
        let session = match ep.open(Addr::Udp(node), 0, ask.to_cbor()).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("dabs drain: cannot reach the node at {node}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let now = dabs_net::unix_ms();
        let payload = dabs_farm_proto::seal::seal_drain(&secret, node, !undo, now, now);
        match session.call(SystemCommand::Drain.number(), payload).await {
            Ok(_) => {
                println!("{node} {}", if undo { "takes new clients again" } else { "is draining" });
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dabs drain: refused by {node}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
