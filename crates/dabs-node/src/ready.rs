//! The ready line: what `dabs node` prints on its standard output, as its first line, once it
//! announces itself and serves its endpoint (and operator interface, when configured).
//!
//! `node NAME mp ADDR group GROUP[ operator http://ADDR][ dns ADDR]`
//!
//! `dabs farm up` reads it from each node it starts, and so do tests that start nodes. The
//! format and its parser live here only, so the writer and the readers cannot drift apart.

use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};

/// The line `dabs node` prints once it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// The node's name (the parser takes any words between `node` and `mp`).
    pub name: String,
    /// Its MP endpoint address.
    pub mp: SocketAddr,
    /// The farm's multicast group.
    pub group: SocketAddrV4,
    /// Where its operator interface listens, if it serves one.
    pub operator: Option<SocketAddr>,
    /// Where its DNS front listens (UDP and TCP), if it serves one.
    pub dns: Option<SocketAddr>,
}

/// Why a line is not a ready line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadyLineError {
    /// The line does not have the ready line's words in their places.
    #[error(
        "not a ready line (expected `node NAME mp ADDR group GROUP [operator URL] [dns ADDR]`): {line:?}"
    )]
    Shape {
        /// The line as read.
        line: String,
    },
    /// A word that must be an address is not one.
    #[error("ready line: {field} {value:?} is not an address: {line:?}")]
    Address {
        /// Which field (`mp`, `group`, `operator`).
        field: &'static str,
        /// What stood there.
        value: String,
        /// The line as read.
        line: String,
    },
}

impl ReadyLine {
    /// The operator interface as a URL, `http://IP:PORT`.
    pub fn operator_url(&self) -> Option<String> {
        self.operator.map(|a| format!("http://{a}"))
    }

    /// Parses a ready line (surrounding white space ignored).
    pub fn parse(line: &str) -> Result<ReadyLine, ReadyLineError> {
        let shape = || ReadyLineError::Shape { line: line.to_owned() };
        let address = |field: &'static str, value: &str| ReadyLineError::Address {
            field,
            value: value.to_owned(),
            line: line.to_owned(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        // The optional tail, `operator U` and `dns D`, then the fixed `mp A group G`; the name
        // is what lies between `node` and `mp`.
        let (mut end, mut operator, mut dns) = (words.len(), None, None);
        while end >= 2 {
            match words[end - 2] {
                "operator" if operator.is_none() => operator = Some(words[end - 1]),
                "dns" if dns.is_none() => dns = Some(words[end - 1]),
                _ => break,
            }
            end -= 2;
        }
        if end < 6 || words[0] != "node" || words[end - 4] != "mp" || words[end - 2] != "group" {
            return Err(shape());
        }
        let mp = words[end - 3].parse().map_err(|_| address("mp", words[end - 3]))?;
        let group = words[end - 1].parse().map_err(|_| address("group", words[end - 1]))?;
        let operator = match operator {
            Some(url) => Some(
                url.strip_prefix("http://")
                    .and_then(|a| a.trim_end_matches('/').parse().ok())
                    .ok_or_else(|| address("operator", url))?,
            ),
            None => None,
        };
        let dns = match dns {
            Some(a) => Some(a.parse().map_err(|_| address("dns", a))?),
            None => None,
        };
        Ok(ReadyLine { name: words[1..end - 4].join(" "), mp, group, operator, dns })
    }
}

impl std::str::FromStr for ReadyLine {
    type Err = ReadyLineError;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        ReadyLine::parse(line)
    }
}

/// Writes the line, without its line end.
impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} mp {} group {}", self.name, self.mp, self.group)?;
        if let Some(url) = self.operator_url() {
            write!(f, " operator {url}")?;
        }
        if let Some(dns) = self.dns {
            write!(f, " dns {dns}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(name: &str, operator: Option<&str>) -> ReadyLine {
        ReadyLine {
            name: name.into(),
            mp: "127.0.0.1:40001".parse().unwrap(),
            group: "239.255.1.2:47000".parse().unwrap(),
            operator: operator.map(|o| o.parse().unwrap()),
            dns: None,
        }
    }

    #[test]
    fn what_is_printed_parses_back() {
        for l in [line("node-1", None), line("node-2", Some("127.0.0.1:8080")), line("rack 7 b", None)] {
            assert_eq!(ReadyLine::parse(&l.to_string()), Ok(l.clone()), "{l}");
        }
        let l = line("node-2", Some("127.0.0.1:8080"));
        assert_eq!(
            l.to_string(),
            "node node-2 mp 127.0.0.1:40001 group 239.255.1.2:47000 operator http://127.0.0.1:8080"
        );
        assert_eq!(l.operator_url().as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(ReadyLine::parse(&format!("  {l}\n")), Ok(l.clone()));
        let with_dns = ReadyLine { dns: Some("127.0.0.1:5353".parse().unwrap()), ..l };
        assert!(with_dns.to_string().ends_with(" operator http://127.0.0.1:8080 dns 127.0.0.1:5353"));
        assert_eq!(ReadyLine::parse(&with_dns.to_string()), Ok(with_dns));
        let no_operator = ReadyLine { dns: Some("[::1]:53".parse().unwrap()), ..line("n", None) };
        assert_eq!(ReadyLine::parse(&no_operator.to_string()), Ok(no_operator));
        let e = ReadyLine::parse("node n mp 127.0.0.1:1 group 239.0.0.1:2 dns here").unwrap_err();
        assert!(matches!(e, ReadyLineError::Address { field: "dns", .. }), "{e}");
    }

    #[test]
    fn other_lines_are_refused_saying_why() {
        for bad in [
            "",
            "node",
            "dabs node: cannot bind",
            "node n mp 1.2.3.4:5",
            "node mp 127.0.0.1:1 group 239.1.1.1:2",
        ] {
            assert!(matches!(ReadyLine::parse(bad), Err(ReadyLineError::Shape { .. })), "{bad:?}");
        }
        let e = ReadyLine::parse("node n mp here group 239.255.1.2:47000").unwrap_err();
        assert!(matches!(&e, ReadyLineError::Address { field: "mp", value, .. } if value == "here"), "{e}");
        let e = ReadyLine::parse("node n mp 127.0.0.1:1 group [ff02::1]:2").unwrap_err();
        assert!(matches!(e, ReadyLineError::Address { field: "group", .. }), "an IPv4 group: {e}");
        let e = ReadyLine::parse("node n mp 127.0.0.1:1 group 239.0.0.1:2 operator ftp://x").unwrap_err();
        assert!(e.to_string().contains("operator \"ftp://x\""), "{e}");
    }
}
