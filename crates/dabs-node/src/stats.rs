//! Host statistics: the sampler that measures this node's host. The records a node shares
//! with the farm, and the load signal, are contracts shared with applications and live in
//! [`dabs_farm_proto::records`]; they are re-exported here for the runtime's own use.

pub use dabs_farm_proto::records::*;

/// Samples the host's CPU, memory, disk and network with sysinfo.
pub struct Sampler {
    system: Option<sysinfo::System>,
    disks: Option<sysinfo::Disks>,
    networks: Option<sysinfo::Networks>,
    last: std::time::Instant,
    /// Where the node keeps its data: the disk reported is the one holding it.
    data_dir: Option<std::path::PathBuf>,
}

/// One reading of the host.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostSample {
    /// CPU use, percent.
    pub cpu_percent: f32,
    /// Memory, MiB.
    pub mem_total_mb: u64,
    /// Available memory, MiB.
    pub mem_free_mb: u64,
    /// Free disk, MiB, where the data directory lives (the largest disk when not known).
    pub disk_free_mb: u64,
    /// Network bytes per second since the last reading.
    pub net_bytes_per_s: u64,
}

impl Sampler {
    /// A sampler; parts sysinfo cannot read on this platform report zero.
    pub fn new() -> Self {
        Self {
            system: sysinfo::System::new().ok(),
            disks: sysinfo::Disks::new_with_refreshed_list().ok(),
            networks: sysinfo::Networks::new_with_refreshed_list().ok(),
            last: std::time::Instant::now(),
            data_dir: None,
        }
    }

    /// A sampler whose disk figure is the free space of the disk holding `dir`.
    pub fn for_data_dir(dir: &std::path::Path) -> Self {
        Self { data_dir: std::fs::canonicalize(dir).ok(), ..Self::new() }
    }

    /// Reads the host now.
    pub fn sample(&mut self) -> HostSample {
        let mut s = HostSample::default();
        if let Some(sys) = &mut self.system {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            s.cpu_percent = sys.global_cpu_usage();
            s.mem_total_mb = sys.total_memory() >> 20;
            s.mem_free_mb = sys.available_memory() >> 20;
        }
        if let Some(disks) = &mut self.disks {
            disks.refresh(false);
            // The disk mounted deepest above the data directory holds it.
            let holding = self.data_dir.as_ref().and_then(|dir| {
                disks
                    .iter()
                    .filter(|d| dir.starts_with(d.mount_point()))
                    .max_by_key(|d| d.mount_point().components().count())
            });
            let free = match holding {
                Some(d) => d.available_space(),
                None => disks.iter().map(|d| d.available_space()).max().unwrap_or(0),
            };
            s.disk_free_mb = free >> 20;
        }
        let elapsed = self.last.elapsed().as_secs_f64().max(0.001);
        self.last = std::time::Instant::now();
        if let Some(nets) = &mut self.networks {
            nets.refresh(false);
            let bytes: u64 = nets.values().map(|n| n.received() + n.transmitted()).sum();
            s.net_bytes_per_s = (bytes as f64 / elapsed) as u64;
        }
        s
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The records fixture, under the name the runtime's tests use.
    pub(crate) fn stats(node: &str, sessions: u64) -> NodeStats {
        NodeStats::example(node, sessions)
    }

    #[test]
    fn sampler_reads_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::for_data_dir(dir.path());
        let s = sampler.sample();
        assert!(s.mem_total_mb > 0 && s.mem_free_mb <= s.mem_total_mb, "{s:?}");
        assert!((0.0..=100.0).contains(&s.cpu_percent), "{s:?}");
        // The data directory's disk has room (the test just made a directory on it).
        assert!(s.disk_free_mb > 0, "{s:?}");
    }
}
