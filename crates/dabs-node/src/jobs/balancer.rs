//! The balancer's choice (seed 002, R-JOB-3): how many of a job's tasks each registered
//! compute server takes, by a configurable criterion, using one server while the farm is
//! not busy.

use dabs_farm_proto::jobs::ComputeStats;

/// What the balancer chooses compute servers by (`[jobs] criterion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// Least total time spent running tasks (with the work already queued there).
    LeastBusy,
    /// Longest since it last completed a task.
    LongestIdle,
    /// Fewest tasks queued per worker thread.
    FewestQueued,
    /// Fastest recent time per task (a server that has run none yet is tried first).
    Fastest,
}

impl Criterion {
    /// Every criterion, as configured.
    pub const ALL: [Criterion; 4] =
        [Criterion::LeastBusy, Criterion::LongestIdle, Criterion::FewestQueued, Criterion::Fastest];

    /// Its name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Criterion::LeastBusy => "least_busy",
            Criterion::LongestIdle => "longest_idle",
            Criterion::FewestQueued => "fewest_queued",
            Criterion::Fastest => "fastest",
        }
    }
}

impl std::str::FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Criterion::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<_> = Criterion::ALL.iter().map(|c| c.name()).collect();
            format!("{s:?} is not a criterion (one of {})", names.join(", "))
        })
    }
}

/// A compute server as the balancer sees it: its announced figures and the tasks sent to it
/// since it announced them.
#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    /// Node name.
    pub node: String,
    /// Its announced figures.
    pub stats: ComputeStats,
    /// Tasks placed on it that its figures do not show yet.
    pub placed_since: u32,
}

/// Tasks per worker thread a server may hold before a job spreads to a second server: below
/// it, a farm is "not busy" and one server takes the whole job (seed 002: "only one Compute
/// Server need be running at a time unless the system is overloaded").
pub const SPREAD_AFTER_PER_THREAD: u32 = 8;

/// Tasks per worker thread a server is always given room for, however slow its tasks.
pub const MIN_AHEAD_PER_THREAD: u64 = 16;

/// How many tasks `s` may hold: enough for each thread to keep busy for `ahead` at its recent
/// pace (at least [`MIN_AHEAD_PER_THREAD`]), so a job is placed in rounds and a server that
/// registers mid-job gets its share of what is left.
fn room(s: &Server, ahead: std::time::Duration) -> u64 {
    // A server that has run nothing yet is timed at a millisecond per task, as in `cost`.
    let per_task_us = if s.stats.recent_us == 0 { 1000 } else { u64::from(s.stats.recent_us) };
    let per_thread = (ahead.as_micros() as u64 / per_task_us).max(MIN_AHEAD_PER_THREAD);
    per_thread * u64::from(s.stats.threads.max(1))
}

