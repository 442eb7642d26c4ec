//! Asking a DNS server with Debian's `dig`, a client we did not write.

use std::net::SocketAddr;
use std::process::Command;

/// What `dig` printed of one answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dug {
    /// The response code (`NOERROR`, `NXDOMAIN`, ...).
    pub status: String,
    /// The answer section, one record per line, fields separated by one space.
    pub answers: Vec<String>,
    /// The authority section, likewise.
    pub authority: Vec<String>,
    /// The header's flags line.
    pub flags: String,
}

/// `dig @ADDR -p PORT NAME TYPE EXTRA...` (e.g. `+tcp`, `+subnet=10.0.0.0/24`). Panics, saying
/// why, when dig is missing or gets no answer.
pub fn dig(at: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> Dug {
    let out = Command::new("dig")
        .arg(format!("@{}", at.ip()))
        .args(["-p", &at.port().to_string(), name, rtype, "+time=2", "+tries=2"])
        .args(extra)
        .output()
        .expect("dig must be installed (scripts/test installs Debian's dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {name} {rtype} at {at} failed: {text}");
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .map(|s| s.split(',').next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no status in {text}"));
    let flags = text.lines().find(|l| l.contains(";; flags:")).unwrap_or("").to_owned();
    let section = |title: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with(title))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    };
    Dug { status, answers: section(";; ANSWER SECTION:"), authority: section(";; AUTHORITY SECTION:"), flags }
}

/// [`dig`] off the async runtime's threads.
pub async fn dig_async(at: SocketAddr, name: &str, rtype: &str, extra: &[&str]) -> Dug {
    let (name, rtype) = (name.to_owned(), rtype.to_owned());
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        dig(at, &name, &rtype, &extra)
    })
    .await
    .expect("dig's thread")
}
