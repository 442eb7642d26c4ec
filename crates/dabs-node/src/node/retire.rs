//! Retiring idle portions: a portion that has had no clients for `retire_idle_after_ms` (a
//! run-time setting, `[balance] retire_idle_after_ms` at start) is stopped and its record
//! removed from the database, so the farm shrinks after a ramp as it grew during it and a
//! restart does not bring the portion back. Never below the application's minimum on this
//! node, never a portion that holds a session.

use super::Inner;
use super::state::Portion;
use dabs_farm_proto::portion::RuntimeEvent;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Since when each portion here has held nothing (no seat, no client, no request waiting).
#[derive(Default)]
pub(super) struct IdleSince(HashMap<String, Instant>);

impl Inner {
    /// The portions of `app` this node keeps however idle: the one `start_at_init` starts where
    /// the application may run (its sub-group as the settings now say), else none.
    pub(super) fn min_portions_here(&self, app: &str) -> usize {
        self.app_config(app).map_or(0, |a| usize::from(a.start_at_init && a.allows_node(&self.me)))
    }

    /// The balancing process's look at idle portions: notes which hold nothing since when, and
    /// retires those idle long enough, newest first, down to each application's minimum.
    pub(super) fn retire_idle(self: &Arc<Self>) {
        let after = Duration::from_millis(self.settings_guard().retire_idle_after_ms);
        let now = Instant::now();
        let stopping = self.stopping.load(Ordering::Relaxed);
        let retired: Vec<Portion> = {
            let mut guard = self.state();
            let st = &mut *guard;
            // A session still open counts whether its client sits on the portion or was sent
            // away to be called back later.
            let holding: HashSet<&String> =
                st.hosting.open_sessions.values().chain(st.hosting.left_sessions.values()).collect();
            let idle: HashSet<String> = st
                .hosting
                .portions
                .iter()
                .filter(|(va, p)| {
                    p.figures.sessions.load(Ordering::Relaxed) == 0
                        && p.figures.queue_depth.load(Ordering::Relaxed) == 0
                        && p.clients.is_empty()
                        && !holding.contains(va)
                })
                .map(|(va, _)| va.clone())
                .collect();
            let since = &mut st.balancing.idle_since.0;
            since.retain(|va, _| idle.contains(va));
            for va in &idle {
                since.entry(va.clone()).or_insert(now);
            }
            if after.is_zero() || stopping {
                return;
            }
            // Idle long enough, by application, newest first: the portions a ramp added go
            // before the one started at initialisation.
            let mut due: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
            for (va, at) in since.iter() {
                if now.duration_since(*at) >= after
                    && let Some(p) = st.hosting.portions.get(va)
                {
                    due.entry(p.app.clone()).or_default().push((p.started_ms, va.clone()));
                }
            }
            let mut retired = Vec::new();
            for (app, mut candidates) in due {
                let running = st.hosting.portions.values().filter(|p| p.app == app).count();
                let spare = running.saturating_sub(self.min_portions_here(&app));
                candidates.sort_unstable_by(|a, b| b.cmp(a));
                for (_, va) in candidates.into_iter().take(spare) {
                    if let Some(p) = st.hosting.portions.remove(&va) {
                        // Queue and record go under the same lock: a client coming back to
                        // this address right after may start a portion under it again (on
                        // this queue, even), whose queue and record must not be the ones
                        // removed. Unregistered first: nothing reaches it while it shuts down.
                        self.endpoint.unregister_queue(p.queue);
                        if let Err(e) = self.db.remove_portion(&va) {
                            tracing::error!(%va, error = %e, "retired portion's record not removed: it returns on restart");
                        }
                        // Counted and noted under the lock that removed it: whoever sees the
                        // portion gone sees its retirement too.
                        self.counters.portions_retired.fetch_add(1, Ordering::Relaxed);
                        self.note(format!(
                            "retired portion {va} of {app}: no clients for {} ms (retire_idle_after_ms)",
                            after.as_millis()
                        ));
                        st.balancing.idle_since.0.remove(&va);
                        st.balancing.latency_marks.remove(&va);
                        st.balancing.starve_marks.remove(&va);
                        st.balancing.last_spread.remove(&va);
                        retired.push(p);
                    }
                }
            }
            retired
        };
        for p in retired {
            let _ = p.events.send(RuntimeEvent::Shutdown { emergency: false });
        }
    }
}