/// How many of `tasks` tasks each of `servers` takes, by `criterion`: the best server takes
/// tasks until it holds [`SPREAD_AFTER_PER_THREAD`] per thread, then each further task goes to
/// the best server with the work placed so far counted in, none past its room for `ahead` of
/// work. The shares may add up to fewer than `tasks` (the rest wait for room); servers that
/// take none are left out.
pub fn place(
    tasks: u32,
    servers: &[Server],
    criterion: Criterion,
    ahead: std::time::Duration,
) -> Vec<(String, u32)> {
    if servers.is_empty() || tasks == 0 {
        return Vec::new();
    }
    let threads = |s: &Server| u64::from(s.stats.threads.max(1));
    let rooms: Vec<u64> = servers.iter().map(|s| room(s, ahead)).collect();
    let mut queued: Vec<u64> = servers.iter().map(|s| u64::from(s.stats.queued + s.placed_since)).collect();
    let mut shares = vec![0u32; servers.len()];
    // A server's cost of one more task, lower is better; `q` is what it would hold.
    let cost = |i: usize, q: u64| -> (u64, u64) {
        let s = &servers[i];
        let per_thread = q * 1000 / threads(s);
        // A server that has run nothing yet is timed at a millisecond per task.
        let task_us = u64::from(if s.stats.recent_us == 0 { 1000 } else { s.stats.recent_us });
        match criterion {
            Criterion::LeastBusy => (s.stats.busy_ms * 1000 + q * task_us / threads(s), per_thread),
            Criterion::LongestIdle => (s.stats.last_done_ms, per_thread),
            Criterion::FewestQueued => (per_thread, s.stats.busy_ms),
            Criterion::Fastest => (u64::from(s.stats.recent_us), per_thread),
        }
    };
    let spread_mark = |i: usize| u64::from(SPREAD_AFTER_PER_THREAD) * threads(&servers[i]);
    let best = |queued: &[u64], skip_full: bool| {
        (0..servers.len())
            .filter(|&i| queued[i] < rooms[i] && (!skip_full || queued[i] < spread_mark(i)))
            .min_by_key(|&i| (cost(i, queued[i]), servers[i].node.clone()))
    };
    let mut left = tasks;
    if let Some(first) = best(&queued, false) {
        while left > 0 && queued[first] < spread_mark(first).min(rooms[first]) {
            queued[first] += 1;
            shares[first] += 1;
            left -= 1;
        }
    }
    while left > 0 {
        // By the criterion among those below the spread mark, else by queue length among
        // those with room: the criterion picks a server, the queue keeps one from taking
        // everything.
        let i = match best(&queued, true) {
            Some(i) => i,
            None => match (0..servers.len())
                .filter(|&i| queued[i] < rooms[i])
                .min_by_key(|&i| (queued[i] * 1000 / threads(&servers[i]), servers[i].node.clone()))
            {
                Some(i) => i,
                None => break,
            },
        };
        queued[i] += 1;
        shares[i] += 1;
        left -= 1;
    }
    servers.iter().zip(shares).filter(|(_, n)| *n > 0).map(|(s, n)| (s.node.clone(), n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for ten seconds of work: every test's servers run 1 ms tasks (or none yet, timed
    /// as 1 ms), so 10,000 per thread.
    const AHEAD: std::time::Duration = std::time::Duration::from_secs(10);

    fn server(node: &str, f: impl FnOnce(&mut ComputeStats)) -> Server {
        let mut stats = ComputeStats { threads: 2, ..ComputeStats::default() };
        f(&mut stats);
        Server { node: node.into(), stats, placed_since: 0 }
    }

    fn total(shares: &[(String, u32)]) -> u32 {
        shares.iter().map(|(_, n)| n).sum()
    }

    #[test]
    fn a_small_job_on_a_quiet_farm_uses_one_server() {
        let servers = [server("a", |_| {}), server("b", |_| {}), server("c", |_| {})];
        for c in Criterion::ALL {
            let shares = place(10, &servers, c, AHEAD);
            assert_eq!(shares.len(), 1, "{c:?}: {shares:?}");
            assert_eq!(total(&shares), 10);
        }
    }

    #[test]
    fn a_big_job_spreads_over_every_server_evenly_when_they_are_alike() {
        let servers = [server("a", |_| {}), server("b", |_| {}), server("c", |_| {})];
        for c in Criterion::ALL {
            let shares = place(3000, &servers, c, AHEAD);
            assert_eq!(total(&shares), 3000, "{c:?}");
            assert_eq!(shares.len(), 3, "{c:?}: {shares:?}");
            for (node, n) in &shares {
                assert!((900..=1100).contains(n), "{c:?}: {node} took {n}");
            }
        }
    }

    #[test]
    fn each_criterion_picks_its_own_first_server() {
        let servers = [
            server("busy-fast", |s| {
                s.busy_ms = 90_000;
                s.recent_us = 100;
                s.last_done_ms = 5_000;
            }),
            server("idle-slow", |s| {
                s.busy_ms = 10;
                s.recent_us = 9_000;
                s.last_done_ms = 1_000;
                s.queued = 4;
            }),
            server("fresh", |s| {
                s.busy_ms = 500;
                s.recent_us = 2_000;
                s.last_done_ms = 9_000;
            }),
        ];
        let first = |c| place(4, &servers, c, AHEAD)[0].0.clone();
        assert_eq!(first(Criterion::LeastBusy), "idle-slow");
        assert_eq!(first(Criterion::LongestIdle), "idle-slow");
        assert_eq!(first(Criterion::FewestQueued), "fresh");
        assert_eq!(first(Criterion::Fastest), "busy-fast");
    }

    #[test]
    fn work_placed_but_not_yet_announced_counts() {
        let mut a = server("a", |_| {});
        a.placed_since = 16;
        let servers = [a, server("b", |_| {})];
        assert_eq!(place(4, &servers, Criterion::FewestQueued, AHEAD), vec![("b".to_owned(), 4)]);
    }

    #[test]
    fn servers_take_no_more_than_their_room_and_the_rest_waits() {
        let mut slow = server("slow", |s| s.recent_us = 100_000);
        slow.placed_since = 10;
        let fast = server("fast", |s| s.recent_us = 1_000);
        // slow: 2 threads × max(16, 10 s / 100 ms) = 200, 10 taken; fast: 2 × 10,000.
        let shares = place(50_000, &[slow, fast], Criterion::FewestQueued, AHEAD);
        assert_eq!(shares, vec![("slow".to_owned(), 190), ("fast".to_owned(), 20_000)]);
        let mut full = server("full", |s| s.recent_us = 1_000);
        full.stats.queued = 20_000;
        assert!(place(10, &[full], Criterion::LeastBusy, AHEAD).is_empty());
    }

    #[test]
    fn names_parse_and_bad_ones_say_which_exist() {
        for c in Criterion::ALL {
            assert_eq!(c.name().parse::<Criterion>(), Ok(c));
        }
        let e = "quickest".parse::<Criterion>().unwrap_err();
        assert!(e.contains("least_busy, longest_idle, fewest_queued, fastest"), "{e}");
        assert!(place(5, &[], Criterion::LeastBusy, AHEAD).is_empty());
    }
}
