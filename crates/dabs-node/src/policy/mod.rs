//! Policy-driven balancing (seed 003, R-POL-1…3): each application names the policy that
//! picks its preferred server; portions publish status objects; a server monitor on each node
//! reads them ([`monitor`]); the central monitor, replicated on every node, ranks the servers
//! per application, with intermediate monitors for sub-farms ([`rank`]). The ranking places
//! new clients (`OPEN_SESSION`) and answers the DNS front.

pub mod monitor;
pub mod nearness;
pub mod rank;

pub use nearness::{Nearness, Network};
pub use rank::{Ranked, Ranking, rank};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How an application's preferred server is chosen. Lower figures win, except throughput.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Policy {
    /// The farm's one load signal (`load_score`): the default.
    #[default]
    LeastLoaded,
    /// Lowest request latency plus service time of the application's portions.
    FastestResponse,
    /// Fewest client sessions of the application.
    FewestClients,
    /// Fewest pending operations: the portions' `pending` status figure where published, else
    /// their queued requests.
    FewestPending,
    /// Closest to the client: shortest round trip each server measured to the client's network
    /// (for DNS, the EDNS client subnet, else the resolver); until measured, the longest common
    /// address prefix; least loaded among equals.
    Closest,
    /// Most requests handled per second over the last collection interval.
    HighestThroughput,
    /// Lowest value of a figure the application publishes through a status object.
    AppFigure(String),
}

/// Who asks, for `closest`: the client's (or resolver's) address, its network and each node's
/// measured round trip to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Asker {
    /// The address asked from.
    pub ip: std::net::IpAddr,
    /// Its network, as measured.
    pub network: Network,
    /// Each node's round trip to the network, µs (nodes not measured yet are absent).
    pub rtt_us: std::collections::BTreeMap<String, u32>,
}

impl Asker {
    /// An asker nothing has been measured for.
    pub fn unmeasured(ip: std::net::IpAddr) -> Asker {
        Asker { ip, network: Network::of(ip, None), rtt_us: Default::default() }
    }
}

/// A policy name that is not one of the known ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown policy {0:?} (expected least_loaded, fastest_response, fewest_clients, fewest_pending, \
     closest, highest_throughput or app_figure:FIGURE, FIGURE of a-z 0-9 _ -)"
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "least_loaded" => Policy::LeastLoaded,
            "fastest_response" => Policy::FastestResponse,
            "fewest_clients" => Policy::FewestClients,
            "fewest_pending" => Policy::FewestPending,
            "closest" => Policy::Closest,
            "highest_throughput" => Policy::HighestThroughput,
            other => match other.strip_prefix("app_figure:") {
                Some(f) if dabs_farm_proto::status::check_figure_name(f).is_ok() => {
                    Policy::AppFigure(f.into())
                }
                _ => return Err(UnknownPolicy(s.to_owned())),
            },
        })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::LeastLoaded => f.write_str("least_loaded"),
            Policy::FastestResponse => f.write_str("fastest_response"),
            Policy::FewestClients => f.write_str("fewest_clients"),
            Policy::FewestPending => f.write_str("fewest_pending"),
            Policy::Closest => f.write_str("closest"),
            Policy::HighestThroughput => f.write_str("highest_throughput"),
            Policy::AppFigure(name) => write!(f, "app_figure:{name}"),
        }
    }
}

impl TryFrom<String> for Policy {
    type Error = UnknownPolicy;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Policy> for String {
    fn from(p: Policy) -> String {
        p.to_string()
    }
}

/// A sub-farm (`[[subfarm]]`): a named set of nodes, such as a remote site, whose
/// intermediate monitor applies its own policy inside it and stands as one entity to the
/// application's policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubFarm {
    /// Its name.
    pub name: String,
    /// Its nodes (a node belongs to one sub-farm at most).
    pub nodes: Vec<String>,
    /// The policy that ranks its nodes.
    pub policy: Policy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_of_interop_md_parses_and_prints_back() {
        for name in [
            "least_loaded",
            "fastest_response",
            "fewest_clients",
            "fewest_pending",
            "closest",
            "highest_throughput",
            "app_figure:mailbox",
        ] {
            let p: Policy = name.parse().unwrap();
            assert_eq!(p.to_string(), name);
        }
        for bad in ["", "fastest", "app_figure:", "app_figure:Big", "Least_loaded"] {
            let e = bad.parse::<Policy>().unwrap_err();
            assert!(e.to_string().contains("expected least_loaded"), "{e}");
        }
        let json = serde_json::to_string(&Policy::AppFigure("keys".into())).unwrap();
        assert_eq!(json, "\"app_figure:keys\"");
        assert!(serde_json::from_str::<Policy>("\"nope\"").is_err());
    }
}
