//! Addresses on the command line: `IP:PORT` or `HOST:PORT` (`localhost:47101`), resolved once
//! when the command starts.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};

/// Reads `HOST:PORT` or `IP:PORT` (`[::1]:PORT` for IPv6). A name is resolved with the system's
/// resolver; of its addresses the first IPv4 one is taken, since farms and their multicast
/// groups are IPv4. A name that does not resolve is an error naming it.
pub fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not HOST:PORT (e.g. localhost:47101 or 127.0.0.1:47101)"));
    };
    if host.is_empty() {
        return Err(format!("{text:?} has no host before the port"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} in {text:?} is not a port number 0..65535"));
    }
    let addrs: Vec<SocketAddr> =
        text.to_socket_addrs().map_err(|e| format!("cannot resolve host {host:?}: {e}"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("host {host:?} resolves to no address"))
}

/// Reads an IPv4 interface address, or a host name whose first IPv4 address is one.
pub fn parse_ipv4(text: &str) -> Result<Ipv4Addr, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Ok(ip);
    }
    match parse_socket_addr(&format!("{text}:0"))? {
        SocketAddr::V4(a) => Ok(*a.ip()),
        SocketAddr::V6(a) => Err(format!("{text:?} resolves to {}, not an IPv4 address", a.ip())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_names_and_errors() {
        assert_eq!(parse_socket_addr("127.0.0.1:9"), Ok("127.0.0.1:9".parse().unwrap()));
        assert_eq!(parse_socket_addr("[::1]:9"), Ok("[::1]:9".parse().unwrap()));
        assert_eq!(parse_socket_addr("localhost:9"), Ok("127.0.0.1:9".parse().unwrap()));
        assert!(parse_socket_addr("localhost").unwrap_err().contains("HOST:PORT"));
        assert!(parse_socket_addr(":9").unwrap_err().contains("no host"));
        assert!(parse_socket_addr("localhost:99999").unwrap_err().contains("not a port"));
        assert_eq!(parse_ipv4("localhost"), Ok(Ipv4Addr::LOCALHOST));
        assert_eq!(parse_ipv4("10.1.2.3"), Ok(Ipv4Addr::new(10, 1, 2, 3)));
        assert!(parse_ipv4("::1").unwrap_err().contains("not an IPv4 address"));
        let e = parse_socket_addr("no-such-host.invalid:9").unwrap_err();
        assert!(e.contains("cannot resolve host \"no-such-host.invalid\""), "{e}");
    }
}
