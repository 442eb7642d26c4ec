//! Seats of vanished clients: a client that dies without closing keeps its session (and its
//! portion's seat) until the endpoint's idle time-out, 120 s. A portion whose seats are nearly
//! all taken gets them back sooner: its sessions idle past the endpoint's
//! `reclaim_idle_after` (10 s) are closed, longest idle first, before the farm starts another
//! portion for want of room. A live client whose session was reclaimed re-opens on its next
//! call (NAK 1), as after any expiry.

use super::Inner;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// At most one reclaim per this interval: each is a pass over the portion's sessions.
const RECLAIM_EVERY: Duration = Duration::from_secs(1);

/// A portion is near its cap when at most this share of its seats (1/8) is free.
fn near_cap(sessions: u64, max: u64) -> bool {
    sessions >= max - max / 8
}

/// How many seats to win back from a portion near its cap: down to three quarters full, and
/// at least one.
fn to_reclaim(sessions: u64, max: u64) -> usize {
    sessions.saturating_sub(max - max / 4).max(1) as usize
}

impl Inner {
    /// The balancing process's look at seats: for every portion near its cap, asks the
    /// endpoint to close the sessions idle longest past its reclaim threshold.
    pub(super) fn reclaim_seats(self: &Arc<Self>) {
        let now = Instant::now();
        let asks: Vec<(Vec<dabs_net::SessionId>, usize)> = {
            let mut st = self.state();
            if st.balancing.last_reclaim.is_some_and(|t| now.duration_since(t) < RECLAIM_EVERY) {
                return;
            }
            let full: Vec<(String, usize)> = st
                .hosting
                .portions
                .iter()
                .filter_map(|(va, p)| {
                    let max = self.app_config(&p.app)?.max_sessions_per_portion;
                    let sessions = p.figures.sessions.load(Ordering::Relaxed);
                    near_cap(sessions, max).then(|| (va.clone(), to_reclaim(sessions, max)))
                })
                .collect();
            if full.is_empty() {
                return;
            }
            st.balancing.last_reclaim = Some(now);
            full.into_iter()
                .map(|(va, n)| {
                    let ids = st.hosting.open_sessions.iter().filter(|(_, v)| **v == va).map(|(s, _)| *s);
                    (ids.collect(), n)
                })
                .collect()
        };
        let this = self.clone();
        tokio::spawn(async move {
            for (sessions, n) in asks {
                // The closed sessions reach `closed_loop`, which frees their seats.
                let closed = this.endpoint.reclaim_idle(sessions, n).await;
                if closed > 0 {
                    tracing::info!(node = %this.me, closed, "reclaimed idle sessions of a portion near its cap");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_portion_is_near_its_cap_with_an_eighth_or_less_free_and_gives_back_to_three_quarters() {
        assert!(near_cap(1, 1) && !near_cap(0, 1));
        assert!(near_cap(2, 2) && !near_cap(1, 2));
        assert!(near_cap(875, 1000) && !near_cap(874, 1000));
        assert_eq!(to_reclaim(1000, 1000), 250);
        assert_eq!(to_reclaim(875, 1000), 125);
        assert_eq!(to_reclaim(2, 2), 1, "at least one");
    }
}
