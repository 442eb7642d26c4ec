//! Network namespaces a test creates for itself (root only, as in CI; `dabs-netns`), and a
//! "far network" behind a TUN device inside one: addresses that exist only there, whose round
//! trips the test sets. Everything is removed on drop, also when the test fails.
//!
//! The far network is a user-space stand-in for distance, since this kernel has no `netem`:
//! the test process owns the TUN device, answers a TCP SYN to any far address with RST after
//! the delay it chooses for that (source, destination), and can inject UDP datagrams from a far
//! address (a resolver out there) and read what comes back.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use dabs_netns::{Hosts, Netns, OBSERVER, run_in};

/// A UDP datagram that came back to a far address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Its sender.
    pub from: SocketAddrV4,
    /// Its destination (the far address).
    pub to: SocketAddrV4,
    /// Its payload.
    pub payload: Vec<u8>,
}

type Delay = dyn Fn(Ipv4Addr, Ipv4Addr) -> Duration + Send + Sync;

/// Far addresses behind a TUN device; stops on drop (the device goes with its descriptor).
pub struct FarNetwork {
    tun: Arc<File>,
    stop: Arc<AtomicBool>,
    probes: Arc<AtomicU64>,
    came_back: Mutex<mpsc::Receiver<Datagram>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

impl FarNetwork {
    /// Creates TUN device `ifname` in the calling thread's namespace (call it inside
    /// [`Netns::run_inside`]) and routes `route` (e.g. `10.77.0.0/16`) through it. A TCP SYN to
    /// a far address is answered with RST after `delay(source, destination)`.
    pub fn start(
        ifname: &str,
        route: &str,
        delay: impl Fn(Ipv4Addr, Ipv4Addr) -> Duration + Send + Sync + 'static,
    ) -> FarNetwork {
        assert!(ifname.len() < libc::IFNAMSIZ, "interface name {ifname} too long");
        let tun = File::options().read(true).write(true).open("/dev/net/tun").expect("/dev/net/tun");
        // struct ifreq: the name, then the flags (IFF_TUN, no packet information header).
        let mut ifreq = [0u8; 40];
        ifreq[..ifname.len()].copy_from_slice(ifname.as_bytes());
        let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
        ifreq[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifreq` is large enough for.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, ifreq.as_mut_ptr()) };
        assert_eq!(rc, 0, "TUNSETIFF {ifname}: {}", std::io::Error::last_os_error());
        dabs_netns::ip(&["link", "set", ifname, "up"]).expect("the TUN device up");
        dabs_netns::ip(&["route", "add", route, "dev", ifname]).expect("a route through the TUN device");
        let tun = Arc::new(tun);
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let delay: Arc<Delay> = Arc::new(delay);
        let reader = {
            let (tun, stop, probes) = (tun.clone(), stop.clone(), probes.clone());
            std::thread::spawn(move || serve(&tun, &stop, &probes, &delay, &tx))
        };
        FarNetwork { tun, stop, probes, came_back: Mutex::new(rx), reader: Some(reader) }
    }

    /// TCP SYNs answered so far (each one probe).
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }

    /// Sends `payload` from far address `from` to `to` and waits up to `limit` for a datagram
    /// back to `from`.
    pub fn exchange(
        &self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload: &[u8],
        limit: Duration,
    ) -> Option<Datagram> {
        let rx = self.came_back.lock().unwrap_or_else(|e| e.into_inner());
        while rx.try_recv().is_ok() {}
        (&*self.tun).write_all(&udp_packet(from, to, payload)).expect("write to the TUN device");
        let until = Instant::now() + limit;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            match rx.recv_timeout(left) {
                Ok(d) if d.to == from => return Some(d),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for FarNetwork {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Reads packets until stopped: SYNs get a delayed RST, UDP datagrams go to `tx`.
fn serve(
    tun: &Arc<File>,
    stop: &AtomicBool,
    probes: &AtomicU64,
    delay: &Arc<Delay>,
    tx: &mpsc::Sender<Datagram>,
) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd { fd: tun.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
            continue;
        }
        let Ok(n) = (&**tun).read(&mut buf) else { continue };
        let p = &buf[..n];
        if n < 20 || p[0] >> 4 != 4 {
            continue;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let port = |at: usize| u16::from_be_bytes([p[at], p[at + 1]]);
        match p[9] {
            6 if n >= ihl + 20 && p[ihl + 13] & 0x12 == 0x02 => {
                probes.fetch_add(1, Ordering::Relaxed);
                let seq = u32::from_be_bytes([p[ihl + 4], p[ihl + 5], p[ihl + 6], p[ihl + 7]]);
                let rst = rst_packet(dst, port(ihl + 2), src, port(ihl), seq.wrapping_add(1));
                let (wait, tun) = (delay(src, dst), tun.clone());
                std::thread::spawn(move || {
                    std::thread::sleep(wait);
                    let _ = (&*tun).write_all(&rst);
                });
            }
            17 if n >= ihl + 8 => {
                let _ = tx.send(Datagram {
                    from: SocketAddrV4::new(src, port(ihl)),
                    to: SocketAddrV4::new(dst, port(ihl + 2)),
                    payload: p[ihl + 8..].to_vec(),
                });
            }
            _ => {}
        }
    }
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        for pair in part.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[6] = 0x40; // don't fragment
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn rst_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, ack: u32) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x14; // RST, ACK
    let pseudo = [&src.octets()[..], &dst.octets()[..], &[0, 6, 0, 20]].concat();
    let c = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    [&ipv4_header(src, dst, 6, 20)[..], &tcp].concat()
}

fn udp_packet(from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut udp = Vec::with_capacity(len);
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&(len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]); // no checksum (allowed over IPv4)
    udp.extend_from_slice(payload);
    [&ipv4_header(*from.ip(), *to.ip(), 17, len)[..], &udp].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let p = rst_packet(Ipv4Addr::new(10, 77, 1, 1), 53, Ipv4Addr::new(10, 76, 0, 2), 40000, 7);
        assert_eq!(checksum(&[&p[..20]]), 0, "IPv4 header");
        let pseudo = [&p[12..20], &[0, 6, 0, 20]].concat();
        assert_eq!(checksum(&[&pseudo, &p[20..]]), 0, "TCP segment");
        let u = udp_packet("10.77.2.53:5353".parse().unwrap(), "10.76.0.2:53".parse().unwrap(), b"abc");
        assert_eq!(u.len(), 31);
        assert_eq!(checksum(&[&u[..20]]), 0);
    }
}
