//! The etcd registry from the command line (issue 13 item 3): `dabs farm up --etcd URL` forms
//! a farm whose members are etcd's leased keys and whose decider is etcd's election leader;
//! `dabs status` marks that decider, and after it is killed, the next one the election names;
//! a node that cannot reach etcd says so and does not start.

use dabs_testkit::etcd::EtcdServer;
use dabs_testkit::{Farm, MemberView, NodeConfigBuilder, PATIENCE, POLL, eventually, random_group, temp_dir};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

const DABS: &str = env!("CARGO_BIN_EXE_dabs");

/// The decider `dabs status --json` marks (`leader`), with every member it heard.
fn status_decider(group: &str) -> Result<(String, usize), String> {
    let out =
        Command::new(DABS).args(["status", "--farm", group, "--json"]).output().map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {out:?}"))?;
    let members = v["members"].as_array().ok_or(format!("no members: {v}"))?;
    let leaders: Vec<&str> =
        members.iter().filter(|m| m["leader"] == true).filter_map(|m| m["node"].as_str()).collect();
    match leaders[..] {
        [one] => Ok((one.to_owned(), members.len())),
        _ => Err(format!("status marks {leaders:?} as leader: {v}")),
    }
}

#[test]
fn farm_up_on_etcd_forms_and_status_marks_the_decider_the_election_names() {
    let dir = temp_dir("etcd-up");
    let etcd = EtcdServer::start(&dir);
    let farm = Farm::up_with(DABS, 3, "etcd-up-farm", &["--etcd", &etcd.url]);
    let (urls, token) = (farm.operators(), farm.token());
    let group = farm.group().to_string();
    let views = |urls: &[String]| -> Result<Vec<MemberView>, String> {
        urls.iter()
            .map(|u| {
                let (status, body) = dabs_testkit::http::json_as(Some(&token), "GET", u, "/api/farm", None);
                if status != 200 {
                    return Err(format!("{u}: {status}"));
                }
                let members = body["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| Some((m["name"].as_str()?.to_owned(), m["started_ms"].as_u64()?)))
                    .collect();
                Ok(MemberView {
                    viewer: u.clone(),
                    members,
                    leader: body["leader"].as_str().map(str::to_owned),
                })
            })
            .collect()
    };
    // Every view lists the three and names the same decider; `dabs status` marks it.
    let decider =
        eventually("three members and one decider in every view and in dabs status", PATIENCE, POLL, || {
            let v = views(&urls)?;
            dabs_testkit::membership::agree(&v, 3)?;
            let named = v[0].leader.clone().ok_or("no decider named")?;
            if let Some(other) = v.iter().find(|v| v.leader.as_ref() != Some(&named)) {
                return Err(format!("{} names {:?}, not {named}", other.viewer, other.leader));
            }
            let (marked, heard) = status_decider(&group)?;
            (marked == named && heard == 3)
                .then_some(named.clone())
                .ok_or(format!("status marks {marked} of {heard}"))
        });
    // The decider is killed: the election names another, and status follows.
    let manifest = farm.manifest();
    let pid = manifest["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == decider.as_str())
        .and_then(|n| n["pid"].as_u64())
        .expect("the decider's pid in farm.json");
    // SAFETY: kill(2) on a process of this test's farm.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let rest: Vec<String> = urls
        .iter()
        .zip(manifest["nodes"].as_array().unwrap())
        .filter(|(_, n)| n["name"] != decider.as_str())
        .map(|(u, _)| u.clone())
        .collect();
    eventually("the survivors naming a new decider", Duration::from_secs(10), POLL, || {
        let v = views(&rest)?;
        dabs_testkit::membership::agree(&v, 2)?;
        let named = v[0].leader.clone().ok_or("no decider named")?;
        if named == decider || v.iter().any(|v| v.leader.as_ref() != Some(&named)) {
            return Err(format!("views: {v:?}"));
        }
        let (marked, _) = status_decider(&group)?;
        (marked == named).then_some(()).ok_or(format!("status marks {marked}, views name {named}"))
    });
    drop(farm);
    drop(etcd);
}

#[test]
fn a_node_that_cannot_reach_etcd_says_so_and_does_not_start() {
    let dir = temp_dir("etcd-unreachable");
    // A port nothing listens on: bound, then let go.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let config = NodeConfigBuilder::new("unreachable", random_group(), "node-1").etcd(&url).write(&dir);
    let out = Command::new(DABS).args(["node", "--config"]).arg(&config).output().unwrap();
    assert!(!out.status.success(), "the node started without its registry");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot register with etcd at {url}")), "{err}");
}
