//! Holding the farm's service address on this host: adding it to the interface (iproute2's
//! `ip`), telling the link with gratuitous ARP, and taking it away again. Needs
//! `CAP_NET_ADMIN` (the address) and `CAP_NET_RAW` (the ARP frame); without them each step
//! fails with an error that says so.

use crate::config::ServiceAddress;
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// Why the address could not be taken or given back.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// `ip` refused or could not run.
    #[error("ip {args}: {why}{hint}")]
    Ip {
        /// Its arguments.
        args: String,
        /// What it said.
        why: String,
        /// What to do about a missing privilege, when that was the cause.
        hint: &'static str,
    },
    /// The gratuitous ARP could not be sent.
    #[error("gratuitous ARP on {interface}: {source}{hint}")]
    Arp {
        /// The interface.
        interface: String,
        /// The cause.
        source: io::Error,
        /// What to do about a missing privilege, when that was the cause.
        hint: &'static str,
    },
}

const NEEDS_ADMIN: &str = " (the node needs CAP_NET_ADMIN to hold the service address: run it as root or \
                           with AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW)";

fn ip(args: &[&str], tolerate: &str) -> Result<(), HoldError> {
    let fail = |why: String| {
        let hint = if why.contains("not permitted") { NEEDS_ADMIN } else { "" };
        HoldError::Ip { args: args.join(" "), why, hint }
    };
    let out = Command::new("ip").args(args).output().map_err(|e| fail(e.to_string()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() || (!tolerate.is_empty() && stderr.contains(tolerate)) {
        return Ok(());
    }
    Err(fail(stderr))
}

/// Adds the address to its interface for `lifetime` (the kernel removes it then unless
/// renewed: a holder killed outright does not keep it), and announces it with gratuitous ARP,
/// so neighbours send to this host from now on.
pub fn take(addr: &ServiceAddress, lifetime: Duration) -> Result<(), HoldError> {
    renew(addr, lifetime)?;
    gratuitous_arp(&addr.interface, addr.ip).map_err(|source| HoldError::Arp {
        interface: addr.interface.clone(),
        hint: if source.kind() == io::ErrorKind::PermissionDenied { NEEDS_ADMIN } else { "" },
        source,
    })
}

/// Adds the address, or renews its lifetime (whole seconds, at least 1).
pub fn renew(addr: &ServiceAddress, lifetime: Duration) -> Result<(), HoldError> {
    let secs = lifetime.as_secs_f64().ceil().max(1.0).to_string();
    put(addr, &["valid_lft", &secs, "preferred_lft", &secs])
}

/// Adds the address for good (a host's VIPA; already there is fine).
pub fn add(addr: &ServiceAddress) -> Result<(), HoldError> {
    put(addr, &[])
}

fn put(addr: &ServiceAddress, lifetime: &[&str]) -> Result<(), HoldError> {
    let cidr = format!("{}/{}", addr.ip, addr.prefix);
    let mut args = vec!["-4", "addr", "replace", &cidr, "dev", &addr.interface];
    args.extend_from_slice(lifetime);
    ip(&args, "")
}

/// Removes the address from its interface (already gone is fine).
pub fn give_back(addr: &ServiceAddress) -> Result<(), HoldError> {
    let cidr = format!("{}/{}", addr.ip, addr.prefix);
    ip(&["-4", "addr", "del", &cidr, "dev", &addr.interface], "Cannot assign requested address")
}

/// The gratuitous ARP frame: a broadcast ARP request whose sender and target are both `ip`
/// at `mac` (what `arping -U` sends): every neighbour updates its cache entry for `ip`.
pub fn arp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    // Ethernet, IPv4, 6- and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    f[38..42].copy_from_slice(&ip.octets());
    f
}

fn mac_of(interface: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))?;
    let bytes: Vec<u8> = text.trim().split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    <[u8; 6]>::try_from(bytes.as_slice()).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{interface} has no Ethernet address"))
    })
}

/// Sends one gratuitous ARP for `ip` on `interface` through an `AF_PACKET` socket.
pub fn gratuitous_arp(interface: &str, ip: Ipv4Addr) -> io::Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mac = mac_of(interface)?;
    let name =
        std::ffi::CString::new(interface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let protocol = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let frame = arp_frame(mac, ip);
    // SAFETY: sockaddr_ll is plain old data; zero is a valid value for every field.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = protocol;
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    use std::os::fd::AsRawFd;
    // SAFETY: the frame and the address outlive the call; lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_arp_request_naming_the_address_as_sender_and_target() {
        let mac = [2, 0, 0, 0, 0, 7];
        let f = arp_frame(mac, Ipv4Addr::new(10, 88, 0, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 88, 0, 100]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 88, 0, 100]);
    }
}
