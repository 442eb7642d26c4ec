//! What a client device offers (R-CL-2): measured here, capped by a configured ceiling, and
//! the channels it can use.

use crate::client::Transport;
use dabs_farm_proto::modules::Device;

/// A device as the client describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceProfile {
    /// What it offers the farm for mutable modules.
    pub offer: Device,
    /// The return channels it can use, in no particular order (tried in the preferred one).
    pub channels: Vec<Transport>,
}

impl DeviceProfile {
    /// This host, measured: its CPUs and available memory, floating point (every target
    /// Rust builds for has IEEE 754 doubles) and the WebAssembly sandbox (linked in), every
    /// channel.
    pub fn host() -> Self {
        Self { offer: measure(), channels: Transport::ALL.to_vec() }
    }

    /// A constrained device (a set-top box, a sensor): one CPU, 16 MiB, no floating point,
    /// no WebAssembly: every mutable module runs on the server.
    pub fn constrained() -> Self {
        Self {
            offer: Device { cpus: 1, memory_mb: 16, float: false, wasm: false },
            channels: Transport::ALL.to_vec(),
        }
    }

    /// The profile named `name` (`host` or `constrained`).
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "host" => Some(Self::host()),
            "constrained" => Some(Self::constrained()),
            _ => None,
        }
    }

    /// At most `cpus` CPUs and `memory_mb` MiB offered (the configured ceiling).
    pub fn capped(mut self, cpus: Option<u32>, memory_mb: Option<u64>) -> Self {
        if let Some(c) = cpus {
            self.offer.cpus = self.offer.cpus.min(c);
        }
        if let Some(m) = memory_mb {
            self.offer.memory_mb = self.offer.memory_mb.min(m);
        }
        self
    }

    /// What goes in `OPEN_SESSION`.
    pub fn offered(&self) -> Option<Device> {
        Some(self.offer)
    }
}

/// This host's CPUs and available memory (`/proc/meminfo`'s MemAvailable; 0 where unknown,
/// which places nothing here that needs memory).
pub fn measure() -> Device {
    let cpus = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let memory_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    Device { cpus, memory_mb, float: true, wasm: true }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_measured_and_the_ceiling_caps_it() {
        let host = DeviceProfile::host();
        assert!(host.offer.cpus >= 1 && host.offer.wasm);
        assert!(host.offer.memory_mb > 0, "this Linux host has /proc/meminfo");
        let capped = host.clone().capped(Some(1), Some(8));
        assert_eq!((capped.offer.cpus, capped.offer.memory_mb), (1, 8.min(host.offer.memory_mb)));
        assert!(!DeviceProfile::constrained().offer.wasm);
        assert!(DeviceProfile::named("phone").is_none());
    }
}
